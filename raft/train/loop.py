"""The function Ray Train runs on every worker: a TrainWorker (raft/train/worker.py) on Ray's runtime.

Resumption: Ray Train hands the latest checkpoint back through `ray.train.get_checkpoint()` both after a worker
dies (FailureConfig restarts the group) and when the driver is started again with the same storage path and
run name; the worker continues from exactly the micro-batch after it (raft/train/checkpoint.py).
"""

from __future__ import annotations


def train_func(config: dict) -> None:
    """`config`: {"cfg": TrainConfig as JSON, "data": the tokenized data or a Ray object ref to it,
    "log_dir": metrics directory or URI, "step_hooks": StepHook callables (optional)}."""
    import ray

    from raft.train.config import TrainConfig
    from raft.train.runtime import RayRuntime
    from raft.train.worker import TrainWorker

    data = config["data"]
    data = ray.get(data) if isinstance(data, ray.ObjectRef) else data
    TrainWorker(TrainConfig.model_validate(config["cfg"]), data, RayRuntime(), log_dir=config.get("log_dir"),
                step_hooks=config.get("step_hooks", ())).run()
