"""RAFT vs domain fine-tuning on a synthetic reading task (the RAFT paper's Figure 6, in miniature).

A tiny random Llama is trained two ways on the same questions, through the project's own pipeline:
`raft build` (extractive teacher, questions file) -> `raft train` (Ray Train, LoRA) -> `raft export --merge`
-> `transformers serve` -> `raft eval` (distractor sweep):

- RAFT:        oracle + 4 distractors, oracle shown in 80% of examples (mix.num_distractors=4, p_oracle=0.8)
- oracle-only: the oracle document alone (mix.num_distractors=0, p_oracle=1.0) = domain fine-tuning

Both are then evaluated with 0..8 distractors shown next to the oracle. The task: every document states
one fact, "The code of <name> is <value>."; the question asks for one name's code. Names and values come from
small pools and are single tokens of the tiny BPE vocabulary, so the answer is one token the model has
written in training; test questions are unseen name/value pairings, so only reading answers them. Reading
only one document can be solved by "copy the value you see"; only training with distractors rewards "find
the right one".

The tiny model starts random (its output head initialised to its input embeddings); LoRA at full rank on
every linear layer, the embeddings and the output head is what it learns with. Padded length-grouped
batches (`optim.batching=group`): packing leaks attention across examples with transformers 5.x sdpa.

    python benchmarks/raft_effect.py --out runs/raft_effect             # full run, about 10-15 min on 2 CPU cores
    python benchmarks/raft_effect.py --docs 400 --steps 40 --eval-n 20 --out runs/raft_effect_smoke

Writes OUT/raft_effect.json (accuracy per system and distractor count, the gap at 4 distractors) and
OUT/raft_effect.png; the full `raft eval` report is in OUT/eval/.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from raft.netutil import NotHealthyError, free_port, wait_healthy

CONSONANTS = "bdfgklmnprstvz"
VOWELS = "aeiou"


def pool(rng: random.Random, n: int, shape: str, taken: set[str]) -> list[str]:
    """`n` distinct pronounceable words of `shape` (C = consonant, V = vowel) not in `taken`."""
    out: set[str] = set()
    while len(out) < n:
        w = "".join(rng.choice(CONSONANTS if c == "C" else VOWELS) for c in shape)
        if w not in taken:
            out.add(w)
    taken |= out
    return sorted(out)


def make_task(out: Path, n_docs: int, seed: int) -> tuple[Path, Path, list[str], list[str]]:
    """corpus.jsonl {id, title, text} and questions.jsonl {id, question, answers, gold_ids}.

    Names and values come from small pools (each name in 2 documents, each value in about 4), so every word the
    model must *write* at test time (the name in its quote, the value) is a token it has written in
    training; the test documents are new name/value pairings, so only reading answers them. Two documents
    of a shown set share a name with probability ~1/n_docs; a distractor that holds the answer value is
    never used (`raft build` excludes it)."""
    rng = random.Random(seed)
    taken = {"the", "code", "of", "is", "what"}
    names = pool(rng, max(2, n_docs // 2), "CVCV", taken)
    values = pool(rng, max(2, n_docs // 4), "CVC", taken)
    pairs: set[tuple[str, str]] = set()
    name_seq = [names[i % len(names)] for i in range(n_docs)]
    rng.shuffle(name_seq)
    for name in name_seq:
        while True:
            value = rng.choice(values)
            if (name, value) not in pairs:
                break
        pairs.add((name, value))
    corpus, questions, texts = [], [], []
    ordered = sorted(pairs)  # a set's order depends on string hashing: sort, then shuffle with the seed
    rng.shuffle(ordered)
    for i, (name, value) in enumerate(ordered):
        text = f"The code of {name} is {value}."
        corpus.append({"id": f"d{i}", "title": name, "text": text})
        questions.append({"id": f"q{i}", "question": f"What is the code of {name}?", "answers": [value],
                          "gold_ids": [f"d{i}"]})
        texts += [text, questions[-1]["question"]]
    out.mkdir(parents=True, exist_ok=True)
    cp, qp = out / "corpus.jsonl", out / "questions.jsonl"
    cp.write_text("".join(json.dumps(r) + "\n" for r in corpus))
    qp.write_text("".join(json.dumps(r) + "\n" for r in questions))
    return cp, qp, texts, sorted({w for pair in pairs for w in pair})


def build_base(base: Path, texts: list[str], *, vocab: int, hidden: int, layers: int, heads: int, seed: int,
               titles: list[str] | None = None) -> None:
    """A random tiny Llama whose tokenizer has seen whole rendered prompts, so the prompt's fixed parts
    (system prompt, document tags, chat roles) become few tokens: shorter sequences, faster training. The
    vocabulary is large enough for BPE to merge every name and value into one token.

    `texts` alternates document text and question; `titles` (one per document, "" for none) defaults to
    the name in "The code of NAME is VALUE."."""
    from raft.prompt import SYSTEM_PROMPT, cot_answer, render_user
    from raft.tiny_model import build_tiny_model

    doc_texts = texts[::2][:500]
    titles = [t.split()[3] for t in doc_texts] if titles is None else titles
    docs = [{"title": title, "text": t} for title, t in zip(titles, doc_texts)]
    rendered = [f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n"
                + render_user(texts[2 * i + 1], docs[i:i + 5]) + "<|im_end|>\n<|im_start|>assistant\n"
                + cot_answer("The context states:", [texts[2 * i]], "x") for i in range(0, min(495, len(docs) - 4), 5)]
    build_tiny_model(base, texts + rendered, vocab_size=vocab, hidden_size=hidden, layers=layers, heads=heads,
                     kv_heads=heads, seed=seed)


def init_output_head(model_dir: Path) -> None:
    """Start the (untied) output head equal to the input embeddings, as in models with tied embeddings:
    then writing a token the model has attended to is an identity map its adapters can learn quickly.
    The base still knows nothing about the task; both systems start from this same model."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        model.lm_head.weight.copy_(model.get_input_embeddings().weight)
    model.save_pretrained(model_dir)


