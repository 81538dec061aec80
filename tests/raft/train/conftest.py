"""Fixtures for the trainer tests: a tiny RAFT dataset in the `raft build` layout and a config factory."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def raft_dataset(tmp_path_factory, corpus_dir) -> Path:
    """24 train / 6 validation synthetic RAFT records (1-3 shown documents each)."""
    from raft.testing.sample_data import write_dataset

    return write_dataset(tmp_path_factory.mktemp("raftdata") / "out", corpus_dir, n_train=24, n_val=6,
                         docs_max=3)


@pytest.fixture
def make_cfg(tiny_model_dir, raft_dataset, tmp_path):
    """TrainConfig for the tiny model; keyword overrides use section__key=value."""
    from raft.train.config import TrainConfig

    def make(**over):
        data = {
            "model": {"name_or_path": str(tiny_model_dir), "dtype": "fp32"},
            "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
            "data": {"path": str(raft_dataset), "max_seq_len": 512},
            "optim": {"lr": 1e-2, "max_steps": 8, "batch_tokens": 1024, "warmup_ratio": 0.0,
                      "scheduler": "constant"},
            "ray": {"num_workers": 2, "storage_path": str(tmp_path / "runs"), "run_name": "t", "max_failures": 0},
            "save_every": 4, "log_every": 2, "keep_best": 2,
        }
        for k, v in over.items():
            if "__" in k:
                sec, key = k.split("__", 1)
                data[sec][key] = v
            else:
                data[k] = v
        return TrainConfig.model_validate(data)

    return make
