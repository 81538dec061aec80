"""Bad input fails before any worker starts, with a message naming what is wrong and what to do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raft.config import ConfigError, load_config
from raft.errors import RaftError
from raft.train.config import TrainConfig
from raft.train.trainer import run_training

REPO = Path(__file__).resolve().parents[3]


def _run(cfg):
    from rich.console import Console

    return run_training(cfg, console=Console(quiet=True))


def test_missing_columns_are_named(make_cfg, tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps({"id": "a", "question": "q?", "answer": "x"}) + "\n")
    with pytest.raises(RaftError) as e:
        _run(make_cfg(data__path=str(f)))
    msg = str(e.value)
    assert "missing columns ['context', 'cot_answer']" in msg and "record 1" in msg and "messages" in msg


def test_empty_dataset(make_cfg, tmp_path):
    f = tmp_path / "empty.jsonl"
    f.write_text("\n")
    with pytest.raises(RaftError, match="training dataset is empty.*raft build"):
        _run(make_cfg(data__path=str(f)))


def test_missing_data_is_said_before_the_model_is_looked_up(make_cfg, tmp_path, monkeypatch):
    """The model lookup may wait on the hub for half a minute: a missing data.path must not wait for it."""
    def not_reached(*a, **k):
        raise AssertionError("the model was looked up before the data path was checked")

    monkeypatch.setattr("raft.model_source.resolve_model", not_reached)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(RaftError, match="no training data: set train.data.path"):
        _run(make_cfg(data__path=""))
    for missing in ("runs/dataset", str(tmp_path / "nowhere"), "./data.jsonl"):  # paths, not hub names
        with pytest.raises(RaftError, match=f"data path '{missing}' does not exist"):
            _run(make_cfg(data__path=missing))
    with pytest.raises(RaftError, match="data path 'x' does not exist"):
        _run(make_cfg(data__eval_path="x"))


def test_bad_json_line_is_located(make_cfg, tmp_path):
    f = tmp_path / "broken.jsonl"
    f.write_text('{"messages": []}\n{not json\n')
    with pytest.raises(RaftError, match=r"broken.jsonl:2: not valid JSON"):
        _run(make_cfg(data__path=str(f)))


def test_model_path_that_does_not_exist(make_cfg, tmp_path):
    with pytest.raises(RaftError, match="does not exist.*name_or_path"):
        _run(make_cfg(model__name_or_path=str(tmp_path / "no-such-model")))


def test_unknown_target_modules_list_the_available_ones(make_cfg):
    with pytest.raises(RaftError) as e:
        _run(make_cfg(lora__target_modules=["q_proj", "query_key_value"]))
    msg = str(e.value)
    assert "['query_key_value']" in msg and "q_proj" in msg and "v_proj" in msg and "lm_head" not in msg


def test_gpu_requested_where_none(make_cfg, ray_local):
    with pytest.raises(RaftError, match="needs 1 GPU.*has 0.*use_gpu=false"):
        _run(make_cfg(ray__use_gpu=True, ray__num_workers=1))
    with pytest.raises(ValueError, match="QLoRA.*needs ray.use_gpu=true"):
        make_cfg(lora__quantize="4bit")


def test_unwritable_storage_path(make_cfg, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(RaftError, match="storage path .* is not writable.*storage_path"):
        _run(make_cfg(ray__storage_path=str(blocker / "runs")))


def test_tokenizer_without_chat_template(make_cfg, tiny_model_dir, tmp_path):
    import shutil

    m = tmp_path / "nochat"
    shutil.copytree(tiny_model_dir, m)
    tc = json.loads((m / "tokenizer_config.json").read_text())
    tc.pop("chat_template", None)
    (m / "tokenizer_config.json").write_text(json.dumps(tc))
    (m / "chat_template.jinja").unlink(missing_ok=True)
    (m / "chat_template.json").unlink(missing_ok=True)
    with pytest.raises(RaftError, match="no chat template.*no_chat_template=completion"):
        _run(make_cfg(model__name_or_path=str(m)))
    from transformers import AutoTokenizer

    from raft.train.data import load_examples
    from raft.train.tokenize import Renderer

    cfg = make_cfg()
    ex, _ = load_examples(cfg.data.path, "train", limit=1)
    ids, labels, _ = Renderer(AutoTokenizer.from_pretrained(str(m)), 1024, no_chat_template="completion").encode(ex[0])
    tok = AutoTokenizer.from_pretrained(str(m))
    assert tok.decode([i for i, lab in zip(ids, labels) if lab == -100]).endswith("Answer:")


def test_cli_reports_config_errors_at_once(capsys):
    from raft.cli import main

    assert main(["train", "optim.lr=-1", "lora.quantize=8bit", "optim.bogus=1"]) == 2
    err = capsys.readouterr().err
    assert "optim.lr" in err and "lora.quantize" in err and "optim.bogus" in err


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("train_*.yaml")), ids=lambda p: p.name)
def test_every_train_config_loads(path):
    cfg = load_config(TrainConfig, path, section="train")
    assert cfg.data.max_seq_len <= cfg.optim.batch_tokens or cfg.optim.batching == "pad"
    if cfg.ray.use_gpu:
        assert cfg.model.name_or_path and "/" in cfg.model.name_or_path


def test_config_cross_checks_are_reported_together():
    with pytest.raises(ConfigError) as e:
        load_config(TrainConfig, None, ["lora.quantize=4bit", "model.dtype=fp16", "optim.batch_tokens=100",
                                        "data.max_seq_len=512", "ray.strategy=fsdp"])
    text = str(e.value)
    assert "QLoRA" in text and "fp16" in text and "batch_tokens" in text and "fsdp needs ray.use_gpu" in text


def test_too_little_data_for_the_workers(make_cfg):
    with pytest.raises(RaftError, match="fewer than ray.num_workers x optim.grad_accum = 4"):
        _run(make_cfg(data__max_examples=2, optim__grad_accum=2))
