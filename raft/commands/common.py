"""Argument helpers shared by the command modules (kept import-light: no torch, no Ray)."""

from __future__ import annotations

import argparse


def add_config_arguments(p: argparse.ArgumentParser, section: str) -> None:
    p.add_argument("--config", "-c", metavar="FILE", help=f"YAML config (a file with a `{section}:` "
                   "section, or the section's keys at top level)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value",
                   help=f"override config keys, e.g. {section}.seed=7 or seed=7")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config as YAML and exit")
    p.add_argument("--help-config", action="store_true",
                   help="list every config key with its type, default and meaning, and exit")


def load_command_config(args: argparse.Namespace, model, section: str):
    """Resolve the command's config from --config and overrides; None when a flag says stop here."""
    import yaml

    from raft.config import describe, load_config

    if getattr(args, "help_config", False):
        print("\n".join(describe(model)))
        return None
    cfg = load_config(model, args.config, args.overrides, section=section)
    if getattr(args, "print_config", False):
        print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False).rstrip())
        return None
    return cfg
