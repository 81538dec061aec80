"""`raft build` throughput: teacher answers/s against a fixed-latency OpenAI-compatible endpoint, and
batched distractor mining on 100k synthetic chunks.

1. A local endpoint (its own process, asyncio, HTTP/1.1 keep-alive) answers every chat completion after a
   fixed delay (default 200 ms) with a valid RAFT answer. N questions go through the builder's real answer
   path (OpenAITeacher -> quote verification -> SQLite cache) at concurrency 1, 8 and 64; the ideal rate
   is concurrency / delay, the target at 64 is >= 90 % of it. A bare asyncio socket client (no JSON, no
   checks, no cache) runs the same load right after, as the ceiling this machine allows at that moment.
2. Mining: 100k chunks with random unit vectors (dim 384, like MiniLM) in a FAISS IVF-Flat index (random
   vectors are HNSW's worst case: building it alone took over 3 minutes here), one question per chunk; all
   100k questions mined with
   raft.data.mixing.mine_distractors (target <= 60 s on 2 cores). Batched search is compared with
   one-query-at-a-time search on a subset.

Writes benchmarks/results/build_throughput.json and .png; prints the ratios.
Run: python benchmarks/build_throughput.py [--delay 0.2] [--chunks 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ORACLE = "The Coral Hall was built in 1655 from white limestone quarried on the island of Bream."
ANSWER = ("The context says when the hall was built. ##begin_quote## The Coral Hall was built in 1655 "
          "##end_quote## <ANSWER>: 1655")


# ---------------------------------------------------------------- fixed-latency endpoint (own process)
def _serve(port: int, delay: float) -> None:
    body = json.dumps({"id": "b", "object": "chat.completion", "model": "bench",
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": ANSWER},
                                    "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 50, "completion_tokens": 20, "total_tokens": 70}}).encode()
    models = b'{"object":"list","data":[{"id":"bench","object":"model"}]}'

    def response(payload: bytes) -> bytes:
        return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                + str(len(payload)).encode() + b"\r\n\r\n" + payload)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                if length:
                    await reader.readexactly(length)
                if head.startswith(b"GET"):
                    writer.write(response(models))
                else:
                    await asyncio.sleep(delay)
                    writer.write(response(body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
        async with server:
            await server.serve_forever()

    _run_loop(main())


def _run_loop(coro):
    try:  # the same event loop `raft build` uses
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


async def _raw_client(port: int, n: int, c: int) -> float:
    """The machine's ceiling: a bare asyncio HTTP/1.1 client over c keep-alive sockets (no JSON, no checks)."""
    body = json.dumps({"model": "bench", "messages": [{"role": "user", "content": "q"}]}).encode()
    req = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    pool: asyncio.Queue = asyncio.Queue()
    for _ in range(c):
        pool.put_nowait(await asyncio.open_connection("127.0.0.1", port))

    async def one() -> None:
        r, w = await pool.get()
        w.write(req)
        await w.drain()
        head = await r.readuntil(b"\r\n\r\n")
        length = next(int(x.split(b":", 1)[1]) for x in head.split(b"\r\n") if x.lower().startswith(b"content-length"))
        await r.readexactly(length)
        pool.put_nowait((r, w))

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    dt = time.perf_counter() - t0
    while not pool.empty():
        pool.get_nowait()[1].close()
    return dt


