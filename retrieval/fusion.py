"""Hybrid fusion of dense and BM25 result lists (each a best-first list of (row, score))."""

from __future__ import annotations


def rrf(dense: list[tuple[int, float]], sparse: list[tuple[int, float]], dense_weight: float = 0.5,
        k: int = 60) -> list[tuple[int, float]]:
    """Weighted reciprocal-rank fusion: sum over lists of w / (k + rank), rank from 1."""
    score: dict[int, float] = {}
    for w, lst in ((dense_weight, dense), (1.0 - dense_weight, sparse)):
        for rank, (row, _) in enumerate(lst, 1):
            score[row] = score.get(row, 0.0) + w / (k + rank)
    return sorted(score.items(), key=lambda x: -x[1])


def _minmax(lst: list[tuple[int, float]]) -> dict[int, float]:
    if not lst:
        return {}
    vals = [s for _, s in lst]
    lo, hi = min(vals), max(vals)
    span = hi - lo
    return {r: ((s - lo) / span if span > 0 else 1.0) for r, s in lst}


def weighted(dense: list[tuple[int, float]], sparse: list[tuple[int, float]],
             dense_weight: float = 0.5) -> list[tuple[int, float]]:
    """Convex combination of min-max normalised scores (a row missing from a list scores 0 there)."""
    d, s = _minmax(dense), _minmax(sparse)
    rows = dict.fromkeys([r for r, _ in dense] + [r for r, _ in sparse])
    out = {r: dense_weight * d.get(r, 0.0) + (1.0 - dense_weight) * s.get(r, 0.0) for r in rows}
    return sorted(out.items(), key=lambda x: -x[1])


def fuse(method: str, dense, sparse, dense_weight: float = 0.5, rrf_k: int = 60):
    if method == "weighted":
        return weighted(dense, sparse, dense_weight)
    return rrf(dense, sparse, dense_weight, rrf_k)
