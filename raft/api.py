"""The Python entry points behind `raft build`, `raft train`, `raft rerank train` and `raft eval`
(re-exported by `raft`).

Each takes its config as a config object, a dict of the same keys (nested sections as dicts), or the path
of a YAML file (its `build:`/`train:`/`eval:` section, or the section's keys at top level), and returns the
summary the command prints.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from raft.data.config import BuildConfig
    from raft.eval.config import EvalConfig
    from raft.rerank.config import RerankTrainConfig
    from raft.train.config import TrainConfig
    from raft.train.runtime import StepHook

C = TypeVar("C")


def as_config(model: type[C], config: C | dict | str | Path | None, section: str) -> C:
    """`config` as a `model`; every problem in a dict or file is reported at once in a ConfigError."""
    from pydantic import ValidationError

    from raft.config import ConfigError, format_validation_error, load_config

    if isinstance(config, model):
        return config
    if config is None or isinstance(config, (str, Path)):
        return load_config(model, config, section=section)
    if isinstance(config, dict):
        try:
            return model.model_validate(config)
        except ValidationError as e:
            raise ConfigError(f"{section} config", format_validation_error(e, model)) from None
    raise TypeError(f"{section} config must be a {model.__name__}, a dict or a YAML path, "
                    f"not {type(config).__name__}")


def build_dataset(corpus: str | Path | None, out: str | Path,
                  config: BuildConfig | dict | str | Path | None = None, *, console=None) -> dict[str, Any]:
    """Build (or resume building) a RAFT dataset from `corpus` into `out`, as `raft build` does.

    `corpus` may be None when the config names an existing index (`index_dir`). A teacher model given as a
    packaged name or a .gguf file is converted once and cached. Returns the build summary (counts, drops,
    where the files went)."""
    from raft.data.builder import Builder
    from raft.data.config import BuildConfig
    from raft.model_source import resolve_model

    cfg = as_config(BuildConfig, config, "build")
    if cfg.teacher.kind != "extractive":  # a packaged name or .gguf becomes the converted directory
        log = {"log": console.print} if console is not None else {}  # default: conversion notes on stderr
        cfg.teacher = cfg.teacher.model_copy(
            update={"model": resolve_model(cfg.teacher.model, absolute=False, **log)})
    return Builder(cfg, out, corpus=corpus, console=console).run()


def train_adapter(config: TrainConfig | dict | str | Path, *, console=None,
                  step_hooks: Sequence[StepHook] = ()) -> dict[str, Any]:
    """Fine-tune a LoRA adapter on Ray Train and export it, as `raft train` does (resuming a run with the same
    `ray.storage_path` and `ray.run_name`). Returns the summary; `summary["adapter"]` is the adapter
    directory.

    `step_hooks`: callables run on every worker after each optimizer step (raft.train.runtime.StepHook)."""
    from raft.train.config import TrainConfig
    from raft.train.trainer import run_training

    return run_training(as_config(TrainConfig, config, "train"), console, step_hooks=step_hooks)


def train_reranker(dataset: str | Path, out: str | Path, config: RerankTrainConfig | dict | str | Path | None = None,
                   *, console=None) -> dict[str, Any]:
    """Fine-tune a cross-encoder reranker on a `raft build` output directory and write it to `out`, as
    `raft rerank train` does. Returns the summary (also saved as `out`/raft_rerank.json); load the model with
    `retrieval.Reranker(out)`."""
    from raft.rerank.config import RerankTrainConfig
    from raft.rerank.trainer import train_reranker as train

    return train(dataset, out, as_config(RerankTrainConfig, config, "rerank"), console=console)


def evaluate(config: EvalConfig | dict | str | Path, *, write_report: bool = True) -> dict[str, Any]:
    """Score the configured systems on the configured questions, as `raft eval` does.

    Returns {"runs": [...], "predictions": [...], ...}; with `write_report` the report also goes to the
    config's `out` directory and `result["files"]` names its files."""
    import asyncio

    from raft.eval.config import EvalConfig
    from raft.eval.data import load_items
    from raft.eval.report import write_report as write
    from raft.eval.runner import evaluate as run
    from raft.model_source import resolve_model

    cfg = as_config(EvalConfig, config, "eval")
    cfg.systems = [s.model_copy(update={"model": resolve_model(s.model, absolute=False)})
                   for s in cfg.systems]
    result = asyncio.run(run(cfg, load_items(cfg.data, cfg.split, cfg.limit)))
    if write_report:
        result["files"] = write(result, cfg.out, config=cfg.model_dump(mode="json"), data=cfg.data,
                                k_values=cfg.k_values)
    return result
