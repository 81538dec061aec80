"""`raft quickstart`: the whole pipeline on the shipped corpus with a tiny CPU model, in a few minutes."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "run the whole pipeline (build, train on Ray, export, serve, ask, eval) on a tiny CPU model"
EXAMPLE = """raft quickstart
raft quickstart --out runs/qs2 --no-eval"""

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "quickstart_cpu.yaml"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/quickstart", metavar="DIR",
                   help="where every output goes (default: runs/quickstart)")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), metavar="FILE",
                   help="pipeline config with build/train/serve/eval sections (default: configs/quickstart_cpu.yaml)")
    p.add_argument("--port", type=int, default=None, help="gateway port (default: a free port)")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation step")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from raft.errors import RaftError
    from raft.quickstart.pipeline import Pipeline

    config = Path(args.config)
    if not config.is_file():
        raise RaftError(f"quickstart config {str(config)!r} not found; run from a clone of the repository "
                        "or pass --config FILE (see configs/quickstart_cpu.yaml)")
    Pipeline(Path(args.out), config, Console(), gateway_port=args.port).run(evaluate=not args.no_eval)
    return 0
