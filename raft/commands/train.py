"""`raft train`: distributed LoRA / DoRA / QLoRA fine-tuning on Ray Train (the `train:` config section)."""

from __future__ import annotations

from raft.commands.common import add_config_arguments, load_command_config

HELP = "fine-tune a LoRA adapter on a RAFT dataset with Ray Train (resumable, N workers)"
EXAMPLE = """raft train --config configs/train_tiny_cpu.yaml data.path=runs/quickstart/dataset ray.num_workers=2
raft train --config configs/train_llama8b_qlora.yaml ray.run_name=my-run   # same run_name again = resume
"""


def add_arguments(p) -> None:
    add_config_arguments(p, "train")


def resolve_paths(cfg) -> None:
    """Relative paths made absolute against the caller's directory before anything reaches a Ray worker
    (which runs elsewhere); the adapter's raft_meta.json records them as used. Hub names (a dataset or a
    model that is not a local path) and object-store URIs stay as they are."""
    from raft.commands.common import absolute

    cfg.data.path = absolute(cfg.data.path, must_exist=True)
    cfg.data.eval_path = absolute(cfg.data.eval_path, must_exist=True)
    cfg.ray.storage_path = absolute(cfg.ray.storage_path)
    cfg.output_dir = absolute(cfg.output_dir)


def run(args) -> int:
    from raft.train.config import TrainConfig

    cfg = load_command_config(args, TrainConfig, "train")
    if cfg is None:
        return 0
    from raft.commands.common import check_writable

    resolve_paths(cfg)
    if cfg.output_dir:  # found now, not after training (the default lies under the storage path, checked there)
        check_writable(cfg.output_dir, "train.output_dir")
    from raft.commands.common import write_failure
    from raft.errors import RaftError
    from raft.train.trainer import run_dir, run_training

    try:
        run_training(cfg)
    except Exception as e:
        reason = write_failure(e)
        if reason is None:
            raise
        # the checkpoints are the finished work: say where they are and how a rerun uses them
        raise RaftError(f"raft train: a write failed ({reason}); the checkpoints saved so far stay in "
                        f"{run_dir(cfg)}: free space or fix the location, then rerun the same command (same "
                        "train.ray.storage_path and run_name) to resume from the latest one") from None
    return 0
