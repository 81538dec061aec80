"""Starting the engine `raft serve` talks to: `vllm serve` with the LoRA adapters, `transformers serve`
on a merged model, or nothing (an existing OpenAI URL). The command lines are built by pure functions
so tests can assert them exactly; `EngineProcess` runs one, waits for /health, and stops it.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import httpx

from raft.errors import RaftError
from raft.model_source import hub_repo_id
from serving.config import ServeConfig

# `ValueError: ...`, `OSError: ...`, `torch.OutOfMemoryError: ...`, `RuntimeError` at the end of a traceback
_ERROR_LINE = re.compile(r"^([\w.]+(Error|Exception|Exit)|Traceback)\b.*")


def _exe(name: str) -> str:
    """The console script installed next to this Python (the venv's), else whatever PATH has."""
    local = Path(sys.executable).with_name(name)
    return str(local) if local.exists() else (shutil.which(name) or name)


def vllm_command(cfg: ServeConfig) -> list[str]:
    e = cfg.engine
    cmd = [_exe("vllm"), "serve", e.model, "--host", e.host, "--port", str(e.port)]
    if e.adapters:
        cmd += ["--enable-lora", "--lora-modules", *[f"{n}={p}" for n, p in e.adapters.items()],
                "--max-lora-rank", str(e.max_lora_rank), "--max-loras", str(e.max_loras)]
    if e.max_model_len:
        cmd += ["--max-model-len", str(e.max_model_len)]
    return cmd + list(e.extra_args)


def transformers_command(cfg: ServeConfig) -> list[str]:
    e = cfg.engine
    return [_exe("transformers"), "serve", e.model, "--host", e.host, "--port", str(e.port),
            "--device", e.device, *e.extra_args]


def batched_command(cfg: ServeConfig) -> list[str]:
    e = cfg.engine
    return [sys.executable, "-m", "serving.batched", e.model, "--host", e.host, "--port", str(e.port),
            "--device", e.device, "--max-batch", str(e.max_batch_size), "--exit-with-parent", *e.extra_args]


def engine_command(cfg: ServeConfig) -> Optional[list[str]]:
    """The command that starts the configured engine; None for kind `openai` (already running)."""
    kind = cfg.engine.kind
    if kind == "vllm":
        return vllm_command(cfg)
    if kind == "batched":
        return batched_command(cfg)
    if kind == "transformers":
        return transformers_command(cfg)
    return None


def engine_url(cfg: ServeConfig) -> str:
    e = cfg.engine
    return e.url if e.kind == "openai" else f"http://{e.host}:{e.port}"


class EngineProcess:
    """One engine subprocess in its own process group (so stop() takes its workers down too)."""

    def __init__(self, cmd: list[str], url: str, log_path: Optional[str] = None,
                 env: Optional[dict[str, str]] = None):
        self.cmd, self.url = cmd, url.rstrip("/")
        self.log_path = log_path or tempfile.mkstemp(prefix="raft-engine-", suffix=".log")[1]
        self.env = {**os.environ, **(env or {})}
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> "EngineProcess":
        if shutil.which(self.cmd[0]) is None and not Path(self.cmd[0]).exists():
            raise RaftError(f"cannot start the engine: {self.cmd[0]!r} is not installed "
                            f"(vllm: pip install 'raft-stack[vllm]' on a GPU host; or set engine.kind)")
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT, env=self.env,
                                     start_new_session=True)
        return self

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(Path(self.log_path).read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def last_error(self) -> str:
        """The line of the engine's log that says why it stopped: the last exception line (a Python
        traceback ends with it), else the last line."""
        lines = [ln.strip() for ln in self.log_tail(200).splitlines() if ln.strip()]
        for ln in reversed(lines):
            if _ERROR_LINE.match(ln):
                return ln[:400]
        return lines[-1][:400] if lines else "(the log is empty)"

    def wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                # the reason, not the engine's whole traceback; the full log is one path away
                raise RaftError(f"the engine exited with code {self.proc.returncode} while starting: "
                                f"{self.last_error()} (command: {' '.join(self.cmd)}; full log: {self.log_path})")
            try:
                if httpx.get(self.url + "/health", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise RaftError(f"the engine did not become healthy within {timeout_s:g} s "
                        f"(engine.startup_timeout_s); last log line: {self.last_error()} (full log: {self.log_path})")

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM to the engine's process group, SIGKILL after `grace_s`. A leader that already exited
        may have left workers in its group: they are killed too (the group id stays theirs while any
        of them lives, so it cannot name someone else's processes)."""
        if self.proc is None:
            return
        if self.proc.poll() is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            return
        for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def __enter__(self) -> "EngineProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def resolve_engine_paths(cfg: ServeConfig, log=None) -> None:
    """Make the paths the engine and the gateway's replicas read absolute against this directory (they run
    elsewhere), and turn a packaged model name or a .gguf file into the converted model directory."""
    from raft.model_source import resolve_model

    e = cfg.engine
    if e.kind in ("vllm", "batched", "transformers") and e.model:
        e.model = resolve_model(e.model, log=log)
    # adapters may also be hub names: only existing paths change
    e.adapters = {name: str(Path(path).expanduser().resolve()) if Path(path).expanduser().exists() else path
                  for name, path in e.adapters.items()}
    if cfg.retrieval.index_dir:
        cfg.retrieval.index_dir = str(Path(cfg.retrieval.index_dir).expanduser().resolve())


def check_engine_model(cfg: ServeConfig) -> None:
    """The model and adapters the engine would load exist, before it is started (its own error would be
    a long traceback in its log, after a start-up that can take minutes)."""
    e = cfg.engine
    if e.kind == "openai" or not e.model:
        return
    what = ("the merged model directory (raft export --merge)" if e.kind in ("batched", "transformers")
            else "the base model")
    p = Path(e.model)
    if p.exists():
        if not (p.is_dir() and (p / "config.json").is_file()):
            raise RaftError(f"engine.model {e.model!r} is not a transformers model directory (no config.json); "
                            f"point it at {what}")
    elif not hub_repo_id(e.model):
        raise RaftError(f"engine.model {e.model!r} does not exist; point it at {what}, a hub name such as "
                        "Qwen/Qwen2.5-0.5B-Instruct, a .gguf file or smollm2-135m-instruct")
    elif os.environ.get("HF_HUB_OFFLINE") == "1" and not _in_hub_cache(e.model):
        raise RaftError(f"engine.model {e.model!r} is not a local directory and not in the Hugging Face cache, "
                        "and HF_HUB_OFFLINE=1 forbids downloading it; download it first or give a local path")
    for name, path in e.adapters.items():
        if Path(path).is_absolute() and not (Path(path) / "adapter_config.json").is_file():
            raise RaftError(f"engine.adapters.{name}: {path!r} is not an adapter directory (no adapter_config.json); "
                            "give the adapter directory `raft train` wrote")


def _in_hub_cache(repo: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo, "config.json"), str)
    except Exception:
        return True  # cannot tell: let the engine try


def port_in_use(host: str, port: int, key: Optional[str] = None) -> bool:
    """Whether something listens on host:port (binding as servers do, with SO_REUSEADDR, so a port that
    only lingers in TIME_WAIT counts as free). Any other failure to bind raises RaftError saying why:
    reported as "in use", an address this host does not have sends the user looking for a process that
    does not exist. `key` names the config key that set `host` (default: `host`, or `engine.host`)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return True
            reason = e.strerror or str(e)
            where = key or "host (engine.host for the engine)"
            if e.errno == errno.EACCES:
                raise RaftError(f"cannot listen on {host}:{port}: {reason} (ports below 1024 need root); set "
                                f"{where.replace('host', 'port')} above 1023") from None
            raise RaftError(f"{where} {host!r} is not an address available on this host (cannot listen on "
                            f"{host}:{port}: {reason}); set it to 127.0.0.1 (this machine only) or 0.0.0.0 "
                            "(every interface)") from None
    return False


def launch_engine(cfg: ServeConfig, log_path: Optional[str] = None) -> tuple[str, Optional[EngineProcess]]:
    """Start the configured engine (if it is one we start) and wait until it answers /health."""
    url = engine_url(cfg)
    cmd = engine_command(cfg)
    if cmd is None:
        return url, None
    e = cfg.engine
    if port_in_use(e.host, e.port, key="engine.host"):
        # the new engine would fail to bind while the old process answered /health: the gateway would
        # report ready and serve through someone else's engine
        raise RaftError(f"engine.port {e.port} on {e.host} is already in use (another engine, or an earlier "
                        "`raft serve` that was not stopped?); stop that process or set another engine.port")
    # A local model directory needs no hub: keep the engine offline so a typo fails fast instead of
    # trying to download. A hub name (e.g. meta-llama/...) is the user's explicit choice: leave the hub on.
    local = bool(cfg.engine.model) and Path(cfg.engine.model).exists()
    env = {"HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")} if local else None
    proc = EngineProcess(cmd, url, log_path, env=env).start()
    try:
        proc.wait_healthy(cfg.engine.startup_timeout_s)
    except BaseException:
        proc.stop()
        raise
    return url, proc
