"""Merge an adapter written by `raft train` into its base model: a plain transformers model directory.

For a QLoRA adapter the LoRA deltas were learned against the 4-bit NF4 weights, not the original ones, so by
default the base is loaded in 4-bit and dequantized (transformers `model.dequantize()`, CUDA) before the
merge: the merged model then computes what the trained QLoRA model computed. `dequantize=False` merges into
the original-precision base instead (no GPU; a small, usually harmless mismatch).
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

from raft.errors import RaftError


def read_meta(adapter: Path) -> dict:
    if not (adapter / "adapter_config.json").is_file():
        raise RaftError(f"{str(adapter)!r} is not an adapter directory (no adapter_config.json); pass the "
                        "adapter dir that `raft train` printed at the end")
    meta_file = adapter / "raft_meta.json"
    return json.loads(meta_file.read_text()) if meta_file.is_file() else {}


def check_out(adapter: Path, out: Path) -> None:
    """--out is replaced by the merged model, so it must be new, empty, or a model this command merged
    earlier: never the adapter, a directory holding it, or anything else a user keeps there."""
    if out == adapter or out in adapter.parents:
        raise RaftError(f"--out {str(out)!r} is the adapter directory or holds it, and would be replaced by the "
                        "merged model; choose a new directory, e.g. --out " + str(adapter.parent / "merged"))
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not _merged_here(out))):
        raise RaftError(f"--out {str(out)!r} exists and is not a model merged by `raft export` (no raft_meta.json "
                        "with merged_from); choose a new directory (an earlier merge there is replaced)")


def _merged_here(out: Path) -> bool:
    try:
        return "merged_from" in json.loads((out / "raft_meta.json").read_text())
    except (OSError, ValueError):
        return False


def check_base(base: str) -> None:
    """A local base model path that does not exist, said as such (not as the hub's "Repo id must be in the
    form 'namespace/repo_name'")."""
    from raft.model_source import hub_repo_id

    if not Path(base).expanduser().exists() and not hub_repo_id(base):
        raise RaftError(f"base model path {base!r} does not exist; pass --base with a local model directory "
                        "(the one the adapter was trained on) or a hub name like Qwen/Qwen2.5-0.5B-Instruct")


def merge_adapter(adapter_dir: str, out_dir: str, base: str | None = None, dtype: str = "auto",
                  dequantize: bool = True) -> Path:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from raft.model_source import resolve_model

    adapter, out = Path(adapter_dir).expanduser().resolve(), Path(out_dir).expanduser().resolve()
    meta = read_meta(adapter)
    check_out(adapter, out)
    acfg = json.loads((adapter / "adapter_config.json").read_text())
    base = base or meta.get("base_model") or acfg.get("base_model_name_or_path")
    if not base:
        raise RaftError("the adapter does not name its base model; pass --base MODEL")
    if not Path(base).expanduser().exists() and meta.get("base_model_source") and base == meta.get("base_model"):
        base = meta["base_model_source"]  # trained from a GGUF whose converted copy is not cached on this host
    check_base(base)
    base = resolve_model(base)
    if acfg.get("use_dora"):
        pass  # peft merges DoRA magnitudes too; nothing special
    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}.get(dtype, "auto")
    trust = bool(meta.get("train_config", {}).get("model", {}).get("trust_remote_code", False))
    if meta.get("quantized") == "4bit" and dequantize:
        if not torch.cuda.is_available():
            raise RaftError("this is a QLoRA adapter: merging into the dequantized 4-bit base needs a CUDA GPU; "
                            "run on a GPU host, or pass --no-dequantize to merge into the original-precision base")
        from transformers import BitsAndBytesConfig

        compute = torch.bfloat16 if torch_dtype == "auto" else torch_dtype
        model = AutoModelForCausalLM.from_pretrained(
            base, trust_remote_code=trust, device_map={"": 0},
            quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                   bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute))
        model = model.dequantize(dtype=compute)
    else:
        try:
            model = AutoModelForCausalLM.from_pretrained(base, dtype=torch_dtype, trust_remote_code=trust)
        except OSError as e:
            raise RaftError(f"cannot load base model {base!r} ({str(e).splitlines()[0][:200]}); pass --base with "
                            "a local path to the base model") from None
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    tmp = out.with_name(out.name + f".tmp-{uuid.uuid4().hex[:6]}")
    merged.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(str(adapter)).save_pretrained(tmp)
    meta.update({"merged_from": str(adapter), "merged_base": base, "dequantized": meta.get("quantized") == "4bit"
                 and dequantize})
    (tmp / "raft_meta.json").write_text(json.dumps(meta, indent=2))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out
