"""What a user sees in the terminal: `raft train` under Ray, run as a user runs it (a subprocess, output
captured as a pipe), shows raft's own lines and a progress bar, and none of the noise Ray, transformers
and Python print by default."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter

import pytest

# known noise, each seen in the console before raft routed it to log files
NOISE = ["PlacementGroupCleaner", "TrainController", "(RayTrainWorker", "Loading weights", "FutureWarning",
         "DeprecationWarning", "warnings.warn", "Token authentication", "Started a local Ray instance",
         "[raft train] step", "core_worker.cc", "…"]


@pytest.mark.slow
def test_raft_train_console_is_clean(tiny_model_dir, raft_dataset, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "80", "TERM": "dumb"}
    env.pop("RAY_ADDRESS", None)
    argv = [sys.executable, "-m", "raft.cli", "train", f"model.name_or_path={tiny_model_dir}",
            "model.dtype=fp32", f"data.path={raft_dataset}", "data.max_seq_len=512", "optim.max_steps=6",
            "optim.batch_tokens=1024", "ray.num_workers=1", f"ray.storage_path={tmp_path / 'runs'}",
            "ray.run_name=console", "log_every=1", "save_every=3", f"output_dir={tmp_path / 'adapter'}"]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    assert not [n for n in NOISE if n in text], text
    lines = [line for line in text.splitlines() if line.strip()]
    repeated = {line: n for line, n in Counter(lines).items() if n > 1 and set(line) - set("─━ ")}
    assert not repeated, repeated
    assert max(len(line) for line in lines) <= 100, max(lines, key=len)
    assert len(lines) <= 25, text
    # the progress bar's final state, the data table's headers in full, and where the logs went
    assert any("training" in line and "6/6" in line for line in lines), text
    assert "examples" in text and "trimmed" in text and "answer" in text
    assert "Ray and worker logs:" in text and "adapter:" in text


def test_progress_follows_metrics_rows_as_they_are_appended(tmp_path):
    """The bar reads only complete rows, only those appended after it started (a resumed run appends)."""
    from rich.console import Console

    from raft.train.progress import TrainProgress

    f = tmp_path / "metrics.jsonl"
    f.write_text('{"step": 3, "train_loss": 9.0}\n')  # an earlier run's row: not this run's progress
    console = Console(file=open(os.devnull, "w"), width=100)
    with TrainProgress(console, f, interval=0.05) as tp:
        with f.open("a") as fh:
            fh.write('{"step": 0, "event": "start", "total_steps": 4}\n{"step": 1, "train_loss": 2.0, "tokens_')
            fh.flush()
            tp._read()
            task = tp.progress.tasks[0]
            assert (task.total, task.completed, task.description) == (4, 0, "training")
            fh.write('per_s": 50}\n{"step": 2, "train_loss": 1.0, "tokens_per_s": 60}\n')
        tp._read()
    task = tp.progress.tasks[0]
    assert task.completed == 2 and task.fields["stats"] == "loss 1.800  60 tok/s"  # 0.8 x 2.0 + 0.2 x 1.0
