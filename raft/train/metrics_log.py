"""Rank 0's training metrics: JSON lines plus TensorBoard scalars, kept across restarts and object stores."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path


class MetricsLog:
    """Rank-0 metrics: one JSON object per line + TensorBoard scalars (appended across restarts).

    For an object-store run (`log_dir` is a URI) the files are written to a local mirror, seeded with the
    store's metrics.jsonl on resume, and uploaded by `sync()` at every checkpoint and at the end: steps after
    the last checkpoint of a worker that dies are trained, and logged, again after the restart."""

    def __init__(self, log_dir: str | None):
        from raft.train import storage

        self.jsonl = self.tb = None
        self.remote = log_dir if log_dir and storage.is_uri(log_dir) else None
        if not log_dir:
            return
        local = Path(tempfile.mkdtemp(prefix="raft-logs-")) if self.remote else Path(log_dir)
        local.mkdir(parents=True, exist_ok=True)
        if self.remote:
            storage.download_if_exists(self.remote, "metrics.jsonl", local / "metrics.jsonl")
        self.local = local
        self.jsonl = open(local / "metrics.jsonl", "a", encoding="utf-8")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(local / "tensorboard"))
        except Exception:  # tensorboard missing: JSONL still works
            self.tb = None

    def write(self, step: int, metrics: dict) -> None:
        if self.jsonl:
            self.jsonl.write(json.dumps({"step": step, "time": time.time(), **metrics}) + "\n")
            self.jsonl.flush()
        if self.tb:
            for k, v in metrics.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, step)
            self.tb.flush()

    def sync(self) -> None:
        if self.remote:
            from raft.train import storage

            storage.upload_dir(self.local, self.remote)

    def close(self) -> None:
        if self.jsonl:
            self.jsonl.close()
        if self.tb:
            self.tb.close()
        self.sync()
        if self.remote:
            shutil.rmtree(self.local, ignore_errors=True)
