"""Document-level splits: every source document lands in exactly one split.

Documents that share a question (multi-oracle questions) are joined into one group first (union-find),
so a question never straddles two splits. With `split.group_by=metadata.KEY`, documents whose chunks
share that metadata value are joined too (pieces of one article stay on one side); a document without
the key is its own group. Groups are shuffled with the seed and dealt greedily to the
split furthest below its target share (weighted by example count); documents without questions are dealt
the same way by count, so distractor pools exist for every split.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from typing import Any, Iterable, Mapping, Sequence

from raft.data.config import SplitConfig
from raft.data.mixing import sub_seed
from raft.errors import RaftError

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


_MISSING = object()


def metadata_value(metadata: Mapping[str, Any] | None, group_by: str) -> Any:
    """The value `group_by` (`metadata.KEY[.SUB...]`) names in a chunk's metadata, or None when absent: the
    whole rest as one key first (`{"a.b": 1}`), else walked through nested dicts (`{"a": {"b": 1}}`)."""
    rest = group_by.split(".", 1)[1]
    meta = metadata or {}
    if rest in meta:
        return meta[rest]
    node: Any = meta
    for part in rest.split("."):
        node = node.get(part, _MISSING) if isinstance(node, Mapping) else _MISSING
        if node is _MISSING:
            return None
    return node


def doc_groups(chunks: Iterable, group_by: str) -> tuple[dict[str, set[str]], Counter]:
    """doc id -> the group values (as stable strings) its chunks hold under `group_by`, and counts
    (documents, documents_without_key, groups). No document holding the key at all is an error: the key
    is most likely misspelt, and a silent no-op would leak what the user meant to keep together."""
    groups: dict[str, set[str]] = {}
    seen_keys: Counter = Counter()
    for c in chunks:
        groups.setdefault(c.doc_id, set())
        seen_keys.update((c.metadata or {}).keys())
        v = metadata_value(c.metadata, group_by)
        if v is not None:
            groups[c.doc_id].add(json.dumps(v, sort_keys=True, default=str))
    values = {v for vs in groups.values() for v in vs}
    if groups and not values:
        keys = ", ".join(f"metadata.{k}" for k, _ in seen_keys.most_common(10)) or "none: the chunks have no metadata"
        raise RaftError(f"split.group_by={group_by}: no document of the corpus has this key, so nothing would be "
                        f"grouped; the metadata keys the chunks have: {keys}")
    stats = Counter(documents=len(groups), documents_without_key=sum(1 for vs in groups.values() if not vs),
                    groups=len(values))
    return groups, stats


def assign_splits(all_doc_ids: Iterable[str], question_docs: Sequence[Sequence[str]], cfg: SplitConfig,
                  seed: int, groups: Mapping[str, Iterable[str]] | None = None) -> dict[str, str]:
    """doc id -> split name, for every document (question_docs: the oracle doc ids of each question;
    groups: doc id -> group values from doc_groups, documents sharing a value land in one split)."""
    ratios = {s: getattr(cfg, s) for s in SPLITS}
    uf = _UnionFind()
    docs = sorted(set(all_doc_ids))
    for d in docs:
        uf.find(d)
    for d, values in (groups or {}).items():
        for v in values:  # "\0" keeps a group's node apart from any document id
            uf.union(d, "\0group\0" + v)
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
