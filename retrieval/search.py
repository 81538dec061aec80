"""Dense and BM25 candidates over a snapshot's segments, with filters, tenants, tombstones and a shard's
partition applied inside each segment's search (never after it: a filtered search still returns k).

Dense: each segment's FAISS index is searched for k and the lists are merged by score. A filter that
matches few chunks of a segment (at most EXACT_FILTER_LIMIT) is scored exactly against those chunks'
vectors, memoised on the segment (segments never change, so the memo outlives generations); a larger one
goes to FAISS with an ID selector, widened until k are found.

BM25: retrieval/sparse.py over all segments in one batch, each segment's allowed chunks given as a mask.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np

from retrieval import sparse
from retrieval.segments import Segment, Snapshot

EXACT_FILTER_LIMIT = 20_000  # filtered dense search is exact (stored vectors) below this many matches

Partition = tuple[int, int] | None  # (n, i): only rows with row % n == i (a Ray shard)
VectorsFor = Callable[[np.ndarray, list[str]], np.ndarray | None]


def _fkey(flt: dict) -> str:
    return json.dumps(flt, sort_keys=True, default=str)


def _merge(lists: list[list[list[tuple[int, float]]]], nq: int, k: int) -> list[list[tuple[int, float]]]:
    out = []
    for qi in range(nq):
        got = [x for lst in lists for x in lst[qi]]
        got.sort(key=lambda x: (-x[1], x[0]))  # ties by row: the same order however the index is split
        out.append(got[:k])
    return out


def _allowed(snap: Snapshot, seg: Segment, flt: dict, part: Partition) -> np.ndarray:
    rows = snap.rows_matching(flt, seg)
    return rows[rows % part[0] == part[1]] if part is not None else rows


def dense_rows(snap: Snapshot, vecs: np.ndarray, k: int, flt: dict, part: Partition = None,
               vectors_for: VectorsFor | None = None) -> list[list[tuple[int, float]]]:
    """Best-first (row, score) lists, k per query."""
    per_seg = []
    for seg in snap.segments:
        dense = seg.dense
        if not flt:
            d, i = dense.search(vecs, k, exclude=snap.exclude(seg))
            per_seg.append([[(int(r), float(s)) for r, s in zip(ri, di) if r >= 0] for di, ri in zip(d, i)])
            continue
        allowed = _allowed(snap, seg, flt, part)
        if len(allowed) == 0:
            continue
        if len(allowed) <= EXACT_FILTER_LIMIT:
            exact = _exact(snap, seg, vecs, flt, k, part, vectors_for)
            if exact is not None:
                per_seg.append(exact)
                continue
        want = min(k, len(allowed))
        for widen in (1, 4, 16, 64):
            d, i = dense.search(vecs, k, allowed=allowed, widen=widen)
            if dense.kind == "flat" or all(int((ri >= 0).sum()) >= want for ri in i):
                break
        per_seg.append([[(int(r), float(s)) for r, s in zip(ri, di) if r >= 0] for di, ri in zip(d, i)])
    return _merge(per_seg, len(vecs), k)


def _exact(snap: Snapshot, seg: Segment, vecs: np.ndarray, flt: dict, k: int, part: Partition,
           vectors_for: VectorsFor | None):
    """Exact inner products against the vectors of the segment's chunks matching the filter (None if they
    cannot be had). The (rows, vectors) matrix is memoised on the segment: gathering 10k vectors costs tens
    of ms, the product well under one, and a tenant's filter repeats on every query of that tenant."""
    def make():
        rows = seg.remember(("filter", _fkey(flt)), lambda: seg.store.rows_matching(flt))
        if part is not None:
            rows = rows[rows % part[0] == part[1]]
        # a shard actor's dense index holds some of the stored shards: rows % len(shards) no longer finds a
        # row's shard there unless it holds one
        mat = seg.dense.reconstruct(rows) if seg.partition is None or len(seg.dense.shards) == 1 else None
        if mat is None and vectors_for is not None:
            hashes = seg.store.hashes_for_rows(rows)
            mat = vectors_for(rows, [hashes[int(r)] for r in rows])
        return None if mat is None else (rows, np.ascontiguousarray(mat, dtype="float32"))
    got = seg.remember(("exact", _fkey(flt), part), make)
    if got is None:
        return None
    rows, mat = got
    if len(snap.dead_in(seg)):
        keep = ~np.isin(rows, snap.dead_in(seg))
        rows, mat = rows[keep], mat[keep]
    if not len(rows):
        return [[] for _ in vecs]
    scores = vecs @ mat.T
    out = []
    for s in scores:
        top = np.argpartition(-s, k - 1)[:k] if len(s) > k else np.arange(len(s))
        top = top[np.lexsort((rows[top], -s[top]))]
        out.append([(int(rows[j]), float(s[j])) for j in top])
    return out


def _mask(snap: Snapshot, seg: Segment, flt: dict, part: Partition) -> np.ndarray | None:
    """Which of the segment's chunks BM25 may return: live, matching the filter, in the partition."""
    sp = seg.sparse

    def fmask():
        m = np.zeros(sp.n, dtype=bool)
        rows = seg.remember(("filter", _fkey(flt)), lambda: seg.store.rows_matching(flt))
        m[sp.positions(rows)] = True
        return m

    def pmask():
        return sp.rows % part[0] == part[1]

    masks = [m for m in (snap.live_mask(seg),
                         seg.remember(("fmask", _fkey(flt)), fmask) if flt else None,
                         seg.remember(("pmask", part), pmask) if part is not None else None) if m is not None]
    if not masks:
        return None
    out = masks[0]
    for m in masks[1:]:
        out = out & m
    return out


def bm25_rows(snap: Snapshot, queries: list[str], k: int, flt: dict, part: Partition = None,
              check=None) -> list[list[tuple[int, float]]]:
    segs = snap.segments
    return sparse.search([s.sparse for s in segs], [_mask(snap, s, flt, part) for s in segs], queries, k, check)
