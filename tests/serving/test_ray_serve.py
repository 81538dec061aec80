"""The gateway as a Ray Serve application (FastAPI ingress) on local Ray, and `raft serve` as a process."""

from __future__ import annotations

import signal
import subprocess
import sys

import httpx
import openai
import pytest
from gateway_helpers import DOCS, free_port, make_config

from raft.netutil import wait_healthy
from serving.testing.memory_retriever import InMemoryRetriever


@pytest.mark.slow
def test_gateway_on_ray_serve(ray_local, fake_engine):
    from ray import serve

    from serving.ray_app import run_on_ray

    cfg = make_config(fake_engine.url, port=free_port(), runner="ray",
                      ray={"num_cpus": 0, "num_replicas": 1}, auth={"keys": {"k": "acme"}})
    run_on_ray(cfg, fake_engine.url, InMemoryRetriever(DOCS))
    try:
        url = f"http://127.0.0.1:{cfg.port}"
        c = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0, timeout=30)
        r = c.chat.completions.create(model="raft", messages=[{"role": "user", "content": "capital of Veloria"}])
        assert r.model_extra["citations"][0]["doc_id"] == "geo" and r.model == "raft"
        chunks = list(c.completions.create(model="raft", prompt="glass export of Lumen", stream=True))
        assert chunks[-1].model_extra["citations"][0]["doc_id"] == "eco"
        assert httpx.get(url + "/v1/models").status_code == 401
        assert httpx.get(url + "/health").json()["status"] == "ok"
        assert 'raft_requests_total{endpoint="chat",status="200"} 1.0' in httpx.get(url + "/metrics").text
    finally:
        serve.shutdown()


@pytest.mark.slow
def test_raft_serve_command_runs_the_gateway(fake_engine, tmp_path):
    port = free_port()
    cfg = tmp_path / "serve.yaml"
    cfg.write_text(f"serve:\n  engine: {{kind: openai, url: '{fake_engine.url}/v1', model: fake-model}}\n"
                   f"  retrieval: {{backend: none}}\n  runner: uvicorn\n  port: {port}\n")
    proc = subprocess.Popen([sys.executable, "-m", "raft.cli", "serve", "--config", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health", timeout=60, proc=proc)
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        r = c.chat.completions.create(model="raft", messages=[{"role": "user", "content": "hi"}])
        assert r.choices[0].message.content and r.model_extra["citations"] == []
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert "gateway ready" in out, out


@pytest.fixture(scope="module")
def small_index(tmp_path_factory, embedder_path):
    from retrieval.config import IndexConfig
    from retrieval.index import RetrievalIndex

    out = tmp_path_factory.mktemp("ray_idx") / "index"
    RetrievalIndex.build(list(DOCS), out, IndexConfig(embedder=embedder_path)).close()
    return out


@pytest.mark.slow
def test_ray_retriever_actors_behind_ray_serve(ray_local, fake_engine, small_index):
    """backend `ray`: RayRetriever actors created once in the driver, handed to the Serve replica."""
    from ray import serve

    from serving.ray_app import run_on_ray
    from serving.retriever import open_retriever

    cfg = make_config(fake_engine.url, port=free_port(), runner="ray", ray={"num_cpus": 0},
                      retrieval={"backend": "ray", "index_dir": str(small_index), "num_shards": 2, "top_k": 2},
                      auth={"keys": {"ka": "acme", "kg": "globex"}})
    retriever = open_retriever(cfg.retrieval)
    run_on_ray(cfg, fake_engine.url, retriever)
    try:
        url = f"http://127.0.0.1:{cfg.port}"
        ka, kg = {"Authorization": "Bearer ka"}, {"Authorization": "Bearer kg"}
        q = {"model": "raft", "messages": [{"role": "user", "content": "snow lynx"}],
             "retrieval": {"filter": {"tenant": "globex"}}}
        cites = httpx.post(url + "/v1/chat/completions", headers=ka, json=q, timeout=60).json()["citations"]
        assert cites and {c["doc_id"] for c in cites} <= {"geo", "eco"}
        cites = httpx.post(url + "/v1/chat/completions", headers=kg, json=q, timeout=60).json()["citations"]
        assert [c["doc_id"] for c in cites] == ["zoo"]
        doc = {"id": "den", "title": "Den", "text": "The snow lynx sleeps in a granite den."}
        assert httpx.post(url + "/v1/documents", headers=kg, json={"documents": [doc]}, timeout=60).status_code == 200
        cites = httpx.post(url + "/v1/chat/completions", headers=kg, json=q, timeout=60).json()["citations"]
        assert "den" in {c["doc_id"] for c in cites}
        assert httpx.delete(url + "/v1/documents/den", headers=ka, timeout=60).status_code == 404
        assert httpx.delete(url + "/v1/documents/den", headers=kg, timeout=60).json()["deleted"] is True
        cites = httpx.post(url + "/v1/chat/completions", headers=kg, json=q, timeout=60).json()["citations"]
        assert "den" not in {c["doc_id"] for c in cites}
        h = httpx.get(url + "/health", timeout=30).json()
        assert h["index"]["backend"] == "ray" and h["index"]["status"] == "ok"
    finally:
        serve.shutdown()
        retriever.close()
