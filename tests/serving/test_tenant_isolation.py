"""One tenant must never take retrieval down for the others: poisoned metadata, oversized and slow
queries, large ingests and same-id races, on the in-memory fake and on the real index."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest

from gateway_helpers import DOCS
from serving.testing.memory_retriever import InMemoryRetriever

KEYS = {"ka": "acme", "kg": "globex"}
ACME, GLOBEX = {"Authorization": "Bearer ka"}, {"Authorization": "Bearer kg"}


def chat(q: str, **retrieval) -> dict:
    return {"model": "raft", "messages": [{"role": "user", "content": q}], "retrieval": retrieval}


@pytest.fixture(params=["fake", "real"])
def any_retriever(request):
    """The in-memory fake and the real index (MiniLM + FAISS + SQLite)."""
    if request.param == "fake":
        return InMemoryRetriever(DOCS)
    return request.getfixturevalue("index_retriever")


@pytest.mark.parametrize("raw", ["NaN", "Infinity", "1e400"])
def test_poisoned_metadata_is_refused_and_every_tenant_keeps_searching(make_gateway, any_retriever, raw):
    srv, _ = make_gateway(retriever=any_retriever, auth={"keys": KEYS})
    body = '{"documents": [{"id": "poison", "text": "Poisoned lynx.", "metadata": {"score": %s}}]}' % raw
    r = httpx.post(srv.url + "/v1/documents", content=body,
                   headers={**ACME, "content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_metadata", r.text
    for key, doc in ((ACME, "geo"), (GLOBEX, "zoo")):
        for mode in ("dense", "hybrid", "bm25"):
            q = "snow lynx at night" if doc == "zoo" else "capital Lumen river"
            r = httpx.post(srv.url + "/v1/chat/completions", headers=key, json=chat(q, mode=mode, top_k=3))
            assert r.status_code == 200, r.text
            assert doc in {c["doc_id"] for c in r.json()["citations"]}
    h = httpx.get(srv.url + "/health")
    assert h.status_code == 200 and h.json()["index"]["status"] == "ok"


def test_out_of_range_filter_integer_is_400_on_the_real_index(make_gateway, index_retriever):
    srv, _ = make_gateway(retriever=index_retriever)
    r = httpx.post(srv.url + "/v1/chat/completions", json=chat("capital", filter={"n": 2 ** 64}))
    assert r.status_code == 400 and r.json()["error"]["param"] == "retrieval.filter", r.text


async def _timed(client: httpx.AsyncClient, method: str, url: str, **kw) -> tuple[int, float]:
    t0 = time.monotonic()
    r = await client.request(method, url, **kw)
    return r.status_code, time.monotonic() - t0


async def _other_tenant_while(attack, url: str, rounds: int = 8) -> list[tuple[str, int, float]]:
    """globex's health, models and retrieval requests, one after another while `attack` runs."""
    out = []
    async with httpx.AsyncClient(base_url=url, timeout=60) as c:
        task = asyncio.ensure_future(attack(c))
        await asyncio.sleep(0.3)  # the attack is under way
        for _ in range(rounds):
            for name, method, path, kw in (
                    ("health", "GET", "/health", {}),
                    ("models", "GET", "/v1/models", {"headers": GLOBEX}),
                    ("chat", "POST", "/v1/chat/completions", {"headers": GLOBEX, "json": chat("snow lynx")})):
                status, took = await _timed(c, method, path, **kw)
                out.append((name, status, took))
        await task
    return out


def test_oversized_queries_do_not_slow_another_tenant(make_gateway, index_retriever):
    """Six 1 MB retrieval queries at once (the report's freeze): refused before any work, while
    globex's health checks, model list and retrieval all stay fast."""
    srv, _ = make_gateway(retriever=index_retriever, auth={"keys": KEYS})
    big = " ".join(f"w{i}x" for i in range(200_000))  # ~1.3 MB of distinct words
    statuses: list[int] = []

    async def attack(c: httpx.AsyncClient) -> None:
        rs = await asyncio.gather(*(c.post("/v1/chat/completions", headers=ACME,
                                           json=chat(big, mode="hybrid")) for _ in range(6)))
        statuses.extend(r.status_code for r in rs)

    seen = asyncio.run(_other_tenant_while(attack, srv.url))
    assert all(status == 200 for _, status, _ in seen), seen
    slowest = max(took for _, _, took in seen)
    assert slowest < 2.0, f"globex waited {slowest:.2f} s: {seen}"
    assert statuses == [400] * 6


