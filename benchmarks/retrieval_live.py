"""Live updates and the BM25 engine at scale, each a comparison in one run on one index.

1. BM25 engines on the same chunks: SQLite FTS5 (the engine this index used before; built here in a
   temporary file from the index's chunks, queried as it was: one statement per query) against the
   segment engine (retrieval/sparse.py: one sparse product per batch). Per-query p50 alone and in a batch
   of 16, and how often the two return the same top 10 (ties aside).
2. Add or delete one document: time until the next query sees it (p50), as a segment write against a
   full rewrite of the index (the same write followed by a full merge, which rewrites every file and its
   checksum: what each write cost when an index was one generation of files).
3. RSS of this process (the index open, searched and written).

The chunks are synthetic (Zipf-distributed words, random unit vectors: say so with any figure); queries
and new documents are embedded with the real embedder. Prints and records what it ran on: embedder
backend, index type, load average before and after each part.

    python benchmarks/retrieval_live.py --chunks 100000 [--index-type auto] [--updates 10]

Writes benchmarks/results/retrieval_live_n{chunks}.json and .png.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def load() -> float:
    return round(os.getloadavg()[0], 1)


def synthetic(n: int, dim: int, seed: int = 0):
    """n chunks of ~40 Zipf-distributed words (a 50k-word vocabulary) and n random unit vectors."""
    from retrieval.types import Chunk

    rng = np.random.default_rng(seed)
    vocab = [f"w{i}" for i in range(50_000)]
    ranks = np.minimum(rng.zipf(1.2, size=(n, 40)) - 1, len(vocab) - 1)
    chunks = [Chunk(f"c{i}", f"d{i // 4}", " ".join(vocab[j] for j in ranks[i]), f"title {i // 4}", "",
                    {"tenant": ["acme", "globex"][i % 2]}) for i in range(n)]
    vecs = rng.standard_normal((n, dim)).astype("float32")
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    queries = [" ".join(vocab[j] for j in np.minimum(rng.zipf(1.2, size=6) - 1, len(vocab) - 1)) for _ in range(200)]
    return chunks, vecs, queries


def p50(xs: list[float]) -> float:
    return round(statistics.median(xs) * 1000, 2)


def bm25_engines(idx, queries: list[str], workdir: Path) -> dict:
    import re

    with idx.reading() as snap:
        rows = np.concatenate([s.rows for s in snap.segments])
        chunks = snap.get_rows(rows)
    t0 = time.time()
    con = sqlite3.connect(str(workdir / "fts5.sqlite"))
    con.execute("CREATE VIRTUAL TABLE f USING fts5(title, text, tokenize='porter unicode61')")
    con.executemany("INSERT INTO f(rowid, title, text) VALUES (?,?,?)", [(r, c.title, c.text) for r, c in chunks.items()])
    con.commit()
    fts_build = time.time() - t0

    def fts(q: str, k: int):
        terms = " OR ".join(f'"{t}"' for t in dict.fromkeys(w.lower() for w in re.findall(r"\w+", q)))
        return con.execute("SELECT rowid, bm25(f, 0.5, 1.0) s FROM f WHERE f MATCH ? ORDER BY s LIMIT ?",
                           [terms, k]).fetchall()

    la0 = load()
    single_fts, single_new, same = [], [], 0
    for q in queries:
        t = time.perf_counter()
        want = fts(q, 10)
        single_fts.append(time.perf_counter() - t)
        with idx.reading() as snap:
            t = time.perf_counter()
            got = idx.candidates(snap, None, [q], 10, "bm25", {})[0]
            single_new.append(time.perf_counter() - t)
        same += {r for r, _ in got} == {r for r, _ in want} or \
            [round(s, 3) for _, s in got] == [round(-s, 3) for _, s in want]
    batch_fts, batch_new = [], []
    for i in range(0, len(queries) - 15, 16):
        part = queries[i:i + 16]
        t = time.perf_counter()
        for q in part:
            fts(q, 50)
        batch_fts.append((time.perf_counter() - t) / 16)
        with idx.reading() as snap:
            t = time.perf_counter()
            idx.candidates(snap, None, part, 50, "bm25", {})
            batch_new.append((time.perf_counter() - t) / 16)
    con.close()
    out = {"fts5_build_s": round(fts_build, 1), "fts5_p50_ms": p50(single_fts), "segments_p50_ms": p50(single_new),
           "fts5_batch16_per_query_p50_ms": p50(batch_fts), "segments_batch16_per_query_p50_ms": p50(batch_new),
           "same_top10": round(same / len(queries), 3), "load_before": la0, "load_after": load()}
    out["speedup_single"] = round(out["fts5_p50_ms"] / max(out["segments_p50_ms"], 1e-6), 1)
    out["speedup_batch16"] = round(out["fts5_batch16_per_query_p50_ms"] /
                                   max(out["segments_batch16_per_query_p50_ms"], 1e-6), 1)
    return out


def updates(idx, n: int, full_rewrites: int) -> dict:
    from retrieval.types import Document

    def visible(word: str) -> bool:
        return any(word in h.chunk.text for h in idx.search(word, k=3, mode="bm25"))

    la0 = load()
    add, delete = [], []
    for i in range(n):
        word = f"livezq{i}"
        t = time.perf_counter()
        idx.add_documents([Document(f"live{i}.md", f"A live document about {word} and its neighbours.")])
        assert visible(word)
        add.append(time.perf_counter() - t)
        t = time.perf_counter()
        idx.delete_documents([f"live{i}.md"])
        assert not visible(word)
        delete.append(time.perf_counter() - t)
    idx.wait_for_merges()
    la1 = load()
    full = []
    for i in range(full_rewrites):
        word = f"fullzq{i}"
        t = time.perf_counter()
        idx.add_documents([Document(f"full{i}.md", f"A rewritten document about {word}.")])
        idx.merge(full=True)
        assert visible(word)
        full.append(time.perf_counter() - t)
    return {"add_p50_ms": p50(add), "delete_p50_ms": p50(delete), "full_rewrite_p50_ms": p50(full),
            "updates": n, "full_rewrites": full_rewrites, "load_segments": [la0, la1], "load_full": [la1, load()],
            "add_speedup_vs_full_rewrite": round(p50(full) / max(p50(add), 1e-6), 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=100_000)
    ap.add_argument("--index-type", default="auto")
    ap.add_argument("--updates", type=int, default=10)
    ap.add_argument("--full-rewrites", type=int, default=3)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    a = ap.parse_args()
    from retrieval.config import IndexConfig
    from retrieval.index import RetrievalIndex

    work = Path(tempfile.mkdtemp(prefix="raft-live-"))
    try:
        print(f"load average {load()}; {os.cpu_count()} CPUs; synthetic chunks and vectors, real query embedder",
              flush=True)
        chunks, vecs, queries = synthetic(a.chunks, 384)
        t0 = time.time()
        idx = RetrievalIndex.from_vectors(work / "idx", chunks, vecs, IndexConfig(index_type=a.index_type,
                                                                                   background_merge=True))
        del vecs
        build_s = time.time() - t0
        idx.embed(["warm up"])
        info = {"chunks": a.chunks, "index_type": idx.manifest["faiss"]["type"],
                "embedder": idx.embedder_name, "embed_backend": getattr(idx.embedder, "backend", None),
                "build_s": round(build_s, 1), "cpus": os.cpu_count(), "synthetic": True}
        print(f"  {info}", flush=True)
        res = {"info": info}
        res["bm25"] = bm25_engines(idx, queries, work)
        print(f"  bm25: {res['bm25']}", flush=True)
        res["updates"] = updates(idx, a.updates, a.full_rewrites)
        print(f"  updates: {res['updates']}", flush=True)
        res["rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        print(f"  peak RSS {res['rss_mb']} MB (load {load()})")
        idx.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"retrieval_live_n{a.chunks}"
    stem.with_suffix(".json").write_text(json.dumps(res, indent=2))
    _plot(res, stem.with_suffix(".png"))
    print(f"wrote {stem}.json and .png")
    return 0


def _plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    b, u = res["bm25"], res["updates"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.bar(["FTS5\nalone", "segments\nalone", "FTS5\nbatch 16", "segments\nbatch 16"],
            [b["fts5_p50_ms"], b["segments_p50_ms"], b["fts5_batch16_per_query_p50_ms"],
             b["segments_batch16_per_query_p50_ms"]], color=["grey", "C0", "grey", "C0"])
    ax1.set_ylabel("BM25 ms per query (p50)")
    ax1.set_title(f"BM25 at {res['info']['chunks']:,} chunks (load {b['load_before']})")
    ax2.bar(["add 1 doc", "delete 1 doc", "full rewrite"],
            [u["add_p50_ms"] / 1000, u["delete_p50_ms"] / 1000, u["full_rewrite_p50_ms"] / 1000],
            color=["C0", "C0", "grey"])
    ax2.axhline(1.0, color="red", ls="--", lw=1, label="target 1 s")
    ax2.set_ylabel("seconds until the next query sees it (p50)")
    ax2.set_title(f"live updates, {res['info']['index_type']} (load {u['load_segments'][0]})")
    ax2.legend()
    fig.suptitle("synthetic chunks and vectors; real query embedder", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
