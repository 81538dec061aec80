"""What a training checkpoint directory holds, and how a worker writes and reads its part.

    adapter/               the PEFT adapter (rank 0; `raft train` exports a copy of it)
    train_state.pt         optimizer (DDP), scheduler, data position and the step's metrics (rank 0)
    optimizer_rankN.pt     worker N's shard of the optimizer state (FSDP only)
    rng_rankN.pt           worker N's Python, NumPy and torch RNG states

The data position is (epoch, micro-batch index within the epoch, optimizer step): batches are a pure
function of (seed, epoch), so a resumed worker skips exactly the micro-batches already consumed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

STATE_FILE = "train_state.pt"
ADAPTER_SUBDIR = "adapter"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


@dataclass
class Position:
    """Where training stands: optimizer steps taken, and the next micro-batch of the current epoch."""

    step: int = 0
    epoch: int = 0
    micro: int = 0


def rng_state() -> dict:
    import numpy as np
    import torch

    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(s: dict) -> None:
    import numpy as np
    import torch

    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])


def load_adapter_weights(peft_model, ckpt: Path, device) -> None:
    """Put the checkpoint's LoRA weights into `peft_model` (before any DDP/FSDP wrapping)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(peft_model, load_file(str(ckpt / ADAPTER_SUBDIR / ADAPTER_WEIGHTS),
                                                    device=str(device)))


def write(tmp: Path, rank: int, *, peft_model, adapter_state: dict | None, optimizer, scheduler,
          pos: Position, metrics: dict, sharded_optimizer: bool) -> None:
    """This worker's files of one checkpoint into `tmp` (rank 0 also writes the shared ones)."""
    import torch

    torch.save(rng_state(), tmp / f"rng_rank{rank}.pt")
    if sharded_optimizer:
        torch.save(optimizer.state_dict(), tmp / f"optimizer_rank{rank}.pt")
    if rank == 0:
        peft_model.save_pretrained(tmp / ADAPTER_SUBDIR, state_dict=adapter_state)
        torch.save({"optimizer": None if sharded_optimizer else optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "step": pos.step, "epoch": pos.epoch,
                    "micro": pos.micro, "metrics": metrics}, tmp / STATE_FILE)


def restore(ckpt: Path, rank: int, optimizer, scheduler) -> Position:
    """Optimizer, scheduler and this worker's RNG from `ckpt`; returns the position to continue from."""
    import torch

    st = torch.load(ckpt / STATE_FILE, weights_only=False, map_location="cpu")
    opt_file = ckpt / f"optimizer_rank{rank}.pt"  # FSDP: this worker's shard of the state
    optimizer.load_state_dict(torch.load(opt_file, weights_only=False, map_location="cpu")
                              if opt_file.is_file() else st["optimizer"])
    scheduler.load_state_dict(st["scheduler"])
    rng_file = ckpt / f"rng_rank{rank}.pt"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=False))
    return Position(st["step"], st["epoch"], st["micro"])
