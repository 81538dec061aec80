"""Helpers for the gateway tests: servers on free 127.0.0.1 ports, run in threads (fast, in-process)
or as subprocesses (when a test must kill them)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import uvicorn

from raft.netutil import free_port, wait_healthy
from retrieval.types import Document
from serving.app import KEEP_ALIVE_S
from serving.config import ServeConfig


class ServerThread:
    """uvicorn serving an ASGI app in a daemon thread (stopped by stop())."""

    def __init__(self, app, port: int | None = None):
        self.port = port or free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    access_log=False, lifespan="off",
                                                    timeout_keep_alive=KEEP_ALIVE_S))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline:
                raise TimeoutError("server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def start_fake_engine_process(port: int, *extra: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "serving.testing.fake_engine", "--port", str(port), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health", timeout=30, proc=proc, interval=0.05)
    except BaseException:
        proc.kill()
        raise
    return proc


DOCS = [
    Document("geo", "Veloria is a small mountain country. Its capital is Lumen, on the river Sael.",
             "Geography", "geo.md", {"tenant": "acme"}),
    Document("eco", "The economy of Veloria rests on glass making. Lumen exports blue glass.",
             "Economy", "eco.md", {"tenant": "acme"}),
    Document("zoo", "The snow lynx of Veloria hunts at night. It is protected by law.",
             "Wildlife", "zoo.md", {"tenant": "globex"}),
]



def make_config(engine_url: str, **over) -> ServeConfig:
    data = {"engine": {"kind": "openai", "url": engine_url, "model": "fake-model", "max_model_len": 2048},
            "retrieval": {"backend": "local", "index_dir": "unused", "top_k": 2}, "runner": "uvicorn"}
    for k, v in over.items():
        data[k] = {**data.get(k, {}), **v} if isinstance(v, dict) else v
    return ServeConfig.model_validate(data)


def build_tenant_index(out, corpus_dir, embedder_path, chunk_size: int):
    """A real index over the shipped corpus, its documents alternately in tenants acme and globex."""
    from retrieval.config import IndexConfig
    from retrieval.index import RetrievalIndex
    from retrieval.loaders import load_corpus

    docs, _ = load_corpus(corpus_dir)
    for i, d in enumerate(docs):
        d.metadata["tenant"] = "acme" if i % 2 == 0 else "globex"
    RetrievalIndex.build(docs, out, IndexConfig(embedder=embedder_path, chunk_size=chunk_size, chunk_overlap=16)).close()
    return out
