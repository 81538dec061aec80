"""`raft eval`: score OpenAI-compatible systems (base, base+RAG, RAFT+RAG) on a question set."""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

from raft.commands.common import add_config_arguments, load_command_config

HELP = "evaluate systems behind OpenAI-compatible endpoints: recall@k, EM/F1, quotes, citations, sweeps"
EXAMPLE = """raft eval --config configs/eval_quickstart.yaml
raft eval --data out/dataset/eval/test.jsonl --base-url http://127.0.0.1:8000/v1 --model raft --retrieval gateway
raft eval --data questions.jsonl --base-url http://127.0.0.1:8001/v1 --model base --retrieval local --index idx
raft eval -c configs/eval_quickstart.yaml sweep.distractors=[0,2,4,8] out=runs/eval_sweep
raft eval -c configs/eval_quickstart.yaml sweep.distractors=[0,2,4,8] out=runs/eval_sweep --resume  # after a stop"""


DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"  # SystemConfig.base_url's default


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p, "eval")
    g = p.add_argument_group("shortcuts (each sets a config key; --base-url through --api-key define one "
                             "system and need --model)")
    g.add_argument("--data", metavar="FILE", help="questions: questions.jsonl, OUT/eval/SPLIT.jsonl, "
                   "OUT/raft/SPLIT.jsonl or a dataset directory OUT (sets eval.data)")
    g.add_argument("--base-url", metavar="URL", help="OpenAI-compatible base URL ending in /v1 (default: "
                   f"{DEFAULT_BASE_URL}); needs --model")
    g.add_argument("--model", metavar="NAME", help="model name to request: defines one system, replacing the "
                   "config's systems (no default: an endpoint serves models by name)")
    g.add_argument("--name", metavar="LABEL", help="label of that system in the report (default: the model)")
    g.add_argument("--retrieval", choices=["off", "gateway", "local", "record"],
                   help="where documents come from for that system (default off)")
    g.add_argument("--top-k", type=int, metavar="K", help="documents retrieved per question (default: 5)")
    g.add_argument("--api-key", metavar="KEY", help="API key, or env:VAR to read it from VAR")
    g.add_argument("--index", metavar="DIR", help="local retrieval index (for --retrieval local)")
    g.add_argument("--limit", type=int, metavar="N", help="evaluate the first N questions only")
    g.add_argument("--out", metavar="DIR", help="report directory (sets eval.out)")
    p.add_argument("--resume", action="store_true",
                   help="reuse the answers an interrupted run left in OUT/predictions.partial.jsonl, or a "
                   "finished run in OUT/predictions.jsonl (same systems, questions and generation settings; failed "
                   "requests are asked again): adding a system or a sweep point asks only what is new")


def _shortcut_overrides(args: argparse.Namespace) -> list[str]:
    """Convenience flags as `key=value` overrides, applied before the explicit ones so those win. The system
    flags need --model: without it they would define no system and be ignored."""
    from raft.errors import RaftError

    out = []
    for flag, key in (("data", "data"), ("index", "index"), ("limit", "limit"), ("out", "out")):
        value = getattr(args, flag, None)
        if value is not None:
            out.append(f"{key}={json.dumps(value)}")
    if args.top_k is not None and args.top_k < 1:
        raise RaftError(f"--top-k must be at least 1, got {args.top_k}")
    given = [flag for flag, value in (("--name", args.name), ("--retrieval", args.retrieval),
                                      ("--top-k", args.top_k), ("--api-key", args.api_key)) if value is not None]
    if given and not (args.base_url or args.model):  # they describe the one system --model defines
        raise RaftError(f"{', '.join(given)} given without --model: these flags define one system together with "
                        f"--model NAME (and --base-url URL, default {DEFAULT_BASE_URL}); the systems of a "
                        "config are set with systems=[...] (see raft eval --help-config)")
    if args.base_url and not args.model:  # an endpoint serves models by name; none is guessed
        raise RaftError(f"--base-url {args.base_url} needs --model NAME, the model name sent with each request "
                        "(the gateway's serve.model_name, a vLLM adapter name, a model path)")
    if args.model:
        system = {"name": args.name or args.model, "model": args.model,
                  "base_url": args.base_url or DEFAULT_BASE_URL, "retrieval": args.retrieval or "off"}
        if args.top_k is not None:
            system["top_k"] = args.top_k
        if args.api_key:
            system["api_key"] = args.api_key
        out.append("systems=" + json.dumps([system]))
    return out


