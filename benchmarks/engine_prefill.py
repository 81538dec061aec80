"""The batched engine's CPU cache against `generate`'s own, in one run: prompts read before `generate` (one at a
time when their lengths differ) into buffers with room for the answers (serving/batched/kv_cache.py, the default
on a CPU), against `generate` over the left-padded batch with its concatenating cache (the engine before).

The same BatchGenerator (SmolLM2-135M-Instruct by default) completes the same batches both ways, taking turns,
greedy, with the answer budget `raft eval` gives (128 tokens). The prompts are RAFT prompts as `raft eval` renders
them (raft.prompt): a question with its gold passages and `--distractors` other passages, shuffled. With `--data`
(a folder of the shared QA sets) they come from hotpotqa_amor_dev, as in benchmarks/raft_effect.py; without it,
from the quickstart corpus. Batches are taken in the question file's order, as the engine's queue would take
them, so their lengths differ as real traffic does. Reports seconds per batch, prompt tokens read per second,
the padding each batch carried, and whether both ways wrote the same answers.

    python benchmarks/engine_prefill.py --data ../shared/data          # 3 batches of 8, 4 distractors
    python benchmarks/engine_prefill.py --batches 1 --batch 4 --max-tokens 16

Writes benchmarks/results/engine_prefill.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def prompts(data: str | None, n: int, distractors: int, seed: int) -> list[list[dict]]:
    """n RAFT chat prompts: each question's gold passages plus `distractors` random others, shuffled."""
    from raft.jsonl import iter_jsonl
    from raft.prompt import build_messages

    def _jsonl(path: Path) -> list[dict]:
        return [obj for _, obj in iter_jsonl(path)]

    rng = random.Random(seed)
    if data:
        root = Path(data) / "hotpotqa_amor_dev"
        corpus = {d["id"]: d for d in _jsonl(root / "corpus.jsonl")}
        questions = [(q["question"], [corpus[g] for g in q["gold_ids"] if g in corpus])
                     for q in _jsonl(root / "questions.jsonl")]
        pool = list(corpus.values())
    else:
        from raft.quickstart import CORPUS, QUESTIONS

        pool = [{"title": f.stem, "text": p.strip()} for f in sorted(CORPUS.glob("*.md"))
                for p in f.read_text().split("\n\n") if len(p) > 80]
        questions = [(q["question"], [pool[i % len(pool)]]) for i, q in enumerate(_jsonl(QUESTIONS))]
    out = []
    for i in range(n):
        question, gold = questions[i % len(questions)]
        docs = gold + rng.sample([d for d in pool if d not in gold], distractors)
        rng.shuffle(docs)
        out.append(build_messages(question, [{"title": d.get("title", ""), "text": d["text"]} for d in docs]))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct", help="model name or path (default: %(default)s)")
    ap.add_argument("--data", default=None, help="folder of the shared QA sets (default: the quickstart corpus)")
    ap.add_argument("--batches", type=int, default=3, help="batches to time each way (default: %(default)s)")
    ap.add_argument("--batch", type=int, default=8, help="requests per batch, the engine's --max-batch "
                                                          "(default: %(default)s)")
    ap.add_argument("--distractors", type=int, default=4, help="passages beside the gold ones (default: %(default)s)")
    ap.add_argument("--max-tokens", type=int, default=128, help="answer budget (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads; raft_effect.py gives each of its three "
                                                           "engines 1 (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "engine_prefill.json"))
    args = ap.parse_args()
    for flag in ("batches", "batch", "max_tokens", "threads"):
        if getattr(args, flag) < 1:
            ap.error(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")

    from raft.model_source import resolve_model
    from serving.batched.generator import BatchGenerator, GenRequest, warm_up

    gen = BatchGenerator(resolve_model(args.model), threads=args.threads)
    warm_up(gen)
    messages = prompts(args.data, args.batches * args.batch, args.distractors, args.seed)
    load_before = os.getloadavg()
    ways = {"prefilled": True, "padded": False}
    runs: list[dict] = []
    for b in range(args.batches):
        reqs = [GenRequest(messages=m, max_tokens=args.max_tokens)
                for m in messages[b * args.batch:(b + 1) * args.batch]]
        lens = [gen.count_prompt_tokens(r) for r in reqs]
        run: dict = {"batch": b, "prompt_tokens": lens, "padded_tokens": max(lens) * len(lens)}
        order = list(ways) if b % 2 == 0 else list(reversed(ways))  # take turns: neither way always goes first
        for way in order:
            gen.prefill_first = ways[way]
            t0 = time.perf_counter()
            res = gen.generate(reqs)
            run[way] = {"s": round(time.perf_counter() - t0, 2), "texts": [r.text for r in res],
                        "completion_tokens": [r.completion_tokens for r in res]}
        run["ratio"] = round(run["padded"]["s"] / run["prefilled"]["s"], 2)
        run["identical"] = sum(x == y for x, y in zip(run["prefilled"]["texts"], run["padded"]["texts"]))
        runs.append(run)
        print(f"batch {b}: prompts {min(lens)}-{max(lens)} tokens ({sum(lens)} read, {run['padded_tokens']} padded); "
              f"prefilled {run['prefilled']['s']:.1f} s, padded {run['padded']['s']:.1f} s: {run['ratio']}x; "
              f"identical answers {run['identical']}/{len(reqs)}", flush=True)
    read = sum(sum(r["prompt_tokens"]) for r in runs)
    total = {way: round(sum(r[way]["s"] for r in runs), 1) for way in ways}
    summary = {"model": args.model, "data": "hotpotqa_amor_dev" if args.data else "quickstart",
               "batches": args.batches, "batch": args.batch, "distractors": args.distractors,
               "max_tokens": args.max_tokens, "threads": args.threads, "cpus": os.cpu_count(),
               "load_average_before": [round(x, 2) for x in load_before],
               "load_average_after": [round(x, 2) for x in os.getloadavg()],
               "seconds": total, "prompt_tokens_per_s": {w: round(read / s, 1) for w, s in total.items()},
               "speedup": round(total["padded"] / total["prefilled"], 2),
               "identical_answers": sum(r["identical"] for r in runs), "answers": len(messages), "runs": runs}
    print(f"padded / prefilled: {summary['speedup']}x ({total['prefilled']} s vs {total['padded']} s; prompt tokens/s "
          f"{summary['prompt_tokens_per_s']['prefilled']} vs {summary['prompt_tokens_per_s']['padded']}); identical "
          f"answers {summary['identical_answers']}/{len(messages)}; load average {summary['load_average_before']} "
          f"-> {summary['load_average_after']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
