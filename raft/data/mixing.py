"""Distractor mining and example assembly.

Mining: for each question, hard negatives are the nearest neighbours of the question in the index
(batched embedding + batched FAISS search), minus the oracle chunk(s), their near-duplicates (word-set
Jaccard) and any chunk containing the final answer; random chunks, under the same exclusions, make up the
configured share. Each question gets D + |oracles| distinct distractors, so that an example that leaves
the oracle out shows another distinct distractor in its place.

Assembly: exactly round(P x n) examples show the oracle, allocated over splits by largest remainder
(stratified), chosen with a seeded permutation; the shown order is shuffled per example with a seed
derived from the example id, so the result does not depend on the order work finished in.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from raft.data.config import MixConfig
from raft.prompt import normalize_for_match

_WORD = re.compile(r"\w+")


def sub_seed(seed: int, *parts: Any) -> int:
    """A stable per-item seed (independent of processing order and of PYTHONHASHSEED)."""
    h = hashlib.sha256(("\x00".join(map(str, (seed, *parts)))).encode()).digest()
    return int.from_bytes(h[:8], "big")


@dataclass
class MineItem:
    key: str
    question: str
    oracle_ids: list[str]
    answers: list[str] = field(default_factory=list)
    split: str | None = None
    exclude_docs: list[str] = field(default_factory=list)  # e.g. the gold documents of a given question


@dataclass
class MineResult:
    distractors: dict[str, list[str]] = field(default_factory=dict)
    """item key -> D + |oracles| distractor chunk ids (the shown ones first, then the oracle stand-ins)."""
    hard: dict[str, frozenset] = field(default_factory=dict)
    """item key -> which of its distractors were mined as hard negatives (the rest are random)."""
    stats: Counter = field(default_factory=Counter)
    """exclusions and fallbacks; what each example shows is counted by count_shown, once it is assembled."""


class _TextCache:
    """Lazily computed normalised text and word sets of chunks (fetched in batches from the index)."""

    def __init__(self, get: Callable[[list[str]], list]):
        self._get = get
        self.norm: dict[str, str] = {}
        self.doc: dict[str, str] = {}
        self._words: dict[str, frozenset] = {}

    def add(self, chunk) -> None:
        if chunk.chunk_id not in self.norm:
            self.norm[chunk.chunk_id] = normalize_for_match(chunk.text)
            self.doc[chunk.chunk_id] = chunk.doc_id

    def ensure(self, ids: Sequence[str]) -> None:
        missing = [i for i in ids if i not in self.norm]
        if missing:
            for c in self._get(missing):
                self.add(c)

    def words(self, cid: str) -> frozenset:
        w = self._words.get(cid)
        if w is None:
            w = self._words[cid] = frozenset(_WORD.findall(self.norm[cid]))
        return w


def _jaccard(a: frozenset, b: frozenset) -> float:
    if not a or not b:
        return 0.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


class WholeWords:
    """Whole-word substring test (str.find + boundary check: compiling a regex per question cost more than
    the FAISS search when mining 100k questions)."""

    __slots__ = ("needle",)

    def __init__(self, needle: str):
        self.needle = needle

    def search(self, text: str) -> bool:
        n, i = self.needle, text.find(self.needle)
        while i >= 0:
            j = i + len(n)
            if (i == 0 or not text[i - 1].isalnum()) and (j == len(text) or not text[j].isalnum()):
                return True
            i = text.find(n, i + 1)
        return False


def answer_pattern(answer: str) -> WholeWords | None:
    """Whole-word, case/whitespace-insensitive matcher of an answer (None when too short to test)."""
    a = normalize_for_match(answer).strip(" .")
    if len(a) < 2:
        return None
    return WholeWords(a)


def mine_distractors(index, items: Sequence[MineItem], all_ids: Sequence[str], cfg: MixConfig, seed: int,
                     doc_split: dict[str, str] | None = None, vectors: np.ndarray | None = None,
                     progress: Callable[[int], None] | None = None) -> MineResult:
    """D + |oracles| distractor chunk ids per item (hard negatives first, then random), see module doc.

    `index` needs embed(texts), search_vectors(vectors, k) and get(ids). `doc_split` maps doc id ->
    split; with cfg.within_split the distractors of an item come from its split's documents when possible.
    `vectors` (optional) are precomputed question vectors, row per item.
    """
    D = cfg.num_distractors
    res = MineResult()
    texts = _TextCache(index.get)
    pools: dict[str | None, list[str]] = {None: list(all_ids)}
    use_split = bool(cfg.within_split and doc_split)
    chunk_split: dict[str, str | None] | None = None
    if use_split:
        texts.ensure(all_ids)
        chunk_split = {cid: doc_split.get(texts.doc[cid]) for cid in all_ids}
        for cid in all_ids:
            pools.setdefault(chunk_split[cid], []).append(cid)
    n_hard_want = round(D * cfg.hard_ratio)
    for start in range(0, len(items), cfg.batch_size):
        batch = items[start:start + cfg.batch_size]
        if vectors is not None:
            vecs = np.ascontiguousarray(vectors[start:start + len(batch)], dtype=np.float32)
        else:
            vecs = index.embed([it.question for it in batch])
        hits = index.search_vectors(vecs, cfg.mine_k) if cfg.hard_ratio > 0 and D > 0 else [[] for _ in batch]
        texts.ensure([o for it in batch for o in it.oracle_ids])
        norm = texts.norm
        for it, hs in zip(batch, hits):
            for h in hs:
                if h.chunk.chunk_id not in norm:
                    texts.add(h.chunk)
            chosen = _choose(it, hs, texts, pools, chunk_split, cfg, n_hard_want, seed, res.stats)
            if chosen is not None:
                res.distractors[it.key], res.hard[it.key] = chosen
        if progress:
            progress(len(batch))
    return res


def _choose(it: MineItem, hits, texts: _TextCache, pools, chunk_split: dict[str, str | None] | None,
            cfg: MixConfig, n_hard_want: int, seed: int, stats: Counter) -> tuple[list[str], frozenset] | None:
    D = cfg.num_distractors
    need = D + len(it.oracle_ids)
    oracle = set(it.oracle_ids)
    oracle_words = [texts.words(o) for o in it.oracle_ids]
    oracle_norm = {texts.norm[o] for o in it.oracle_ids}
    oracle_docs = {texts.doc[o] for o in it.oracle_ids}
    banned_docs = set(it.exclude_docs)
    pats = [p for p in map(answer_pattern, it.answers) if p is not None] if cfg.exclude_answer else []
    seen: set[str] = set(oracle)
    reasons = stats
    use_split = chunk_split is not None

    def ok(cid: str, split_only: bool) -> bool:
        if cid in seen:
            return False
        if split_only and use_split and chunk_split.get(cid) != it.split:
            return False  # not marked seen: may still serve in the cross-split fallback
        seen.add(cid)
        norm = texts.norm[cid]
        if not norm.strip():
            reasons["excluded_empty"] += 1
            return False
        if cfg.exclude_same_doc and texts.doc[cid] in oracle_docs:
            reasons["excluded_same_doc"] += 1
            return False
        if banned_docs and texts.doc[cid] in banned_docs:
            reasons["excluded_gold_doc"] += 1
            return False
        if norm in oracle_norm or any(_jaccard(texts.words(cid), w) >= cfg.dup_jaccard for w in oracle_words):
            reasons["excluded_near_duplicate"] += 1
            return False
        if any(p.search(norm) for p in pats):
            reasons["excluded_contains_answer"] += 1
            return False
        return True

    hard: list[str] = []
    # hard candidates: nearest first; want n_hard for the shown set plus the oracle replacements
    for h in hits:
        if len(hard) >= n_hard_want + len(oracle):
            break
        if ok(h.chunk.chunk_id, True):
            hard.append(h.chunk.chunk_id)
    rng = random.Random(sub_seed(seed, "distractors", it.key))
    rand: list[str] = []
    want_rand = need - min(len(hard), n_hard_want + len(oracle))
    pool = pools.get(it.split, pools[None]) if use_split else pools[None]
    rand = _sample(pool, want_rand, rng, texts, lambda c: ok(c, True))
    if len(hard) + len(rand) < need and use_split:  # the split is too small: take from the whole corpus
        extra = _sample(pools[None], need - len(hard) - len(rand), rng, texts, lambda c: ok(c, False))
        if extra:
            stats["cross_split_fallback"] += 1
        rand += extra
    hard_shown = hard[:n_hard_want]
    rest = rand + hard[n_hard_want:]
    shown = hard_shown + rest[:D - len(hard_shown)]
    replacements = rest[D - len(hard_shown):] if len(shown) == D else []
    out = shown + replacements
    if len(out) < need:
        stats["too_few_distractors"] += 1
        return None
    out = out[:need]
    return out, frozenset(hard) & frozenset(out)


def _sample(pool: Sequence[str], n: int, rng: random.Random, texts: _TextCache, ok) -> list[str]:
    """Up to n ids from pool accepted by ok(), drawn without replacement in a seeded order."""
    if n <= 0 or not pool:
        return []
    out: list[str] = []
    tries = 0
    budget = max(8 * n, 64)
    norm, size = texts.norm, len(pool)
    while len(out) < n and tries < budget:  # fast path: random draws (pool is usually large)
        cid = pool[rng.randrange(size)]
        tries += 1
        if cid not in norm:
            texts.ensure([cid])
        if ok(cid):
            out.append(cid)
    if len(out) < n:  # slow path: walk a seeded permutation of the whole pool
        order = list(pool)
        rng.shuffle(order)
        texts.ensure(order)
        for cid in order:
            if len(out) == n:
                break
            if ok(cid):
                out.append(cid)
    return out


def allocate_oracle(split_counts: dict[str, int], p: float) -> dict[str, int]:
    """Examples that show the oracle per split: round(P x n) in total, split by largest remainder."""
    n = sum(split_counts.values())
    total = int(np.floor(p * n + 0.5 + 1e-9))  # round half up: 4.5 -> 5
    exact = {s: p * c for s, c in split_counts.items()}
    alloc = {s: int(np.floor(v + 1e-9)) for s, v in exact.items()}
    left = total - sum(alloc.values())
    for s in sorted(exact, key=lambda s: (-(exact[s] - alloc[s]), s))[:max(left, 0)]:
        alloc[s] += 1
    return alloc


def choose_oracle_included(keys_by_split: dict[str, list[str]], p: float, seed: int) -> set[str]:
    """Keys of examples that show the oracle: exact count per split (see allocate_oracle), seeded choice."""
    alloc = allocate_oracle({s: len(k) for s, k in keys_by_split.items()}, p)
    chosen: set[str] = set()
    for s, keys in keys_by_split.items():
        order = sorted(keys)
        random.Random(sub_seed(seed, "oracle", s)).shuffle(order)
        chosen.update(order[:alloc[s]])
    return chosen


def distractor_count(key: str, cfg: MixConfig, seed: int) -> int:
    """Distractors shown in one example: D, or a seeded draw from [min_distractors, D] (see MixConfig)."""
    if cfg.min_distractors is None:
        return cfg.num_distractors
    return random.Random(sub_seed(seed, "n_distractors", key)).randint(cfg.min_distractors, cfg.num_distractors)


def count_shown(shown: Sequence[str], oracle_ids: Sequence[str], hard: frozenset, stats: Counter) -> None:
    """Add one assembled example's distractors to `stats`: hard_distractors + random_distractors is every
    shown document that is not an oracle, the stand-ins for a left-out oracle included (also counted apart
    as oracle_stand_ins), so the counts add up to what the records hold."""
    oracle = set(oracle_ids)
    distractors = [c for c in shown if c not in oracle]
    stats["hard_distractors"] += sum(1 for c in distractors if c in hard)
    stats["random_distractors"] += sum(1 for c in distractors if c not in hard)
    if not oracle & set(shown):
        stats["oracle_stand_ins"] += len(oracle)


def shown_order(key: str, oracle_ids: Sequence[str], distractors: Sequence[str], include_oracle: bool,
                D: int, seed: int) -> list[str]:
    """Chunk ids shown for one example, shuffled with a per-example seed."""
    ids = (list(oracle_ids) + list(distractors[:D])) if include_oracle else list(distractors[:D + len(oracle_ids)])
    random.Random(sub_seed(seed, "order", key)).shuffle(ids)
    return ids
