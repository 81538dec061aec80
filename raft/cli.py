"""The `raft` command. Subcommands live one per module and are imported only when named, so
`raft --help` stays fast and `raft index` never pays for torch or Ray start-up it does not use.

Each command module defines `HELP` (one line), `EXAMPLE`, `add_arguments(parser)` and `run(args) -> int`,
and keeps its heavy imports inside `run`. The table names modules as strings: `serve` lives in the
`serving` package, which depends on `raft`, never the other way round.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

COMMANDS: dict[str, str] = {
    "quickstart": "raft.commands.quickstart",
    "index": "raft.commands.index",
    "build": "raft.commands.build",
    "train": "raft.commands.train",
    "rerank": "raft.commands.rerank",
    "export": "raft.commands.export",
    "serve": "serving.command",
    "eval": "raft.commands.eval",
}

EXAMPLE = """example:
  raft quickstart                       # the whole pipeline on SmolLM2-135M-Instruct, on the CPU
  raft index build docs/ --out idx      # then: raft index search idx "what is RAFT?" -k 5
"""


def available() -> dict[str, str]:
    """Commands whose module is installed (an optional package may be missing)."""
    return {n: m for n, m in COMMANDS.items() if importlib.util.find_spec(m) is not None}


def _top_parser(cmds: dict[str, str]) -> argparse.ArgumentParser:
    lines = []
    for name, mod in cmds.items():
        try:
            summary = importlib.import_module(mod).HELP
        except Exception as e:  # a broken optional module must not hide the others
            summary = f"(unavailable: {e})"
        lines.append(f"  {name:<11} {summary}")
    p = argparse.ArgumentParser(
        prog="raft",
        description="RAFT: build retrieval-augmented fine-tuning datasets, train LoRA adapters on Ray, "
        "serve them behind retrieval with citations.",
        epilog="commands:\n" + "\n".join(lines) + "\n\n" + EXAMPLE
        + "\nrun `raft COMMAND --help` for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"raft {__import__('raft').__version__}")
    p.add_argument("command", nargs="?", help="one of: " + ", ".join(cmds))
    return p


def _wrap(text: str) -> str:
    """A one-line description wrapped to the terminal (COLUMNS honoured), as argparse wraps option help."""
    import shutil
    import textwrap

    return textwrap.fill(text, max(40, shutil.get_terminal_size().columns - 2))


def command_parser(name: str) -> tuple[argparse.ArgumentParser, object]:
    module = importlib.import_module(COMMANDS[name])
    p = argparse.ArgumentParser(
        prog=f"raft {name}",
        description=_wrap(module.HELP),
        epilog="example:\n" + module.EXAMPLE.rstrip() + "\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    module.add_arguments(p)
    return p, module


def parse_command_args(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Options, positionals and key=value overrides in any order (`raft train --config c.yaml lr=1`,
    `raft index build docs/ --out idx chunk_size=256`). argparse cannot parse a parser with subcommands
    intermixed, so a named subcommand (`raft index build ...`) is parsed by its own parser."""
    sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    if sub is None:
        return parser.parse_intermixed_args(argv)
    if argv and argv[0] in sub.choices:
        args = sub.choices[argv[0]].parse_intermixed_args(argv[1:])
        setattr(args, sub.dest, argv[0])
        return args
    return parser.parse_args(argv)  # -h, or no/unknown subcommand: argparse says what is allowed


def _user_errors() -> tuple[type[BaseException], ...]:
    from raft.config import ConfigError
    from raft.errors import RaftError
    from retrieval.errors import RetrievalError

    return (ConfigError, RaftError, RetrievalError)


def _quiet_libraries() -> None:
    """Library chatter that is noise to a user of the CLI (not to a developer: tests and the Python API keep it)."""
    import os
    import warnings

    # deprecation notices from the libraries raft calls are for raft's maintainers, who see them in the tests
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    # offline nothing is downloaded, so transformers' per-tensor "Loading weights" bars only fill the log
    # (inherited by the processes a command starts: Ray workers, engines)
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _quiet_libraries()
    cmds = available()
    if not argv or argv[0] not in cmds:
        top = _top_parser(cmds)
        if argv and not argv[0].startswith("-"):
            top.error(f"unknown command {argv[0]!r}; choose one of: {', '.join(cmds)}")
        top.parse_args(argv)
        top.print_help()
        return 0
    parser, module = command_parser(argv[0])
    args = parse_command_args(parser, argv[1:])
    try:
        return int(module.run(args) or 0)
    except _user_errors() as e:
        from rich.console import Console
        from rich.markup import escape

        # soft_wrap: an error names paths and values; hard line breaks inside them break copy-paste (and greps).
        # escape: the message is literal text: `raft-stack[vllm]` or a file named q[draft].jsonl is not markup
        Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {escape(str(e))}", markup=True,
                                                   highlight=False)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `raft ... | head`: the reader left; not an error worth a traceback
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
