"""The RAFT effect on a real model and real QA text, through the product's own pipeline (the RAFT paper's
Table 1 and Figure 6, at 135M parameters).

SmolLM2-135M-Instruct is compared three ways on multi-hop Wikipedia questions:

- base+RAG: the pretrained model as it is, reading the retrieved passages;
- DSF+RAG:  fine-tuned on each training question's oracle passages alone (`mix.num_distractors=0
            mix.p_oracle=1.0`): domain-specific fine-tuning, the paper's DSF;
- RAFT+RAG: fine-tuned on the oracle passages plus 4 distractors, the oracle left out of 20% of the
            examples (`mix.num_distractors=4 mix.p_oracle=0.8`).

Both trained arms get the same teacher answers (the extractive teacher with the gold answer as its hint:
it quotes the oracle sentence that holds the answer and ends in `<ANSWER>: gold`), the same optimizer steps,
learning rate and LoRA. Training questions: hotpotqa_hippo and musique_hippo (HotpotQA and MuSiQue train
questions); test questions: hotpotqa_amor_dev (HotpotQA dev), over its own passages. No test question is in
training (checked). Every arm answers each test question with its gold passages plus 0, 2, 4 and 8
distractors, hard negatives mined from the test corpus's index by `raft build` (the same documents, in the
same order, for every arm). EM and F1 get 95% bootstrap confidence intervals over questions, and the paired
differences between arms get theirs.

Pipeline, as a user runs it: `raft build` (3x: two training mixes, the test set) -> `raft train` (2x, Ray
Train) -> `raft export --merge` (2x) -> raft's batched engine, one per arm (`python -m serving.batched`)
-> `raft eval` (distractor sweep, `retrieval: record`). Reads ../shared/data (or --data); the tests never need it.

    python benchmarks/raft_effect.py                                   # the full run
    python benchmarks/raft_effect.py --eval-n 20 --steps 10 --sweep 0,4 --out runs/raft_effect_smoke

An interrupted run resumes: the same command again skips every build, train and export step that finished
with the same arguments (OUT/steps_done.json), and `raft eval --resume` asks only the questions the stopped
eval had not answered (the distractor count the targets are read at comes first).

Ablations on the same OUT after the full run: `--raft-steps 100` retrains only the RAFT arm (2.5x the steps: 137
training questions, about as many as the 155 DSF sees in 40) and asks only its questions, at 4 distractors; base
and DSF answers are reused. It writes OUT/raft_effect_raft100.{json,png} and leaves raft_effect.json as it was.
`--raft-steps 100 --dsf-steps 100` then retrains only DSF (the control: both arms as long), into
raft_effect_raft100_dsf100.*.
Any other setting away from Table 1 is an ablation too: `--p-oracle` and `--train-distractors` change the RAFT
arm's training mix, `--targets` the LoRA modules of both trained arms. Each is named for every changed setting
(e.g. raft_effect_raft100_dsf100_p100.* for P = 1.0); give it its own --out, since it builds the RAFT training
set again or retrains both arms.

Writes OUT/raft_effect.{json,png} (and copies them to benchmarks/results/); `raft eval`'s own report is in
OUT/eval/. Targets at 4 distractors: RAFT+RAG >= DSF+RAG + 10 points F1, >= base+RAG + 20 points F1, with
confidence intervals that do not overlap, and the whole run in at most 60 minutes on 2 idle cores.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from raft.netutil import NotHealthyError, free_port, wait_healthy  # noqa: E402

ARMS = ("base+RAG", "DSF+RAG", "RAFT+RAG")
BASE = "smollm2-135m-instruct"
RESUMED: list[str] = []  # steps skipped because an earlier, interrupted run finished them
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def prepare(data: Path, train_sets: list[str], test_set: str, out: Path, max_train: int | None,
            seed: int) -> dict[str, Path]:
    """Training corpus + questions (the train sets merged), test corpus + questions; no question on both sides."""
    missing = [s for s in train_sets + [test_set] if not (data / s / "questions.jsonl").is_file()]
    if missing:
        sys.exit(f"QA sets {missing} not found under {data}; pass --data DIR (the folder holding "
                 "hotpotqa_hippo/, musique_hippo/, hotpotqa_amor_dev/, ...)")
    corpus, questions = [], []
    for s in train_sets:
        corpus += read_jsonl(data / s / "corpus.jsonl")
        questions += read_jsonl(data / s / "questions.jsonl")
    ids = [c["id"] for c in corpus]
    if len(set(ids)) != len(ids):
        sys.exit("passage ids collide across the training sets; they must be unique")
    random.Random(seed).shuffle(questions)
    questions = questions[:max_train] if max_train else questions
    test_q = read_jsonl(data / test_set / "questions.jsonl")
    seen = {q["question"].strip().lower() for q in questions}
    leaked = [q["id"] for q in test_q if q["question"].strip().lower() in seen]
    if leaked:
        sys.exit(f"{len(leaked)} test questions also appear in training (e.g. {leaked[0]}); pick other sets")
    return {"train_corpus": write_jsonl(out / "task" / "train_corpus.jsonl", corpus),
            "train_questions": write_jsonl(out / "task" / "train_questions.jsonl", questions),
            "test_corpus": data / test_set / "corpus.jsonl",
            "test_questions": write_jsonl(out / "task" / "test_questions.jsonl", test_q)}


def raft(*args: str, log: Path, timings: dict, label: str, output: Path | None = None,
         after: tuple[str, ...] = ()) -> bool:
    """Run one `raft` verb in a fresh process, as a user would; stop with its log tail if it fails.
    A step that already ran to the end with the same arguments, and whose `output` is still there, is
    skipped, unless a step it is built from (`after`, by label) ran in this invocation: an interrupted
    benchmark resumes where it stopped (delete OUT to start over). Returns whether the step ran."""
    done_file = log.parent / "steps_done.json"
    done = json.loads(done_file.read_text()) if done_file.is_file() else {}
    upstream_ran = any(a in timings and a not in RESUMED for a in after)
    if (output is not None and output.exists() and done.get(label, {}).get("args") == list(args)
            and not upstream_ran):
        timings[label] = done[label]["seconds"]
        RESUMED.append(label)
        print(f"  {label:<22} {timings[label]:7.1f} s (done before: {output.name})", flush=True)
        return False
    t0 = time.perf_counter()
    with log.open("a") as fh:
        fh.write(f"\n$ raft {' '.join(args)}\n")
        fh.flush()
        rc = subprocess.run([sys.executable, "-m", "raft.cli", *args], stdout=fh, stderr=subprocess.STDOUT,
                            cwd=REPO, env=ENV).returncode
    if rc != 0:
        tail = "\n".join(log.read_text().splitlines()[-30:])
        sys.exit(f"`raft {args[0]}` ({label}) failed (exit {rc}); log {log}:\n{tail}")
    timings[label] = round(time.perf_counter() - t0, 1)
    if output is not None and output.exists():
        done[label] = {"args": list(args), "seconds": timings[label]}
        done_file.write_text(json.dumps(done, indent=1))
    while label in RESUMED:  # skipped earlier in this process, run now
        RESUMED.remove(label)
    print(f"  {label:<22} {timings[label]:7.1f} s", flush=True)
    return True


def drop_answers(partial: Path, arms: set[str]) -> None:
    """Remove these arms' rows from an interrupted eval's answers (their model changed since)."""
    if not arms or not partial.is_file():
        return

    def system(line: str) -> str | None:
        try:
            return json.loads(line).get("system")
        except (json.JSONDecodeError, AttributeError):  # a line cut short by the stop: resume skips it
            return None

    rows = partial.read_text().splitlines(keepends=True)
    keep = [r for r in rows if system(r) not in arms]
    if len(keep) < len(rows):
        partial.write_text("".join(keep))
        print(f"  {len(rows) - len(keep)} earlier answers of {sorted(arms)} dropped: model or test set rebuilt since", flush=True)


def start_engines(models: dict[str, str], log_dir: Path) -> tuple[list[subprocess.Popen], dict[str, str]]:
    """One batched engine (`python -m serving.batched`) per arm's model, one CPU thread each: the three arms are
    evaluated at the same time, and OpenMP threads of engines that share cores wait on each other."""
    procs, urls = [], {}
    for arm, model in models.items():
        port = free_port()
        fh = (log_dir / f"engine-{arm.split('+')[0]}.log").open("a")
        procs.append(subprocess.Popen([sys.executable, "-m", "serving.batched", model, "--port", str(port),
                                       "--host", "127.0.0.1", "--device", "cpu", "--threads", "1",
                                       "--max-batch", "8", "--exit-with-parent"],
                                      stdout=fh, stderr=subprocess.STDOUT, env=ENV, start_new_session=True))
        urls[arm] = f"http://127.0.0.1:{port}/v1"
    for proc, (arm, url) in zip(procs, urls.items()):
        try:
            wait_healthy(url.removesuffix("/v1") + "/health", timeout=600, proc=proc)
        except NotHealthyError as e:
            for p in procs:
                os.killpg(p.pid, signal.SIGTERM)
            sys.exit(f"the {arm} engine did not start: {e}; see {log_dir}")
    return procs, urls


def bootstrap(per_arm: dict[str, list[float]], n: int, seed: int) -> dict:
    """Mean and 95% percentile CI per arm, and of the paired differences, resampling the same questions
    for every arm (the arms answered the same questions)."""
    import numpy as np

    arms = list(per_arm)
    m = np.array([per_arm[a] for a in arms], dtype=float)  # arms x questions
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, m.shape[1], size=(n, m.shape[1]))
    means = m[:, idx].mean(axis=2)  # arms x n
    out = {"mean": {a: round(float(m[i].mean()), 4) for i, a in enumerate(arms)},
           "ci95": {a: [round(float(x), 4) for x in np.percentile(means[i], [2.5, 97.5])]
                    for i, a in enumerate(arms)}, "diff": {}}
    for i, a in enumerate(arms):
        for j, b in enumerate(arms):
            if i > j:
                d = means[i] - means[j]
                out["diff"][f"{a} - {b}"] = {"mean": round(float(m[i].mean() - m[j].mean()), 4),
                                            "ci95": [round(float(x), 4) for x in np.percentile(d, [2.5, 97.5])]}
    return out


def summarize(report: dict, predictions: list[dict], sweep: list[int], n_boot: int, seed: int) -> dict:
    """Per distractor count, over the questions every arm answered: EM and F1 with bootstrap CIs, the
    `<ANSWER>` rate, and `raft eval`'s cost figures per arm (latency p50/p95, prompt and completion tokens
    per answer, tokens and cost per EM-correct answer; None where the endpoint reported no token counts or,
    for the cost, where `report` names no price), with the best arm per metric."""
    from raft.eval.config import PriceConfig
    from raft.eval.report import best_per_metric
    from raft.eval.runner import cost_metrics

    prices = {r["system"]: PriceConfig(**r["price"]) for r in report.get("runs", []) if r.get("price")}
    rows: dict[tuple[str, int], dict[str, float]] = {}
    for p in predictions:
        if p["sweep"] == "distractors" and p["em"] is not None:
            rows.setdefault((p["system"], p["value"]), {})[p["id"]] = p
    out = {}
    for n in sweep:
        ids = sorted(set.intersection(*(set(rows.get((a, n), {})) for a in ARMS)))
        stats = {}
        for metric in ("em", "f1"):
            stats[metric] = bootstrap({a: [float(rows[(a, n)][i][metric]) for i in ids] for a in ARMS}, n_boot, seed)
        stats["answer_tag_rate"] = {a: round(sum(bool(rows[(a, n)][i]["answer_tag"]) for i in ids) / max(1, len(ids)), 3)
                                    for a in ARMS}
        costs = {a: cost_metrics([{"prompt_tokens": None, "completion_tokens": None, "latency_s": None,
                                   **rows[(a, n)][i]} for i in ids], prices.get(a)) for a in ARMS}
        for key in COST_COLUMNS:
            stats[key] = {a: None if costs[a][key] is None else round(costs[a][key], 8 if "cost" in key else 4)
                          for a in ARMS}
        runs = [{"system": a, "sweep": "distractors", "value": n, "em": stats["em"]["mean"][a],
                 "f1": stats["f1"]["mean"][a], **costs[a]} for a in ARMS]
        stats["best"] = best_per_metric(runs).get(f"distractors={n}", {})
        stats["questions"] = len(ids)
        out[str(n)] = stats
    return out


COST_COLUMNS = ("latency_p50_s", "latency_p95_s", "prompt_tokens", "completion_tokens", "tokens_per_answer",
                "tokens_per_correct", "cost_per_correct")


def table(by_n: dict, sweep: list[int]) -> str:
    """The README's accuracy table: F1 and EM per arm with 95% CIs, one row per distractor count."""
    lines = ["| distractors | questions | " + " | ".join(f"{a} F1" for a in ARMS) + " | "
             + " | ".join(f"{a} EM" for a in ARMS) + " |", "|---|---|" + "---|" * (2 * len(ARMS))]
    for n in sweep:
        s = by_n[str(n)]
        cell = lambda m, a: f"{s[m]['mean'][a]:.3f} [{s[m]['ci95'][a][0]:.2f}, {s[m]['ci95'][a][1]:.2f}]"  # noqa: E731
        lines.append(f"| {n} | {s['questions']} | " + " | ".join(cell("f1", a) for a in ARMS) + " | "
                     + " | ".join(cell("em", a) for a in ARMS) + " |")
    return "\n".join(lines)


