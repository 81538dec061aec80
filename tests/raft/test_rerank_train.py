"""`raft rerank train`: pairs from a real small `raft build` output, a short real training run from the
bundled MiniLM, and the errors a user meets first."""

from __future__ import annotations

import json

import pytest
import torch

import raft
from raft.cli import main
from raft.errors import RaftError
from raft.rerank.config import RerankTrainConfig
from raft.rerank.pairs import make_pairs, shown_chunks
from raft.rerank.trainer import keep_layers


@pytest.fixture(scope="module")
def dataset(corpus_dir, tmp_path_factory):
    """A small extractive build: half the records leave their oracle out (so its text comes from elsewhere)."""
    out = tmp_path_factory.mktemp("rerank") / "data"
    raft.build_dataset(corpus_dir, out, {"teacher": {"kind": "extractive"}, "progress": False,
                                         "questions_per_chunk": 1, "max_chunks": 12,
                                         "mix": {"num_distractors": 3, "p_oracle": 0.5},
                                         "split": {"train": 0.7, "validation": 0.3, "test": 0.0}})
    return out


def _records(dataset, split):
    return [json.loads(x) for x in (dataset / "raft" / f"{split}.jsonl").read_text().splitlines() if x.strip()]


def test_pairs_are_oracles_and_shown_distractors(dataset):
    recs = _records(dataset, "train")
    pairs, manifest = make_pairs(dataset, ["train"], None, seed=0)
    assert pairs.stats["positives"] + pairs.stats["positives_without_text"] == sum(len(r["oracle_ids"]) for r in recs)
    assert pairs.stats["negatives"] == sum(len(set(r["doc_ids"]) - set(r["oracle_ids"])) for r in recs)
    assert any(not r["oracle_included"] for r in recs) and pairs.stats["positives_without_text"] == 0
    # every passage is read as the rerank stage reads a chunk: "title\ntext"
    by_text = {p for r in recs for c in shown_chunks(r).values() for p in [f"{c.title}\n{c.text}"]}
    negatives = {p for p, y in zip(pairs.passages, pairs.labels) if y == 0}
    assert negatives <= by_text and all(p.startswith("# ") or "\n" in p for p in pairs.passages)
    assert manifest["fingerprint"]
    assert make_pairs(dataset, ["train"], 1, 0)[0].stats["negatives"] == len(recs)  # negatives=1: one each