def bench_teacher(delay: float, levels: list[int], seconds_per_level: float) -> list[dict]:
    from raft.data.builder import Builder, Item
    from raft.data.cache import TeacherCache
    from raft.data.config import BuildConfig
    from raft.data.teachers import OpenAITeacher
    from raft.netutil import free_port, wait_healthy

    port = free_port()
    proc = mp.get_context("spawn").Process(target=_serve, args=(port, delay), daemon=True)
    proc.start()
    url = f"http://127.0.0.1:{port}/v1"
    wait_healthy(f"{url}/models", timeout=10, proc=proc, interval=0.1)  # any GET answers the model list
    rows = []
    try:
        for c in levels:
            n = max(c, int(round(seconds_per_level * c / delay)))
            cfg = BuildConfig.model_validate({"progress": False, "teacher": {
                "kind": "openai", "base_url": url, "model": "bench", "concurrency": c, "timeout_s": 30}})
            with tempfile.TemporaryDirectory() as tmp:
                b = Builder(cfg, tmp)
                b.cache = TeacherCache(Path(tmp) / "cache.sqlite")

                async def run() -> tuple[float, list[bool]]:
                    b.teacher = OpenAITeacher(cfg.teacher)
                    await b.teacher.check()
                    items = [Item(f"q{i}", f"When was the Coral Hall built? (variant {i})", ["c"], ["d"])
                             for i in range(n)]
                    t0 = time.perf_counter()
                    oks = await asyncio.gather(*(b.answer(it, [ORACLE]) for it in items))
                    dt = time.perf_counter() - t0
                    await b.teacher.aclose()
                    return dt, oks

                dt, oks = _run_loop(run())
                b.cache.close()
            ideal = c / delay
            rows.append({"concurrency": c, "questions": n, "kept": int(sum(oks)), "seconds": round(dt, 3),
                         "questions_per_s": round(n / dt, 1), "ideal_per_s": round(ideal, 1),
                         "ratio_to_ideal": round(n / dt / ideal, 3)})
            raw = _run_loop(_raw_client(port, n, c))
            rows[-1].update(raw_client_per_s=round(n / raw, 1), raw_client_ratio_to_ideal=round(n / raw / ideal, 3),
                            ratio_to_raw_client=round(raw / dt, 3))
            print(f"teacher  concurrency {c:>3}: {n / dt:7.1f} q/s  ideal {ideal:6.1f}  ratio {n / dt / ideal:.3f}"
                  f"  (kept {sum(oks)}/{n}); bare-socket client {n / raw:7.1f} q/s = ratio {n / raw / ideal:.3f}; "
                  f"builder/bare {raw / dt:.3f}", flush=True)
    finally:
        proc.terminate()
        proc.join(5)
    return rows


# ---------------------------------------------------------------- distractor mining on synthetic chunks
class SyntheticIndex:
    """The RetrievalIndex methods mining uses, over random vectors in a FAISS IVF-Flat index."""

    def __init__(self, n: int, dim: int, seed: int = 0):
        import faiss

        from retrieval.types import Chunk, Hit

        self._Hit = Hit
        rng = np.random.default_rng(seed)
        self.vectors = rng.standard_normal((n, dim), dtype=np.float32)
        self.vectors /= np.linalg.norm(self.vectors, axis=1, keepdims=True)
        topics = ["harbour", "granite", "orchard", "comet", "ledger", "violin", "glacier", "lantern"]
        self.chunks = [Chunk(f"c{i:06d}", f"d{i // 4:06d}",
                             f"Passage {i} about the {topics[i % 8]} of region {i // 8}: fact f{i}x is stated here.",
                             f"Doc {i // 4}") for i in range(n)]
        self.by_id = {c.chunk_id: c for c in self.chunks}
        t0 = time.perf_counter()
        nlist = max(16, int(4 * np.sqrt(n)))
        quantizer = faiss.IndexFlatIP(dim)
        self.index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        self.index.train(self.vectors[rng.choice(n, min(n, 40 * nlist), replace=False)])
        self.index.add(self.vectors)
        self.index.nprobe = 8
        self.desc = f"IVFFlat nlist={nlist} nprobe=8"
        self.build_seconds = time.perf_counter() - t0

    def embed(self, texts):  # mining is given precomputed vectors; embedding is the embedder's benchmark
        raise NotImplementedError

    def search_vectors(self, vectors, k, filter=None):
        scores, rows = self.index.search(np.ascontiguousarray(vectors, dtype=np.float32), k)
        return [[self._Hit(self.chunks[r], float(s)) for s, r in zip(srow, rrow) if r >= 0]
                for srow, rrow in zip(scores, rows)]

    def get(self, ids):
        return [self.by_id[i] for i in ids]

    def chunk_ids(self):
        return [c.chunk_id for c in self.chunks]


