"""`raft eval` against a real engine: `transformers serve` running the tiny random Llama on CPU.

The tiny model knows nothing, so the scores are near zero; what is checked is the plumbing: real HTTP,
a real chat template, every request answered, every metric and report file produced.
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from test_eval_runner import raft_record

from raft.cli import main

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def engine(tiny_model_dir, tmp_path_factory):
    port = _free_port()
    exe = Path(sys.executable).with_name("transformers")
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with log.open("w") as fh:
        proc = subprocess.Popen([str(exe), "serve", str(tiny_model_dir), "--port", str(port), "--device", "cpu",
                                 "--host", "127.0.0.1"], stdout=fh, stderr=subprocess.STDOUT, env=env,
                                cwd=str(log.parent))
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"transformers serve exited: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            pytest.fail(f"transformers serve did not start in 120 s: {log.read_text()[-2000:]}")
        yield f"http://127.0.0.1:{port}/v1", str(tiny_model_dir)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_eval_against_transformers_serve(engine, tmp_path):
    base_url, model = engine
    data = tmp_path / "test.jsonl"
    data.write_text("".join(json.dumps(raft_record(i)) + "\n" for i in range(3)))
    out = tmp_path / "report"
    systems = [{"name": "base", "base_url": base_url, "model": model, "retrieval": "off"},
               {"name": "base+docs", "base_url": base_url, "model": model, "retrieval": "record"}]
    rc = main(["eval", "--data", str(data), "--out", str(out), f"systems={json.dumps(systems)}",
               "sweep.distractors=[0,2]", "max_tokens=12", "concurrency=2", "timeout=60"])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert [r["label"] for r in report["runs"]] == ["base", "base+docs", "base+docs distractors=0",
                                                    "base+docs distractors=2"]
    for r in report["runs"]:
        assert r["n"] == 3 and r["errors"] == 0, r
        assert 0.0 <= r["em"] <= 1.0 and 0.0 <= r["f1"] <= 1.0
    preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 12 and all(p["raw"] for p in preds)  # the engine really generated text
    assert (out / "report.md").read_text().startswith("# RAFT evaluation report")
    assert (out / "sweep_distractors.png").stat().st_size > 1000
