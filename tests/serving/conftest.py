"""Fixtures for the gateway tests (helpers in gateway_helpers.py)."""

from __future__ import annotations

import pytest

from gateway_helpers import DOCS, ServerThread, make_config
from serving.app import create_app
from serving.testing.fake_engine import create_engine_app
from serving.gateway import Gateway
from serving.testing.memory_retriever import InMemoryRetriever


@pytest.fixture
def fake_engine():
    srv = ServerThread(create_engine_app(stream_chunks=4)).start()
    yield srv
    srv.stop()


@pytest.fixture
def make_gateway(fake_engine):
    """make_gateway(**config overrides) -> (ServerThread of the gateway, Gateway); all stopped after."""
    started = []

    def make(retriever=None, engine_url=None, **over):
        cfg = make_config(engine_url or fake_engine.url, **over)
        gw = Gateway.from_config(cfg, engine_url or fake_engine.url,
                                 retriever if retriever is not None else InMemoryRetriever(DOCS))
        srv = ServerThread(create_app(gw)).start()
        started.append(srv)
        return srv, gw

    yield make
    for s in started:
        s.stop()


@pytest.fixture(scope="session")
def small_real_index(tmp_path_factory, embedder_path):
    """A real RetrievalIndex (bundled MiniLM, FAISS, SQLite) over DOCS, built once per session."""
    from retrieval.config import IndexConfig
    from retrieval.index import RetrievalIndex

    out = tmp_path_factory.mktemp("serve_idx") / "index"
    RetrievalIndex.build(list(DOCS), out, IndexConfig(embedder=embedder_path)).close()
    return out


@pytest.fixture
def index_retriever(small_real_index, tmp_path):
    """An IndexRetriever on a private copy of small_real_index (tests write to it)."""
    import shutil

    from serving.retriever import IndexRetriever

    copy = tmp_path / "index"
    shutil.copytree(small_real_index, copy)
    r = IndexRetriever.open(str(copy))
    yield r
    r.close()
