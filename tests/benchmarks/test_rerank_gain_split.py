"""benchmarks/rerank_gain.py's question split: no question text on both sides, the held-out questions fixed
by the seed and `train_frac`, and every question not held out available for training."""

from __future__ import annotations

import pytest

@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("rerank_gain")


def _questions(n_texts: int, dup_every: int = 7) -> list[dict]:
    qs = []
    for i in range(n_texts):
        qs.append({"id": f"q{i}", "question": f"Question number {i}?"})
        if i % dup_every == 0:  # the same text twice (case and spacing differ): one group
            qs.append({"id": f"q{i}b", "question": f"question  NUMBER {i}?"})
    return qs


def _groups_after_shuffle(qs, seed):
    import random

    by_text: dict[str, list[dict]] = {}
    for q in qs:
        by_text.setdefault(" ".join(q["question"].lower().split()), []).append(q)
    groups = list(by_text.values())
    random.Random(seed).shuffle(groups)
    return groups


@pytest.mark.parametrize("max_eval", [10, 11, 40, 500])
def test_split_keeps_texts_apart_and_trains_on_the_rest(bench, max_eval):
    qs = _questions(200)
    train, held = bench.split_questions(qs, 0.5, 10_000, max_eval, seed=3)
    norm = lambda q: " ".join(q["question"].lower().split())  # noqa: E731
    assert not {norm(q) for q in train} & {norm(q) for q in held}
    # the held-out questions are the first max_eval after the cut (as before training used the rest)
    groups = _groups_after_shuffle(qs, 3)
    cut = round(len(groups) * 0.5)
    assert [q["id"] for q in held] == [q["id"] for g in groups[cut:] for q in g][:max_eval]
    # every other question is trained on, but the rest of a group the held-out boundary cut in two
    left_out = {q["id"] for q in qs} - {q["id"] for q in train} - {q["id"] for q in held}
    assert len(left_out) <= 1 and all(norm(q) in {norm(h) for h in held} for q in qs if q["id"] in left_out)
    assert {q["id"] for g in groups[:cut] for q in g} <= {q["id"] for q in train}
    # max_train caps the training part and never moves the held-out one
    capped_train, capped_held = bench.split_questions(qs, 0.5, 50, max_eval, seed=3)
    assert capped_held == held and len(capped_train) == 50
    assert bench.split_questions(qs, 0.5, 10_000, max_eval, seed=4)[1] != held  # the seed decides


def test_a_cut_group_is_on_neither_side(bench):
    qs = _questions(200, dup_every=1)  # every text twice: max_eval 11 must cut a group
    train, held = bench.split_questions(qs, 0.5, 10_000, 11, seed=0)
    assert len(held) == 11 and len(train) == len(qs) - 12