def test_errors_name_the_problem(dataset, tmp_path, capsys, monkeypatch):
    with pytest.raises(RaftError, match="no manifest.json"):
        make_pairs(tmp_path, ["train"], None, 0)
    with pytest.raises(RaftError, match="no 'dev' split .*its splits: train, validation"):
        make_pairs(dataset, ["dev"], None, 0)
    with pytest.raises(RaftError, match=f"index_dir '{tmp_path}' is not an index directory"):
        make_pairs(dataset, ["train"], None, 0, index_dir=str(tmp_path))
    # the index the build used, named explicitly, serves the same texts as DATASET/index
    assert make_pairs(dataset, ["train"], None, 0, str(dataset / "index"))[0].stats == \
        make_pairs(dataset, ["train"], None, 0)[0].stats
    # every config problem at once, each naming its key
    rc = main(["rerank", "train", str(dataset), "--out", str(tmp_path / "m"), "epochs=0", "lr=fast", "nope=1",
               "layers=0"])
    err = capsys.readouterr().err
    assert rc == 2 and "4 problem(s)" in err and "epochs" in err and "lr" in err and "nope: unknown key" in err
    assert "layers" in err
    # more layers than the base model has, or a model without a BERT-style layer list: said before the pairs
    # are read (on a large dataset that takes a while)
    def not_reached(*a, **k):
        raise AssertionError("reached before the earlier check failed")

    with monkeypatch.context() as m:
        m.setattr("raft.rerank.trainer.make_pairs", not_reached)
        rc = main(["rerank", "train", str(dataset), "--out", str(tmp_path / "m"), "layers=7"])
    assert rc != 0 and "layers=7, but base_model 'all-MiniLM-L6-v2' has 6; give at most 6" in capsys.readouterr().err
    # the fusion weight is never chosen on questions the model trained on
    rc = main(["rerank", "train", str(dataset), "--out", str(tmp_path / "m"), "splits=[train,validation]"])
    assert rc == 2 and "eval_split 'validation' is also in splits ['train', 'validation']" in capsys.readouterr().err
    assert RerankTrainConfig(splits=["train", "validation"], eval_split=None, weight=0.5).eval_split is None
    # a wrong DATASET_DIR is said before the base model loads
    with monkeypatch.context() as m:
        m.setattr("raft.rerank.trainer._load_base", not_reached)
        rc = main(["rerank", "train", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m")])
    assert rc != 0 and "nowhere' does not exist" in capsys.readouterr().err
    with pytest.raises(RaftError, match="has no encoder.layer list to cut"):
        keep_layers(torch.nn.Linear(2, 2), 1, "linear")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    rc = main(["rerank", "train", str(dataset), "--out", str(tmp_path / "taken")])
    assert rc == 2 and "is not a reranker directory" in capsys.readouterr().err
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"
    rc = main(["rerank", "train", "--out", str(tmp_path / "m")])
    assert rc == 2 and "needs a DATASET_DIR" in capsys.readouterr().err


def test_choose_weight_prefers_what_ranks_the_oracle_best():
    import numpy as np

    from raft.rerank.fusion import choose_weight

    ids = [["a", "b", "c", "d"], ["e", "f", "g", "h"]]
    golds = [{"c"}, {"h"}]  # the search ranks each oracle low
    good = [np.array([0.1, 0.2, 0.9, 0.0]), np.array([0.0, 0.1, 0.2, 0.8])]  # the model finds both
    got = choose_weight(good, ids, golds)
    assert got["weight"] > 0.5 and got["chosen"]["mrr@10"] == 1.0
    assert got["search"] == {"recall@5": 1.0, "mrr@10": round((1 / 3 + 1 / 4) / 2, 4)}
    bad = [np.array([0.9, 0.8, 0.0, 0.7]), np.array([0.9, 0.8, 0.7, 0.0])]  # the model ranks them last
    flipped = [["c", "a", "b", "d"], ["h", "e", "f", "g"]]  # ... and the search ranks them first
    got = choose_weight([b[[2, 0, 1, 3]] for b in bad], flipped, golds)
    assert got["weight"] == 0.0 and got["chosen"] == got["search"] and got["reranker_alone"]["mrr@10"] < 1.0
    # a tie between weights goes to the lowest: the search's order, unless the model earns its place
    assert choose_weight([np.zeros(4), np.zeros(4)], ids, golds)["weight"] == 0.0


def test_a_weight_whose_gain_is_noise_is_not_taken():
    """One question of ten ranked better is not evidence; the same gain on every question is."""
    import numpy as np

    from raft.rerank.fusion import choose_weight

    ids = [[f"q{i}-{j}" for j in range(4)] for i in range(10)]
    golds = [{f"q{i}-0"} for i in range(10)]  # the search ranks every oracle first ...
    golds[0] = {"q0-1"}  # ... but one, which the model lifts
    scores = [np.array([0.0, 1.0, 0.0, 0.0]) if i == 0 else np.array([1.0, 0.0, 0.0, 0.0]) for i in range(10)]
    got = choose_weight(scores, ids, golds)
    assert got["weight"] == 0.0 and got["chosen"] == got["search"]
    assert got["not_significant"]["mrr@10"] == 1.0 and got["not_significant"]["questions"] == 10
    assert got["mrr@10_gain_lower_bound"][str(got["not_significant"]["weight"])] <= 0
    golds = [{f"q{i}-1"} for i in range(10)]  # the search ranks every oracle second; the model lifts them all
    got = choose_weight([np.array([0.0, 1.0, 0.0, 0.0])] * 10, ids, golds)
    assert got["weight"] > 0 and got["chosen"]["mrr@10"] == 1.0 and "not_significant" not in got


def test_tune_on_split_searches_the_dataset_index(dataset, tiny_cross_encoder):
    from sentence_transformers import CrossEncoder

    from raft.rerank.fusion import GRID, ranking_metrics, tune_on_split
    from raft.rerank.pairs import read_manifest
    from retrieval.index import RetrievalIndex

    manifest = read_manifest(dataset)
    got = tune_on_split(CrossEncoder(str(tiny_cross_encoder)), dataset, "validation", manifest, None, 8)
    recs = _records(dataset, "validation")
    assert got["questions"] == len(recs) > 0 and got["candidates"] == 8 and got["weight"] in GRID
    idx = RetrievalIndex.open(dataset / "index")
    try:  # weight 0 is the plain search, measured on the oracle chunks
        orders = [[h.chunk.chunk_id for h in idx.search(r["question"], k=8)] for r in recs]
    finally:
        idx.close()
    assert got["search"] == ranking_metrics(orders, [set(r["oracle_ids"]) for r in recs])
    assert got["chosen"]["mrr@10"] >= got["search"]["mrr@10"]
    assert got["chosen"]["mrr@10"] == got["mrr@10_by_weight"][str(got["weight"])]
    if got["weight"] > 0:  # a weight above 0 is taken only with a gain over the search beyond the noise
        assert got["mrr@10_gain_lower_bound"][str(got["weight"])] > 0
    assert tune_on_split(None, dataset, "validation", manifest, str(dataset / "nowhere"), 8)["weight"] is None


@pytest.mark.slow
def test_train_a_few_steps_then_load_and_rerank(dataset, tmp_path, capsys):
    from retrieval.index import RetrievalIndex
    from retrieval.rerank import RERANK_META, Reranker

    out = tmp_path / "reranker"
    rc = main(["rerank", "train", str(dataset), "--out", str(out), "max_steps=2", "batch_size=8", "max_length=64",
               "progress=false"])
    printed = capsys.readouterr().err
    assert rc == 0, printed
    assert "reranker written to" in printed and "validation MRR" in printed
    assert "Loading weights" not in printed and "train_runtime" not in printed  # no per-tensor bars, no raw dict
    meta = json.loads((out / RERANK_META).read_text())
    assert meta["dataset_fingerprint"] == json.loads((dataset / "manifest.json").read_text())["fingerprint"]
    assert meta["base_model"] == "all-MiniLM-L6-v2" and meta["steps"] == 2 and meta["max_length"] == 64
    fusion = meta["fusion"]  # chosen on the validation split, and what the stage uses by default
    assert fusion["split"] == "validation" and fusion["questions"] > 0 and 0.0 <= fusion["weight"] <= 1.0
    assert f"fusion weight {fusion['weight']:.1f}" in printed
    assert Reranker(str(out)).fusion_weight == fusion["weight"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no scratch left behind

    r = Reranker(str(out), candidates=6)
    idx = RetrievalIndex.open(dataset / "index")
    try:
        q = "Which island is the largest in the Veloria chain?"
        hits = idx.search(q, k=3, rerank=r)
        cands = idx.search(q, k=6)
        assert len(hits) == 3 and {h.chunk.chunk_id for h in hits} <= {h.chunk.chunk_id for h in cands}
        assert all(0.0 <= h.score <= 1.0 for h in hits) and hits == sorted(hits, key=lambda h: -h.score)
    finally:
        idx.close()
    assert meta["layers"] == 6
    # a rerun replaces the earlier reranker in place; layers=2 keeps the base model's first two layers only
    assert main(["rerank", "train", str(dataset), "--out", str(out), "max_steps=1", "batch_size=8", "max_length=64",
                 "weight=1", "layers=2", "--json"]) == 0
    got = capsys.readouterr()
    rerun = json.loads(got.out)
    assert "1/1" in got.err and "train_runtime" not in got.err  # the step bar (progress=true) without the raw dict
    assert rerun["steps"] == 1 and rerun["fusion"] == {"weight": 1.0, "reason": "configured"}
    assert rerun["layers"] == 2 and json.loads((out / "config.json").read_text())["num_hidden_layers"] == 2
    assert json.loads((out / RERANK_META).read_text())["steps"] == 1
    cut = Reranker(str(out)).load()  # loads as a two-layer model and scores
    assert len(cut._loaded.model.model.base_model.encoder.layer) == 2
    assert cut.score_pairs([("Which island is the largest?", "Veloria's largest island is Hask.")]).shape == (1,)


def test_warmup_is_a_share_of_the_steps_whatever_the_transformers_version(tmp_path):
    from sentence_transformers.cross_encoder import CrossEncoderTrainingArguments

    from raft.rerank.trainer import warmup_args

    args = CrossEncoderTrainingArguments(output_dir=str(tmp_path), report_to="none", **warmup_args(0.1))
    assert args.get_warmup_steps(200) == 20  # the installed transformers reads it as 10% of the steps
    assert warmup_args(0.1, "4.57.1") == {"warmup_ratio": 0.1}  # where warmup_steps=0.1 meant no warm-up
    assert warmup_args(0.1, "5.0.0") == {"warmup_steps": 0.1}
