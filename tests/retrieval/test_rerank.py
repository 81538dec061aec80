"""The cross-encoder rerank stage in RetrievalIndex.search, with a tiny random cross-encoder built in the
test (tests/tiny_cross_encoder.py): it re-scores the search's first `candidates` hits, after filters and
tenants, and keeps the best k in the model's order."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.errors import RetrievalError
from retrieval.index import RetrievalIndex
from retrieval.rerank import RERANK_META, RerankConfig, Reranker, fuse_scores, pair_text

QUERIES = ["Which island is the largest in the Veloria chain?", "What does Veloria export?",
           "Who governs the islands?"]


@pytest.fixture(scope="module")
def index(built_index):
    idx = RetrievalIndex.open(built_index)
    yield idx
    idx.close()


def _ids(hits):
    return [h.chunk.chunk_id for h in hits]


def _model_order(reranker, query, hits, k):
    """What reranking must return: the candidates sorted by the model's scores mixed with the search's rank
    (ties: search order)."""
    s = fuse_scores(reranker.score_pairs([(query, pair_text(h.chunk)) for h in hits]), reranker.fusion_weight)
    order = np.argsort(-s, kind="stable")[:k]
    return [hits[i].chunk.chunk_id for i in order], [float(s[i]) for i in order]


def test_rerank_reorders_the_search_candidates_by_the_model(index, tiny_cross_encoder):
    r = Reranker(str(tiny_cross_encoder), candidates=12)
    for mode in ("hybrid", "dense", "bm25"):
        for q in QUERIES:
            cands = index.search(q, k=12, mode=mode)
            got = index.search(q, k=4, mode=mode, rerank=r)
            want_ids, want_scores = _model_order(r, q, cands, 4)
            assert _ids(got) == want_ids, (mode, q)
            assert [h.score for h in got] == pytest.approx(want_scores, abs=1e-5)
    # the stage changes the answer (the random model disagrees with hybrid search somewhere)
    assert any(_ids(index.search(q, k=4, rerank=r)) != _ids(index.search(q, k=4)) for q in QUERIES)


def test_batch_equals_one_by_one_and_k_above_candidates(index, tiny_cross_encoder):
    r = Reranker(str(tiny_cross_encoder), candidates=3)
    batch = index.search_batch(QUERIES, k=5, rerank=r)
    for q, hits in zip(QUERIES, batch):
        assert _ids(hits) == _ids(index.search(q, k=5, rerank=r))
        # k above candidates: k hits are taken out of the search, all of them re-scored
        assert len(hits) == 5 and set(_ids(hits)) == set(_ids(index.search(q, k=5)))


@pytest.mark.parametrize("flt", [{"tenant": "globex"}, {"tenant": "acme", "acl": "admin"},
                                 {"doc_id": "veloria_geography.md"}])
def test_filters_and_tenants_apply_before_rerank(index, tiny_cross_encoder, tenant_docs, flt):
    """Only chunks the filter allows are candidates: the reranked hits are the filtered search's first
    candidates in the model's order, never another tenant's chunk promoted by the cross-encoder."""
    r = Reranker(str(tiny_cross_encoder), candidates=10)
    meta = {d.doc_id: d.metadata for d in tenant_docs}
    for q in QUERIES:
        cands = index.search(q, k=10, filter=flt)
        got = index.search(q, k=3, filter=flt, rerank=r)
        assert _ids(got) == _model_order(r, q, cands, 3)[0]
        for h in got:
            m = dict(meta[h.chunk.doc_id], doc_id=h.chunk.doc_id)
            assert all(v in m[key] if isinstance(m[key], list) else m[key] == v for key, v in flt.items()), h
    assert index.search(QUERIES[0], k=3, filter={"tenant": "nobody"}, rerank=r) == []


def test_fusion_weight_mixes_the_model_with_the_search_rank(index, tiny_cross_encoder, tmp_path):
    """Weight 1 is the model's order, 0 the search's order unchanged, and None reads the weight that
    `raft rerank train` saved beside the model."""
    import json
    import shutil

    assert list(fuse_scores(np.array([0.2, 0.9, 0.5]), 1.0)) == pytest.approx([0.0, 1.0, 3 / 7])
    assert list(fuse_scores(np.array([0.2, 0.9, 0.5]), 0.0)) == pytest.approx([1.0, 0.5, 0.0])
    assert list(fuse_scores(np.array([0.2, 0.9, 0.5]), 0.5)) == pytest.approx([0.5, 0.75, 3 / 14])
    alone = Reranker(str(tiny_cross_encoder), candidates=12)
    assert alone.fusion_weight == 1.0  # a model without raft_rerank.json: the cross-encoder alone
    for q in QUERIES:
        assert _ids(index.search(q, k=6, rerank=Reranker(str(tiny_cross_encoder), 12, weight=0.0))) == \
            _ids(index.search(q, k=6))
    assert any(_ids(index.search(q, k=6, rerank=alone)) != _ids(index.search(q, k=6)) for q in QUERIES)
    saved = tmp_path / "saved"
    shutil.copytree(tiny_cross_encoder, saved)
    (saved / RERANK_META).write_text(json.dumps({"fusion": {"weight": 0.0}}))
    trained = Reranker(str(saved), candidates=12)
    assert trained.fusion_weight == 0.0
    assert all(_ids(index.search(q, k=6, rerank=trained)) == _ids(index.search(q, k=6)) for q in QUERIES)
    assert Reranker(str(saved), candidates=12, weight=0.3).fusion_weight == 0.3  # an explicit weight wins
    half = Reranker(str(tiny_cross_encoder), candidates=12, weight=0.5)
    for q in QUERIES:
        assert _ids(index.search(q, k=6, rerank=half)) == _model_order(half, q, index.search(q, k=12), 6)[0]
    with pytest.raises(RetrievalError, match="rerank weight must be between 0 and 1 .* got 1.5"):
        Reranker(str(tiny_cross_encoder), weight=1.5)
    with pytest.raises(Exception, match="weight"):
        RerankConfig(model="x", weight=-0.1)


def test_reranker_config_and_errors(tmp_path, embedder_path, tiny_cross_encoder):
    assert Reranker.from_config(RerankConfig()) is None  # off by default
    r = Reranker.from_config({"model": str(tiny_cross_encoder), "candidates": 7})
    assert r.candidates == 7 and r.config().model == str(tiny_cross_encoder)
    for bad in (0, 1001, True):  # the config's own bounds: a Reranker is turned into a RerankConfig for Ray
        with pytest.raises(RetrievalError, match=f"candidates must be an integer from 1 to 1000, got {bad}"):
            Reranker(str(tiny_cross_encoder), candidates=bad)
    # the bundled embedder has no classification head: its scores would be random
    with pytest.raises(RetrievalError, match="not a cross-encoder .*BertModel.*raft rerank train"):
        Reranker(embedder_path).load()
    with pytest.raises(RetrievalError, match=f"rerank model '{tmp_path / 'nope'}' cannot be loaded"):
        Reranker(str(tmp_path / "nope")).load()
    with pytest.raises(Exception, match="candidates"):
        RerankConfig(candidates=0)


def test_rerank_respects_the_deadline(index, tiny_cross_encoder):
    import time

    r = Reranker(str(tiny_cross_encoder), candidates=5)
    with pytest.raises(TimeoutError):
        index.search(QUERIES[0], k=3, rerank=r, deadline_at=time.monotonic() - 1)


@pytest.mark.slow
def test_ray_retriever_reranks_in_its_own_actor_pool(ray_local, built_index, index, tiny_cross_encoder):
    """The Ray retriever's rerank actors give local search's reranked results, filters first."""
    import asyncio

    from retrieval.ray_retriever import RayRetriever

    local = Reranker(str(tiny_cross_encoder), candidates=8)
    r = RayRetriever(built_index, num_shards=2, rerank={"model": str(tiny_cross_encoder), "candidates": 8},
                     reranker_cpus=0.5)
    try:
        assert len(r.rerankers) == 1
        for flt in (None, {"tenant": "globex"}):
            got = r.search_batch(QUERIES, k=3, filter=flt)  # rerankers present: on unless turned off
            want = index.search_batch(QUERIES, k=3, filter=flt, rerank=local)
            assert [_ids(g) for g in got] == [_ids(w) for w in want], flt
            assert all(g.score == pytest.approx(w.score, abs=1e-4) for gs, ws in zip(got, want)
                       for g, w in zip(gs, ws))
            plain = r.search_batch(QUERIES, k=3, filter=flt, rerank=False)
            assert [_ids(p) for p in plain] == [_ids(w) for w in index.search_batch(QUERIES, k=3, filter=flt)]
        hits, timings = asyncio.run(r.asearch_timed(QUERIES[0], k=3, filter={"tenant": "acme"}, rerank=True))
        assert _ids(hits) == _ids(index.search(QUERIES[0], k=3, filter={"tenant": "acme"}, rerank=local))
        assert set(timings) == {"search", "rerank"} and timings["rerank"] > 0
    finally:
        r.shutdown()
    bare = RayRetriever(built_index, num_shards=1)
    try:
        with pytest.raises(RetrievalError, match="has no reranker"):
            bare.search(QUERIES[0], k=3, rerank=True)
    finally:
        bare.shutdown()
    # GPUs the cluster lacks: an error at once, not actors that are never scheduled (a wait without end)
    with pytest.raises(RetrievalError, match=r"reranker_gpus=1 x 64 reranker\(s\) ask for 64 GPU\(s\)"):
        RayRetriever(built_index, num_shards=1, rerank={"model": str(tiny_cross_encoder)}, num_rerankers=64,
                     reranker_gpus=1)


def test_index_search_cli_reranks(built_index, index, tiny_cross_encoder, capsys):
    import json

    from raft.cli import main

    q = QUERIES[1]
    assert main(["index", "search", str(built_index), q, "-k", "3", "--rerank", str(tiny_cross_encoder),
                 "--rerank-candidates", "9", "--filter", "tenant=acme", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["results"]
    want = index.search(q, k=3, filter={"tenant": "acme"}, rerank=Reranker(str(tiny_cross_encoder), candidates=9))
    assert [r["chunk_id"] for r in rows] == _ids(want)
    for bad in ("0", "1001"):
        assert main(["index", "search", str(built_index), q, "--rerank", str(tiny_cross_encoder),
                     "--rerank-candidates", bad]) == 2
        assert f"--rerank-candidates must be an integer from 1 to 1000, got {bad}" in capsys.readouterr().err
    # weight 0: the search's own order
    assert main(["index", "search", str(built_index), q, "-k", "3", "--rerank", str(tiny_cross_encoder),
                 "--rerank-weight", "0", "--json"]) == 0
    assert [r["chunk_id"] for r in json.loads(capsys.readouterr().out)["results"]] == _ids(index.search(q, k=3))
    assert main(["index", "search", str(built_index), q, "--rerank", str(tiny_cross_encoder),
                 "--rerank-weight", "2"]) == 2
    assert "rerank weight must be between 0 and 1" in capsys.readouterr().err