class PredictionStream:
    """Each scored answer appended to OUT/predictions.partial.jsonl as it comes back (the file is created
    with the first one), so a run that fails later, or is interrupted, keeps every answer it paid for."""

    def __init__(self, path: Path, append: bool = False):
        self.path, self._f, self.mode = path, None, "a" if append else "w"
        self.failed: OSError | None = None  # a safety copy that cannot be written must not stop the run

    def write(self, row: dict) -> None:
        if self.failed is not None:
            return
        try:
            if self._f is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                if self.mode == "a" and self.path.is_file() and self.path.stat().st_size:
                    with self.path.open("rb") as f:
                        f.seek(-1, os.SEEK_END)
                        cut = f.read(1) != b"\n"  # a line cut short by the interruption stays on its own line
                else:
                    cut = False
                self._f = self.path.open(self.mode, encoding="utf-8")
                if cut:
                    self._f.write("\n")
            self._f.write(json.dumps(row, ensure_ascii=False) + "\n")
            self._f.flush()
        except OSError as e:
            self.failed = e

    def __enter__(self) -> "PredictionStream":
        return self

    def __exit__(self, *exc) -> None:
        if self._f is not None:
            self._f.close()


def summary_table(result: dict, k: int):
    """The terminal's table, one row per run, within 100 columns (two-line headers). A column no run has a
    value for is left out: recall for systems that do not retrieve, cost where no price is set, errors when
    no request failed (the line under the table counts failed requests)."""
    from rich import box
    from rich.table import Table

    runs = result["runs"]
    cols = [("em", "EM"), ("f1", "F1"), (f"recall@{k}", f"recall\n@{k}"), ("quote_validity", "quote\nvalid"),
            ("latency_p50_s", "p50\n(s)"), ("latency_p95_s", "p95\n(s)"), ("prompt_tokens", "prompt\ntokens"),
            ("completion_tokens", "compl.\ntokens"), ("cost_per_correct", "cost /\ncorrect")]
    cols = [(key, h) for key, h in cols if key in ("em", "f1") or any(r.get(key) is not None for r in runs)]
    table = Table(title="raft eval", box=box.SIMPLE_HEAD, collapse_padding=True, pad_edge=False)
    table.add_column("system", min_width=12, overflow="fold")
    for _, header in cols:
        table.add_column(header, justify="right", no_wrap=True)
    errors = any(r.get("errors") for r in runs)
    if errors:
        table.add_column("errors", justify="right", no_wrap=True)
    for r in runs:
        table.add_row(r["label"], *(_short(key, r.get(key)) for key, _ in cols),
                      *([str(r["errors"])] if errors else []))
    return table


def _short(key: str, v) -> str:
    """A figure as the terminal shows it: seconds to 0.1 and whole tokens, so that the system names fit on one
    line at 80 columns (report.md keeps every figure at full precision)."""
    from raft.eval.report import fmt_metric

    if v is None:
        return fmt_metric(key, v)
    if key in ("latency_p50_s", "latency_p95_s"):
        return f"{v:.1f}"
    if key in ("prompt_tokens", "completion_tokens"):
        return f"{v:.0f}"
    return fmt_metric(key, v)


