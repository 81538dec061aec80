"""Argument helpers shared by the command modules (kept import-light: no torch, no Ray)."""

from __future__ import annotations

import argparse

# One real key per config section, shown in each command's --help as an override example (a test loads
# every one of them, so the help never names a key that does not exist).
EXAMPLE_OVERRIDES = {
    "index": "chunk_size=256",
    "build": "mix.num_distractors=3",
    "train": "optim.lr=1e-4",
    "export": "dtype=fp16",
    "serve": "port=9000",
    "eval": "limit=20",
}


def add_config_arguments(p: argparse.ArgumentParser, section: str) -> None:
    example = EXAMPLE_OVERRIDES[section]
    p.add_argument("--config", "-c", metavar="FILE", help=f"YAML config (a file with a `{section}:` "
                   "section, or the section's keys at top level)")
    # default=[]: without it argparse lists a `*` positional as required in its errors
    p.add_argument("overrides", nargs="*", default=[], metavar="key.sub=value",
                   help=f"override config keys, e.g. {section}.{example} or {example}")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config as YAML and exit")
    p.add_argument("--help-config", action="store_true",
                   help="list every config key with its type, default and meaning, and exit")


def override_not_positional(args: argparse.Namespace, dest: str) -> None:
    """An optional positional (CORPUS) swallows the first `key=value` when it is left out
    (`raft build --index idx seed=3`) or comes later: a value that names no file is moved back to the
    overrides, and a later argument without `=` takes its place."""
    import os

    value = getattr(args, dest, None)
    if value and "=" in value and not os.path.exists(value):
        args.overrides = [value] + list(args.overrides or [])
        setattr(args, dest, None)
        # `raft index build chunk_size=64 docs/`: the positional came after an override
        plain = [o for o in args.overrides if "=" not in o]
        if plain:
            setattr(args, dest, plain[0])
            args.overrides.remove(plain[0])


def print_config_help(lines: list[str]) -> None:
    """`key (type, default): meaning` lines, each wrapped to the terminal (COLUMNS honoured) with its
    continuation indented, so the key column stays easy to scan."""
    import shutil
    import textwrap

    width = max(40, shutil.get_terminal_size().columns - 1)
    for line in lines:
        print(textwrap.fill(line, width, subsequent_indent="    ", break_on_hyphens=False,
                            break_long_words=False))


def load_command_config(args: argparse.Namespace, model, section: str):
    """Resolve the command's config from --config and overrides; None when a flag says stop here."""
    import yaml

    from raft.config import describe, load_config

    if getattr(args, "help_config", False):
        print_config_help(describe(model))
        return None
    cfg = load_config(model, args.config, args.overrides, section=section)
    if getattr(args, "print_config", False):
        print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False).rstrip())
        return None
    return cfg

