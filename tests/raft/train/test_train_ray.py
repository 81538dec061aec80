"""End to end on 2 local Ray workers (gloo): learning, resumption after a worker death and a driver stop,
adapter reload and merge. Three short fits; the run shares one local Ray (ray_local)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raft.errors import RaftError

pytestmark = pytest.mark.slow

STEPS = 8
PEAK = 0.002  # a made-up device peak (TFLOP/s) so that the CPU run reports MFU


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "logs" / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def storage(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("storage")


@pytest.fixture(scope="module")
def full_run(ray_local, tiny_model_dir, raft_dataset, storage):
    """An uninterrupted run: the reference for every other test here."""
    from raft.train.config import TrainConfig
    from raft.train.trainer import run_training

    cfg = _cfg(TrainConfig, tiny_model_dir, raft_dataset, storage, "full", peak_tflops=PEAK)
    return cfg, run_training(cfg)


def _cfg(TrainConfig, model, data, storage, name, **over):
    d = {"model": {"name_or_path": str(model), "dtype": "fp32"},
         "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
         "data": {"path": str(data), "max_seq_len": 512},
         "optim": {"lr": 1e-2, "max_steps": STEPS, "batch_tokens": 1024, "warmup_ratio": 0.0,
                   "scheduler": "constant"},
         "ray": {"num_workers": 2, "storage_path": str(storage), "run_name": name, "max_failures": 0},
         "save_every": 2, "log_every": 1, "keep_best": 2}
    d.update(over)
    return TrainConfig.model_validate(d)


def test_loss_falls_and_metrics_are_logged(full_run, storage):
    cfg, summary = full_run
    rows = _metrics(storage / "full")
    train = [r["train_loss"] for r in rows if "train_loss" in r]
    evals = [r["eval_loss"] for r in rows if "eval_loss" in r]
    assert len(train) == STEPS and len(evals) == STEPS // 2
    assert train[-1] < train[0] - 0.3, train  # ~0.45 in practice; noise is ~0.05
    assert evals[-1] < evals[0], evals
    assert all(r["tokens_per_s"] > 0 for r in rows if "tokens_per_s" in r)
    assert list((storage / "full" / "logs" / "tensorboard").iterdir()), "no TensorBoard events"
    assert summary["steps"] == STEPS


def test_model_flops_and_mfu_are_logged(full_run, storage, tiny_model_dir):
    """Model FLOPs per token lie between the linear layers alone and a full-length example's (head at every
    position, attention over 512 tokens), and MFU = TFLOP/s over the peak of both workers."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from raft.train.flops import FlopCounter

    cfg, summary = full_run
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)),
                           LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))
    counter = FlopCounter(model)
    rows = [r for r in _metrics(storage / "full") if "tflops_per_s" in r]
    assert len(rows) == STEPS
    for r in rows:
        per_token = r["tflops_per_s"] * 1e12 / r["tokens_per_s"]
        assert counter.per_token <= per_token <= counter.example(512, 512) / 512, (per_token, counter.per_token)
        assert r["mfu"] == pytest.approx(r["tflops_per_s"] / (PEAK * 2))
    final = summary["final_metrics"]
    assert final["mfu"] == pytest.approx(final["tflops_per_s"] / (PEAK * 2))
    assert final["tokens_per_s"] > 0


def test_packing_trains_with_the_per_example_kernel(ray_local, tiny_model_dir, raft_dataset, storage):
    """`batching=pack` on the default kernel: one row of batch_tokens per micro-batch, attention by
    raft.train.attention (no dense mask), and the model learns."""
    from raft.train.config import TrainConfig
    from raft.train.trainer import run_training

    cfg = _cfg(TrainConfig, tiny_model_dir, raft_dataset, storage, "pack", ray={"num_workers": 1, "storage_path":
               str(storage), "run_name": "pack", "max_failures": 0},
               optim={"lr": 1e-2, "max_steps": STEPS, "batch_tokens": 1024, "warmup_ratio": 0.0,
                      "scheduler": "constant", "batching": "pack"})
    summary = run_training(cfg)
    rows = _metrics(storage / "pack")
    start = [r for r in rows if r.get("event") == "start"]
    assert start == [{**start[0], "attention": "raft_packed", "batching": "pack", "row_len": 1024, "workers": 1}]
    train = [r["train_loss"] for r in rows if "train_loss" in r]
    assert train[-1] < train[0] - 0.3, train
    evals = [r["eval_loss"] for r in rows if "eval_loss" in r]
    assert len(evals) == STEPS // 2 and evals[-1] < evals[0], evals
    assert summary["steps"] == STEPS