def bench_mining(n: int, dim: int, subset: int) -> dict:
    import faiss

    from raft.data.config import MixConfig
    from raft.data.mixing import MineItem, mine_distractors
    from raft.data.splits import assign_splits
    from raft.data.config import SplitConfig

    faiss.omp_set_num_threads(min(2, os.cpu_count() or 1))
    idx = SyntheticIndex(n, dim)
    print(f"mining   {idx.desc} index over {n} random {dim}-d vectors built in {idx.build_seconds:.1f}s", flush=True)
    rng = np.random.default_rng(1)
    # a question vector: its chunk's vector plus noise (so the oracle is its nearest neighbour)
    q = idx.vectors + 0.3 * rng.standard_normal(idx.vectors.shape, dtype=np.float32) / np.sqrt(dim)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    items = [MineItem(f"q{i}", "", [c.chunk_id], [f"f{i}x"]) for i, c in enumerate(idx.chunks)]
    doc_split = assign_splits((c.doc_id for c in idx.chunks), [[c.doc_id] for c in idx.chunks], SplitConfig(), 0)
    for it, c in zip(items, idx.chunks):
        it.split = doc_split[c.doc_id]
    cfg = MixConfig()
    ids = idx.chunk_ids()
    t0, c0 = time.perf_counter(), time.process_time()
    res = mine_distractors(idx, items, ids, cfg, seed=0, doc_split=doc_split, vectors=q)
    full, cpu = time.perf_counter() - t0, time.process_time() - c0
    t0 = time.perf_counter()
    for i in range(0, n, cfg.batch_size):  # the FAISS part alone, for scale
        idx.index.search(q[i:i + cfg.batch_size], cfg.mine_k)
    faiss_s = time.perf_counter() - t0
    ok = len(res.distractors)
    print(f"mining   {n} questions (D={cfg.num_distractors}, k={cfg.mine_k}, within-split) in {full:.1f}s "
          f"= {n / full:,.0f} q/s; target <= 60 s: ratio {full / 60:.2f}; mined {ok}/{n}; process CPU {cpu:.1f}s "
          f"(FAISS search alone {faiss_s:.1f}s wall); load average {os.getloadavg()[0]:.1f}", flush=True)
    # batched vs one query per search call, on a subset
    sub = items[:subset]
    t0 = time.perf_counter()
    mine_distractors(idx, sub, ids, cfg.model_copy(update={"batch_size": 1}), 0, doc_split, vectors=q[:subset])
    single = time.perf_counter() - t0
    t0 = time.perf_counter()
    mine_distractors(idx, sub, ids, cfg, 0, doc_split, vectors=q[:subset])
    batched = time.perf_counter() - t0
    print(f"mining   {subset} questions: batched {batched:.2f}s vs one-by-one {single:.2f}s "
          f"(speed-up {single / batched:.1f}x)", flush=True)
    return {"chunks": n, "dim": dim, "index": idx.desc, "index_build_seconds": round(idx.build_seconds, 1),
            "questions": n, "mined": ok, "seconds": round(full, 2), "process_cpu_seconds": round(cpu, 2),
            "faiss_search_seconds": round(faiss_s, 2), "load_average_after": os.getloadavg(), "questions_per_s": round(n / full, 1),
            "target_seconds": 60, "ratio_to_target": round(full / 60, 3), "stats": dict(res.stats),
            "subset": subset, "subset_batched_seconds": round(batched, 3),
            "subset_single_seconds": round(single, 3), "batching_speedup": round(single / batched, 2)}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    t = result["teacher"]
    xs = [r["concurrency"] for r in t]
    a.plot(xs, [r["questions_per_s"] for r in t], "o-", label="measured")
    a.plot(xs, [r["ideal_per_s"] for r in t], "k--", label="ideal = concurrency / delay")
    a.plot(xs, [r.get("raw_client_per_s", 0) for r in t], "s:", label="bare-socket client (machine ceiling)")
    a.set_xscale("log", base=2)
    a.set_yscale("log")
    a.set_xlabel("concurrency")
    a.set_ylabel("answers / s")
    a.set_title(f"teacher at {result['delay_s'] * 1000:.0f} ms latency")
    a.legend()
    m = result.get("mining")
    if m:
        b.bar(["wall", "process CPU", "FAISS search\n(wall)", "target"],
              [m["seconds"], m.get("process_cpu_seconds", 0), m.get("faiss_search_seconds", 0), m["target_seconds"]],
              color=["tab:blue", "tab:green", "tab:orange", "tab:gray"])
        b.set_ylabel("seconds")
        b.set_title(f"mining {m['questions']:,} questions over {m['chunks']:,} chunks")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--delay", type=float, default=0.2, help="endpoint latency in seconds")
    ap.add_argument("--levels", default="1,8,64", help="concurrency levels")
    ap.add_argument("--seconds", type=float, default=3.0, help="target duration of each level")
    ap.add_argument("--chunks", type=int, default=100_000, help="synthetic chunks for mining (0 = skip)")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--subset", type=int, default=2000)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": "build_throughput", "host": platform.node(), "cpus": os.cpu_count(),
              "load_average_at_start": os.getloadavg(), "delay_s": args.delay}
    result["teacher"] = bench_teacher(args.delay, [int(x) for x in args.levels.split(",")], args.seconds)
    if args.chunks:
        result["mining"] = bench_mining(args.chunks, args.dim, args.subset)
    (out / "build_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out / "build_throughput.png")
    print(f"wrote {out / 'build_throughput.json'} and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
