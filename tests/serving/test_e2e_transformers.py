"""End to end on CPU: `transformers serve` running the tiny model (started by the gateway's launcher),
the real retrieval index, the official openai client: chat, completions, streaming, citations."""

from __future__ import annotations

import httpx
import openai
import pytest

from gateway_helpers import ServerThread, free_port
from serving.app import create_app
from serving.config import ServeConfig
from serving.gateway import Gateway
from serving.launchers import launch_engine
from serving.retriever import IndexRetriever


@pytest.fixture(scope="module")
def e2e(tiny_model_dir, corpus_dir, embedder_path, tmp_path_factory):
    from retrieval.config import IndexConfig
    from retrieval.index import RetrievalIndex

    index_dir = tmp_path_factory.mktemp("e2e") / "index"
    RetrievalIndex.build(corpus_dir, index_dir, IndexConfig(embedder=embedder_path, chunk_size=64,
                                                            chunk_overlap=8)).close()
    cfg = ServeConfig.model_validate({
        "engine": {"kind": "transformers", "model": str(tiny_model_dir), "port": free_port(), "startup_timeout_s": 240},
        "retrieval": {"backend": "local", "index_dir": str(index_dir), "top_k": 2}, "runner": "uvicorn"})
    url, proc = launch_engine(cfg, str(tmp_path_factory.mktemp("logs") / "engine.log"))
    gw = Gateway.from_config(cfg, url, IndexRetriever.open(str(index_dir)))
    srv = ServerThread(create_app(gw)).start()
    yield srv, gw, proc
    srv.stop()
    proc.stop()


@pytest.mark.slow
def test_chat_completions_and_streaming_against_transformers_serve(e2e):
    srv, gw, _ = e2e
    c = openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0, timeout=120)
    q = [{"role": "user", "content": "What is the capital of Veloria?"}]
    r = c.chat.completions.create(model="raft", messages=q, max_tokens=8, temperature=0)
    assert r.model == "raft" and isinstance(r.choices[0].message.content, str)
    assert r.usage.prompt_tokens > 50  # the retrieved documents went into the prompt
    cites = r.model_extra["citations"]
    assert len(cites) == 2 and all(c_["chunk_id"] and c_["source"] for c_ in cites)

    plain = c.chat.completions.create(model="raft", messages=q, max_tokens=8,
                                      extra_body={"retrieval": {"enabled": False}})
    assert plain.usage.prompt_tokens < r.usage.prompt_tokens and plain.model_extra["citations"] == []

    chunks = list(c.chat.completions.create(model="raft", messages=q, max_tokens=6, stream=True))
    assert any(ch.choices and ch.choices[0].delta.content for ch in chunks)
    assert len(chunks[-1].model_extra["citations"]) == 2

    rc = c.completions.create(model="raft", prompt="Which river flows through Lumen?", max_tokens=6)
    assert isinstance(rc.choices[0].text, str) and len(rc.model_extra["citations"]) == 2
    streamed = list(c.completions.create(model="raft", prompt="Which river?", max_tokens=4, stream=True))
    assert streamed[-1].model_extra["citations"]


@pytest.mark.slow
def test_context_limit_uses_the_models_tokenizer_and_limit(e2e):
    srv, gw, _ = e2e
    assert gw.tokens.exact and gw.max_context == 2048
    r = httpx.post(srv.url + "/v1/chat/completions", json={
        "model": "raft", "max_tokens": 2040, "messages": [{"role": "user", "content": "Veloria capital?"}]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert "2048" in r.json()["error"]["message"]
    assert httpx.get(srv.url + "/health").json()["engine"]["status"] == "ok"
