"""Argument helpers shared by the command modules (kept import-light: no torch, no Ray)."""

from __future__ import annotations

import argparse

# One real key per config section, shown in each command's --help as an override example (a test loads
# every one of them, so the help never names a key that does not exist).
EXAMPLE_OVERRIDES = {
    "index": "chunk_size=256",
    "build": "mix.num_distractors=3",
    "train": "optim.lr=1e-4",
    "rerank": "epochs=3",
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


# ---- paths -----------------------------------------------------------------------------------------
def is_uri(value: str) -> bool:
    return "://" in value


def absolute(value: str | None, must_exist: bool = False) -> str | None:
    """`value` made absolute against the caller's working directory (~ expanded), so Ray workers and engine
    processes, which run elsewhere, find it. URIs (s3://...) and empty values stay as they are; with
    `must_exist`, so does anything that is not an existing path (a hub name such as org/model)."""
    from pathlib import Path

    if not value or is_uri(value):
        return value
    p = Path(value).expanduser()
    if must_exist and not p.exists():
        return value
    return str(p.resolve())


# ---- outputs ---------------------------------------------------------------------------------------
def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def check_writable(path: str, what: str, need_bytes: int = 0) -> None:
    """Fail now, not after the work, when `path` (a directory to create or fill) cannot be written: its
    nearest existing ancestor must be a directory that takes a probe file, with `need_bytes` free.
    Nothing is left behind (the directory itself is not created here). `what` names the flag or key."""
    import errno
    import os
    import shutil
    import tempfile
    from pathlib import Path

    from raft.errors import RaftError

    if is_uri(path):
        return
    p = Path(path).expanduser().absolute()
    if p.exists() and not p.is_dir():
        raise RaftError(f"{what} {str(p)!r} is a file, not a directory; choose another path")
    anc = p
    while not anc.exists():
        anc = anc.parent
    if not anc.is_dir():
        raise RaftError(f"{what} {str(p)!r} cannot be created: {str(anc)!r} is a file, not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".raft-write-test-", dir=anc)
        try:
            os.write(fd, b"ok")
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise RaftError(f"{what} {str(p)!r}: the disk holding {str(anc)!r} is full; free some space or "
                            "choose another disk") from None
        raise RaftError(f"{what} {str(p)!r} is not writable ({e.strerror or e} in {str(anc)!r}); "
                        "choose a directory you can write") from None
    if need_bytes:
        free = shutil.disk_usage(anc).free
        if free < need_bytes:
            raise RaftError(f"{what} {str(p)!r}: only {_human(free)} free on its disk, about {_human(need_bytes)} "
                            "needed; free some space or choose another disk")


def write_failure(e: BaseException) -> str | None:
    """Why a write failed, when `e` is one (a full or read-only disk, a permission, a failed write inside
    SQLite or FAISS); None for any other error."""
    import errno
    import sqlite3

    if isinstance(e, OSError):
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return "the disk is full"
        return f"{e.strerror or e}" + (f": {e.filename}" if e.filename else "")
    text = str(e)
    if isinstance(e, sqlite3.Error) and ("full" in text or "I/O" in text or "readonly" in text):
        return f"SQLite: {text}"
    if isinstance(e, RuntimeError) and ("write" in text.lower() and ("fail" in text or "error" in text)):
        return "a write failed: " + text.strip().splitlines()[-1][:200]
    return None


class OutputGuard:
    """Around the part of a command that writes `out`: when a write fails (see write_failure), remove what
    the failed attempt left (`*.tmp*` files and directories that were not there before; with
    `remove_new_dir`, the whole directory when this command created it) and raise one RaftError that
    says so. Earlier work that a rerun reuses (named in `kept`) is left in place and named; `tidy` removes
    what else a failed write leaves in a directory that existed (e.g. an index's unfinished generation)."""

    def __init__(self, out: str, what: str, remove_new_dir: bool = True, kept: str = "", tidy=None):
        from pathlib import Path

        self.out, self.what, self.remove_new_dir, self.kept = Path(out).expanduser(), what, remove_new_dir, kept
        self.tidy = tidy
        self.existed = self.out.exists()
        self.before = set(self.out.rglob("*")) if self.existed else set()

    def __enter__(self) -> "OutputGuard":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        import shutil

        from raft.errors import RaftError

        reason = write_failure(exc) if exc is not None else None
        if reason is None:
            return False
        if not self.existed and self.remove_new_dir:
            shutil.rmtree(self.out, ignore_errors=True)
            cleaned = f"removed the partial {self.out}"
        else:
            left = [p for p in self.out.rglob("*") if p not in self.before and ".tmp" in p.name]
            for p in sorted(left, key=lambda p: len(p.parts), reverse=True):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            if self.tidy is not None:
                before = set(self.out.rglob("*"))
                self.tidy()
                left += [p for p in before if not p.exists() and p not in left]
            cleaned = f"removed {len(left)} partial file(s)" if left else "nothing partial was left"
        raise RaftError(f"{self.what}: writing {self.out} failed ({reason}); {cleaned}"
                        + (f"; {self.kept}" if self.kept else "") + "; free space or fix the location, then rerun"
                        ) from None
