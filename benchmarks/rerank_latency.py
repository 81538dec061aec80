"""What the rerank stage costs per query on this machine, by cross-encoder depth and pair length, in one run.

The stage scores `--candidates` (question, passage) pairs per query; its cost grows with the layers of the
cross-encoder (`raft rerank train layers=N`) and the tokens per pair (`max_length`). For each (layers,
max_length) this cuts the bundled all-MiniLM-L6-v2 to its first N layers, saves it as a cross-encoder (an
untrained head: latency does not depend on the weights' values) and times `retrieval.Reranker.score_pairs`,
the stage's own call, on the same queries; the configurations take turns query by query, so a change in the
machine's load touches them all alike. Passages are the quickstart corpus's text, long enough to fill every
pair to max_length. Prints p50 per configuration and its speed-up over the full model at the same max_length;
what each depth costs in ranking quality is `rerank_gain.py --layers N`'s to measure.

    python benchmarks/rerank_latency.py                          # layers 6,3,2,1 x max_length 128,64
    python benchmarks/rerank_latency.py --layers 6,2 --max-lengths 128 --queries 50

Writes benchmarks/results/rerank_latency.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from rerank_gain import host_load, pct  # noqa: E402


def passages(n: int, words: int = 160) -> list[str]:
    """`n` passages of `words` words cut from the quickstart corpus (more than 128 tokens each)."""
    text = " ".join(p.read_text(encoding="utf-8") for p in sorted((REPO / "raft/quickstart/corpus").glob("*.md")))
    toks = text.split()
    return [" ".join(toks[(i * 37) % (len(toks) - words):][:words]) for i in range(n)]


def save_cut_model(layers: int, max_length: int, out: Path) -> Path:
    from raft.rerank.config import RerankTrainConfig
    from raft.rerank.trainer import _load_base

    model = _load_base(RerankTrainConfig(layers=layers, max_length=max_length, device="cpu"))
    model.save_pretrained(str(out))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", default="6,3,2,1", help="cross-encoder depths to time")
    p.add_argument("--max-lengths", default="128,64", help="tokens per (question, passage) pair")
    p.add_argument("--candidates", type=int, default=40, help="pairs scored per query")
    p.add_argument("--queries", type=int, default=30, help="timed queries per configuration")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: one per CPU core)")
    p.add_argument("--results", default="benchmarks/results", help="where rerank_latency.json goes ('' = none)")
    args = p.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    from retrieval import Reranker

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    depths = [int(x) for x in args.layers.split(",")]
    lengths = [int(x) for x in args.max_lengths.split(",")]
    pool = passages(args.candidates + args.queries)
    questions = [f"Which {w} does the passage about the Veloria archipelago name?" for w in pool[-args.queries:]]
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="rerank_latency-") as tmp:
        rerankers = {(n, m): Reranker(str(save_cut_model(n, m, Path(tmp) / f"l{n}_m{m}")), args.candidates,
                                      max_length=m, device="cpu").load()
                     for m in lengths for n in depths}
        for r in rerankers.values():  # warm up: the first pass pays allocation and tokenizer start-up
            r.score_pairs([(questions[0], t) for t in pool[:args.candidates]])
        ms: dict[tuple[int, int], list[float]] = {c: [] for c in rerankers}
        for i, q in enumerate(questions):
            pairs = [(q, pool[(i + j) % len(pool)]) for j in range(args.candidates)]
            for c, r in rerankers.items():
                t = time.perf_counter()
                r.score_pairs(pairs)
                ms[c].append((time.perf_counter() - t) * 1000)
    load_after = os.getloadavg()
    p50 = {c: statistics.median(xs) for c, xs in ms.items()}
    rows = [{"layers": n, "max_length": m, "p50_ms": round(p50[(n, m)], 1), "p90_ms": round(pct(ms[(n, m)], 90), 1),
             f"speedup_vs_{max(depths)}_layers": round(p50[(max(depths), m)] / p50[(n, m)], 2)} for n, m in ms]
    result = {"rows": rows, "candidates": args.candidates, "queries": args.queries, "cpus": os.cpu_count(),
              "torch_threads": torch.get_num_threads(), **host_load(load_before, load_after), "args": vars(args)}
    print(f"\n{args.candidates} candidates per query, {args.queries} queries, {os.cpu_count()} CPUs\n")
    print(f"| layers | max_length | p50 ms | p90 ms | speed-up vs {max(depths)} layers |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['layers']} | {r['max_length']} | {r['p50_ms']:.0f} | {r['p90_ms']:.0f} | "
              f"{r[f'speedup_vs_{max(depths)}_layers']:.2f}x |")
    if args.results:
        dest = REPO / args.results
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "rerank_latency.json").write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwritten to {dest / 'rerank_latency.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
