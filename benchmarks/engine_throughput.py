"""Answers per second of the two CPU engines on the same requests: `transformers serve` against raft's batched
engine (`python -m serving.batched`), in one run.

Both serve the same model (default SmolLM2-135M-Instruct, converted from its GGUF) and receive the same RAFT
prompts: each held-out quickstart question with the passages `raft eval` would show it (the gold document's
chunks and the top retrieved ones, rendered by raft.prompt), sent at the same concurrency with greedy decoding.
Reports wall time, answers/s and generated tokens/s per engine, their ratio, and how many answers are identical
(greedy decoding of the same prompt should agree; batching with padding may flip a near-tie token).

    python benchmarks/engine_throughput.py                        # 24 requests at concurrency 8
    python benchmarks/engine_throughput.py --requests 8 --max-tokens 32

Writes benchmarks/results/engine_throughput.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from raft.netutil import free_port, wait_healthy  # noqa: E402

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def prompts(n: int) -> list[list[dict]]:
    """RAFT chat prompts for the first n held-out quickstart questions, with 3 corpus paragraphs each."""
    from raft.prompt import build_messages
    from raft.quickstart import CORPUS, QUESTIONS

    paras = [p.strip() for f in sorted(CORPUS.glob("*.md")) for p in f.read_text().split("\n\n") if len(p) > 80]
    qs = [json.loads(line) for line in QUESTIONS.read_text().splitlines() if line.strip()]
    out = []
    for i in range(n):
        q = qs[i % len(qs)]
        docs = [{"title": "", "text": paras[(i * 3 + j) % len(paras)]} for j in range(3)]
        out.append(build_messages(q["question"], docs))
    return out


def start(argv: list[str], log: Path) -> subprocess.Popen:
    fh = log.open("w")
    return subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=ENV, start_new_session=True)


async def run_requests(url: str, model: str, messages: list[list[dict]], concurrency: int,
                       max_tokens: int) -> tuple[float, list[str], int]:
    import openai

    client = openai.AsyncOpenAI(base_url=url, api_key="EMPTY", timeout=3600, max_retries=0)
    sem = asyncio.Semaphore(concurrency)

    async def one(m):
        async with sem:
            r = await client.chat.completions.create(model=model, messages=m, max_tokens=max_tokens, temperature=0)
            return r.choices[0].message.content or "", (r.usage.completion_tokens if r.usage else 0)

    # one request first, alone, so that neither engine's lazy model load is timed
    await one(messages[0])
    t0 = time.perf_counter()
    results = await asyncio.gather(*[one(m) for m in messages])
    wall = time.perf_counter() - t0
    await client.close()
    return wall, [t for t, _ in results], sum(n for _, n in results)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--requests", type=int, default=24)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "engine_throughput.json"))
    args = ap.parse_args()

    from raft.model_source import resolve_model

    path = resolve_model(args.model)
    messages = prompts(args.requests)
    logs = Path(tempfile.mkdtemp(prefix="engine-bench-"))
    engines = {
        "transformers serve": [sys.executable, "-m", "transformers.cli.transformers", "serve", "--host", "127.0.0.1",
                               "--device", "cpu"],
        "batched": [sys.executable, "-m", "serving.batched", path, "--host", "127.0.0.1", "--device", "cpu",
                    "--max-batch", str(args.max_batch)],
    }
    load_before = os.getloadavg()
    results: dict[str, dict] = {}
    for name, argv in engines.items():  # one at a time: they would share the same cores
        port = free_port()
        proc = start(argv + ["--port", str(port)], logs / f"{name.replace(' ', '_')}.log")
        try:
            wait_healthy(f"http://127.0.0.1:{port}/health", timeout=600, proc=proc)
            wall, texts, tokens = asyncio.run(run_requests(f"http://127.0.0.1:{port}/v1", path, messages,
                                                           args.concurrency, args.max_tokens))
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        results[name] = {"wall_s": round(wall, 2), "answers_per_s": round(len(texts) / wall, 3),
                         "tokens_per_s": round(tokens / wall, 1), "completion_tokens": tokens, "texts": texts}
        print(f"{name:<20} {wall:8.1f} s  {len(texts) / wall:6.3f} answers/s  {tokens / wall:7.1f} tokens/s",
              flush=True)
    a, b = results["transformers serve"], results["batched"]
    same = sum(x == y for x, y in zip(a["texts"], b["texts"]))
    summary = {"model": args.model, "requests": args.requests, "concurrency": args.concurrency,
               "max_tokens": args.max_tokens, "max_batch": args.max_batch, "cpus": os.cpu_count(),
               "load_average_before": [round(x, 2) for x in load_before],
               "load_average_after": [round(x, 2) for x in os.getloadavg()],
               "speedup_answers_per_s": round(b["answers_per_s"] / a["answers_per_s"], 2),
               "identical_answers": same, "engines": results}
    print(f"batched / transformers serve: {summary['speedup_answers_per_s']}x answers/s; identical answers "
          f"{same}/{args.requests}; load average {summary['load_average_before']} -> {summary['load_average_after']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
