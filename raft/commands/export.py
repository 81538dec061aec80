"""`raft export ADAPTER --merge --out DIR`: fold a trained adapter into its base for plain transformers."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Literal, Optional

from raft.commands.common import add_config_arguments, load_command_config
from raft.config import Config

HELP = "merge a trained LoRA adapter into its base model (a plain transformers model dir)"
EXAMPLE = """raft export runs/raft-train/adapter --merge --out merged/   # then: transformers serve / vllm serve merged/
"""


class ExportConfig(Config):
    """`raft export`: merge an adapter into its base model (YAML section `export`; the flags set these keys)."""

    adapter: str = ""
    """Adapter directory written by `raft train` (the ADAPTER argument)."""
    merge: bool = False
    """Merge the adapter into the base weights (--merge; required: the adapter directory itself is already
    what `vllm serve --lora-modules` loads)."""
    out: str = ""
    """Output directory for the merged model (--out)."""
    base: Optional[str] = None
    """Base model path or name (--base; default: the one recorded in the adapter's raft_meta.json)."""
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    """dtype of the merged weights (auto: the base model's own dtype)."""
    dequantize: bool = True
    """QLoRA adapters: merge into the dequantized 4-bit base they were trained against (needs a GPU);
    false (--no-dequantize) merges into the original-precision base instead."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("adapter", metavar="ADAPTER", nargs="?", help="adapter directory written by `raft train`")
    p.add_argument("--merge", action="store_true", help="merge the adapter into the base weights (required)")
    p.add_argument("--out", metavar="DIR", help="output directory for the merged model (required)")
    p.add_argument("--base", metavar="MODEL", help="base model path/name (default: the one in raft_meta.json)")
    p.add_argument("--dtype", choices=["auto", "bf16", "fp16", "fp32"],
                   help="dtype of the merged weights (auto: the base model's own dtype)")
    p.add_argument("--no-dequantize", action="store_true",
                   help="for QLoRA adapters: merge into the original-precision base instead of the dequantized "
                        "4-bit base the adapter was trained against (no GPU needed)")
    add_config_arguments(p, "export")


def _flag_overrides(args: argparse.Namespace) -> list[str]:
    """The flags as `key=value` overrides, before the explicit ones so those win."""
    import json

    out = []
    for key in ("adapter", "out", "base", "dtype"):
        value = getattr(args, key)
        if value is not None:
            out.append(f"{key}={json.dumps(value)}")
    if args.merge:
        out.append("merge=true")
    if args.no_dequantize:
        out.append("dequantize=false")
    return out


def run(args: argparse.Namespace) -> int:
    import shutil

    from raft.commands.common import override_not_positional, write_failure
    from raft.errors import RaftError

    override_not_positional(args, "adapter")
    args.overrides = _flag_overrides(args) + list(args.overrides or [])
    cfg = load_command_config(args, ExportConfig, "export")
    if cfg is None:
        return 0
    if not cfg.merge:
        raise RaftError("nothing to do: pass --merge (the adapter directory itself is already what "
                        "`vllm serve --lora-modules` loads)")
    if not cfg.adapter or not cfg.out:
        raise RaftError("raft export needs an ADAPTER directory and --out DIR, e.g. "
                        "raft export runs/raft-train/adapter --merge --out merged/")
    from raft.commands.common import absolute, check_writable

    adapter, out = Path(absolute(cfg.adapter)), Path(absolute(cfg.out))
    # the merged weights are about as large as the base model's (in its own dtype)
    check_writable(str(out), "--out", need_bytes=_weights_bytes(cfg.base or _recorded_base(adapter)))
    from raft.train.export import merge_adapter

    before = set(out.parent.glob(out.name + ".tmp-*"))
    try:
        merged = merge_adapter(str(adapter), str(out), base=cfg.base, dtype=cfg.dtype, dequantize=cfg.dequantize)
    except Exception as e:
        reason = write_failure(e)
        if reason is None:
            raise
        # merge_adapter writes OUT.tmp-XXXX and renames it: a failed write leaves only that behind
        left = set(out.parent.glob(out.name + ".tmp-*")) - before
        for p in left:
            shutil.rmtree(p, ignore_errors=True)
        raise RaftError(f"raft export: writing {out} failed ({reason}); removed the partial "
                        f"{', '.join(str(p) for p in left) or 'output'}; free space or choose another --out, "
                        "then rerun") from None
    print(f"merged model written to {merged}")
    return 0


def _recorded_base(adapter: Path) -> str | None:
    import json

    try:
        return json.loads((adapter / "raft_meta.json").read_text()).get("base_model")
    except (OSError, ValueError):
        return None


def _weights_bytes(model: str | None) -> int:
    """Size of a local model directory's weight files (0 when unknown: a hub name, a packaged model)."""
    if not model or not Path(model).expanduser().is_dir():
        return 0
    return sum(f.stat().st_size for f in Path(model).expanduser().iterdir()
               if f.suffix in (".safetensors", ".bin") and f.is_file())
