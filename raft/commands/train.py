"""`raft train`: distributed LoRA / DoRA / QLoRA fine-tuning on Ray Train (the `train:` config section)."""

from __future__ import annotations

from raft.commands.common import add_config_arguments, load_command_config

HELP = "fine-tune a LoRA adapter on a RAFT dataset with Ray Train (resumable, N workers)"
EXAMPLE = """raft train --config configs/train_tiny_cpu.yaml data.path=out/quickstart ray.num_workers=2
raft train --config configs/train_llama8b_qlora.yaml ray.run_name=my-run   # same run_name again = resume
"""


def add_arguments(p) -> None:
    add_config_arguments(p, "train")


def run(args) -> int:
    from raft.train.config import TrainConfig

    cfg = load_command_config(args, TrainConfig, "train")
    if cfg is None:
        return 0
    from raft.train.trainer import run_training

    run_training(cfg)
    return 0
