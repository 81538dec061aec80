"""`raft eval` with the rerank stage: a local system reranks its index hits with eval.rerank.model (a tiny
random cross-encoder built in the test), a gateway system asks the gateway with `retrieval.rerank`."""

import json

import pytest
from fake_openai import FakeOpenAI, fact

from raft.cli import main
from raft.config import ConfigError, load_config
from raft.eval.config import EvalConfig

NAMES = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
VALUES = ["red", "green", "blue", "amber", "violet", "olive", "teal", "rose"]
CORPUS = {f"doc{i}": (n, v) for i, (n, v) in enumerate(zip(NAMES, VALUES))}


def test_rerank_config_errors_come_together():
    with pytest.raises(ConfigError) as e:
        load_config(EvalConfig, None, ['systems=[{"name": "a", "model": "m", "retrieval": "record", "rerank": true},'
                                       ' {"name": "b", "model": "m", "retrieval": "local", "rerank": true}]',
                                       "index=idx"])
    text = str(e.value)
    assert "'a' has rerank: true with retrieval 'record'" in text and "['b'] rerank local retrieval" in text


@pytest.mark.slow  # embeds with the bundled MiniLM
def test_local_and_gateway_systems_rerank(tmp_path, embedder_path, tiny_cross_encoder):
    from retrieval.config import IndexConfig
    from retrieval.index import RetrievalIndex
    from retrieval.rerank import Reranker
    from retrieval.types import Document

    docs = [Document(doc_id, fact(n, v), title=n) for doc_id, (n, v) in CORPUS.items()]
    idx = RetrievalIndex.build(docs, tmp_path / "idx", IndexConfig(embedder=embedder_path))
    qs = tmp_path / "q.jsonl"
    questions = [f"What is the key of {n}?" for n in NAMES]
    qs.write_text("".join(json.dumps({"id": f"x{i}", "question": q, "answers": [VALUES[i]], "gold_ids": [f"doc{i}"]})
                          + "\n" for i, q in enumerate(questions)))
    with FakeOpenAI(CORPUS) as server:
        systems = [{"name": n, "base_url": server.base_url, "model": "reader", "retrieval": r, "top_k": 3,
                    "rerank": rr} for n, r, rr in (("plain", "local", False), ("reranked", "local", True),
                                                   ("gw", "gateway", True), ("gw_plain", "gateway", False))]
        rc = main(["eval", "--data", str(qs), "--out", str(tmp_path / "r"), f"index={tmp_path / 'idx'}",
                   f"rerank.model={tiny_cross_encoder}", "rerank.candidates=6", f"systems={json.dumps(systems)}"])
        assert rc == 0
        sent = [b.get("retrieval") for b in server.requests if b.get("retrieval", {}).get("enabled")]
    # the gateway system asked for the stage; the plain one asked for none (the server's default may rerank)
    assert sorted(r["rerank"] for r in sent) == [False] * len(questions) + [True] * len(questions)
    rows = [json.loads(x) for x in (tmp_path / "r" / "predictions.jsonl").read_text().splitlines()]
    reranker = Reranker(str(tiny_cross_encoder), candidates=6)
    for q in questions:
        got = {r["system"]: r["retrieved"] for r in rows if r["question"] == q and not r["system"].startswith("gw")}
        # documents in the order retrieved (gold ids here are document ids)
        assert got["reranked"] == [h.chunk.doc_id for h in idx.search(q, k=3, rerank=reranker)]
        assert got["plain"] == [h.chunk.doc_id for h in idx.search(q, k=3)]
    assert any(r["retrieved"] != p["retrieved"] for r in rows for p in rows
               if r["system"] == "reranked" and p["system"] == "plain" and r["question"] == p["question"])
    idx.close()
