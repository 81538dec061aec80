"""Local-network helpers shared by the quickstart, benchmarks and tests: pick a free port, wait for a server."""

from __future__ import annotations

import socket
import time
from typing import Any

import httpx

from raft.errors import RaftError


class NotHealthyError(RaftError):
    """A server did not answer its health URL in time, or its process died first."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free right now on `host` (the OS picks it; another process may still take it later)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _exit_code(proc: Any) -> int | None:
    """Exit code of a subprocess.Popen or multiprocessing.Process, None while it runs."""
    if hasattr(proc, "poll"):
        return proc.poll()
    return proc.exitcode


def wait_healthy(url: str, *, timeout: float, proc: Any = None, interval: float = 0.25) -> None:
    """Poll GET `url` until it answers 2xx; NotHealthyError after `timeout` seconds, or as soon as `proc` exits.

    `proc` is the server's subprocess.Popen or multiprocessing.Process: a server that crashed at startup
    would otherwise cost the whole timeout before anyone sees why.
    """
    deadline = time.monotonic() + timeout
    last = "no answer"
    while True:
        if proc is not None and (code := _exit_code(proc)) is not None:
            raise NotHealthyError(f"the server process (pid {proc.pid}) exited with code {code} before {url} "
                                  f"answered healthy (last: {last})")
        left = deadline - time.monotonic()
        try:
            # a per-try timeout, so one hung connection cannot eat the whole wait
            r = httpx.get(url, timeout=max(0.1, min(2.0, left)))
            if r.is_success:
                return
            last = f"HTTP {r.status_code}"
        except httpx.HTTPError as e:
            last = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        left = deadline - time.monotonic()
        if left <= 0:
            raise NotHealthyError(f"{url} not healthy after {timeout:g} s (last: {last})")
        time.sleep(min(interval, left))
