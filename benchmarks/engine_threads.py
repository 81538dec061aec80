"""Two batched CPU engines sharing the cores, as in the quickstart's evaluation: `--threads 1` on both against
`--threads auto` on both, in one run.

The quickstart serves the base model and the RAFT model from two batched engines on the same 2 cores, and its
evaluation keeps both busy until the base model's share of the questions is done, then only the RAFT engine.
This replays that shape with one model served twice: engine A first answers a few requests alone (the demo
questions), then A gets `--requests` and B half as many, all at once at `--concurrency` each. The same
requests go to both configurations; the figure is the wall time until both engines are done, and its ratio.

    python benchmarks/engine_threads.py                       # 32 + 16 requests, 64 new tokens each
    python benchmarks/engine_threads.py --requests 8 --max-tokens 32

Writes benchmarks/results/engine_threads.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from engine_throughput import prompts, start  # noqa: E402

from raft.netutil import free_port, wait_healthy  # noqa: E402


async def load(urls: dict[str, str], model: str, demo: list, work: dict[str, list], concurrency: int,
               max_tokens: int) -> dict[str, float]:
    """The demo requests on engine A alone, then every engine's share at once; seconds until each is done."""
    import openai

    clients = {n: openai.AsyncOpenAI(base_url=u, api_key="EMPTY", timeout=3600, max_retries=0)
               for n, u in urls.items()}

    async def ask(name: str, m: list) -> None:
        await clients[name].chat.completions.create(model=model, messages=m, max_tokens=max_tokens, temperature=0)

    for n in urls:  # load each model before anything is timed
        await ask(n, demo[0])
    for m in demo:  # engine A alone: with --threads auto it earns both cores here
        await ask("A", m)
    t0 = time.perf_counter()
    done: dict[str, float] = {}

    async def share(name: str) -> None:
        sem = asyncio.Semaphore(concurrency)

        async def one(m):
            async with sem:
                await ask(name, m)

        await asyncio.gather(*[one(m) for m in work[name]])
        done[name] = round(time.perf_counter() - t0, 2)

    await asyncio.gather(*[share(n) for n in work])
    for c in clients.values():
        await c.close()
    return done


def run_config(threads: str, path: str, args, logs: Path) -> dict:
    procs, urls = [], {}
    try:
        for name in ("A", "B"):
            port = free_port()
            argv = [sys.executable, "-m", "serving.batched", path, "--host", "127.0.0.1", "--port", str(port),
                    "--device", "cpu", "--max-batch", str(args.concurrency), "--threads", threads]
            procs.append(start(argv, logs / f"{threads}-{name}.log"))
            wait_healthy(f"http://127.0.0.1:{port}/health", timeout=600, proc=procs[-1])
            urls[name] = f"http://127.0.0.1:{port}/v1"
        msgs = prompts(args.requests + args.requests // 2 + args.demo)
        work = {"A": msgs[:args.requests], "B": msgs[args.requests:args.requests + args.requests // 2]}
        done = asyncio.run(load(urls, path, msgs[-args.demo:], work, args.concurrency, args.max_tokens))
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(timeout=30)
    return {"wall_s": max(done.values()), "engine_done_s": done}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--requests", type=int, default=32, help="engine A's share (engine B gets half as many)")
    ap.add_argument("--demo", type=int, default=3, help="requests engine A answers alone first")
    ap.add_argument("--concurrency", type=int, default=8, help="requests in flight per engine (= --max-batch)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "engine_threads.json"))
    args = ap.parse_args()

    from raft.model_source import resolve_model

    path = resolve_model(args.model)
    logs = Path(tempfile.mkdtemp(prefix="engine-threads-"))
    load_before = os.getloadavg()
    results = {}
    for threads in ("1", "auto"):  # one configuration at a time: each needs the cores to itself
        results[threads] = run_config(threads, path, args, logs)
        r = results[threads]
        print(f"--threads {threads:<5} both engines done in {r['wall_s']:7.1f} s  (A {r['engine_done_s']['A']:.1f} s, "
              f"B {r['engine_done_s']['B']:.1f} s)", flush=True)
    ratio = round(results["1"]["wall_s"] / results["auto"]["wall_s"], 2)
    summary = {"model": args.model, "requests": {"A": args.requests, "B": args.requests // 2, "demo": args.demo},
               "concurrency": args.concurrency, "max_tokens": args.max_tokens, "cpus": os.cpu_count(),
               "load_average_before": [round(x, 2) for x in load_before],
               "load_average_after": [round(x, 2) for x in os.getloadavg()],
               "speedup_auto_over_1": ratio, "configs": results, "logs": str(logs)}
    print(f"--threads auto / --threads 1: {ratio}x faster to finish both; load average "
          f"{summary['load_average_before']} -> {summary['load_average_after']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