def run(args: argparse.Namespace) -> int:
    import asyncio
    import time

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from raft.errors import RaftError
    from raft.eval.config import EvalConfig
    from raft.eval.data import load_items
    from raft.eval.report import best_lines, write_report
    from raft.eval.runner import check_reachable, evaluate

    args.overrides = _shortcut_overrides(args) + list(args.overrides or [])
    cfg = load_command_config(args, EvalConfig, "eval")
    if cfg is None:
        return 0
    console = Console(stderr=True)
    start = time.perf_counter()
    from raft.commands.common import absolute, check_writable
    from raft.model_source import resolve_model

    cfg.data, cfg.index, cfg.out = absolute(cfg.data, must_exist=True), absolute(cfg.index), absolute(cfg.out)
    items = load_items(cfg.data, cfg.split, cfg.limit)
    check_writable(cfg.out, "eval.out (--out)")  # before any request: the answers must have somewhere to go
    if cfg.rerank.model and any(s.rerank and s.retrieval == "local" for s in cfg.systems):
        from retrieval.rerank import Reranker

        cfg.rerank.model = absolute(cfg.rerank.model, must_exist=True)
        Reranker.from_config(cfg.rerank).load()  # a wrong path fails now, not after the first runs
    if cfg.systems:
        asyncio.run(check_reachable(cfg))  # seconds, before a model conversion that may take a minute
    # a packaged model name or a .gguf file becomes the converted directory that `transformers serve` loads
    cfg.systems = [s.model_copy(update={"model": resolve_model(s.model, log=console.print, absolute=False)})
                   for s in cfg.systems]
    partial = Path(cfg.out) / "predictions.partial.jsonl"
    done: dict = {}
    if args.resume:
        from raft.eval.resume import load_done

        finished = Path(cfg.out) / "predictions.jsonl"
        if not partial.is_file() and finished.is_file():  # a finished run: its answers seed the new one
            shutil.copyfile(finished, partial)
        done, not_reused = load_done(partial, cfg)
        console.print(f"resuming: {len(done)} answer(s) reused from {partial}"
                      + (f", {not_reused} asked again (failed, or from other settings)" if not_reused else "")
                      if partial.is_file() else f"--resume: no {partial}; every question is asked")
    elif partial.is_file():
        console.print(f"[yellow]{partial} (an interrupted run's answers) is replaced; pass --resume to reuse "
                      "them[/]")
    stream = PredictionStream(partial, append=bool(args.resume))
    console.print(f"[bold]raft eval[/]: {len(items)} questions from {cfg.data}; systems: "
                  + ", ".join(f"{s.name} ({s.retrieval})" for s in cfg.systems))
    with Progress(TextColumn("{task.description:<32}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=False) as progress, stream:
        tasks: dict[str, int] = {}

        def on_start(spec, total):
            tasks[spec.label] = progress.add_task(spec.label, total=total)

        def on_progress(label, n):
            progress.advance(tasks[label], n)

        result = asyncio.run(evaluate(cfg, items, on_progress=on_progress, on_start=on_start, on_row=stream.write,
                                      done=done))
    try:
        files = write_report(result, cfg.out, config=cfg.model_dump(mode="json"), data=cfg.data,
                             k_values=cfg.k_values)
    except OSError as e:
        kept = (f"the answers streamed so far are in {stream.path}" if stream.path.exists() else
                "no answer could be kept on disk")
        raise RaftError(f"writing the report to {cfg.out} failed ({e.strerror or e}); {kept}") from None
    stream.path.unlink(missing_ok=True)  # predictions.jsonl holds them all now
    console.print(summary_table(result, max(cfg.k_values)))
    for line in best_lines(result.get("best") or {}):
        console.print(line, highlight=False)
    errors = sum(r["errors"] for r in result["runs"])
    reused = f" ({result['reused_answers']} reused)" if result.get("reused_answers") else ""
    console.print(f"{len(result['runs'])} run(s), {len(result['predictions'])} answers{reused}, {errors} failed "
                  f"request(s), {time.perf_counter() - start:.1f} s; report: {files['markdown']}")
    return 1 if result["predictions"] and errors == len(result["predictions"]) else 0
