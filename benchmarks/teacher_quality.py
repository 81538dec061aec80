"""How much of what SmolLM2-135M-Instruct writes as a `raft build` teacher survives the checks, per teacher strategy.

Starts `transformers serve` on the CPU (the model is chosen per request by path), runs the real CLI,
`raft build CORPUS teacher.kind=openai teacher.strategy=S ...`, for each strategy asked for, on a seeded sample
of chunks, and reads each build's build_summary.json: questions kept per question asked, answers kept per
question, the verified-quote rate, drops and teacher-side rejections by reason, seconds. It then prints a few
kept records of the last strategy, to be read by eye. Writes benchmarks/results/teacher_quality.json.

    python benchmarks/teacher_quality.py --seeds 0,1                      # stepwise, 2 x 12 chunks x 2 questions
    python benchmarks/teacher_quality.py --strategies cot,stepwise --chunks 8

Keep the sample small: on 2 CPU cores one sample of 12 chunks (about 60 requests) took under 3 minutes at
load average 2, and most of an hour while other jobs held the cores. Teacher calls are cached per output
directory, so a rerun repeats only the calls whose replies the checks rejected. A build that keeps nothing is
reported as such (raft build exits non-zero and writes no summary; its counts are zero here).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from raft.netutil import NotHealthyError, free_port, wait_healthy  # noqa: E402

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def start_engine(log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "transformers.cli.transformers", "serve", "--host", "127.0.0.1",
                             "--port", str(port), "--device", "cpu"], stdout=log.open("a"),
                            stderr=subprocess.STDOUT, env=ENV, start_new_session=True)
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health", timeout=300, proc=proc)
    except NotHealthyError as e:
        os.killpg(proc.pid, signal.SIGTERM)
        sys.exit(f"transformers serve did not start: {e}; see {log}")
    return proc, f"http://127.0.0.1:{port}/v1"


def run_build(strategy: str, seed: int, args, url: str, model: str, out: Path, log: Path) -> dict:
    cmd = [sys.executable, "-m", "raft.cli", "build", str(args.corpus), "--out", str(out), "--quiet",
           "teacher.kind=openai", f"teacher.strategy={strategy}", f"teacher.base_url={url}", f"teacher.model={model}",
           f"teacher.temperature={args.temperature}", f"teacher.max_tokens={args.max_tokens}",
           "teacher.concurrency=2", "teacher.timeout_s=600", f"max_chunks={args.chunks}",
           f"questions_per_chunk={args.questions}", f"max_attempts={args.attempts}", f"seed={seed}",
           "mix.num_distractors=2", "split.train=1.0", "split.validation=0.0", "split.test=0.0"]
    t0 = time.monotonic()
    with log.open("a") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=ENV, cwd=ROOT).returncode
    seconds = time.monotonic() - t0
    path = out / "build_summary.json"
    # a build that keeps nothing writes no dataset; its counts are printed, not saved: rerun reads the cache
    summary = json.loads(path.read_text()) if path.exists() else {}
    return {"rc": rc, "seconds": round(seconds, 1), "summary": summary}


def figures(strategy: str, seed: int, args, res: dict) -> dict:
    s = res["summary"]
    asked = args.chunks * args.questions
    q = s.get("questions", {}).get("count", 0)
    a = s.get("answers", {})
    kept = a.get("kept", 0)
    return {"strategy": strategy, "seed": seed, "rc": res["rc"], "seconds": res["seconds"],
            "teacher_calls_from_cache": s.get("teacher_calls", {}).get("from_cache"),
            "questions_asked": asked, "questions_kept": q,
            "question_kept_rate": round(q / asked, 3) if asked else None,
            "answers_kept": kept, "answer_kept_rate": round(kept / q, 3) if q else None,
            "records_per_question_asked": round(kept / asked, 3) if asked else None,
            "quote_verification_rate": a.get("quote_verification_rate"),
            "dropped_by_reason": a.get("dropped_by_reason", {}),
            "failed_attempts_by_reason": a.get("failed_attempts_by_reason", {}),
            "teacher_rejected": s.get("teacher_calls", {}).get("filtered", {}),
            "teacher_calls": s.get("teacher_calls", {}).get("made"),
            "completion_tokens": s.get("tokens", {}).get("completion")}


def sample_records(out: Path, n: int) -> list[dict]:
    rows = []
    for p in sorted((out / "raft").glob("*.jsonl")):
        rows += [json.loads(x) for x in p.read_text().splitlines() if x.strip()]
    return [{"question": r["question"], "final_answer": r["final_answer"], "cot_answer": r["cot_answer"]}
            for r in rows[:n]]


def pooled(runs: list[dict]) -> dict:
    """Per strategy, the seeds' counts added up and the rates taken over the sums."""
    out = {}
    for strategy in dict.fromkeys(r["strategy"] for r in runs):
        rs = [r for r in runs if r["strategy"] == strategy]
        asked, q, kept = (sum(r[k] for r in rs) for k in ("questions_asked", "questions_kept", "answers_kept"))
        drops: dict = {}
        for r in rs:
            for k, v in r["dropped_by_reason"].items():
                drops[k] = drops.get(k, 0) + v
        out[strategy] = {"questions_asked": asked, "questions_kept": q, "answers_kept": kept,
                         "question_kept_rate": round(q / asked, 3) if asked else None,
                         "answer_kept_rate": round(kept / q, 3) if q else None,
                         "records_per_question_asked": round(kept / asked, 3) if asked else None,
                         "dropped_by_reason": drops}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", type=Path, default=ROOT / "raft" / "quickstart" / "corpus")
    p.add_argument("--model", default="smollm2-135m-instruct", help="a model reference (raft resolves it)")
    p.add_argument("--strategies", default="stepwise", help="comma-separated: cot, stepwise")
    p.add_argument("--chunks", type=int, default=12)
    p.add_argument("--questions", type=int, default=2, help="questions per chunk")
    p.add_argument("--attempts", type=int, default=2, help="build max_attempts")
    p.add_argument("--temperature", type=float, default=0.3)
    p.add_argument("--max-tokens", type=int, default=512, help="teacher.max_tokens (stepwise caps its replies)")
    p.add_argument("--seeds", default="0", help="comma-separated build seeds: one sample of chunks each")
    p.add_argument("--show", type=int, default=20, help="kept records printed for reading")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "teacher_quality")
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "teacher_quality.json")
    args = p.parse_args()
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    bad = [s for s in strategies if s not in ("cot", "stepwise")]
    if bad:
        sys.exit(f"--strategies: unknown {bad}; use cot and/or stepwise")

    from raft.model_source import resolve_model

    model = str(resolve_model(args.model))
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "teacher_quality.log"
    proc, url = start_engine(log)
    load_before = os.getloadavg()
    runs = []
    try:
        for strategy in strategies:
            for seed in seeds:
                out = args.out / f"{strategy}-seed{seed}"
                print(f"raft build, teacher.strategy={strategy}, seed {seed}: {args.chunks} chunks x {args.questions} "
                      "questions ...", flush=True)
                res = run_build(strategy, seed, args, url, model, out, log)
                fig = figures(strategy, seed, args, res)
                fig["records"] = sample_records(out, args.show)
                runs.append(fig)
                print(json.dumps({k: v for k, v in fig.items() if k != "records"}, indent=1), flush=True)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    result = {"model": args.model, "corpus": str(args.corpus.relative_to(ROOT) if args.corpus.is_relative_to(ROOT)
                                                  else args.corpus),
              "chunks": args.chunks, "questions_per_chunk": args.questions, "max_attempts": args.attempts,
              "temperature": args.temperature, "seeds": seeds, "cpu_cores": os.cpu_count(),
              "load_average_before": [round(x, 2) for x in load_before],
              "load_average_after": [round(x, 2) for x in os.getloadavg()], "runs": runs,
              "pooled": pooled(runs)}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["pooled"], indent=1))
    for r in [r for run in runs if run["strategy"] == strategies[-1] for r in run["records"]][:args.show]:
        print(f"- {r['question']!r} -> {r['final_answer']!r}")
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
