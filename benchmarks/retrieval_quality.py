"""Retrieval quality on the shared QA sets: dense vs BM25 vs hybrid (RRF and weighted fusion).

For each set under --data (folders with corpus.jsonl + questions.jsonl) it builds an index (the
embedding cache makes reruns cheap), retrieves candidates once per retriever, and scores fusions
offline from those candidates. recall@k counts a question as found when any gold passage is among the
top-k distinct documents (the definition behind the reference figures in data/README.md);
full_recall@k is the fraction of gold passages found; MRR@10 uses the first gold passage.

    python benchmarks/retrieval_quality.py [--data /work/shared/data] [--sets hotpotqa_hippo ...]

Writes benchmarks/results/retrieval_quality.json and .png and prints hybrid / best-single ratios.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from raft.eval.metrics import ranking_metrics  # noqa: E402

REFERENCE = {"gorilla_apibench": {"dense": 0.185, "bm25": 0.249}, "hotpotqa_hippo": {"dense": 0.97, "bm25": 0.98}}
WEIGHTS = (0.3, 0.4, 0.5, 0.6, 0.7)


def metrics(ranked_docs: list[list[str]], golds: list[set[str]]) -> dict[str, float]:
    return ranking_metrics(ranked_docs, golds, hit_ks=(1, 5, 10), full_recall_ks=(5,))


def run_set(folder: Path, work: Path, ncand: int, cfg_overrides: dict) -> dict:
    from retrieval.config import IndexConfig
    from retrieval.fusion import fuse
    from retrieval.index import RetrievalIndex

    cfg = IndexConfig(**cfg_overrides)
    t0 = time.time()
    idx = RetrievalIndex.build(folder / "corpus.jsonl", work / folder.name, cfg)
    build_s = time.time() - t0
    qs = [json.loads(x) for x in (folder / "questions.jsonl").read_text().splitlines() if x.strip()]
    golds = [set(q["gold_ids"]) for q in qs]
    t0 = time.time()
    vecs = idx.embed([q["question"] for q in qs])
    dense_hits = idx.search_vectors(vecs, ncand)
    sparse_hits = [idx.search(q["question"], k=ncand, mode="bm25") for q in qs]
    search_s = time.time() - t0
    # best-first (chunk id, score) lists, the form the fusions take
    dense = [[(h.chunk.chunk_id, h.score) for h in hits] for hits in dense_hits]
    sparse = [[(h.chunk.chunk_id, h.score) for h in hits] for hits in sparse_hits]
    doc_of = {h.chunk.chunk_id: h.chunk.doc_id for hits in dense_hits + sparse_hits for h in hits}

    def docs(lst):
        return list(dict.fromkeys(doc_of[c] for c, _ in lst))

    res = {"dense": metrics([docs(d) for d in dense], golds), "bm25": metrics([docs(s) for s in sparse], golds)}
    for w in WEIGHTS:
        for method in ("rrf", "weighted"):
            fused = [fuse(method, d, s, w, cfg.rrf_k) for d, s in zip(dense, sparse)]
            res[f"hybrid_{method}_w{w}"] = metrics([docs(f) for f in fused], golds)
    default = f"hybrid_{cfg.fusion}_w{cfg.dense_weight}"
    res["hybrid"] = res[default]
    return {"questions": len(qs), "documents": idx.build_summary["documents"], "chunks": len(idx),
            "build_seconds": round(build_s, 1), "search_seconds": round(search_s, 2), "default_hybrid": default,
            "modes": res}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="/work/shared/data")
    ap.add_argument("--sets", nargs="*", help="set folder names (default: every folder with corpus.jsonl)")
    ap.add_argument("--work", default="/tmp/raft_retrieval_quality", help="where the indexes are built")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--candidates", type=int, default=50)
    ap.add_argument("overrides", nargs="*", help="IndexConfig overrides key=value (e.g. chunk_size=256)")
    a = ap.parse_args()
    import yaml

    overrides = {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in a.overrides)}
    data = Path(a.data)
    sets = a.sets or sorted(p.name for p in data.iterdir() if (p / "corpus.jsonl").exists())
    results = {}
    for name in sets:
        print(f"== {name}", flush=True)
        results[name] = r = run_set(data / name, Path(a.work), a.candidates, overrides)
        m = r["modes"]
        best_single = max(m["dense"]["recall@5"], m["bm25"]["recall@5"])
        print(f"   {r['documents']} docs, {r['chunks']} chunks, {r['questions']} questions, build {r['build_seconds']}s")
        for mode in ("dense", "bm25", "hybrid"):
            x = m[mode]
            print(f"   {mode:<7} R@1 {x['recall@1']:.3f}  R@5 {x['recall@5']:.3f}  R@10 {x['recall@10']:.3f}  "
                  f"MRR@10 {x['mrr@10']:.3f}  fullR@5 {x['full_recall@5']:.3f}")
        ratio = m["hybrid"]["recall@5"] / best_single if best_single else float("nan")
        ref = REFERENCE.get(name)
        print(f"   hybrid/best-single recall@5 = {ratio:.3f}" + (f"; reference dense {ref['dense']} bm25 {ref['bm25']}"
                                                                 if ref else ""), flush=True)
    # which fusion setting is best on average (how the defaults were chosen)
    keys = [k for k in next(iter(results.values()))["modes"] if k.startswith("hybrid_")]
    avg = {k: sum(r["modes"][k]["recall@5"] + r["modes"][k]["mrr@10"] for r in results.values()) / (2 * len(results))
           for k in keys}
    best = max(avg, key=avg.get)
    print(f"best fusion on average (mean of recall@5 and MRR@10): {best} ({avg[best]:.4f})")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"sets": results, "fusion_average": avg, "best_fusion": best, "config_overrides": overrides,
               "metric_note": "recall@k = any gold passage in top-k distinct documents", "reference": REFERENCE}
    (out / "retrieval_quality.json").write_text(json.dumps(payload, indent=2))
    _plot(results, out / "retrieval_quality.png")
    print(f"wrote {out / 'retrieval_quality.json'} and .png")
    return 0


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    modes = ("dense", "bm25", "hybrid")
    fig, ax = plt.subplots(figsize=(max(6, 1.8 * len(names)), 4))
    w = 0.27
    for i, mode in enumerate(modes):
        ax.bar([j + (i - 1) * w for j in range(len(names))], [results[n]["modes"][mode]["recall@5"] for n in names],
               w, label=mode)
    ax.set_xticks(range(len(names)), names, rotation=15)
    ax.set_ylabel("recall@5 (any gold in top 5)")
    ax.set_ylim(0, 1.05)
    ax.legend()
    ax.set_title("retrieval quality: dense vs BM25 vs hybrid")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
