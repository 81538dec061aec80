"""`raft rerank train DATASET_DIR --out DIR`: fine-tune a cross-encoder reranker on a RAFT dataset."""

from __future__ import annotations

import argparse

from raft.commands.common import add_config_arguments

HELP = "train a cross-encoder reranker on a RAFT dataset (oracle chunks vs mined distractors)"
EXAMPLE = """raft rerank train out/dataset --out out/reranker        # out/dataset: what `raft build` wrote
raft index search out/index "Which island is the largest?" -k 5 --rerank out/reranker
"""

def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    t = sub.add_parser("train", help="fine-tune a cross-encoder on (question, oracle) positives and (question, "
                       "distractor) hard negatives of a `raft build` output",
                       epilog="example:\n  raft rerank train out/dataset --out out/reranker\n",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("dataset", metavar="DATASET_DIR", nargs="?",
                   help="the --out directory of `raft build` (required to train; --print-config and --help-config "
                   "need none)")
    t.add_argument("--out", "-o", metavar="DIR", help="model directory to write, required to train (an earlier "
                   "reranker there is replaced when training succeeds)")
    t.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_config_arguments(t, "rerank")  # raft/cli.py parses intermixed: DATASET_DIR, options, overrides in any order


def run(args: argparse.Namespace) -> int:
    return {"train": _train}[args.action](args)


def _train(args) -> int:
    import json

    from raft.commands.common import (OutputGuard, absolute, check_writable, load_command_config,
                                      override_not_positional)
    from raft.errors import RaftError
    from raft.rerank.config import RerankTrainConfig

    override_not_positional(args, "dataset")
    cfg = load_command_config(args, RerankTrainConfig, "rerank")
    if cfg is None:
        return 0
    if not args.dataset or not args.out:
        raise RaftError("raft rerank train needs a DATASET_DIR (the --out of `raft build`) and --out DIR, e.g. "
                        "raft rerank train data/raft --out runs/reranker")
    from pathlib import Path

    from rich.console import Console

    from raft.rerank.trainer import check_out, train_reranker

    dataset, out = absolute(args.dataset), absolute(args.out)
    cfg.index_dir = absolute(cfg.index_dir)
    check_out(Path(out))  # before minutes of training, as check_writable below
    check_writable(out, "--out", need_bytes=200 * 1024 * 1024)  # MiniLM-sized weights, twice during the swap
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    import contextlib
    import sys

    # with --json, stdout carries the summary alone: the trainer's own prints go to stderr
    quiet = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
    with OutputGuard(out, "raft rerank train", remove_new_dir=False), quiet:
        s = train_reranker(dataset, out, cfg, console=None if args.json else console)
    if args.json:
        print(json.dumps(s))
        return 0
    ev = s["eval"]
    score = f"; {ev['split']} MRR of the oracle among shown chunks {ev['mrr']:.3f} ({ev['questions']} questions)" \
        if ev["mrr"] is not None else ""
    console.print(f"[green]done[/] in {s['seconds']:.0f}s ({s['train_seconds']:.0f}s training, {s['steps']} steps, "
                  f"final loss {s['train_loss']:.4f}) on {s['pairs']} pairs from {s['records']} records{score}; "
                  f"reranker written to {s['out']}")
    fu = s["fusion"]
    if fu.get("chosen"):
        console.print(f"fusion weight {fu['weight']:.1f} (1: the reranker alone, 0: the search's order), chosen on "
                      f"{fu['questions']} {fu['split']} questions: MRR@10 search {fu['search']['mrr@10']:.3f}, "
                      f"reranker alone {fu['reranker_alone']['mrr@10']:.3f}, fused {fu['chosen']['mrr@10']:.3f}")
        if ns := fu.get("not_significant"):
            console.print(f"[yellow]weight {ns['weight']:.1f} scored MRR@10 {ns['mrr@10']:.3f}, but its gain over the "
                          f"search is within the noise of {ns['questions']} questions (95% lower bound "
                          f"{ns['gain_lower_bound']:+.3f}), so it was not taken[/]")
        if fu["weight"] == 0.0:
            console.print("[yellow]the reranker did not beat the search on those questions, so the stage keeps the "
                          "search's order; train on more questions (or longer) before serving it[/]")
    else:
        console.print(f"fusion weight {fu['weight']:.1f} ({fu['reason']})")
    if s["positives_without_text"]:
        console.print(f"[yellow]{s['positives_without_text']} oracle chunk(s) were not shown by any record and not "
                      "in the dataset's index: those positives were skipped (index_dir=DIR names the index it was "
                      "built from)[/]")
    console.print(f"use it: raft index search INDEX QUERY --rerank {args.out}  |  serve: "
                  f"retrieval.rerank.model={args.out}  |  eval: rerank.model={args.out} with rerank: true on a "
                  "system")
    return 0
