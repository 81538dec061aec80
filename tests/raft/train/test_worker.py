"""The training worker in process, without Ray: one worker on the tiny model (raft/train/worker.py).

The Ray tests (test_train_ray.py) cover several workers, worker deaths and the driver; these cover what one
worker logs, what its checkpoints hold, that a checkpoint reloads to the model it saved, and resumption."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from local_runtime import LocalRuntime

STEPS = 4


@pytest.fixture(scope="module")
def setup(tiny_model_dir, raft_dataset):
    from rich.console import Console

    from raft.train.config import TrainConfig
    from raft.train.model import load_tokenizer
    from raft.train.trainer import prepare_data

    cfg = TrainConfig.model_validate({
        "model": {"name_or_path": str(tiny_model_dir), "dtype": "fp32"},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
        "data": {"path": str(raft_dataset), "max_seq_len": 512},
        "optim": {"lr": 1e-2, "max_steps": STEPS, "batch_tokens": 1024, "warmup_ratio": 0.0, "scheduler": "constant"},
        "ray": {"num_workers": 1}, "save_every": 2, "log_every": 1})
    data, _ = prepare_data(cfg, load_tokenizer(cfg.model), Console(file=io.StringIO()))
    return cfg, data


def _run(cfg, data, root: Path, resume_from: Path | None = None, hooks=()):
    from raft.train.worker import TrainWorker

    rt = LocalRuntime(root / "checkpoints", resume_from)
    worker = TrainWorker(cfg, data, rt, log_dir=str(root / "logs"), step_hooks=hooks)
    worker.run()
    rows = [json.loads(x) for x in (root / "logs" / "metrics.jsonl").read_text().splitlines()]
    return worker, rt, rows


@pytest.fixture(scope="module")
def full(setup, tmp_path_factory):
    cfg, data = setup
    calls = []
    worker, rt, rows = _run(cfg, data, tmp_path_factory.mktemp("full"),
                            hooks=[lambda **kw: calls.append(kw)])
    return worker, rt, rows, calls


def test_metrics_rows_and_step_hooks(full):
    worker, _, rows, calls = full
    start = rows[0]
    assert {k: v for k, v in start.items() if k != "time"} == {
        "step": 0, "event": "start", "attention": worker.attention, "batching": "group", "row_len": 512,
        "workers": 1, "total_steps": STEPS}
    train = [r for r in rows if "train_loss" in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    assert all(r["tokens_per_s"] > 0 and r["window_tokens"] > 0 and r["lr"] == 1e-2 for r in train)
    evals = [r for r in rows if "eval_loss" in r]
    assert [r["step"] for r in evals] == [2, 4] and evals[-1]["eval_loss"] < evals[0]["eval_loss"]
    assert not any(r.get("event") == "resumed" for r in rows)
    assert calls == [{"step": s, "rank": 0, "world": 1} for s in range(1, STEPS + 1)]


def test_checkpoints_hold_the_state_and_the_adapter_only(full):
    _, rt, rows, _ = full
    assert [m["step"] for m, _ in rt.reports] == [2, 4]
    for metrics, path in rt.reports:
        assert sorted(p.name for p in path.iterdir()) == ["adapter", "rng_rank0.pt", "train_state.pt"]
        assert metrics["eval_loss"] == next(r["eval_loss"] for r in rows if r["step"] == metrics["step"]
                                            and "eval_loss" in r)
        assert metrics["tokens_per_s"] > 0 and metrics["epoch"] == 0


def test_a_checkpoint_reloads_to_the_model_that_saved_it(full, setup, tiny_model_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    worker, rt, _, _ = full
    ids = torch.tensor([setup[1]["eval"][0]["input_ids"]])
    worker.peft_model.eval()
    with torch.no_grad():
        trained = worker.peft_model(input_ids=ids).logits
        base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()
        plain = base(input_ids=ids).logits
        reloaded = PeftModel.from_pretrained(base, str(rt.reports[-1][1] / "adapter")).eval()(input_ids=ids).logits
    torch.testing.assert_close(reloaded, trained, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(plain, trained, atol=1e-3), "the adapter changed nothing"


def test_resumes_from_a_checkpoint_where_it_stopped(full, setup, tmp_path):
    """From the step-2 checkpoint: steps 3 and 4 only, on the same batches and RNG, to the same weights."""
    import torch
    from peft import get_peft_model_state_dict

    cfg, data = setup
    ref_worker, ref_rt, ref_rows, _ = full
    worker, rt, rows = _run(cfg, data, tmp_path, resume_from=ref_rt.reports[0][1])
    assert rows[0]["event"] == "start" and rows[0]["step"] == 2 and rows[0]["total_steps"] == STEPS
    assert {k: rows[1][k] for k in ("step", "event", "resumed_step", "epoch", "micro")} == {
        "step": 2, "event": "resumed", "resumed_step": 2, "epoch": 0, "micro": 2}
    assert [r["step"] for r in rows if "train_loss" in r] == [3, 4]
    assert [m["step"] for m, _ in rt.reports] == [4]
    ref_loss = [r["train_loss"] for r in ref_rows if "train_loss" in r][2:]
    assert [r["train_loss"] for r in rows if "train_loss" in r] == pytest.approx(ref_loss, rel=1e-5)
    got, want = get_peft_model_state_dict(worker.peft_model), get_peft_model_state_dict(ref_worker.peft_model)
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k])
