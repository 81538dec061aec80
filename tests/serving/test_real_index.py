"""The gateway over the real RetrievalIndex (bundled MiniLM, FAISS, SQLite): the engine receives
byte-for-byte the training text of the same example, live ingest/delete, stage metrics."""

from __future__ import annotations

import json

import httpx
import pytest
from gateway_helpers import build_tenant_index

from raft.prompt import completion_prompt, messages_from_record
from serving.retriever import IndexRetriever



@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, corpus_dir, embedder_path):
    return build_tenant_index(tmp_path_factory.mktemp("idx") / "index", corpus_dir, embedder_path, chunk_size=96)


@pytest.fixture
def real_retriever(index_dir, tmp_path):
    import shutil

    copy = tmp_path / "index"  # tests mutate the index: each gets its own copy
    shutil.copytree(index_dir, copy)
    r = IndexRetriever.open(str(copy))
    yield r
    r.close()


def record_for(question: str, chunks) -> dict:
    """A RAFT record (gorilla layout) showing `chunks` in order: what the dataset builder writes."""
    return {"question": question, "cot_answer": "x",
            "context": {"title": [[c.title for c in chunks]], "sentences": [[c.text for c in chunks]]}}


def test_engine_receives_the_training_text_of_the_same_example(make_gateway, fake_engine, real_retriever):
    srv, gw = make_gateway(retriever=real_retriever, retrieval={"top_k": 3, "mode": "hybrid"})
    q = "What is the capital of Veloria?"
    r = httpx.post(srv.url + "/v1/chat/completions",
                   json={"model": "raft", "messages": [{"role": "user", "content": q}]}).json()
    raw = httpx.get(fake_engine.url + "/_last").content
    sent = json.loads(raw)["messages"]
    chunks = real_retriever.index.get([c["chunk_id"] for c in r["citations"]])
    assert len(chunks) == 3
    training = messages_from_record(record_for(q, chunks), with_answer=False)
    assert sent == training
    # byte level: the engine's JSON carries exactly these strings
    assert json.dumps(training[1]["content"])[1:-1].encode() in raw

    r = httpx.post(srv.url + "/v1/completions", json={"model": "raft", "prompt": q}).json()
    chunks = real_retriever.index.get([c["chunk_id"] for c in r["citations"]])
    assert json.loads(httpx.get(fake_engine.url + "/_last").content)["prompt"] == completion_prompt(q, chunks)
    m = httpx.get(srv.url + "/metrics").text
    assert 'raft_stage_latency_seconds_count{stage="embed"} 2.0' in m  # both hybrid searches embedded the query


def test_tenant_scoping_and_live_ingest_on_real_index(make_gateway, real_retriever):
    srv, _ = make_gateway(retrieval={"top_k": 10}, retriever=real_retriever,
                          auth={"keys": {"ka": "acme", "kg": "globex"}})
    ka, kg = {"Authorization": "Bearer ka"}, {"Authorization": "Bearer kg"}
    q = {"model": "raft", "messages": [{"role": "user", "content": "Which bird nests on the glass towers?"}],
         "retrieval": {"filter": {"tenant": ["acme", "globex"]}}}
    for key, tenant in ((ka, "acme"), (kg, "globex")):
        cites = httpx.post(srv.url + "/v1/chat/completions", headers=key, json=q).json()["citations"]
        assert cites
        got = {c.metadata["tenant"] for c in real_retriever.index.get([c["chunk_id"] for c in cites])}
        assert got == {tenant}
    doc = {"id": "towers", "title": "Towers", "text": "The glass towers of Lumen are home to the amber heron."}
    assert httpx.post(srv.url + "/v1/documents", headers=kg, json={"documents": [doc]}).status_code == 200
    cites = httpx.post(srv.url + "/v1/chat/completions", headers=kg, json=q).json()["citations"]
    assert "towers" in {c["doc_id"] for c in cites}
    cites = httpx.post(srv.url + "/v1/chat/completions", headers=ka, json=q).json()["citations"]
    assert "towers" not in {c["doc_id"] for c in cites}
    assert httpx.delete(srv.url + "/v1/documents/towers", headers=ka).status_code == 404
    assert httpx.delete(srv.url + "/v1/documents/towers", headers=kg).json()["deleted"] is True
    cites = httpx.post(srv.url + "/v1/chat/completions", headers=kg, json=q).json()["citations"]
    assert "towers" not in {c["doc_id"] for c in cites}


def test_bad_filter_is_a_400_not_a_500(make_gateway, real_retriever):
    srv, _ = make_gateway(retriever=real_retriever)
    r = httpx.post(srv.url + "/v1/chat/completions", json={
        "model": "raft", "messages": [{"role": "user", "content": "x"}], "retrieval": {"filter": {"a": {"b": 1}}}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "retrieval.filter"




def test_concurrent_searches_are_batched_and_each_gets_its_own_hits(real_retriever):
    import asyncio

    qs = ["capital of Veloria", "glass exports", "snow lynx", "railway", "parliament", "festival"] * 3
    flts = [None, {"tenant": "acme"}, None]

    async def run():
        return await asyncio.gather(*(real_retriever.asearch(q, 3, "hybrid", flts[i % 3]) for i, q in enumerate(qs)))

    results = asyncio.run(run())
    for i, (q, res) in enumerate(zip(qs, results)):
        alone = real_retriever.index.search(q, k=3, mode="hybrid", filter=flts[i % 3])
        assert [h.chunk.chunk_id for h in res.hits] == [h.chunk.chunk_id for h in alone]
    assert max(r.timings["batch"] for r in results) > 1  # queued queries went together


def test_server_timing_header_reports_the_retrieval_hop(make_gateway, real_retriever):
    srv, _ = make_gateway(retriever=real_retriever)
    r = httpx.post(srv.url + "/v1/chat/completions", json={"model": "raft", "messages": [{"role": "user", "content": "x"}]})
    stages = dict(p.strip().split(";dur=") for p in r.headers["server-timing"].split(","))
    assert set(stages) == {"retrieval", "generation", "total"} and float(stages["retrieval"]) > 0