def cost_table(by_n: dict, sweep: list[int]) -> str:
    """The README's cost table: per distractor count and arm, latency p50/p95 (s), prompt and completion
    tokens per answer, tokens and cost per EM-correct answer ('–': not reported, no correct answer, or no
    price), then the best arm per metric at each distractor count."""
    from raft.eval.report import best_lines, fmt_metric

    cols = [("latency_p50_s", "latency p50 (s)"), ("latency_p95_s", "latency p95 (s)"),
            ("prompt_tokens", "prompt tokens"), ("completion_tokens", "completion tokens"),
            ("tokens_per_correct", "tokens / correct"), ("cost_per_correct", "cost / correct")]
    lines = ["| distractors | arm | F1 | EM | " + " | ".join(h for _, h in cols) + " |", "|---|" + "---|" * (len(cols) + 3)]
    for n in sweep:
        s = by_n[str(n)]
        for a in ARMS:
            lines.append(f"| {n} | {a} | {s['f1']['mean'][a]:.3f} | {s['em']['mean'][a]:.3f} | "
                         + " | ".join(fmt_metric(k, (s.get(k) or {}).get(a)) for k, _ in cols) + " |")
    lines.append("")
    lines += best_lines({f"distractors={n}": by_n[str(n)].get("best") or {} for n in sweep})
    return "\n".join(lines)


