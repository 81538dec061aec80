"""The rerank stage behind the gateway: the request extension `retrieval.rerank`, the server default
(serve.retrieval.rerank.enabled), tenant scoping before the cross-encoder, and the `rerank` stage in
/metrics and Server-Timing. Real index (bundled MiniLM) and a tiny random cross-encoder built in the test."""

from __future__ import annotations

import httpx
import pytest
from gateway_helpers import build_tenant_index

from retrieval.rerank import Reranker
from serving.retriever import IndexRetriever

Q = "Which island is the largest in the Veloria chain?"


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, corpus_dir, embedder_path):
    return build_tenant_index(tmp_path_factory.mktemp("idx") / "index", corpus_dir, embedder_path, chunk_size=64)


@pytest.fixture
def reranking(index_dir, tiny_cross_encoder):
    r = IndexRetriever.open(str(index_dir), reranker=Reranker(str(tiny_cross_encoder), candidates=10))
    yield r
    r.close()


def _ask(srv, body_extra=None, headers=None):
    body = {"model": "raft", "messages": [{"role": "user", "content": Q}], **(body_extra or {})}
    return httpx.post(srv.url + "/v1/chat/completions", json=body, headers=headers, timeout=60)


def _cited(resp) -> list[str]:
    assert resp.status_code == 200, resp.text
    return [c["chunk_id"] for c in resp.json()["citations"]]


def _ids(hits) -> list[str]:
    return [h.chunk.chunk_id for h in hits]


def test_request_turns_rerank_on_and_the_stage_is_timed(make_gateway, reranking, tiny_cross_encoder):
    rr_cfg = {"model": str(tiny_cross_encoder), "candidates": 10}
    srv, _ = make_gateway(retriever=reranking, retrieval={"top_k": 3, "rerank": rr_cfg})
    idx, reranker = reranking.index, Reranker(str(tiny_cross_encoder), candidates=10)
    plain = _ask(srv)
    assert _cited(plain) == _ids(idx.search(Q, k=3))  # off unless asked (rerank.enabled is false)
    assert "rerank" not in plain.headers["server-timing"]
    on = _ask(srv, {"retrieval": {"rerank": True}})
    assert _cited(on) == _ids(idx.search(Q, k=3, rerank=reranker)) != _cited(plain)
    assert "rerank;dur=" in on.headers["server-timing"]
    m = httpx.get(srv.url + "/metrics").text
    assert 'raft_stage_latency_seconds_count{stage="rerank"} 1.0' in m
    assert _cited(_ask(srv, {"retrieval": {"rerank": False}})) == _cited(plain)


def test_server_default_and_tenant_scoping_before_rerank(make_gateway, reranking, tiny_cross_encoder):
    rr_cfg = {"model": str(tiny_cross_encoder), "candidates": 10, "enabled": True}
    srv, _ = make_gateway(retriever=reranking, retrieval={"top_k": 3, "rerank": rr_cfg},
                          auth={"keys": {"ka": "acme", "kg": "globex"}})
    idx, reranker = reranking.index, Reranker(str(tiny_cross_encoder), candidates=10)
    for key, tenant in (("ka", "acme"), ("kg", "globex")):
        got = _cited(_ask(srv, headers={"Authorization": f"Bearer {key}"}))  # reranked: the server default
        # the tenant's own candidates, reranked: another tenant's chunk never reaches the cross-encoder
        assert got == _ids(idx.search(Q, k=3, filter={"tenant": tenant}, rerank=reranker))
        assert {c.metadata["tenant"] for c in idx.get(got)} == {tenant}
        off = _cited(_ask(srv, {"retrieval": {"rerank": False}}, headers={"Authorization": f"Bearer {key}"}))
        assert off == _ids(idx.search(Q, k=3, filter={"tenant": tenant}))


def test_rerank_without_a_reranker_is_a_clear_400(make_gateway, index_retriever):
    srv, _ = make_gateway(retriever=index_retriever)
    r = _ask(srv, {"retrieval": {"rerank": True}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "retrieval.rerank"
    assert "serve.retrieval.rerank.model" in r.json()["error"]["message"]
    r = _ask(srv, {"retrieval": {"rerank": "yes"}})  # strict types, as the rest of the extension
    assert r.status_code == 400


def test_config_checks_rerank_settings():
    from serving.config import ServeConfig

    with pytest.raises(ValueError) as e:
        ServeConfig.model_validate({"engine": {"kind": "openai", "url": "http://x/v1"},
                                    "retrieval": {"backend": "local", "index_dir": "idx",
                                                  "rerank": {"enabled": True, "candidates": 0}}})
    assert "candidates" in str(e.value)
    with pytest.raises(ValueError, match="rerank.enabled is true but retrieval.rerank.model is not set"):
        ServeConfig.model_validate({"engine": {"kind": "openai", "url": "http://x/v1"},
                                    "retrieval": {"backend": "local", "index_dir": "idx",
                                                  "rerank": {"enabled": True}}})


def test_serve_rerank_settings_reach_the_ray_actors_as_a_plain_rerank_config(tiny_cross_encoder):
    """serve's RerankSettings has `enabled`, which the reranker actors' RerankConfig does not take."""
    from retrieval.ray_retriever import rerank_config
    from retrieval.rerank import RerankConfig
    from serving.config import RerankSettings

    got = rerank_config(RerankSettings(model=str(tiny_cross_encoder), candidates=7, enabled=True))
    assert type(got) is RerankConfig and got.model == str(tiny_cross_encoder) and got.candidates == 7
    assert RerankConfig.model_validate(got.model_dump()) == got  # what the actor rebuilds from
    assert rerank_config(None).model is None
    with pytest.raises(ValueError, match="candidatez"):
        rerank_config({"candidatez": 3})  # a dict keeps the typo check


@pytest.mark.slow
def test_ray_backend_reranks_behind_the_gateway(ray_local, make_gateway, reranking, index_dir, tiny_cross_encoder):
    """backend `ray` as `raft serve` opens it (RetrievalSettings -> open_retriever): the reranker actors give
    the local stage's order, after the tenant filter, and the stage is timed."""
    from serving.config import RetrievalSettings
    from serving.retriever import open_retriever

    rr_cfg = {"model": str(tiny_cross_encoder), "candidates": 10}
    settings = RetrievalSettings(backend="ray", index_dir=str(index_dir), num_shards=2, rerank=rr_cfg,
                                 reranker_cpus=0.25)
    on_ray = open_retriever(settings)
    try:
        srv, _ = make_gateway(retriever=on_ray, retrieval={"top_k": 3, "rerank": rr_cfg},
                              auth={"keys": {"ka": "acme"}})
        idx, reranker = reranking.index, Reranker(str(tiny_cross_encoder), candidates=10)
        key = {"Authorization": "Bearer ka"}
        on = _ask(srv, {"retrieval": {"rerank": True}}, headers=key)
        assert _cited(on) == _ids(idx.search(Q, k=3, filter={"tenant": "acme"}, rerank=reranker))
        assert "rerank;dur=" in on.headers["server-timing"]
        off = _ask(srv, headers=key)
        assert _cited(off) == _ids(idx.search(Q, k=3, filter={"tenant": "acme"}))
        assert "rerank" not in off.headers["server-timing"]
    finally:
        on_ray.close()
