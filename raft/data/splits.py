"""Document-level splits: every source document lands in exactly one split.

Documents that share a question (multi-oracle questions) are joined into one group first (union-find),
so a question never straddles two splits. Groups are shuffled with the seed and dealt greedily to the
split furthest below its target share (weighted by example count); documents without questions are dealt
the same way by count, so distractor pools exist for every split.
"""

from __future__ import annotations

import random
from typing import Iterable, Sequence

from raft.data.config import SplitConfig
from raft.data.mixing import sub_seed

SPLITS = ("train", "validation", "test")


class _UnionFind:
    def __init__(self):
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _deal(groups: list[tuple[str, int]], ratios: dict[str, float], seed: int, tag: str) -> dict[str, str]:
    """group id -> split; greedy by largest deficit against the target share, in a seeded order."""
    active = [s for s in SPLITS if ratios[s] > 0]
    groups = sorted(groups)
    random.Random(sub_seed(seed, "split", tag)).shuffle(groups)
    total = sum(w for _, w in groups) or 1
    filled = {s: 0.0 for s in active}
    out = {}
    for g, w in groups:
        s = max(active, key=lambda s: (ratios[s] * total - filled[s], ratios[s]))
        out[g] = s
        filled[s] += w
    return out


def assign_splits(all_doc_ids: Iterable[str], question_docs: Sequence[Sequence[str]], cfg: SplitConfig,
                  seed: int) -> dict[str, str]:
    """doc id -> split name, for every document (question_docs: the oracle doc ids of each question)."""
    ratios = {s: getattr(cfg, s) for s in SPLITS}
    uf = _UnionFind()
    docs = sorted(set(all_doc_ids))
    for d in docs:
        uf.find(d)
    weight: dict[str, int] = {}
    for qd in question_docs:
        qd = list(qd)
        for d in qd[1:]:
            uf.union(qd[0], d)
    for qd in question_docs:
        if qd:
            root = uf.find(qd[0])
            weight[root] = weight.get(root, 0) + 1
    roots = {uf.find(d) for d in docs}
    with_q = [(r, weight[r]) for r in roots if r in weight]
    without = [(r, 1) for r in roots if r not in weight]
    group_split = _deal(with_q, ratios, seed, "questions")
    group_split.update(_deal(without, ratios, seed, "rest"))
    return {d: group_split[uf.find(d)] for d in docs}
