"""The gateway against a fast fake engine and the in-memory retriever, through the official openai client."""

from __future__ import annotations

import json
import logging
import time

import httpx
import openai
import pytest

from raft.prompt import SYSTEM_PROMPT, build_messages, completion_prompt, extract_quotes, quote_in

from gateway_helpers import DOCS, free_port


def client(srv, key="none"):
    return openai.OpenAI(base_url=srv.url + "/v1", api_key=key, max_retries=0, timeout=10)


def last_engine_body(fake_engine) -> dict:
    return json.loads(httpx.get(fake_engine.url + "/_last").content)


def test_chat_retrieves_renders_training_prompt_and_cites(make_gateway, fake_engine):
    srv, gw = make_gateway()
    resp = client(srv).chat.completions.create(model="raft", messages=[{"role": "user", "content":
                                               "What is the capital of Veloria?"}], max_tokens=32)
    body = last_engine_body(fake_engine)
    hits = [h.chunk for h in gw.retriever.search("What is the capital of Veloria?", k=2)]
    assert hits[0].doc_id == "geo"
    assert body["messages"] == build_messages("What is the capital of Veloria?", hits)
    assert body["model"] == "fake-model" and resp.model == "raft"
    cites = resp.model_extra["citations"]
    assert [c["doc_id"] for c in cites] == [h.doc_id for h in hits]
    assert set(cites[0]) == {"chunk_id", "doc_id", "title", "source", "score", "quotes"}
    answer = resp.choices[0].message.content
    quotes = extract_quotes(answer)
    assert quotes and cites[0]["quotes"] == quotes and quote_in(quotes[0], DOCS[0].text)
    assert cites[1]["quotes"] == []


def test_chat_stream_ends_with_citations(make_gateway):
    srv, _ = make_gateway()
    stream = client(srv).chat.completions.create(model="raft", stream=True, messages=[
        {"role": "user", "content": "capital of Veloria"}])
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "##begin_quote##" in text
    final = chunks[-1]
    assert final.choices == [] and final.model == "raft"
    assert final.model_extra["citations"][0]["doc_id"] == "geo"
    assert final.model_extra["citations"][0]["quotes"] == extract_quotes(text)


def test_completions_prompt_is_training_text_streamed_and_not(make_gateway, fake_engine):
    srv, gw = make_gateway()
    c = client(srv)
    resp = c.completions.create(model="raft", prompt="What glass does Lumen export?", max_tokens=16)
    hits = [h.chunk for h in gw.retriever.search("What glass does Lumen export?", k=2)]
    assert last_engine_body(fake_engine)["prompt"] == completion_prompt("What glass does Lumen export?", hits)
    assert resp.model_extra["citations"][0]["doc_id"] == "eco"
    chunks = list(c.completions.create(model="raft", prompt="What glass does Lumen export?", stream=True))
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices).startswith("The document says")
    assert chunks[-1].model_extra["citations"][0]["doc_id"] == "eco"


def test_retrieval_extension_field_controls_retrieval(make_gateway, fake_engine, caplog):
    srv, _ = make_gateway()
    c = client(srv)
    r = c.chat.completions.create(model="raft", messages=[{"role": "user", "content": "capital?"}],
                                  extra_body={"retrieval": {"enabled": False}})
    assert last_engine_body(fake_engine)["messages"] == [{"role": "user", "content": "capital?"}]
    assert r.model_extra["citations"] == []
    r = c.chat.completions.create(model="raft", messages=[{"role": "user", "content": "Veloria glass"}],
                                  extra_body={"retrieval": {"top_k": 1, "filter": {"doc_id": "geo"}, "mode": "bm25"}})
    assert [x["doc_id"] for x in r.model_extra["citations"]] == ["geo"]
    with caplog.at_level(logging.INFO, logger="raft.serve"):
        c.chat.completions.create(model="raft", messages=[{"role": "user", "content": "x"}],
                                  extra_body={"frobnicate": 1, "seed": 3, "quote_guard": False,
                                              "retrieval": {"bogus": 1}})
    assert "frobnicate" in caplog.text and "retrieval.bogus" in caplog.text
    body = last_engine_body(fake_engine)
    assert "frobnicate" not in body and body["seed"] == 3  # known OpenAI field forwarded, unknown dropped
    assert body["quote_guard"] is False  # and the batched engine's extension
    with pytest.raises(openai.BadRequestError):  # the extension itself is validated
        c.chat.completions.create(model="raft", messages=[{"role": "user", "content": "x"}],
                                  extra_body={"retrieval": {"top_k": 0}})