def test_a_slow_search_of_one_tenant_does_not_hold_up_another(make_gateway, index_retriever, monkeypatch):
    """acme's searches are slow (a 3 s BM25 stands in for a heavy query on a big index); globex's
    searches run beside them instead of queueing behind them."""
    import retrieval.index

    bm25 = retrieval.index.bm25_rows

    def slow_for_acme(snap, queries, k, flt, part=None, check=None):
        if flt.get("tenant") == ["acme"]:
            time.sleep(3.0)
        return bm25(snap, queries, k, flt, part, check)

    monkeypatch.setattr(retrieval.index, "bm25_rows", slow_for_acme)
    srv, _ = make_gateway(retriever=index_retriever, auth={"keys": KEYS}, retrieval={"timeout_s": 30})

    async def attack(c: httpx.AsyncClient) -> None:
        rs = await asyncio.gather(*(c.post("/v1/chat/completions", headers=ACME,
                                           json=chat(f"glass {i}", mode="bm25")) for i in range(3)))
        assert all(r.status_code == 200 for r in rs)

    seen = asyncio.run(_other_tenant_while(attack, srv.url, rounds=4))
    assert all(status == 200 for _, status, _ in seen), seen
    chats = [took for name, _, took in seen if name == "chat"]
    assert max(chats) < 1.5, f"globex's searches waited behind acme's: {chats}"


@pytest.mark.slow
def test_a_large_ingest_does_not_block_another_tenants_retrieval(make_gateway, index_retriever):
    """acme ingests a document of many chunks (each embedding slice made to last 1 s); globex's
    retrieval keeps answering meanwhile, waiting for one slice at most, and the document is searchable
    once the ingest returns."""
    idx = index_retriever.index
    idx.embed(["warm up"])
    embedder = idx.embedder
    encode = embedder.encode
    slices = []

    def slow_bulk(texts):  # every ingest slice sleeps; a query (one text) costs what it costs
        if len(texts) > 1:
            slices.append(len(texts))
            time.sleep(1.0)
        return encode(texts)

    embedder.encode = slow_bulk
    try:
        srv, _ = make_gateway(retriever=index_retriever, auth={"keys": KEYS})
        text = " ".join(f"Amber heron number {i} nests on glass tower {i % 7}." for i in range(500))
        done: list[tuple[int, float]] = []

        def ingest():
            t0 = time.monotonic()
            r = httpx.post(srv.url + "/v1/documents", headers=ACME, timeout=300,
                           json={"documents": [{"id": "herons", "text": text}]})
            done.append((r.status_code, time.monotonic() - t0))

        t = threading.Thread(target=ingest)
        t.start()
        time.sleep(0.5)
        took = []
        while t.is_alive() and len(took) < 10:
            t0 = time.monotonic()
            r = httpx.post(srv.url + "/v1/chat/completions", headers=GLOBEX, json=chat("snow lynx"),
                           timeout=60)
            took.append(time.monotonic() - t0)
            assert r.status_code == 200 and r.json()["citations"][0]["doc_id"] == "zoo"
        t.join(300)
    finally:
        embedder.encode = encode
    assert done and done[0][0] == 200 and len(slices) >= 8, (done, slices)
    # one slice (1 s + a few chunks) and its own work at most: nowhere near the whole ingest
    assert took and max(took) < done[0][1] / 3, f"globex waited {took} during a {done[0][1]:.1f} s ingest"
    r = httpx.post(srv.url + "/v1/chat/completions", headers=ACME, json=chat("amber heron glass tower"))
    assert "herons" in {c["doc_id"] for c in r.json()["citations"]}


@pytest.mark.parametrize("kind", ["fake", "real"])
def test_same_new_id_from_two_tenants_at_once_makes_two_documents(make_gateway, kind, request):
    """20 pairs: acme and globex create the same new id at the same moment. Both succeed, each keeps
    its own text under that id, and nothing tells either that the other used the id."""
    retriever = InMemoryRetriever(DOCS) if kind == "fake" else request.getfixturevalue("index_retriever")
    srv, _ = make_gateway(retriever=retriever, auth={"keys": KEYS})
    pairs = 20
    colour = {"acme": "crimson", "globex": "violet"}

    async def race():
        async with httpx.AsyncClient(base_url=srv.url, timeout=120) as c:
            posts = []
            for i in range(pairs):
                for key, tenant in ((ACME, "acme"), (GLOBEX, "globex")):
                    doc = {"id": f"kite{i}", "text": f"Kite {i} of {tenant} is painted {colour[tenant]}."}
                    posts.append(c.post("/v1/documents", headers=key, json={"documents": [doc]}))
            return await asyncio.gather(*posts)

    responses = asyncio.run(race())
    refused = [r.text for r in responses if r.status_code != 200]
    assert refused == [] and len(responses) == 2 * pairs, refused
    for key, tenant in ((ACME, "acme"), (GLOBEX, "globex")):
        for i in range(pairs):
            r = httpx.post(srv.url + "/v1/chat/completions", headers=key,
                           json=chat(f"kite {i} painted", filter={"doc_id": f"kite{i}"}, top_k=5))
            cites = r.json()["citations"]
            assert [c["doc_id"] for c in cites] == [f"kite{i}"], (tenant, i, cites)
            assert colour[tenant] in r.json()["choices"][0]["message"]["content"], (tenant, i)
    assert httpx.delete(srv.url + "/v1/documents/kite0", headers=ACME).json()["deleted"] is True
    r = httpx.post(srv.url + "/v1/chat/completions", headers=GLOBEX,
                   json=chat("kite 0 painted", filter={"doc_id": "kite0"}))
    assert [c["doc_id"] for c in r.json()["citations"]] == ["kite0"]
    assert httpx.delete(srv.url + "/v1/documents/kite0", headers=ACME).status_code == 404
