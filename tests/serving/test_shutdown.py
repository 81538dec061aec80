"""`raft serve` stops cleanly on SIGTERM as on Ctrl-C, on both runners: no process it started (the
engine's whole group, Ray's processes) outlives it. A start that finds its engine port taken fails
with a clear error instead of serving through whatever answers there."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway_helpers import ServerThread, free_port
from raft.netutil import wait_healthy
from serving.testing.fake_engine import create_engine_app
from serving.launchers import port_in_use

STUB = str(Path(__file__).with_name("stub_engine_serve.py"))
REPO = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    """Running and not a zombie (an exited child nobody reaped yet is not alive)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def descendants(pid: int) -> set[int]:
    """Every process below `pid` (from /proc: children re-parented after their parent died are not
    found this way, which is why tests collect them while the parent still runs)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    out, todo = set(), [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


@pytest.fixture
def serve():
    """serve(cmd, health_url) -> the running `raft serve` process; whatever a failed test leaves of it
    and of its descendants is killed afterwards."""
    started: list[tuple[subprocess.Popen, set[int]]] = []

    def start(cmd: list[str], health_url: str, timeout: float = 300) -> subprocess.Popen:
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(REPO)}
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        started.append((proc, set()))
        try:
            wait_healthy(health_url, timeout=timeout, proc=proc, interval=0.5)
        finally:
            started[-1][1].update(descendants(proc.pid))
        return proc

    yield start
    for proc, family in started:
        if proc.poll() is None:
            family |= descendants(proc.pid)
            proc.kill()
            proc.communicate(timeout=30)
        for pid in family:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def sigterm_and_check(proc: subprocess.Popen, engine_port: int) -> str:
    family = descendants(proc.pid)
    assert family, "the command started no child process"
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    deadline = time.monotonic() + 30
    while [p for p in family if _alive(p)] and time.monotonic() < deadline:
        time.sleep(0.2)
    survivors = {p: Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ")[:120]
                 for p in family if _alive(p)}
    assert survivors == {}, f"left running after SIGTERM: {survivors}\n{out}"
    assert not port_in_use("127.0.0.1", engine_port), "the engine's port is still taken"
    assert proc.returncode == 0, out
    return out


@pytest.mark.slow
def test_sigterm_stops_the_transformers_engine_uvicorn_runner(serve, tiny_model_dir, tmp_path):
    """The report's case: `raft serve` (uvicorn runner) launches `transformers serve`; SIGTERM must not
    leave it running on its port."""
    eport, gport = free_port(), free_port()
    cfg = tmp_path / "serve.yaml"
    cfg.write_text(f"serve:\n  engine: {{kind: transformers, model: '{tiny_model_dir}', port: {eport}, "
                   f"startup_timeout_s: 240}}\n  retrieval: {{backend: none}}\n  runner: uvicorn\n"
                   f"  port: {gport}\n")
    proc = serve([sys.executable, "-m", "raft.cli", "serve", "--config", str(cfg)],
                       f"http://127.0.0.1:{gport}/health")
    out = sigterm_and_check(proc, eport)
    assert "gateway ready" in out and "engine stopped" in out


@pytest.mark.slow
def test_sigterm_stops_engine_group_and_ray_ray_runner(serve, tmp_path):
    """Ray runner: Serve, the local Ray this command started (GCS, raylet, workers) and the engine's
    process group (the stub engine and the grandchild beside it) all go."""
    eport, gport = free_port(), free_port()
    cfg = tmp_path / "serve.yaml"
    cfg.write_text(f"serve:\n  engine: {{kind: transformers, model: stub-model, port: {eport}}}\n"
                   f"  retrieval: {{backend: none}}\n  runner: ray\n  port: {gport}\n"
                   f"  ray: {{num_cpus: 0}}\n")
    proc = serve([sys.executable, STUB, "serve", "--config", str(cfg)], f"http://127.0.0.1:{gport}/health")
    assert len(descendants(proc.pid)) > 3  # the engine group and Ray's processes
    out = sigterm_and_check(proc, eport)
    assert "engine stopped" in out and "Ray stopped" in out


def test_sigterm_stops_engine_group_uvicorn_runner(serve, tmp_path):
    """The same check, fast: the stub engine and its grandchild, uvicorn runner."""
    eport, gport = free_port(), free_port()
    cfg = tmp_path / "serve.yaml"
    cfg.write_text(f"serve:\n  engine: {{kind: transformers, model: stub-model, port: {eport}}}\n"
                   f"  retrieval: {{backend: none}}\n  runner: uvicorn\n  port: {gport}\n")
    proc = serve([sys.executable, STUB, "serve", "--config", str(cfg)], f"http://127.0.0.1:{gport}/health")
    assert len(descendants(proc.pid)) >= 2  # the fake engine (sh exec'd into it) and the sleeping grandchild
    out = sigterm_and_check(proc, eport)
    assert "engine stopped" in out


def test_engine_port_taken_is_a_clear_error_not_someone_elses_engine(tmp_path):
    """An old engine still answers on the port: the new `raft serve` must refuse to start, not report
    ready and serve through it."""
    old = ServerThread(create_engine_app(model="old-engine")).start()
    try:
        gport = free_port()
        cfg = tmp_path / "serve.yaml"
        cfg.write_text(f"serve:\n  engine: {{kind: transformers, model: stub-model, port: {old.port}}}\n"
                       f"  retrieval: {{backend: none}}\n  runner: uvicorn\n  port: {gport}\n")
        proc = subprocess.Popen([sys.executable, STUB, "serve", "--config", str(cfg)], text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
        try:
            out, err = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            family = descendants(proc.pid)
            proc.kill()
            for pid in family:
                if _alive(pid):
                    os.kill(pid, signal.SIGKILL)
            out, err = proc.communicate()
            pytest.fail(f"raft serve started with its engine port taken:\n{out}{err}")
        assert proc.returncode == 2, out + err
        assert f"engine.port {old.port}" in err and "already in use" in err
        assert "gateway ready" not in out + err
    finally:
        old.stop()


def _group(pgid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                out.append(int(entry.name))
    return out


def test_an_engine_that_exits_at_start_leaves_nothing_of_its_group(tmp_path):
    from raft.errors import RaftError
    from serving.launchers import EngineProcess

    proc = EngineProcess(["sh", "-c", "sleep 600 & echo boom; exit 3"], "http://127.0.0.1:1",
                         str(tmp_path / "e.log")).start()
    with pytest.raises(RaftError, match="exited with code 3"):
        proc.wait_healthy(20)
    assert _group(proc.proc.pid)  # the leader is gone, its worker is not
    proc.stop()
    deadline = time.monotonic() + 10
    while _group(proc.proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _group(proc.proc.pid) == []
