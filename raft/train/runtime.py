"""The little a training worker needs from its distributed runtime, as an explicit interface.

`RayRuntime` is Ray Train's (inside `TorchTrainer`); a worker built on any other implementation of
`Runtime` runs in process, which is how the worker is tested without Ray.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ContextManager, Protocol


class Runtime(Protocol):
    rank: int
    """This worker's rank (0 writes the shared checkpoint files and the metrics log)."""
    world: int
    """Number of workers."""
    device: Any
    """The torch device this worker trains on."""

    def latest_checkpoint(self) -> ContextManager[Path | None]:
        """The checkpoint directory to resume from while the context is open, or None for a fresh start."""

    def prepare_model(self, model, *, strategy: str | None, move_to_device: bool, strategy_kwargs: dict | None):
        """`model` on the device, wrapped for `strategy` (ddp, fsdp; None: not wrapped)."""

    def report(self, metrics: dict, checkpoint_dir: Path, name: str) -> None:
        """Record a checkpoint (every worker calls this with its own files) and its metrics."""


class StepHook(Protocol):
    def __call__(self, *, step: int, rank: int, world: int) -> None:
        """Called on every worker after each optimizer step, once that step's checkpoint (if any) is reported.

        Hooks travel to Ray workers pickled, so they must be picklable (a module-level function or class)."""


class RayRuntime:
    """Ray Train's worker context; built inside the function that `TorchTrainer` runs."""

    def __init__(self) -> None:
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()

    @contextmanager
    def latest_checkpoint(self) -> Iterator[Path | None]:
        import ray.train

        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            yield None
            return
        with ckpt.as_directory() as d:
            yield Path(d)

    def prepare_model(self, model, *, strategy: str | None, move_to_device: bool, strategy_kwargs: dict | None):
        import ray.train.torch

        return ray.train.torch.prepare_model(model, move_to_device=move_to_device, parallel_strategy=strategy,
                                             parallel_strategy_kwargs=strategy_kwargs)

    def report(self, metrics: dict, checkpoint_dir: Path, name: str) -> None:
        import ray.train

        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(checkpoint_dir)),
                         checkpoint_dir_name=name)
