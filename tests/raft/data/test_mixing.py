import math
import random
from collections import Counter

import pytest

from raft.data.config import MixConfig, SplitConfig
from raft.data.mixing import (MineItem, allocate_oracle, answer_pattern, choose_oracle_included,
                              distractor_count, mine_distractors, shown_order)
from raft.data.splits import assign_splits
from retrieval.types import Chunk

from build_fakes import FakeIndex, make_chunks


@pytest.fixture()
def index():
    return FakeIndex(make_chunks(12, 2))


def _items(index, n=None):
    ids = index.chunk_ids()[: n or None]
    return [MineItem(f"q{i}", f"What is the secret code of place{int(c[1:4])} part{c[-1]}?", [c],
                     [f"Zq{int(c[1:4])}x{c[-1]}"]) for i, c in enumerate(ids)]


def test_distractors_are_distinct_exclude_oracle_and_answer(index):
    cfg = MixConfig(num_distractors=4, hard_ratio=0.5, mine_k=10)
    items = _items(index)
    res = mine_distractors(index, items, index.chunk_ids(), cfg, seed=1)
    assert set(res.distractors) == {it.key for it in items}
    for it in items:
        d = res.distractors[it.key]
        assert len(d) == 5 and len(set(d)) == 5  # D + one replacement for the no-oracle variant
        assert not set(d) & set(it.oracle_ids)
        for cid in d:
            assert it.answers[0].lower() not in index.chunks[cid].text.lower()
        assert res.hard[it.key] <= set(d)
    hard = sum(len(h) for h in res.hard.values())
    assert 0 < hard < sum(len(d) for d in res.distractors.values())  # some hard, some random


def test_answer_leak_and_near_duplicates_excluded():
    chunks = make_chunks(8, 1)
    # c_dup: a copy of the oracle with one word changed; c_leak: mentions the answer
    oracle = chunks[0]
    dup = Chunk("dup", "docdup", oracle.text.replace("spring", "summer"), "dup")
    leak = Chunk("leak", "docleak", "What is the secret code of place0 part0? Some say zq0x0.", "leak")
    idx = FakeIndex(chunks + [dup, leak])
    item = MineItem("q", "What is the secret code of place0 part0?", [oracle.chunk_id], ["Zq0x0"])
    res = mine_distractors(idx, [item], idx.chunk_ids(), MixConfig(num_distractors=5, hard_ratio=1.0), seed=0)
    d = res.distractors["q"]
    assert "dup" not in d and "leak" not in d and len(set(d)) == 6
    assert res.stats["excluded_near_duplicate"] >= 1 and res.stats["excluded_contains_answer"] >= 1
    assert answer_pattern("yes").search("say yes now") and not answer_pattern("yes").search("yesterday")


def test_multi_oracle_and_too_few(index):
    ids = index.chunk_ids()
    item = MineItem("m", "code of place1 and place2", [ids[2], ids[4]], ["nothing-matches"])
    res = mine_distractors(index, [item], ids, MixConfig(num_distractors=3), seed=0)
    d = res.distractors["m"]
    assert len(d) == 5 and not set(d) & {ids[2], ids[4]}
    small = FakeIndex(make_chunks(2, 1))
    res = mine_distractors(small, [MineItem("x", "q", ["c000_0"], [])], small.chunk_ids(),
                           MixConfig(num_distractors=4), seed=0)
    assert res.distractors == {} and res.stats["too_few_distractors"] == 1


@pytest.mark.parametrize("n,p", [(10, 0.8), (7, 0.8), (33, 0.5), (5, 1.0), (5, 0.0), (101, 0.37)])
def test_oracle_fraction_is_exact_and_stratified(n, p):
    rng = random.Random(n)
    keys = {"train": [f"k{i}" for i in range(n)], "validation": [f"v{i}" for i in range(rng.randint(0, 9))],
            "test": [f"t{i}" for i in range(rng.randint(1, 9))]}
    total = sum(map(len, keys.values()))
    chosen = choose_oracle_included(keys, p, seed=3)
    assert len(chosen) == math.floor(p * total + 0.5)
    for s, ks in keys.items():
        got = len(chosen & set(ks))
        assert abs(got - p * len(ks)) < 1.0 + 1e-9, (s, got, len(ks))
    assert chosen == choose_oracle_included(keys, p, seed=3)
    assert sum(allocate_oracle({"a": 3, "b": 3, "c": 3}, 0.5).values()) == 5


def test_shown_order_includes_oracle_or_replacement():
    d = ["d1", "d2", "d3", "d4", "d5", "d6"]
    with_o = shown_order("k", ["o1", "o2"], d, True, 4, seed=0)
    without = shown_order("k", ["o1", "o2"], d, False, 4, seed=0)
    assert sorted(with_o) == sorted(["o1", "o2", "d1", "d2", "d3", "d4"])
    assert sorted(without) == sorted(d) and len(without) == 6
    orders = {tuple(shown_order(f"k{i}", ["o"], d, True, 4, 0)).index("o") for i in range(30)}
    assert len(orders) > 2  # the oracle's position varies


def test_distractor_count_spans_the_range_and_is_seeded():
    assert {distractor_count(f"k{i}", MixConfig(num_distractors=3), 0) for i in range(20)} == {3}
    cfg = MixConfig(num_distractors=4, min_distractors=1)
    counts = Counter(distractor_count(f"k{i}", cfg, 0) for i in range(400))
    assert set(counts) == {1, 2, 3, 4} and min(counts.values()) > 60  # roughly uniform
    assert [distractor_count(f"k{i}", cfg, 0) for i in range(50)] == [distractor_count(f"k{i}", cfg, 0)
                                                                     for i in range(50)]
    with pytest.raises(ValueError, match="min_distractors=5 is above num_distractors=4"):
        MixConfig(num_distractors=4, min_distractors=5)


def test_splits_are_disjoint_by_document_and_seeded():
    docs = [f"d{i}" for i in range(200)]
    qdocs = [[f"d{i}"] for i in range(0, 150)] + [["d1", "d2"], ["d2", "d3"]]
    cfg = SplitConfig(train=0.7, validation=0.2, test=0.1)
    a = assign_splits(docs, qdocs, cfg, seed=5)
    assert a == assign_splits(docs, qdocs, cfg, seed=5) and a != assign_splits(docs, qdocs, cfg, seed=6)
    assert set(a) == set(docs)
    assert a["d1"] == a["d2"] == a["d3"]  # joined by multi-doc questions
    c = Counter(a[q[0]] for q in qdocs)
    assert abs(c["train"] / len(qdocs) - 0.7) < 0.05 and c["test"] > 0 and c["validation"] > 0
    only_train = assign_splits(docs, qdocs, SplitConfig(train=1, validation=0, test=0), seed=5)
    assert set(only_train.values()) == {"train"}
    with pytest.raises(Exception, match="sum to 1"):
        SplitConfig(train=0.5, validation=0.1, test=0.1)
