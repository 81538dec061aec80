"""Choose how much the trained cross-encoder is trusted against the search it reranks.

The rerank stage orders a search's candidates by weight x the cross-encoder's score + (1 - weight) x the
search's rank (retrieval.rerank.fuse_scores). After training, `raft rerank train` searches the index for each
validation question, as the served stage will, scores the first `candidates` hits once, and picks the weight
of a grid (0, 0.1, ..., 1) that ranks the question's oracle chunks best (MRR@10; a tie goes to the lower
weight, closer to the search). Weight 0 is the search's own order: a reranker that learned little is then
harmless instead of replacing a good order with a poor one. A weight above 0 is only taken when its gain over
the search is more than noise: the lower end of a one-sided 95% paired bootstrap interval of the MRR@10 gain,
over the validation questions, must be above 0. One question of ten ranked better is not enough evidence to
reorder every query served. The choice and the figures behind it go into raft_rerank.json, and the stage uses
that weight unless one is configured.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from raft.eval import metrics as eval_metrics
from raft.rerank.pairs import read_records
from retrieval.rerank import fuse_scores, pair_text

GRID = tuple(round(i / 10, 1) for i in range(11))


def ranking_metrics(orders: list[list[str]], golds: list[set[str]]) -> dict[str, float]:
    """recall@5 (a gold id among the first 5) and MRR@10 (first gold id) over the queries, to 4 decimals."""
    return {k: round(v, 4) for k, v in eval_metrics.ranking_metrics(orders, golds).items()}


def _reciprocal_ranks(orders: list[list[str]], golds: list[set[str]]) -> np.ndarray:
    return np.array([eval_metrics.reciprocal_rank(o, g, cutoff=10) or 0.0 for o, g in zip(orders, golds)])


def gain_lower_bound(gain: np.ndarray, resamples: int = 2000, seed: int = 0) -> float:
    """The 5th percentile of the mean of `gain` (one value per question) over paired bootstrap resamples: the
    lower end of a one-sided 95% interval."""
    if gain.size == 0:
        return 0.0
    rows = np.random.default_rng(seed).integers(0, gain.size, size=(resamples, gain.size))
    return float(np.quantile(gain[rows].mean(axis=1), 0.05))


def choose_weight(ce_scores: list[np.ndarray], ids: list[list[str]], golds: list[set[str]],
                  grid: tuple[float, ...] = GRID) -> dict[str, Any]:
    """Of the grid weights whose MRR@10 gain over the search (weight 0) has a 95% lower bound above 0, the one
    with the best MRR@10 (ties: the lowest); weight 0 when none has. Returns it with the metrics at 0, at 1 and
    at it. `ce_scores[i]` scores `ids[i]`, the i-th query's candidates in the search's order."""
    by_weight, rr = {}, {}
    for w in grid:
        orders = [[c[j] for j in np.argsort(-fuse_scores(s, w), kind="stable")] for s, c in zip(ce_scores, ids)]
        by_weight[w] = ranking_metrics(orders, golds)
        rr[w] = _reciprocal_ranks(orders, golds)
    base = rr.get(0.0, np.zeros(len(golds)))
    lower = {w: round(gain_lower_bound(rr[w] - base), 4) for w in grid if w != 0.0}
    earned = [w for w in grid if w == 0.0 or lower[w] > 0]
    best = max(earned, key=lambda w: (by_weight[w]["mrr@10"], by_weight[w]["recall@5"], -w)) if earned else 0.0
    top = max(grid, key=lambda w: (by_weight[w]["mrr@10"], by_weight[w]["recall@5"], -w))
    out = {"weight": best, "search": by_weight[0.0] if 0.0 in by_weight else None,
           "reranker_alone": by_weight.get(1.0), "chosen": by_weight[best],
           "mrr@10_by_weight": {str(w): m["mrr@10"] for w, m in by_weight.items()},
           "mrr@10_gain_lower_bound": {str(w): b for w, b in lower.items()}}
    if top != best:  # the best-scoring weight's lead over the search is within the noise of these questions
        out["not_significant"] = {"weight": top, "mrr@10": by_weight[top]["mrr@10"], "gain_lower_bound": lower[top],
                                  "questions": len(golds)}
    return out


def tune_on_split(model, dataset: Path, split: str, manifest: dict, index_dir: str | None, candidates: int,
                  batch_size: int = 64) -> dict[str, Any]:
    """Search `split`'s questions in the dataset's index, score the first `candidates` hits with `model` (a
    sentence-transformers CrossEncoder) and choose the weight. Returns {"weight": None, "reason": ...} when
    there is nothing to tune on."""
    from retrieval.index import RetrievalIndex

    index = Path(index_dir) if index_dir else dataset / "index"
    if not (index / "manifest.json").is_file():
        return {"weight": None, "reason": f"no index at {index} to search (set index_dir)"}
    recs = [r for r in read_records(dataset, split, manifest) if r.get("oracle_ids")]
    if not recs:
        return {"weight": None, "reason": f"split {split!r} has no question with an oracle"}
    idx = RetrievalIndex.open(index, verify=False)
    try:
        hits = idx.search_batch([r["question"] for r in recs], k=candidates)
    finally:
        idx.close()
    pairs = [(r["question"], pair_text(h.chunk)) for r, lst in zip(recs, hits) for h in lst]
    flat = np.asarray(model.predict(pairs, batch_size=batch_size, show_progress_bar=False)).reshape(-1) \
        if pairs else np.zeros(0)
    scores, at = [], 0
    for lst in hits:
        scores.append(flat[at:at + len(lst)].astype("float64"))
        at += len(lst)
    out = choose_weight(scores, [[h.chunk.chunk_id for h in lst] for lst in hits],
                        [set(r["oracle_ids"]) for r in recs])
    return {**out, "split": split, "questions": len(recs), "candidates": candidates}
