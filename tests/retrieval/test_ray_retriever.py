import asyncio

import numpy as np
import pytest

from retrieval.errors import RetrievalError
from retrieval.index import RetrievalIndex
from retrieval.types import Document

QUERIES = ["Which island is the largest in the Veloria chain?", "What does Veloria export?",
           "Who governs the islands?"]


def _ids(hits):
    return [h.chunk.chunk_id for h in hits]


def _same(got, want) -> bool:
    """Same chunks in the same order, scores equal up to the ONNX/torch embedders' float noise."""
    return _ids(got) == _ids(want) and all(abs(g.score - w.score) < 1e-4 for g, w in zip(got, want))


@pytest.mark.parametrize(("num_shards", "backend", "want_backend"), [(2, "auto", "onnx"), (3, "torch", "torch")])
def test_ray_retriever_matches_local_search(ray_local, built_index, num_shards, backend, want_backend):
    from retrieval.ray_retriever import RayRetriever

    local = RetrievalIndex.open(built_index)
    r = RayRetriever(built_index, num_shards=num_shards, num_embedders=1, embed_backend=backend)
    try:
        # the setting reaches the actors, and both backends give local search's (torch) results
        assert r.embed_backends() == [want_backend]
        assert len(r) == len(local)
        for mode in ("dense", "bm25", "hybrid"):
            for flt in (None, {"tenant": "globex"}):
                got = r.search_batch(QUERIES, k=5, mode=mode, filter=flt)
                want = local.search_batch(QUERIES, k=5, mode=mode, filter=flt)
                assert all(_same(g, w) for g, w in zip(got, want)) and len(got) == len(want), (mode, flt)
        hits = asyncio.run(r.asearch(QUERIES[0], k=3, mode="hybrid"))
        assert _same(hits, local.search(QUERIES[0], k=3))
        assert hits[0].chunk.text and hits[0].chunk.doc_id == "veloria_geography.md"
    finally:
        r.shutdown()


def test_ray_retriever_live_add_delete(ray_local, index_copy):
    from retrieval.ray_retriever import RayRetriever

    r = RayRetriever(index_copy, num_shards=2)
    try:
        n0 = len(r)
        ids = r.add_documents([Document("z.md", "The Zorblat festival of lanterns happens in spring.")])
        assert len(r) == n0 + len(ids)
        assert r.search("Zorblat lanterns", k=1, mode="dense")[0].chunk.doc_id == "z.md"
        assert sorted(c.chunk_id for c in r.chunks_for_doc("z.md")) == sorted(ids)  # exact, from the store
        assert r.delete_documents(["z.md"]) == len(ids)
        assert r.chunks_for_doc("z.md") == []
        assert "z.md" not in {h.chunk.doc_id for h in r.search("Zorblat lanterns", k=20)}
        assert len(RetrievalIndex.open(index_copy)) == n0
    finally:
        r.shutdown()


def test_ray_data_build_matches_local_vectors(ray_local, tmp_path, tenant_docs, small_config, built_index):
    cfg = small_config.model_copy(update={"ray": True, "ray_actors": 1})
    idx = RetrievalIndex.build(tenant_docs[:3], tmp_path / "rayidx", cfg)
    assert idx.build_summary["embedded"] == idx.build_summary["chunks"] > 0
    local = RetrievalIndex.open(built_index)
    q = idx.embed(["largest island"])
    a = idx.search_vectors(q, k=3)[0]
    b = local.search_vectors(q, k=3, filter={"doc_id": [d.doc_id for d in tenant_docs[:3]]})[0]
    assert [h.chunk.chunk_id for h in a] == [h.chunk.chunk_id for h in b]
    assert [round(h.score, 4) for h in a] == [round(h.score, 4) for h in b]


def test_an_embedder_actor_holds_the_model_and_none_of_the_index(built_index):
    """EmbedServer reads the manifest only: no store opened, no vectors loaded (at 1M chunks each embedder
    actor would otherwise hold its own copy of the index), and its vectors are the index's."""
    import os

    from retrieval.ray_retriever import EmbedServer

    def open_index_files() -> set[str]:
        here = set()
        for fd in os.listdir("/proc/self/fd"):
            try:
                here.add(os.readlink(f"/proc/self/fd/{fd}"))
            except OSError:
                pass
        return {f for f in here if f.startswith(str(built_index.resolve()) + "/")}

    before = open_index_files()
    e = EmbedServer(str(built_index), None, "torch")
    assert open_index_files() == before and not hasattr(e, "idx")
    local = RetrievalIndex.open(built_index)
    assert np.allclose(e.embed(QUERIES), local.embed(QUERIES), atol=1e-5)
    with pytest.raises(RetrievalError, match="was built with embedder"):
        EmbedServer(str(built_index), "some-other-model", "torch")


def test_a_shard_stops_at_its_time_budget(built_index):
    """The budget travels as seconds (shards may be on another node) and stops the shard's search."""
    from retrieval.filters import normalize_filter
    from retrieval.ray_retriever import ShardServer

    shard = ShardServer(built_index, 0, 1, None)
    flt = normalize_filter(None)
    got = shard.search(None, QUERIES, 3, "bm25", flt, 3, budget_s=60.0)
    assert all(o["bm25"] for o in got)  # within its budget the shard answers
    with pytest.raises(TimeoutError):
        shard.search(None, QUERIES, 3, "bm25", flt, 3, budget_s=-1.0)  # the caller's time is already up


def test_ray_asearch_past_its_timeout_raises_and_cancels(ray_local, built_index):
    from retrieval.ray_retriever import RayRetriever

    r = RayRetriever(built_index, num_shards=2)
    try:
        with pytest.raises(TimeoutError):
            asyncio.run(r.asearch(QUERIES[0], k=3, mode="bm25", timeout=0.0))
        with pytest.raises(TimeoutError):
            asyncio.run(r.asearch(QUERIES[0], k=3, mode="bm25", timeout=1e-6))  # the shards' budget passes
        assert asyncio.run(r.asearch(QUERIES[0], k=3, mode="hybrid", timeout=30.0))  # and it still serves
    finally:
        r.shutdown()
