"""An in-process `raft.train.runtime.Runtime` (one worker, CPU): runs a TrainWorker without Ray."""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path


class LocalRuntime:
    """Keeps every reported checkpoint under `root`, in order; resumes from `resume_from` if given."""

    rank, world = 0, 1

    def __init__(self, root: Path, resume_from: Path | None = None):
        import torch

        self.device = torch.device("cpu")
        self.root, self.resume_from = Path(root), resume_from
        self.reports: list[tuple[dict, Path]] = []

    @contextmanager
    def latest_checkpoint(self):
        yield self.resume_from

    def prepare_model(self, model, *, strategy, move_to_device, strategy_kwargs):
        assert strategy is None, "one worker is never wrapped"
        return model.to(self.device) if move_to_device else model

    def report(self, metrics: dict, checkpoint_dir: Path, name: str) -> None:
        dst = self.root / name
        shutil.copytree(checkpoint_dir, dst)  # the worker deletes its directory after reporting, as with Ray
        self.reports.append((dict(metrics), dst))
