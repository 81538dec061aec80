"""The public Python API: what `raft`, `retrieval` and `serving` export, lazily, and the entry points' config handling."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import raft
import retrieval
import serving

HEAVY = ("torch", "ray", "faiss", "transformers", "peft", "sentence_transformers")


@pytest.mark.parametrize("pkg", [raft, retrieval, serving], ids=lambda p: p.__name__)
def test_every_exported_name_resolves(pkg):
    for name in pkg.__all__:
        assert getattr(pkg, name) is not None, name
        assert name in dir(pkg)
    with pytest.raises(AttributeError, match="no_such_name"):
        pkg.no_such_name  # noqa: B018


def test_exports_are_the_defining_modules_objects():
    from raft.train.export import merge_adapter
    from retrieval.index import RetrievalIndex

    assert raft.merge_adapter is merge_adapter and retrieval.RetrievalIndex is RetrievalIndex
    assert {"build_dataset", "train_adapter", "evaluate", "merge_adapter", "TrainConfig"} <= set(raft.__all__)
    assert {"RetrievalIndex", "IndexConfig", "Document", "Hit"} <= set(retrieval.__all__)
    assert {"ServeConfig", "Gateway", "create_app", "open_retriever"} <= set(serving.__all__)
    # the test fakes are not public API
    assert not {n for n in serving.__all__ if "Memory" in n or "fake" in n.lower()}


def test_importing_the_packages_loads_no_heavy_library():
    code = ("import sys, raft, retrieval, serving, raft.cli; "
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


def test_configs_come_as_objects_dicts_or_yaml_files(tmp_path):
    from raft.api import as_config
    from raft.config import ConfigError
    from raft.train.config import TrainConfig

    cfg = as_config(TrainConfig, {"seed": 7, "optim": {"lr": 1e-3}}, "train")
    assert (cfg.seed, cfg.optim.lr) == (7, 1e-3)
    assert as_config(TrainConfig, cfg, "train") is cfg
    (tmp_path / "c.yaml").write_text("train:\n  seed: 9\n")
    assert as_config(TrainConfig, tmp_path / "c.yaml", "train").seed == 9
    with pytest.raises(ConfigError) as e:
        as_config(TrainConfig, {"optim": {"lr": -1, "nope": 1}}, "train")
    assert "optim.lr" in str(e.value) and "optim.nope" in str(e.value)
    with pytest.raises(TypeError, match="TrainConfig"):
        as_config(TrainConfig, 42, "train")


@pytest.mark.slow
def test_build_dataset_writes_a_dataset(corpus_dir, tmp_path):
    out = tmp_path / "data"
    summary = raft.build_dataset(corpus_dir, out, {"teacher": {"kind": "extractive"}, "progress": False,
                                                   "questions_per_chunk": 1, "max_chunks": 6,
                                                   "mix": {"num_distractors": 2}})
    records = [json.loads(x) for f in sorted((out / "raft").glob("*.jsonl")) for x in f.read_text().splitlines()]
    assert records and all(r["cot_answer"] and r["question"] for r in records)
    assert json.loads((out / "manifest.json").read_text())["prompt_version"] == raft.PROMPT_VERSION
    assert summary and isinstance(summary, dict)
