"""Property: across random tenants, documents (with list-valued `acl` metadata), queries and request
filters, no tenant ever receives a chunk of another tenant's document (citations and the prompt the
engine sees), and the filter is applied inside the search: a request gets min(top_k, the documents its
tenant and filter allow) hits, not fewer because another tenant's chunks took the places and were then
dropped by the gateway's own last check.

The same property runs on three retrievers behind the same gateway: the in-memory test retriever, a
real RetrievalIndex (bundled MiniLM, FAISS, SQLite: the filter SQL) and the Ray retriever (shard and
embedder actors, `slow`). Documents go in through the API, as tenants ingest them. The real indexes are
shared across examples (building one per example would cost seconds): each example has its own tenants
and titles, so the documents of earlier examples stay in the index as further tenants' documents that
must never show up.
"""

from __future__ import annotations

import itertools
import re

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from retrieval.types import Document
from serving.app import create_app
from serving.gateway import Gateway
from serving.testing.fake_engine import create_engine_app
from serving.testing.memory_retriever import InMemoryRetriever

from gateway_helpers import ServerThread, make_config

WORDS = ["lynx", "glass", "river", "tower", "amber", "heron", "salt", "mine", "bridge", "snow", "lumen", "sael"]
TENANTS = ["t0", "t1", "t2", "t3"]
ACLS = ["staff", "admin", "ops"]

text = st.lists(st.sampled_from(WORDS), min_size=1, max_size=8).map(" ".join)
acl = st.lists(st.sampled_from(ACLS), max_size=2, unique=True)
docs_st = st.lists(st.tuples(st.sampled_from(TENANTS), text, acl), min_size=1, max_size=12)
doc_ids = st.sampled_from([f"d{i}" for i in range(12)])
filters = st.one_of(st.none(), st.fixed_dictionaries({"tenant": st.sampled_from(TENANTS)}),
                    st.fixed_dictionaries({"tenant": st.lists(st.sampled_from(TENANTS), min_size=1)}),
                    st.fixed_dictionaries({"doc_id": doc_ids}),
                    st.fixed_dictionaries({"acl": st.sampled_from(ACLS)}),
                    st.fixed_dictionaries({"acl": st.lists(st.sampled_from(ACLS), min_size=1)}),
                    st.fixed_dictionaries({"doc_id": st.lists(doc_ids, min_size=1), "acl": st.sampled_from(ACLS)}))
queries = st.lists(st.tuples(st.sampled_from(TENANTS), text, filters, st.integers(1, 12),
                             st.sampled_from(["chat", "completions"])), min_size=1, max_size=6)
EXAMPLE = itertools.count()  # each example's tenants and titles are its own
TITLE = re.compile(r"Title: ([^\n]*)\n")


@pytest.fixture(scope="module")
def engine():
    srv = ServerThread(create_engine_app()).start()
    yield srv
    srv.stop()


def _values(v) -> list:
    return v if isinstance(v, list) else [v]


def allowed(docs, tenant: str, flt) -> set[str]:
    """The documents a request of `tenant` with request filter `flt` may get (the gateway replaces any
    `tenant` in the filter with the caller's), worked out here without the filter code under test."""
    flt = flt or {}
    out = set()
    for i, (t, _, acls) in enumerate(docs):
        if t != tenant:
            continue
        if "doc_id" in flt and f"d{i}" not in _values(flt["doc_id"]):
            continue
        if "acl" in flt and not set(acls) & set(_values(flt["acl"])):
            continue
        out.add(f"d{i}")
    return out


def run(retriever, engine, docs, qs) -> None:
    """Ingest `docs` through the API (each tenant its own), then check every query of `qs`."""
    ns = f"x{next(EXAMPLE)}"
    cfg = make_config(engine.url, auth={"keys": {f"key-{t}": f"{ns}{t}" for t in TENANTS}})
    gw = Gateway.from_config(cfg, engine.url, retriever)
    titles = {f"{ns}T{i}": f"d{i}" for i in range(len(docs))}
    with TestClient(create_app(gw)) as client:
        for tenant in sorted({t for t, _, _ in docs}):
            body = [{"id": f"d{i}", "title": f"{ns}T{i}", "text": txt, "metadata": {"acl": acls}}
                    for i, (t, txt, acls) in enumerate(docs) if t == tenant]
            r = client.post("/v1/documents", headers={"Authorization": f"Bearer key-{tenant}"},
                            json={"documents": body})
            assert r.status_code == 200, r.text
        for tenant, q, flt, k, endpoint in qs:
            body = {"model": "raft", "retrieval": {"filter": flt, "top_k": k}}
            if endpoint == "chat":
                body["messages"] = [{"role": "user", "content": q}]
            else:
                body["prompt"] = q
            r = client.post(f"/v1/{'chat/completions' if endpoint == 'chat' else 'completions'}", json=body,
                            headers={"Authorization": f"Bearer key-{tenant}"})
            assert r.status_code == 200, r.text
            may = allowed(docs, tenant, flt)
            cited = [c["doc_id"] for c in r.json()["citations"]]
            assert set(cited) <= may, (tenant, flt, cited, may)
            assert len(cited) == len(set(cited)) == min(k, len(may)), (tenant, flt, k, cited, may)
            sent = httpx.get(engine.url + "/_last").json()
            shown = "\n".join([sent.get("prompt") or ""] + [m["content"] for m in sent.get("messages") or []
                                                          if isinstance(m.get("content"), str)])
            # every document in the prompt is one of this example's, and one this request may see
            assert {titles.get(t, t) for t in TITLE.findall(shown)} <= may, (tenant, TITLE.findall(shown))


SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@settings(max_examples=60, **SETTINGS)
@given(docs=docs_st, qs=queries)
def test_no_tenant_sees_another_tenants_chunk(engine, docs, qs):
    run(InMemoryRetriever(), engine, docs, qs)


@settings(max_examples=10, **SETTINGS)
@given(docs=docs_st, qs=queries)
def test_no_tenant_sees_another_tenants_chunk_real_index(engine, real_index_retriever, docs, qs):
    """The same property on the real RetrievalIndex: the filter SQL, the dense and BM25 paths."""
    run(real_index_retriever, engine, docs, qs)


@pytest.mark.slow
@settings(max_examples=5, **SETTINGS)
@given(docs=docs_st, qs=queries)
def test_no_tenant_sees_another_tenants_chunk_ray_retriever(engine, ray_retriever, docs, qs):
    """The same property on the Ray retriever: two shard actors merging filtered results, writes through
    the writer actor."""
    run(ray_retriever, engine, docs, qs)


def _seed_index(out, embedder_path) -> str:
    from retrieval.config import IndexConfig
    from retrieval.index import RetrievalIndex

    seed = [Document("seed", "An unrelated seed document about glass.", "Seed", "", {"tenant": "nobody"})]
    RetrievalIndex.build(seed, out, IndexConfig(embedder=embedder_path)).close()
    return str(out)


@pytest.fixture(scope="module")
def real_index_retriever(tmp_path_factory, embedder_path):
    from serving.retriever import IndexRetriever

    r = IndexRetriever.open(_seed_index(tmp_path_factory.mktemp("tidx") / "index", embedder_path))
    yield r
    r.close()


@pytest.fixture(scope="module")
def ray_retriever(ray_local, tmp_path_factory, embedder_path):
    from serving.retriever import RayRetrieverAdapter

    r = RayRetrieverAdapter.open(_seed_index(tmp_path_factory.mktemp("tray") / "index", embedder_path),
                                 num_shards=2)
    yield r
    r.close()