def targets(by_n: dict, at: str = "4") -> dict:
    f1 = by_n[at]["f1"]
    ci = f1["ci95"]
    d_dsf = f1["mean"]["RAFT+RAG"] - f1["mean"]["DSF+RAG"]
    d_base = f1["mean"]["RAFT+RAG"] - f1["mean"]["base+RAG"]
    no_overlap = all(ci["RAFT+RAG"][0] > ci[o][1] for o in ("DSF+RAG", "base+RAG"))
    return {"raft_minus_dsf_f1_points": round(100 * d_dsf, 1), "raft_minus_base_f1_points": round(100 * d_base, 1),
            "raft_vs_dsf_met": d_dsf >= 0.10, "raft_vs_base_met": d_base >= 0.20,
            "cis_do_not_overlap": no_overlap}


def plot(by_n: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    xs = sorted(int(n) for n in by_n)
    for ax, metric in zip(axes, ("f1", "em")):
        for arm in ARMS:
            ys = [by_n[str(x)][metric]["mean"][arm] for x in xs]
            lo = [y - by_n[str(x)][metric]["ci95"][arm][0] for x, y in zip(xs, ys)]
            hi = [by_n[str(x)][metric]["ci95"][arm][1] - y for x, y in zip(xs, ys)]
            ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=arm)
        ax.set_xlabel("distractor passages shown beside the gold passages")
        ax.set_ylabel(metric.upper() + " (95% bootstrap CI)")
        ax.set_xticks(xs)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(textwrap.fill(title, 100))  # an ablation's title names every setting: wrap, not crop
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"), help="folder of the QA sets")
    p.add_argument("--train-sets", default="hotpotqa_hippo,musique_hippo")
    p.add_argument("--test-set", default="hotpotqa_amor_dev")
    p.add_argument("--out", default="runs/raft_effect", help="work and result directory")
    p.add_argument("--max-train", type=int, default=None, help="use at most this many training questions")
    p.add_argument("--steps", type=int, default=40, help="optimizer steps of each trained arm")
    p.add_argument("--raft-steps", type=int, default=None,
                   help="an ablation: the RAFT arm's steps instead of --steps (a token-budget batch holds about 4 "
                   "DSF examples but one RAFT example, so RAFT needs about 2.5-3x the steps to see as many); "
                   "evaluated at 4 distractors only, results in raft_effect_raftN.*")
    p.add_argument("--dsf-steps", type=int, default=None,
                   help="an ablation: the DSF arm's steps instead of --steps; results in raft_effect_raftN_dsfM.*")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-tokens", type=int, default=2048)
    p.add_argument("--max-seq-len", type=int, default=2048)
    p.add_argument("--rank", type=int, default=16, help="LoRA rank (alpha = 2 x rank)")
    p.add_argument("--targets", default="all-linear", help="LoRA target modules, e.g. q_proj,v_proj")
    p.add_argument("--train-distractors", type=int, default=4)
    p.add_argument("--p-oracle", type=float, default=0.8)
    p.add_argument("--eval-n", type=int, default=100, help="test questions evaluated")
    p.add_argument("--sweep", default="0,2,4,8", help="distractor counts at test time")
    p.add_argument("--max-tokens", type=int, default=128, help="long enough for a quote plus the answer tag")
    p.add_argument("--price", default="0.1,0.4",
                   help="PROMPT,COMPLETION price per million tokens, for the cost per correct answer (any "
                   "currency; the default is a hosted small model's order of magnitude, in USD); '' = no price")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results", default="benchmarks/results", help="also copy the result's JSON and PNG here ('' = no)")
    p.add_argument("--summarize", action="store_true",
                   help="run nothing: write the results from OUT's eval answers as they are (a stopped eval's "
                   "predictions.partial.jsonl included; each distractor count says how many questions every "
                   "arm answered). `raft eval --resume` continues such a run: the same command without this flag")
    args = p.parse_args()

    out = Path(args.out) if Path(args.out).is_absolute() else (REPO / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    log, timings = out / "pipeline.log", {}
    t0 = time.perf_counter()
    load_before = os.getloadavg()
    sweep = sorted(int(x) for x in args.sweep.split(","))
    # the targets' distractor count is evaluated first: an eval stopped part-way still has the point that matters
    at = "4" if 4 in sweep else str(sweep[len(sweep) // 2])
    eval_order = [int(at)] + [n for n in sweep if n != int(at)]
    ablation = _ablation(args)
    if ablation:  # the test set stays built for the whole sweep (same passages); only the targets' point is asked
        eval_order = [int(at)]
    if args.summarize:
        return write_results(args, out, sweep, at, timings=None, started=None, load_before=load_before)
    files = prepare(Path(args.data), args.train_sets.split(","), args.test_set, out, args.max_train, args.seed)
    print(f"raft_effect: train on {args.train_sets}, test on {args.test_set}; output {out}", flush=True)

    common = ["teacher.kind=extractive", f"seed={args.seed}", "--quiet"]
    train_index = out / "data-RAFT" / "index"
    mixes = {"RAFT+RAG": ("data-RAFT", args.train_distractors, args.p_oracle), "DSF+RAG": ("data-DSF", 0, 1.0)}
    for arm, (name, d, p_oracle) in mixes.items():
        reuse = [] if arm == "RAFT+RAG" else ["--index", str(train_index)]  # one training index, built once
        raft("build", str(files["train_corpus"]), f"mix.num_distractors={d}", f"mix.p_oracle={p_oracle}",
             "split.train=1.0", "split.validation=0.0", "split.test=0.0", *common, "--out", str(out / name),
             "--questions", str(files["train_questions"]), *reuse, log=log, timings=timings, label=f"build {arm}",
             output=out / name / "manifest.json", after=() if arm == "RAFT+RAG" else ("build RAFT+RAG",))
    raft("build", str(files["test_corpus"]), f"mix.num_distractors={max(sweep)}", "mix.p_oracle=1.0",
         "split.train=0.0", "split.validation=0.0", "split.test=1.0", *common, "--out", str(out / "data-test"),
         "--questions", str(files["test_questions"]), log=log, timings=timings, label="build test set",
         output=out / "data-test" / "manifest.json")

    targets_list = "all-linear" if args.targets == "all-linear" else "[" + args.targets + "]"
    rebuilt: set[str] = set()  # arms whose model was exported again by this invocation
    for arm, (name, _, _) in mixes.items():
        tag = arm.split("+")[0]
        steps = (args.raft_steps if arm == "RAFT+RAG" else args.dsf_steps) or args.steps
        raft("train", f"model.name_or_path={BASE}", "model.dtype=fp32", f"data.path={out / name}",
             "data.eval_split=null", f"data.max_seq_len={args.max_seq_len}", f"lora.r={args.rank}",
             f"lora.alpha={2 * args.rank}", "lora.dropout=0.0", f"lora.target_modules={targets_list}",
             f"optim.lr={args.lr}", f"optim.max_steps={steps}", f"optim.batch_tokens={args.batch_tokens}",
             "optim.warmup_ratio=0.1", "optim.batching=group", "ray.num_workers=1", "ray.cpus_per_worker=2",
             f"ray.storage_path={out / 'ray'}", f"ray.run_name=raft-effect-{tag}-{args.seed}-{steps}",
             f"output_dir={out / ('adapter-' + tag)}", f"save_every={steps}", "export=last", "log_every=5",
             f"seed={args.seed}", log=log, timings=timings, label=f"train {arm}",
             output=out / f"adapter-{tag}" / "raft_meta.json", after=(f"build {arm}",))
        if raft("export", str(out / f"adapter-{tag}"), "--merge", "--out", str(out / f"merged-{tag}"), log=log,
                timings=timings, label=f"export {arm}", output=out / f"merged-{tag}" / "config.json",
                after=(f"train {arm}",)):
            rebuilt.add(arm)

    models = {"base+RAG": BASE, "DSF+RAG": str(out / "merged-DSF"), "RAFT+RAG": str(out / "merged-RAFT")}
    # `raft eval --resume` cannot tell a retrained model served from the same path, nor a test set rebuilt at
    # the same path: drop the answers of an arm whose model was exported again by this run (e.g. after --steps
    # changed), and every answer when the test set was built again
    if "build test set" not in RESUMED:
        rebuilt |= set(ARMS)
    for answers in ("predictions.partial.jsonl", "predictions.jsonl"):  # --resume reuses a finished run's too
        drop_answers(out / "eval" / answers, rebuilt)
    engines, urls = start_engines(models, out)
    try:
        # each engine serves one model under that name; the batched engine generates 8 requests together
        systems = [{"name": a, "base_url": urls[a], "model": models[a], "retrieval": "record"} for a in ARMS]
        raft("eval", "--resume", "--data", str(out / "data-test" / "raft" / "test.jsonl"), "--out", str(out / "eval"),
             f"systems={json.dumps(systems)}", f"sweep.distractors={json.dumps(eval_order)}", "sweep.only=true",
             f"limit={args.eval_n}", f"max_tokens={args.max_tokens}", "concurrency=8", "timeout=900",
             f"seed={args.seed}", *price_override(args.price), log=log, timings=timings, label="eval (all arms)")
    finally:
        for engine in engines:
            os.killpg(engine.pid, signal.SIGTERM)
            engine.wait(timeout=30)

    return write_results(args, out, sweep, at, timings, t0, load_before)


def price_override(price: str | None) -> list[str]:
    """`--price 0.1,0.4` -> the `raft eval` override that prices every arm's tokens (per million prompt and
    completion tokens); no price: none (the cost column stays empty)."""
    if not price:
        return []
    try:
        prompt, completion = (float(x) for x in price.split(","))
    except ValueError:
        sys.exit(f"--price {price!r}: give two numbers, PROMPT,COMPLETION per million tokens, e.g. 0.1,0.4")
    return [f"price={json.dumps({'prompt_per_million': prompt, 'completion_per_million': completion})}"]


DEFAULT_RAFT_MIX = {"p_oracle": 0.8, "train_distractors": 4, "targets": "all-linear"}


def ablation_stem(args: argparse.Namespace) -> str | None:
    """The result files' stem of an ablation (a trained arm with other steps than --steps, or a RAFT mix or LoRA
    target other than the Table-1 defaults; evaluated at the targets' point only), None for the main run.
    Every changed setting is in the name, so one ablation never overwrites another's results."""
    parts = []
    if args.raft_steps not in (None, args.steps) or args.dsf_steps not in (None, args.steps):
        parts.append(f"raft{args.raft_steps or args.steps}")
        if args.dsf_steps not in (None, args.steps):
            parts.append(f"dsf{args.dsf_steps}")
    if args.p_oracle != DEFAULT_RAFT_MIX["p_oracle"]:
        parts.append(f"p{round(args.p_oracle * 100)}")
    if args.train_distractors != DEFAULT_RAFT_MIX["train_distractors"]:
        parts.append(f"d{args.train_distractors}")
    if args.targets != DEFAULT_RAFT_MIX["targets"]:
        parts.append(args.targets.replace("_proj", "").replace(",", ""))
    return "_".join(["raft_effect", *parts]) if parts else None


def _ablation(args: argparse.Namespace) -> bool:
    return ablation_stem(args) is not None


def plot_title(args: argparse.Namespace, test_questions: int) -> str:
    """The PNG's title: the test set and, for an ablation, how each trained arm was trained."""
    title = f"SmolLM2-135M-Instruct on {args.test_set} ({test_questions} held-out questions)"
    if _ablation(args):
        title += (f"; RAFT trained {args.raft_steps or args.steps} steps (P={args.p_oracle}, {args.train_distractors} "
                  f"distractors, LoRA {args.targets}), DSF {args.dsf_steps or args.steps} steps")
    return title


def write_results(args: argparse.Namespace, out: Path, sweep: list[int], at: str, timings: dict | None,
                  started: float | None, load_before: tuple) -> int:
    """raft_effect.{json,png} and the tables, from OUT/eval. `timings`/`started` are None with --summarize:
    the step times then come from OUT/steps_done.json, and the eval's from nowhere (it did not finish here)."""
    complete = (out / "eval" / "report.json").is_file()
    if complete:
        report = json.loads((out / "eval" / "report.json").read_text())
        predictions = read_jsonl(out / "eval" / "predictions.jsonl")
    elif args.summarize and (out / "eval" / "predictions.partial.jsonl").is_file():
        report, predictions = {}, read_jsonl(out / "eval" / "predictions.partial.jsonl")
    else:
        sys.exit(f"no eval answers under {out / 'eval'}: run the benchmark first")
    answered = {p["value"] for p in predictions if p["sweep"] == "distractors"}
    sweep = [n for n in sweep if n in answered]
    by_n = summarize(report, predictions, sweep, args.bootstrap, args.seed)
    # a stopped eval's last point holds only the questions every arm reached: listed, not tabulated or plotted
    full = max(s["questions"] for s in by_n.values())
    incomplete = {n: by_n.pop(n)["questions"] for n in list(by_n) if by_n[n]["questions"] < full}
    sweep = [n for n in sweep if str(n) in by_n]
    at = at if at in by_n else str(sweep[0])
    if timings is None:
        done_file = out / "steps_done.json"
        timings = {k: v["seconds"] for k, v in json.loads(done_file.read_text()).items()} if done_file.is_file() else {}
    train_q = out / "task" / "train_questions.jsonl"
    result = {"complete": complete, "incomplete_points": incomplete, "by_distractors": by_n, "targets_at": at,
              "targets": targets(by_n, at),
              "seconds": round(time.perf_counter() - started, 1) if started is not None else None,
              "step_seconds": timings,
              "resumed_steps": RESUMED,  # their seconds are in step_seconds but not in `seconds`
              "train_questions": len(read_jsonl(train_q)) if train_q.is_file() else None,
              "test_questions": by_n[at]["questions"],
              "load_average_before": [round(x, 2) for x in load_before],
              "load_average_after": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(),
              "args": vars(args)}
    ablation = _ablation(args)
    if result["seconds"] is not None and not ablation:  # an ablation reuses two arms' answers: not a run's time
        total = result["seconds"] + sum(timings[x] for x in RESUMED)
        # an eval that resumed ran in more than one sitting, and the earlier ones are not timed here
        result["targets"]["within_60_min"] = total <= 3600 if not report.get("reused_answers") else None
    stem = ablation_stem(args) or "raft_effect"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2))
    plot(by_n, out / f"{stem}.png", plot_title(args, result["test_questions"]))
    print("\n" + table(by_n, sweep) + "\n\n" + cost_table(by_n, sweep))
    print(json.dumps(result["targets"], indent=1),
          f"\n{result['seconds']:.0f} s in all" if result["seconds"] is not None else
          "\n(summarized from the answers on disk" + ("" if complete else ", a stopped eval") + ")"
          + "".join(f"\nleft out: {n} distractors, {q} question(s) answered by every arm" for n, q in incomplete.items()))
    if args.results:
        import shutil

        dest = REPO / args.results
        dest.mkdir(parents=True, exist_ok=True)
        for f in (f"{stem}.json", f"{stem}.png"):
            shutil.copy(out / f, dest / f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
