"""A step hook that kills a training worker, to test recovery and resumption (raft.train.runtime.StepHook)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path


class DieAfterSteps:
    """After each of `steps`, one worker (rank 1, or 0 when alone) exits at once, without cleanup, as a
    crashed process would. A marker file per step under `marker_dir` makes each death happen once per run,
    so the restarted worker group goes past that step."""

    def __init__(self, steps: list[int], marker_dir: str | Path):
        self.steps, self.marker_dir = set(steps), str(marker_dir)

    def __call__(self, *, step: int, rank: int, world: int) -> None:
        if step not in self.steps or rank != (1 if world > 1 else 0):
            return
        marker = Path(self.marker_dir) / f"failed_at_{step}"
        if marker.exists():
            return
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(str(os.getpid()))
        # Die once the controller has polled the step's report (every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S): a
        # worker that dies right after ray.train.report can take the not-yet-registered checkpoint with it,
        # and the run then resumes from the one before.
        time.sleep(2 * float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "2.0")) + 1)
        print(f"[test] injected failure: worker rank {rank} exits after step {step}", flush=True)
        os._exit(1)


def _ship_by_value() -> None:
    # Ray workers cannot import this module (pytest put its folder on the driver's sys.path only), so the
    # hook is pickled with its code instead of by reference.
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


_ship_by_value()
