"""Training throughput, two comparisons in one run on the same model and data (ratios, not absolute times):

1. `raft train` (1 Ray worker) vs a plain transformers `Trainer` + peft on identical padded batches
   (the very batches `raft train --batching pad` draws, in its order; same LoRA, same steps): the cost of
   the framework, with `optim.trained_logits_only=false` so that both sides compute the same logits.
   Target >= 0.95x. The same with the default `trained_logits_only=true` (the output head runs on the
   answer tokens only) shows what that saves; it grows with the head's share of the model's FLOPs
   (`--vocab`: the tiny tokenizer's ~1.2k ids make the head 11% of this model's linear FLOPs; `--vocab 3072`
   makes it 25%, the share in Llama-3.2-1B (21%) and Qwen2.5-0.5B (28%)).
2. Padding-free packing and length-grouped batches vs naive padded batches on RAFT-length examples
   (1-8 shown documents, so lengths vary a lot), all through `raft train`. Target >= 1.5x.

Every run is repeated `--repeats` times, round-robin, and each ratio uses the median of each side, so one
slow moment on a shared host does not decide it. Tokens/s counts real (non-padding) tokens per second of
training steps, after `--warmup` steps. Both sides are timed the same way: wall time from the end of one
optimizer step to the end of the next, so batch collation, the optimizer and logging are inside the window
on both. `raft train` runs also report model TFLOP/s (raft/train/flops.py) and, on a GPU, MFU.
Writes benchmarks/results/train_throughput.{json,png}.

    python benchmarks/train_throughput.py                 # tiny-ish Llama built locally, CPU, a few minutes
    python benchmarks/train_throughput.py --steps 30 --hidden 384
    python benchmarks/train_throughput.py --vocab 3072                  # a real model's head share
    python benchmarks/train_throughput.py --gpu --preset llama-1b --attn sdpa --repeats 1   # one GPU: MFU
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

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def raft_run(model: Path, data: Path, storage: Path, mode: str, args, tag: str = "",
             full_logits: bool = False) -> dict:
    from rich.console import Console

    from raft.train.config import TrainConfig
    from raft.train.trainer import run_training

    cfg = TrainConfig.model_validate({
        "model": {"name_or_path": str(model), "dtype": "bf16" if args.gpu else "fp32",
                  "attn_implementation": args.attn},
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
        "data": {"path": str(data), "max_seq_len": args.max_seq_len, "eval_split": None},
        "optim": {"lr": 1e-3, "max_steps": args.steps, "batch_tokens": args.batch_tokens, "batching": mode,
                  "warmup_ratio": 0.0, "trained_logits_only": not full_logits},
        "ray": {"num_workers": 1, "cpus_per_worker": 1, "use_gpu": args.gpu, "storage_path": str(storage),
                "run_name": f"bench-{mode}{tag}", "max_failures": 0},
        "save_every": 10_000, "log_every": 1, "seed": 0})
    run_training(cfg, console=Console(quiet=True))
    rows = [json.loads(x) for x in (storage / f"bench-{mode}{tag}" / "logs" / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "window_tokens" in r][args.warmup:]
    toks, secs = sum(r["window_tokens"] for r in rows), sum(r["window_s"] for r in rows)
    tflops = sum(r["tflops_per_s"] * r["window_s"] for r in rows) / secs
    out = {"tokens_per_s": toks / secs, "tokens": toks, "seconds": secs, "steps": len(rows),
           "step_s_median": statistics.median(r["window_s"] for r in rows), "model_tflops_per_s": tflops}
    if "mfu" in rows[0]:
        out["mfu"] = tflops / rows[0]["tflops_per_s"] * rows[0]["mfu"]  # the same peak divides every row
    return out


def hf_trainer_run(model_dir: Path, data: Path, out: Path, args) -> dict:
    """A plain Trainer + peft loop on the same tokenized examples and padded batches as `batching=pad`."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from raft.train.batching import make_batches
    from raft.train.data import load_examples
    from raft.train.model import linear_module_names
    from raft.train.tokenize import Renderer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    ex, _ = load_examples(str(data), "train")
    enc, _ = Renderer(tok, args.max_seq_len).encode_all(ex)
    # the rows `raft train` (seed 0, epoch 0, batching=pad) puts in each batch, in its order: both sides
    # then pad and compute exactly the same tensors
    order = [i for b in make_batches([len(e["input_ids"]) for e in enc], args.batch_tokens, "pad", 0,
                                     args.max_seq_len) for i in b]
    enc = [enc[i] for i in order]
    if not args.gpu:
        torch.set_num_threads(1)  # a Ray worker with 1 CPU runs torch on one thread too
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.bfloat16 if args.gpu else torch.float32,
                                                 attn_implementation=args.attn)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM",
                                             target_modules=linear_module_names(model)))
    rows = max(1, args.batch_tokens // args.max_seq_len)
    times, tokens = [], []

    class Clock(TrainerCallback):
        # end-to-end like raft's window: the data loader's fetch and collation happen between steps
        def on_train_begin(self, a, s, c, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, a, s, c, **kw):
            now = time.perf_counter()
            times.append(now - self.t)
            self.t = now

    class CountingTrainer(Trainer):
        def _get_train_sampler(self, *a, **kw):
            return torch.utils.data.SequentialSampler(self.train_dataset)

        def training_step(self, model, inputs, num_items_in_batch=None):
            tokens.append(int(inputs["attention_mask"].sum()))
            return super().training_step(model, inputs, num_items_in_batch)

    targs = TrainingArguments(output_dir=str(out), per_device_train_batch_size=rows, max_steps=args.steps,
                              learning_rate=1e-3, lr_scheduler_type="cosine", logging_steps=10_000,
                              save_strategy="no", report_to=[], use_cpu=not args.gpu, bf16=args.gpu,
                              dataloader_num_workers=0,
                              remove_unused_columns=False, disable_tqdm=True, seed=0)
    trainer = CountingTrainer(model=model, args=targs, train_dataset=enc,
                              data_collator=DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100),
                              callbacks=[Clock()])
    trainer.train()
    toks, secs = sum(tokens[args.warmup:]), sum(times[args.warmup:])
    return {"tokens_per_s": toks / secs, "tokens": toks, "seconds": secs, "steps": len(times) - args.warmup,
            "step_s_median": statistics.median(times[args.warmup:])}


