"""`RAY_ADDRESS`: `raft train` joins a running Ray cluster (here a real `ray start --head` on this machine)
instead of starting a local one, and its workers run on that cluster."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from raft.netutil import free_port

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def ray_head():
    """(address, auth env, temp dir) of a one-node Ray cluster started with the `ray` CLI, torn down after
    this module's tests. Current Ray clusters require a token; a driver finds it in RAY_AUTH_TOKEN, as a
    user's would."""
    # Ray's unix sockets live under the temp dir and must stay under ~107 characters: keep the path short
    tmp = tempfile.mkdtemp(prefix="rh", dir="/tmp")
    port = free_port()
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    ray_cli = Path(sys.executable).with_name("ray")
    log = Path(tmp) / "ray-start.log"  # a file, not a pipe nobody drains while the tests run
    with log.open("w") as f:
        proc = subprocess.Popen([str(ray_cli), "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
                                 f"--temp-dir={tmp}", "--include-dashboard=false", "--disable-usage-stats"],
                                stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **auth})
    try:
        deadline = time.time() + 120
        while not list(Path(tmp).glob("session_*/logs/raylet.out")):
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"ray start failed or timed out:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield f"127.0.0.1:{port}", auth, Path(tmp)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # --block: on SIGTERM `ray start` stops the processes it started
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(tmp, ignore_errors=True)


def test_train_joins_the_cluster_named_by_ray_address(ray_head, tiny_model_dir, raft_dataset, tmp_path):
    address, auth, ray_tmp = ray_head
    env = {**os.environ, **auth, "RAY_ADDRESS": address, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-m", "raft.cli", "train", "--config", str(REPO / "configs" / "train_tiny_cpu.yaml"),
         f"model.name_or_path={tiny_model_dir}", f"data.path={raft_dataset}",
         f"ray.storage_path={tmp_path / 'runs'}", "ray.run_name=cluster", "ray.num_workers=2",
         "optim.max_steps=2", "save_every=2", "log_every=1"],
        capture_output=True, text=True, timeout=400, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert (tmp_path / "runs" / "cluster" / "adapter" / "adapter_model.safetensors").is_file()
    # the driver and the training workers ran on the cluster we started: their logs are in its session
    logs = next(ray_tmp.glob("session_*/logs"))
    assert list(logs.glob("python-core-driver-*")), sorted(p.name for p in logs.iterdir())
    worker_logs = [p.read_text(errors="ignore") for p in logs.glob("worker-*.out")]
    assert any("[raft train]" in t for t in worker_logs), "no raft train worker output in the cluster's logs"


def test_a_wrong_cluster_token_is_a_clear_error(ray_head, tiny_model_dir, raft_dataset, tmp_path):
    address, auth, _ = ray_head
    env = {**os.environ, **auth, "RAY_AUTH_TOKEN": "0" * 64, "RAY_ADDRESS": address, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-m", "raft.cli", "train", "--config", str(REPO / "configs" / "train_tiny_cpu.yaml"),
         f"model.name_or_path={tiny_model_dir}", f"data.path={raft_dataset}", f"ray.storage_path={tmp_path}"],
        capture_output=True, text=True, timeout=400, env=env, cwd=tmp_path)
    assert out.returncode != 0
    err = out.stdout + out.stderr
    assert f"could not join the Ray cluster at '{address}'" in err and "RAY_AUTH_TOKEN" in err, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
