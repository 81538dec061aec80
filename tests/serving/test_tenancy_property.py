"""Property: across random tenants, documents, queries and request filters, no tenant ever receives
a chunk of another tenant's document (citations and the prompt the engine sees)."""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from retrieval.types import Document
from serving.app import create_app
from serving.gateway import Gateway
from serving.testing.memory_retriever import InMemoryRetriever

from gateway_helpers import ServerThread, make_config
from serving.testing.fake_engine import create_engine_app

WORDS = ["lynx", "glass", "river", "tower", "amber", "heron", "salt", "mine", "bridge", "snow", "lumen", "sael"]
TENANTS = ["t0", "t1", "t2", "t3"]

text = st.lists(st.sampled_from(WORDS), min_size=1, max_size=8).map(" ".join)
docs_st = st.lists(st.tuples(st.sampled_from(TENANTS), text), min_size=1, max_size=12)
filters = st.one_of(st.none(), st.fixed_dictionaries({"tenant": st.sampled_from(TENANTS)}),
                    st.fixed_dictionaries({"tenant": st.lists(st.sampled_from(TENANTS), min_size=1)}),
                    st.fixed_dictionaries({"doc_id": st.sampled_from([f"d{i}" for i in range(12)])}))
queries = st.lists(st.tuples(st.sampled_from(TENANTS), text, filters, st.integers(1, 12),
                             st.sampled_from(["chat", "completions"])), min_size=1, max_size=6)


@pytest.fixture(scope="module")
def engine():
    srv = ServerThread(create_engine_app()).start()
    yield srv
    srv.stop()


def owner_map(docs):
    return {f"d{i}": t for i, (t, _) in enumerate(docs)}


def check(client, engine, docs, qs):
    owners = owner_map(docs)
    for tenant, q, flt, k, endpoint in qs:
        body = {"model": "raft", "retrieval": {"filter": flt, "top_k": k}}
        if endpoint == "chat":
            body["messages"] = [{"role": "user", "content": q}]
        else:
            body["prompt"] = q
        r = client.post(f"/v1/{'chat/completions' if endpoint == 'chat' else 'completions'}", json=body,
                        headers={"Authorization": f"Bearer key-{tenant}"})
        assert r.status_code == 200, r.text
        cited = [c["doc_id"] for c in r.json()["citations"]]
        assert all(owners[d] == tenant for d in cited), (tenant, cited)
        sent = httpx.get(engine.url + "/_last").json()
        shown = json.dumps(sent)
        for i, (t, txt) in enumerate(docs):  # nothing only another tenant owns leaked into the prompt
            if t != tenant and not any(tt == tenant and tx == txt for tt, tx in docs):
                assert f"Title: T{i}\\n" not in shown


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(docs=docs_st, qs=queries)
def test_no_tenant_sees_another_tenants_chunk(engine, docs, qs):
    r = InMemoryRetriever([Document(f"d{i}", txt, f"T{i}", "", {"tenant": t}) for i, (t, txt) in enumerate(docs)])
    cfg = make_config(engine.url, auth={"keys": {f"key-{t}": t for t in TENANTS}})
    gw = Gateway.from_config(cfg, engine.url, r)
    with TestClient(create_app(gw)) as client:
        check(client, engine, docs, qs)


@pytest.mark.slow
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(docs=docs_st, qs=queries)
def test_no_tenant_sees_another_tenants_chunk_real_index(engine, real_index_retriever, docs, qs):
    """The same property on the real RetrievalIndex, documents ingested live through the API."""
    cfg = make_config(engine.url, auth={"keys": {f"key-{t}": t for t in TENANTS}})
    gw = Gateway.from_config(cfg, engine.url, real_index_retriever)
    with TestClient(create_app(gw)) as client:
        for i, (t, txt) in enumerate(docs):
            r = client.post("/v1/documents", headers={"Authorization": f"Bearer key-{t}"},
                            json={"documents": [{"id": f"d{i}", "title": f"T{i}", "text": txt}]})
            assert r.status_code == 200, r.text
        try:
            check(client, engine, docs, qs)
        finally:
            for i, (t, _) in enumerate(docs):
                client.delete(f"/v1/documents/d{i}", headers={"Authorization": f"Bearer key-{t}"})


@pytest.fixture(scope="module")
def real_index_retriever(tmp_path_factory, embedder_path):
    from retrieval.config import IndexConfig
    from retrieval.index import RetrievalIndex
    from serving.retriever import IndexRetriever

    seed = [Document("seed", "An unrelated seed document.", "Seed", "", {"tenant": "nobody"})]
    out = tmp_path_factory.mktemp("tidx") / "index"
    RetrievalIndex.build(seed, out, IndexConfig(embedder=embedder_path)).close()
    r = IndexRetriever.open(str(out))
    yield r
    r.close()