def check_single_tokens(model_dir: Path, words: list[str]) -> None:
    """Every name and value must be one token (as it appears after a space): then copying the answer is one
    attention lookup, not a multi-token spelling the tiny model has to learn too."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    split = [w for w in words if len(tok(" " + w, add_special_tokens=False)["input_ids"]) != 1]
    if split:
        sys.exit(f"{len(split)} of {len(words)} names/values are several tokens in {model_dir} (e.g. {split[:5]}); "
                 "raise --vocab and delete the base model")


def raft(*args: str, log: Path) -> None:
    """Run one `raft` subcommand in a fresh process (as a user would); fail loudly with its log tail."""
    cmd = [sys.executable, "-m", "raft.cli", *args]
    t0 = time.perf_counter()
    with log.open("a") as fh:
        fh.write(f"\n$ raft {' '.join(args)}\n")
        fh.flush()
        rc = subprocess.run(cmd, check=False, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO, env=ENV).returncode
    tail = "\n".join(log.read_text().splitlines()[-25:])
    if rc != 0:
        sys.exit(f"`raft {args[0]}` failed (exit {rc}); log {log}:\n{tail}")
    print(f"  raft {args[0]:<6} {time.perf_counter() - t0:6.1f} s", flush=True)


def start_engine(log: Path) -> tuple[subprocess.Popen, str]:
    """`transformers serve` without a forced model: it loads each merged model on first request, by path."""
    port = free_port()
    exe = Path(sys.executable).with_name("transformers")
    fh = log.open("a")
    proc = subprocess.Popen([str(exe), "serve", "--port", str(port), "--device", "cpu", "--host", "127.0.0.1"],
                            stdout=fh, stderr=subprocess.STDOUT, env=ENV, start_new_session=True)
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health", timeout=120, proc=proc)
    except NotHealthyError as e:
        os.killpg(proc.pid, signal.SIGTERM)
        sys.exit(f"transformers serve did not start: {e}; see {log}")
    return proc, f"http://127.0.0.1:{port}/v1"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    for name, curve in result["accuracy"].items():
        xs = sorted(int(k) for k in curve)
        ax.plot(xs, [curve[str(x)] for x in xs], marker="o", label=name)
    ax.axvline(result["train_distractors"], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("distractor documents shown with the oracle at test time")
    ax.set_ylabel("exact match")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"RAFT vs oracle-only fine-tuning ({result['eval_questions']} test questions)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/raft_effect", help="work and result directory")
    p.add_argument("--docs", type=int, default=1000, help="facts (documents) = questions")
    p.add_argument("--steps", type=int, default=900, help="optimizer steps per training run")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--rank", type=int, default=128, help="LoRA rank (= --hidden: full-rank updates)")
    p.add_argument("--hidden", type=int, default=128, help="tiny model width")
    p.add_argument("--layers", type=int, default=2, help="tiny model depth")
    p.add_argument("--heads", type=int, default=4, help="attention heads")
    p.add_argument("--vocab", type=int, default=3000, help="BPE vocabulary (large enough for one token per word)")
    p.add_argument("--batch-tokens", type=int, default=1024, help="packed tokens per optimizer step")
    p.add_argument("--scheduler", default="cosine", help="learning-rate schedule after warm-up")
    p.add_argument("--cpus", type=float, default=2, help="CPUs of the one Ray training worker (= torch threads)")
    p.add_argument("--targets", default="embed_tokens,q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj,lm_head",
                   help="LoRA target modules (a random base learns only through its adapters: adapt the embeddings "
                        "and the output head too)")
    p.add_argument("--batching", default="group",
                   help="optim.batching; `pack` leaks attention across packed examples with transformers 5.x sdpa")
    p.add_argument("--train-distractors", type=int, default=4)
    p.add_argument("--p-oracle", type=float, default=0.8)
    p.add_argument("--eval-n", type=int, default=40, help="test questions evaluated")
    p.add_argument("--sweep", default="0,2,4,8", help="distractor counts at test time")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results", default="benchmarks/results", help="also copy raft_effect.json/.png here ('' = no)")
    args = p.parse_args()

    out = (REPO / args.out).resolve() if not Path(args.out).is_absolute() else Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "pipeline.log"
    t0 = time.perf_counter()
    print(f"raft_effect: {args.docs} facts, {args.steps} steps per run, output {out}", flush=True)

    corpus, questions, texts, words = make_task(out / "task", args.docs, args.seed)
    base = out / "base-model"
    if not (base / "config.json").exists():
        build_base(base, texts, vocab=args.vocab, hidden=args.hidden, layers=args.layers, heads=args.heads,
                   seed=args.seed)
        init_output_head(base)
    check_single_tokens(base, words)

    runs = {"RAFT": (args.train_distractors, args.p_oracle), "oracle-only": (0, 1.0)}
    index = None
    for name, (d, p_oracle) in runs.items():
        ds = out / f"data-{name}"
        extra = ["--index", str(index)] if index else []
        index = index or ds / "index"
        if (ds / "manifest.json").exists() and (ds / "raft" / "test.jsonl").exists():
            print(f"  raft build     (reusing {ds})", flush=True)  # a finished build from an earlier run
        else:
            # overrides right after the corpus: argparse keeps the two positionals together
            raft("build", str(corpus), "teacher.kind=extractive", f"mix.num_distractors={d}", "mix.hard_ratio=0",
                 f"mix.p_oracle={p_oracle}", f"seed={args.seed}", "split.train=0.85", "split.validation=0.05",
                 "split.test=0.1", "--out", str(ds), "--questions", str(questions), "--quiet", *extra, log=log)
        adapter = out / f"adapter-{name}"
        raft("train", f"model.name_or_path={base}", "model.dtype=fp32", f"data.path={ds}",
             "data.max_seq_len=384", "lora.r=" + str(args.rank), "lora.alpha=" + str(args.rank),
             f"lora.target_modules=[{args.targets}]",
             "lora.dropout=0.0", f"optim.lr={args.lr}", f"optim.max_steps={args.steps}",
             f"optim.batch_tokens={args.batch_tokens}", "optim.warmup_ratio=0.05", f"optim.scheduler={args.scheduler}",
             f"optim.batching={args.batching}",
             "ray.num_workers=1", f"ray.cpus_per_worker={args.cpus:g}", f"ray.storage_path={out / 'ray'}",
             f"ray.run_name=raft-effect-{name}-{args.seed}-{args.steps}-{args.lr:g}-{args.rank}-{args.hidden}x{args.layers}-{args.batching}{args.batch_tokens}", f"output_dir={adapter}",
             f"save_every={args.steps}", "export=last", "log_every=25", f"seed={args.seed}", log=log)
        raft("export", str(adapter), "--merge", "--out", str(out / f"merged-{name}"), log=log)

    engine, url = start_engine(out / "engine.log")
    try:
        sweep = [int(x) for x in args.sweep.split(",")]
        systems = [{"name": name, "base_url": url, "model": str(out / f"merged-{name}"), "retrieval": "record"}
                   for name in runs]
        raft("eval", "--data", str(out / "data-RAFT" / "raft" / "test.jsonl"), "--out", str(out / "eval"),
             f"systems={json.dumps(systems)}", f"sweep.distractors={json.dumps(sweep)}",
             f"limit={args.eval_n}", "max_tokens=32", "concurrency=2", "timeout=120", f"seed={args.seed}",
             log=log)
    finally:
        os.killpg(engine.pid, signal.SIGTERM)
        engine.wait(timeout=30)

    report = json.loads((out / "eval" / "report.json").read_text())
    acc = {name: {str(r["value"]): r["em"] for r in report["runs"]
                  if r["system"] == name and r["sweep"] == "distractors"} for name in runs}
    at4 = {name: acc[name].get("4") for name in runs}
    gap = (at4["RAFT"] - at4["oracle-only"]) if None not in at4.values() else None
    result = {"accuracy": acc, "em_at_4_distractors": at4, "gap_at_4_points": None if gap is None else round(100 * gap, 1),
              "target_gap_points": 20, "met": gap is not None and gap >= 0.20,
              "train_distractors": args.train_distractors, "p_oracle": args.p_oracle,
              "eval_questions": report["n_items"], "args": vars(args),
              "seconds": round(time.perf_counter() - t0, 1),
              "load_average_1_5_15min_at_end": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(),
              "main_runs": {r["system"]: {k: r[k] for k in ("em", "f1", "quote_validity", "answer_tag_rate")}
                            for r in report["runs"] if r["sweep"] == "main"}}
    (out / "raft_effect.json").write_text(json.dumps(result, indent=2))
    plot(result, out / "raft_effect.png")
    print(json.dumps({k: result[k] for k in ("accuracy", "gap_at_4_points", "met", "seconds")}, indent=1))
    if args.results:
        import shutil

        dest = REPO / args.results
        dest.mkdir(parents=True, exist_ok=True)
        for f in ("raft_effect.json", "raft_effect.png"):
            shutil.copy(out / f, dest / f)
    print(f"results: {out / 'raft_effect.json'}, plot: {out / 'raft_effect.png'}")
    return 0 if result["met"] else 1


ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}

if __name__ == "__main__":
    sys.exit(main())
