"""Prometheus metrics of one gateway: latency per stage (embed, search, rerank, retrieval, generation,
total) and request counts by endpoint and status. Each gateway owns its registry, so tests can build many."""

from __future__ import annotations

import time
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# `endpoint` label per route; every other path (typos, scanners) shares "other", so random paths cannot
# grow /metrics without bound.
ENDPOINTS = {"/v1/chat/completions": "chat", "/v1/completions": "completions", "/v1/documents": "documents",
             "/v1/models": "models", "/health": "health", "/metrics": "metrics"}


def endpoint_label(path: str) -> str:
    if path.startswith("/v1/documents/"):
        return "documents"
    return ENDPOINTS.get(path, "other")


# Gateway stages are milliseconds to a minute; generation dominates the upper buckets.
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
STAGES = ("embed", "search", "rerank", "retrieval", "generation", "total")


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram("raft_stage_latency_seconds", "Latency per request stage",
                                 ["stage"], buckets=_BUCKETS, registry=self.registry)
        self.requests = Counter("raft_requests_total", "Requests by endpoint and HTTP status",
                                ["endpoint", "status"], registry=self.registry)
        self.retrieved = Counter("raft_retrieved_chunks_total", "Chunks retrieved and shown to the model",
                                 registry=self.registry)
        self.in_flight = Gauge("raft_requests_in_flight", "Requests being served", registry=self.registry)
        for stage in STAGES:  # export every series from the start, so dashboards see zeros, not gaps
            self.latency.labels(stage)

    def observe(self, stage: str, seconds: float) -> None:
        self.latency.labels(stage).observe(seconds)

    @contextmanager
    def timer(self, stage: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.observe(stage, time.perf_counter() - t0)

    def count(self, endpoint: str, status: int) -> None:
        self.requests.labels(endpoint, str(status)).inc()

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