def _probe_ids(adapter: Path):
    """Token ids of a validation prompt, tokenized as the adapter's own tokenizer does."""
    import torch
    from transformers import AutoTokenizer

    meta = json.loads((adapter / "raft_meta.json").read_text())
    record = json.loads((Path(meta["train_config"]["data"]["path"]) / "raft" / "validation.jsonl")
                        .read_text().splitlines()[0])
    return torch.tensor([AutoTokenizer.from_pretrained(str(adapter))(record["instruction"])["input_ids"][:96]])


def _adapter_logits(base_path: str, adapter: Path, ids):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    with torch.no_grad():
        return PeftModel.from_pretrained(base, str(adapter)).eval()(input_ids=ids).logits[0]


def test_adapter_holds_what_peft_loads_and_reloads_to_its_checkpoint(full_run, tmp_path):
    """The exported adapter is the chosen checkpoint's (same logits through PEFT), holds only the adapter,
    raft_meta.json and tokenizer files, and changes the base model's output. (That a checkpoint reloads
    to the model that saved it is checked without Ray in test_worker.py.)"""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg, summary = full_run
    adapter = Path(summary["adapter"])
    AutoTokenizer.from_pretrained(str(adapter)).save_pretrained(tmp_path / "tok")
    allowed = {"adapter_config.json", "adapter_model.safetensors", "raft_meta.json", "README.md",
               *(p.name for p in (tmp_path / "tok").iterdir())}
    files = {p.name for p in adapter.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "raft_meta.json", "tokenizer_config.json"} <= files
    assert files <= allowed, files - allowed
    meta = json.loads((adapter / "raft_meta.json").read_text())
    assert meta["base_model"] == cfg.model.name_or_path and meta["prompt_version"] == "raft-prompt-v1"
    assert meta["dataset_fingerprint"].startswith("synthetic")
    ids = _probe_ids(adapter)
    exported = _adapter_logits(cfg.model.name_or_path, adapter, ids)
    from_checkpoint = _adapter_logits(cfg.model.name_or_path, Path(meta["checkpoint"]) / "adapter", ids)
    torch.testing.assert_close(exported, from_checkpoint, rtol=1e-4, atol=1e-4)
    plain = AutoModelForCausalLM.from_pretrained(cfg.model.name_or_path, dtype=torch.float32).eval()
    with torch.no_grad():
        assert not torch.allclose(plain(input_ids=ids).logits[0], exported, atol=1e-3), "the adapter changed nothing"


def test_merged_model_loads_with_plain_transformers(full_run, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from raft.cli import main

    cfg, summary = full_run
    out = tmp_path / "merged"
    assert main(["export", summary["adapter"], "--merge", "--out", str(out)]) == 0
    assert not (out / "adapter_config.json").exists()
    model = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    AutoTokenizer.from_pretrained(str(out))
    ids = _probe_ids(Path(summary["adapter"]))
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    torch.testing.assert_close(logits, _adapter_logits(cfg.model.name_or_path, Path(summary["adapter"]), ids),
                               rtol=1e-4, atol=1e-4)


def test_resumes_after_worker_death_and_driver_stop(full_run, ray_local, tiny_model_dir, raft_dataset, storage):
    """A worker dies at step 2 (recovered inside the run), dies again at step 6 with no retries left, so the
    driver stops; the same command again resumes at step 6 and ends where the uninterrupted run ended."""
    from worker_death import DieAfterSteps

    from raft.train.config import TrainConfig
    from raft.train.trainer import run_training

    cfg = _cfg(TrainConfig, tiny_model_dir, raft_dataset, storage, "resume",
               ray={"num_workers": 2, "storage_path": str(storage), "run_name": "resume", "max_failures": 1})
    hooks = [DieAfterSteps([2, 6], storage / "resume-fail-markers")]
    with pytest.raises(RaftError, match="resume"):
        run_training(cfg, step_hooks=hooks)
    rows = _metrics(storage / "resume")
    assert [r["resumed_step"] for r in rows if r.get("event") == "resumed"] == [2]
    assert max(r["step"] for r in rows if "eval_loss" in r) == 6

    summary = run_training(cfg, step_hooks=hooks)  # driver restarted with the same run name: continues from step 6
    rows = _metrics(storage / "resume")
    assert [r["resumed_step"] for r in rows if r.get("event") == "resumed"] == [2, 6]
    steps_after = [r["step"] for r in rows[[i for i, r in enumerate(rows) if r.get("resumed_step") == 6][0]:]
                   if "train_loss" in r]
    assert steps_after == [7, 8], "steps 1-6 must not be redone"
    assert summary["steps"] == STEPS
    ref = full_run[1]["final_metrics"]["eval_loss"]
    assert summary["final_metrics"]["eval_loss"] == pytest.approx(ref, rel=0.02, abs=0.02)
