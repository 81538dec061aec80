"""Start an OpenAI-compatible engine as a subprocess for a test, wait for /health, and stop it afterwards."""

from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from raft.netutil import NotHealthyError, wait_healthy


@contextmanager
def running_engine(argv: list[str], port: int, log: Path, name: str, timeout: float = 180,
                   interval: float = 0.5) -> Iterator[str]:
    """Run `argv` (offline, output to `log`) until the block ends; yields http://127.0.0.1:PORT. A server that
    does not come up fails the test with the end of its log."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with log.open("w") as fh:
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=str(log.parent))
    try:
        try:
            wait_healthy(f"http://127.0.0.1:{port}/health", timeout=timeout, proc=proc, interval=interval)
        except NotHealthyError as e:
            pytest.fail(f"{name}: {e}\n{log.read_text()[-2000:]}")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