def test_client_system_message_kept_and_history_preserved(make_gateway, fake_engine):
    srv, _ = make_gateway()
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"}, {"role": "user", "content": "capital of Veloria"}]
    client(srv).chat.completions.create(model="raft", messages=msgs)
    sent = last_engine_body(fake_engine)["messages"]
    assert sent[:3] == msgs[:3] and not any(m["content"] == SYSTEM_PROMPT for m in sent)
    assert sent[3]["content"].startswith("<DOCUMENT>\nTitle: Geography\n")


def test_errors_have_openai_shape(make_gateway):
    srv, _ = make_gateway()
    url = srv.url + "/v1/chat/completions"
    r = httpx.post(url, content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert "JSON" in r.json()["error"]["message"]
    r = httpx.post(url, json={"model": "raft", "messages": "nope"})
    assert r.status_code == 400 and r.json()["error"]["param"].startswith("messages")
    r = httpx.post(url, json={"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = httpx.post(url, json={"model": "raft", "max_tokens": 2000,
                              "messages": [{"role": "user", "content": "word " * 400}]})
    err = r.json()["error"]
    assert r.status_code == 400 and err["code"] == "context_length_exceeded" and "2048" in err["message"]
    r = httpx.delete(srv.url + "/v1/documents/nope")
    assert r.status_code == 404 and r.json()["error"]["type"] == "invalid_request_error"


def test_engine_down_is_503_fast_never_a_hang(make_gateway):
    srv, _ = make_gateway(engine_url=f"http://127.0.0.1:{free_port()}")
    c = client(srv)
    for stream in (False, True):
        t0 = time.monotonic()
        with pytest.raises(openai.APIStatusError) as e:
            r = c.chat.completions.create(model="raft", stream=stream, messages=[{"role": "user", "content": "x"}])
            list(r) if stream else None
        assert e.value.status_code == 503 and time.monotonic() - t0 < 1.0
    h = httpx.get(srv.url + "/health")
    assert h.status_code == 503 and h.json()["engine"]["status"] == "down" and h.json()["index"]["status"] == "ok"


def test_auth_keys_tenants_and_models(make_gateway, fake_engine, monkeypatch):
    monkeypatch.setenv("RAFT_SERVE_API_KEYS", "k-globex:globex")
    srv, _ = make_gateway(auth={"keys": {"k-acme": "acme"}, "tenant_models": {"globex": ["nothing"]}})
    for key in (None, "wrong"):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        r = httpx.post(srv.url + "/v1/chat/completions", headers=headers,
                       json={"model": "raft", "messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    acme = client(srv, "k-acme")
    r = acme.chat.completions.create(model="raft", messages=[{"role": "user", "content": "snow lynx Veloria"}],
                                     extra_body={"retrieval": {"filter": {"tenant": "globex"}, "top_k": 5}})
    assert {c["doc_id"] for c in r.model_extra["citations"]} <= {"geo", "eco"}  # never globex's zoo
    assert [m.id for m in acme.models.list().data] == ["raft"]
    globex = client(srv, "k-globex")
    assert globex.models.list().data == []
    with pytest.raises(openai.NotFoundError):
        globex.chat.completions.create(model="raft", messages=[{"role": "user", "content": "x"}])


def test_live_ingest_and_delete_visible_to_next_request(make_gateway, monkeypatch):
    srv, gw = make_gateway(auth={"keys": {"k-acme": "acme", "k-globex": "globex"}})
    h = {"Authorization": "Bearer k-acme"}
    q = {"model": "raft", "messages": [{"role": "user", "content": "What colour is the Sael bridge?"}]}
    doc = {"id": "bridge", "title": "Bridge", "text": "The Sael bridge is painted orange.",
           "metadata": {"tenant": "globex"}}  # the tenant in the body is overwritten by the key's tenant
    r = httpx.post(srv.url + "/v1/documents", headers=h, json={"documents": [doc]})
    assert r.status_code == 200 and r.json()["chunks"] == 1
    r = httpx.post(srv.url + "/v1/chat/completions", headers=h, json=q).json()
    assert r["citations"][0]["doc_id"] == "bridge" and r["citations"][0]["quotes"]
    g = {"Authorization": "Bearer k-globex"}
    r = httpx.post(srv.url + "/v1/chat/completions", headers=g, json=q).json()
    assert "bridge" not in {c["doc_id"] for c in r["citations"]}
    assert httpx.delete(srv.url + "/v1/documents/bridge", headers=g).status_code == 404  # not globex's
    # ids are per tenant: globex's "bridge" is a second document, and acme's is untouched
    other = dict(doc, text="The Sael bridge of globex is painted green.")
    assert httpx.post(srv.url + "/v1/documents", headers=g, json={"documents": [other]}).status_code == 200
    r = httpx.post(srv.url + "/v1/chat/completions", headers=h, json=q).json()
    assert r["citations"][0]["doc_id"] == "bridge" and "orange" in r["choices"][0]["message"]["content"]
    r = httpx.post(srv.url + "/v1/chat/completions", headers=g, json=q).json()
    assert r["citations"][0]["doc_id"] == "bridge" and "green" in r["choices"][0]["message"]["content"]
    r = httpx.delete(srv.url + "/v1/documents/bridge", headers=h)
    assert r.status_code == 200 and r.json()["deleted"] is True
    r = httpx.post(srv.url + "/v1/chat/completions", headers=h, json=q).json()
    assert "bridge" not in {c["doc_id"] for c in r["citations"]}
    r = httpx.post(srv.url + "/v1/chat/completions", headers=g, json=q).json()
    assert r["citations"][0]["doc_id"] == "bridge"  # globex's own survives acme's delete


def test_models_health_and_metrics(make_gateway):
    srv, _ = make_gateway()
    c = client(srv)
    assert [m.id for m in c.models.list().data] == ["raft"]
    c.chat.completions.create(model="raft", messages=[{"role": "user", "content": "capital"}])
    httpx.post(srv.url + "/v1/chat/completions", json={"model": "nope", "messages": [{"role": "user", "content": "x"}]})
    h = httpx.get(srv.url + "/health").json()
    assert h["status"] == "ok" and h["engine"]["status"] == "ok" and h["index"]["chunks"] == 3
    m = httpx.get(srv.url + "/metrics").text
    for stage in ("search", "retrieval", "generation", "total", "embed"):
        assert f'raft_stage_latency_seconds_count{{stage="{stage}"}}' in m
    assert 'raft_stage_latency_seconds_count{stage="generation"} 1.0' in m
    assert 'raft_requests_total{endpoint="chat",status="200"} 1.0' in m
    assert 'raft_requests_total{endpoint="chat",status="404"} 1.0' in m


def test_estimated_context_check_leaves_borderline_requests_to_the_engine(make_gateway):
    """With no tokenizer the prompt count is an estimate: a prompt estimated just over the window is
    forwarded (the engine has the real count), one far over it is refused."""
    srv, _ = make_gateway()
    url = srv.url + "/v1/chat/completions"
    near = httpx.post(url, json={"model": "raft", "max_tokens": 16, "retrieval": {"enabled": False},
                                 "messages": [{"role": "user", "content": "abcd" * 2100}]})
    assert near.status_code == 200, near.text
    far = httpx.post(url, json={"model": "raft", "max_tokens": 16, "retrieval": {"enabled": False},
                                "messages": [{"role": "user", "content": "abcd" * 4000}]})
    assert far.status_code == 400 and far.json()["error"]["code"] == "context_length_exceeded"
