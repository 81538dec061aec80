"""`raft quickstart`: the whole pipeline on the shipped corpus with SmolLM2-135M-Instruct on a CPU."""

from __future__ import annotations

import argparse
from pathlib import Path

from raft.quickstart import CONFIG as DEFAULT_CONFIG

HELP = "run the whole pipeline (build, train on Ray, export, serve, ask, eval) with a small real model on a CPU"
EXAMPLE = """raft quickstart
raft quickstart --out runs/qs2 --no-eval"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/quickstart", metavar="DIR",
                   help="where every output goes (default: runs/quickstart)")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), metavar="FILE",
                   help="pipeline config with build/train/serve/eval sections (default: the shipped "
                        "raft/quickstart/quickstart_cpu.yaml, also at configs/quickstart_cpu.yaml)")
    p.add_argument("--port", type=int, default=None, help="gateway port (default: a free port)")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation step")
    p.add_argument("--help-config", action="store_true",
                   help="list every key of the pipeline config's sections with its type, default and meaning, "
                        "and exit")


def _section_models() -> dict:
    """The config model of each section the pipeline runs (serve's by name: raft never imports serving)."""
    import importlib

    from raft.data.config import BuildConfig
    from raft.eval.config import EvalConfig
    from raft.train.config import TrainConfig

    models = {"build": BuildConfig, "train": TrainConfig, "eval": EvalConfig}
    try:
        models["serve"] = importlib.import_module("serving.config").ServeConfig
    except ImportError:  # the serving package is optional for `raft` itself
        pass
    return dict(sorted(models.items(), key=lambda kv: ["build", "train", "serve", "eval"].index(kv[0])))


def check_config(path: Path) -> None:
    """YAML syntax and every section's keys, before the first step: one error listing every problem
    (with the line of a syntax error), not a traceback minutes into the run."""
    from raft.config import ConfigError, load_config, read_yaml

    data = read_yaml(path)
    problems = []
    for name, model in _section_models().items():
        if name in data:
            try:
                load_config(model, path, section=name)
            except ConfigError as e:
                problems += [f"{name}.{p}" if not p.startswith(name) else p for p in e.problems]
    if problems:
        raise ConfigError(str(path), problems)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from raft.errors import RaftError

    if args.help_config:
        from raft.commands.common import print_config_help
        from raft.config import describe

        print_config_help([line for name, model in _section_models().items() for line in describe(model, name + ".")])
        return 0
    config = Path(args.config)
    if not config.is_file():
        raise RaftError(f"quickstart config {str(config)!r} not found; pass --config FILE (the default is "
                        f"{DEFAULT_CONFIG})")
    check_config(config)
    from raft.quickstart.pipeline import Pipeline

    Pipeline(Path(args.out), config, Console(), gateway_port=args.port).run(evaluate=not args.no_eval)
    return 0