def _gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["runs"])
    vals = [results["runs"][n]["tokens_per_s"] for n in names]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    bars = ax.bar(names, vals, color=["#888", "#aaa", "#4a7", "#27a", "#a52"][: len(names)])
    ax.tick_params(axis="x", labelsize=7)
    ax.bar_label(bars, fmt="%.0f")
    ax.set_ylabel("real tokens / s (training steps)")
    r = results["ratios"]
    ax.set_title(f"raft(pad, full logits)/Trainer {r['raft_pad_full_logits_vs_hf_trainer']:.2f}x, "
                 f"raft(pad)/Trainer {r['raft_pad_vs_hf_trainer']:.2f}x,\npack/pad {r['pack_vs_pad']:.2f}x, "
                 f"group/pad {r['group_vs_pad']:.2f}x", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3, help="round-robin repeats of all five runs (medians used)")
    ap.add_argument("--examples", type=int, default=160)
    ap.add_argument("--max-seq-len", type=int, default=1024)
    ap.add_argument("--batch-tokens", type=int, default=4096)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--intermediate", type=int, default=0, help="MLP width (0: 2 x hidden)")
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=0, help="the model's vocabulary size (0: the tiny tokenizer's "
                    "~1.2k ids); ids past the tokenizer's are never seen, only the head's size changes")
    ap.add_argument("--gpu", action="store_true", help="train on one CUDA GPU in bf16 (MFU is logged)")
    ap.add_argument("--attn", default=None, help="attention kernel (sdpa, eager, flash_attention_2)")
    ap.add_argument("--preset", choices=["llama-1b"], help="llama-1b: the shape of Llama-3.2-1B (hidden 2048, "
                    "16 layers, 32/8 heads, MLP 8192, 128,256 ids; random weights), for --gpu")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args()
    if args.preset == "llama-1b":
        args.hidden, args.layers, args.heads, args.kv_heads = 2048, 16, 32, 8
        args.intermediate, args.vocab = 8192, 128256

    import ray

    from raft.testing.tiny_model import build_tiny_model, corpus_texts
    from raft.testing.sample_data import write_dataset

    corpus = REPO / "raft" / "quickstart" / "corpus"
    work = Path(tempfile.mkdtemp(prefix="raft-bench-"))
    model = build_tiny_model(work / "model", corpus_texts(corpus), hidden_size=args.hidden, layers=args.layers,
                             heads=args.heads, kv_heads=args.kv_heads)
    if args.vocab or args.intermediate:  # a fresh random model of the changed shape, same tokenizer
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        conf = AutoConfig.from_pretrained(str(model))
        conf.vocab_size = args.vocab or conf.vocab_size
        conf.intermediate_size = args.intermediate or conf.intermediate_size
        torch.manual_seed(0)
        dtype = torch.bfloat16 if args.gpu else torch.float32
        AutoModelForCausalLM.from_config(conf, dtype=dtype).save_pretrained(model)
    data = write_dataset(work / "data", corpus, n_train=args.examples, n_val=0, docs_min=1, docs_max=8)
    ray.init(num_cpus=None if args.gpu else 2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                                       "OMP_NUM_THREADS": "1"}})
    runs, pairs = {}, []
    t = time.time()
    for rep in range(args.repeats):  # round-robin, so a slow stretch of a shared host hits every side
        got = {"hf_trainer_pad": hf_trainer_run(model, data, work / f"hf{rep}", args),
               "raft_pad_full_logits": raft_run(model, data, work / "runs", "pad", args, tag=f"-full-{rep}",
                                                full_logits=True)}
        for mode in ("pad", "group", "pack"):
            got[f"raft_{mode}"] = raft_run(model, data, work / "runs", mode, args, tag=f"-{rep}")
        pairs.append({k: v["tokens_per_s"] for k, v in got.items()})
        print(f"repeat {rep}: " + ", ".join(f"{k} {v:.0f}" for k, v in pairs[-1].items()) + " tokens/s", flush=True)
        for k, v in got.items():
            runs.setdefault(k, v)
    for side, run in runs.items():  # the median repeat of each side; the other fields describe the first repeat
        run["tokens_per_s"] = statistics.median(p[side] for p in pairs)
    ray.shutdown()
    tps = {k: v["tokens_per_s"] for k, v in runs.items()}
    ratios = {"raft_pad_full_logits_vs_hf_trainer": tps["raft_pad_full_logits"] / tps["hf_trainer_pad"],
              "raft_pad_vs_hf_trainer": tps["raft_pad"] / tps["hf_trainer_pad"],
              "raft_pack_vs_hf_trainer": tps["raft_pack"] / tps["hf_trainer_pad"],
              "pack_vs_pad": tps["raft_pack"] / tps["raft_pad"], "group_vs_pad": tps["raft_group"] / tps["raft_pad"]}
    results = {"args": vars(args), "runs": runs, "ratios": ratios, "repeats": pairs,
               "wall_s": round(time.time() - t, 1),
               "host": {"cpus": os.cpu_count(), "torch_threads": None if args.gpu else 1, "gpu": _gpu_name()},
               "date": time.strftime("%Y-%m-%d %H:%M")}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_throughput.json").write_text(json.dumps(results, indent=2))
    plot(results, out / "train_throughput.png")
    for k, v in tps.items():
        extra = f", {runs[k]['model_tflops_per_s']:.3g} model TFLOP/s" if "model_tflops_per_s" in runs[k] else ""
        extra += f", MFU {runs[k]['mfu']:.1%}" if "mfu" in runs[k] else ""
        print(f"{k:>20}: {v:8.0f} tokens/s{extra}")
    for k, v in ratios.items():
        print(f"{k:>24}: {v:.2f}x")
    print(f"results: {out / 'train_throughput.json'}, {out / 'train_throughput.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
