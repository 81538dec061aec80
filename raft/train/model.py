"""Base model + tokenizer loading and LoRA/DoRA/QLoRA attachment (peft).

Checks that can fail on user input (a model path that does not exist, target modules the model does not
have) run on the driver before Ray starts, on a weightless copy of the model (meta device), so a typo costs
seconds, not a worker start-up.
"""

from __future__ import annotations

from pathlib import Path

from raft.errors import RaftError
from raft.train.config import LoraConfig, ModelConfig

EXCLUDED_LINEAR = ("lm_head", "embed_out", "output_layer", "score")


def resolve_dtype(name: str, use_gpu: bool):
    import torch

    if name == "auto":
        if use_gpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def check_model_source(cfg: ModelConfig) -> None:
    """RaftError unless the model is a local dir with a config, or a hub name that resolves."""
    p = Path(cfg.name_or_path).expanduser()
    if p.exists():
        if not (p / "config.json").is_file():
            raise RaftError(f"model path {str(p)!r} exists but has no config.json; point train.model.name_or_path "
                            "at a transformers model directory")
        return
    from raft.model_source import hub_repo_id

    if not hub_repo_id(cfg.name_or_path):
        raise RaftError(f"model path {cfg.name_or_path!r} does not exist; set train.model.name_or_path to a "
                        "local model directory or a hub name like Qwen/Qwen2.5-0.5B-Instruct")
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(cfg.name_or_path, trust_remote_code=cfg.trust_remote_code)
    except Exception as e:
        raise RaftError(f"model {cfg.name_or_path!r} is not a local directory and could not be resolved on the "
                        f"hub ({type(e).__name__}: {str(e).splitlines()[0][:200]}); download it first or fix "
                        "train.model.name_or_path") from None


def load_tokenizer(cfg: ModelConfig):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(cfg.name_or_path, trust_remote_code=cfg.trust_remote_code)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def meta_model(cfg: ModelConfig):
    """The model's module tree without weights (for target-module checks on the driver)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    conf = AutoConfig.from_pretrained(cfg.name_or_path, trust_remote_code=cfg.trust_remote_code)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(conf, trust_remote_code=cfg.trust_remote_code)


def linear_module_names(model) -> list[str]:
    """Leaf names of every linear layer (plain or bitsandbytes) except the output head."""
    import torch

    names = set()
    for full, mod in model.named_modules():
        is_linear = isinstance(mod, torch.nn.Linear) or type(mod).__name__ in ("Linear4bit", "Linear8bitLt")
        leaf = full.rsplit(".", 1)[-1]
        if is_linear and leaf not in EXCLUDED_LINEAR:
            names.add(leaf)
    return sorted(names)


def resolve_targets(model, lora: LoraConfig) -> list[str]:
    available = linear_module_names(model)
    if lora.target_modules == "all-linear":
        if not available:
            raise RaftError("the model has no linear layers to adapt besides the output head")
        return available
    leaves = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [t for t in lora.target_modules if t not in leaves]
    if missing:
        raise RaftError(f"train.lora.target_modules {missing} are not modules of this model; available linear "
                        f"modules: {available} (or use all-linear)")
    return list(lora.target_modules)


def load_base(cfg: ModelConfig, lora: LoraConfig, use_gpu: bool, device=None, *, for_merge: bool = False,
              attn_implementation: str | None = None):
    """The base model on `device`; 4-bit (QLoRA) unless `for_merge` (merging needs full-precision weights).
    `attn_implementation` overrides the config's (the trainer's packed-row kernel)."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = resolve_dtype(cfg.dtype, use_gpu)
    kwargs = {"dtype": dtype, "trust_remote_code": cfg.trust_remote_code}
    if attn_implementation or cfg.attn_implementation:
        kwargs["attn_implementation"] = attn_implementation or cfg.attn_implementation
    if lora.quantize == "4bit" and not for_merge:
        if not torch.cuda.is_available():
            raise RaftError("QLoRA (train.lora.quantize=4bit) needs a CUDA GPU on every worker")
        from transformers import BitsAndBytesConfig

        compute = dtype if dtype != torch.float32 else torch.bfloat16
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute)
        kwargs["device_map"] = {"": device if device is not None else torch.cuda.current_device()}
    model = AutoModelForCausalLM.from_pretrained(cfg.name_or_path, **kwargs)
    model.config.use_cache = False
    return model


def attach_lora(model, cfg: ModelConfig, lora: LoraConfig, seed: int):
    """Wrap `model` in a trainable peft model; only LoRA weights require grad."""
    import torch
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model, prepare_model_for_kbit_training

    targets = resolve_targets(model, lora)
    if lora.quantize == "4bit":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    elif cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    torch.manual_seed(seed)  # same LoRA init on every worker and every restart
    pcfg = PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                          use_dora=lora.use_dora, bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(model, pcfg)
    for p in model.parameters():  # LoRA math in fp32 even on a bf16 base: small tensors, stable updates
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    return model
