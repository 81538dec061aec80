"""Typed config of `raft train` (the `train:` section of a YAML file).

Every field has a docstring; `raft train --help-config` prints them. Cross-field rules (QLoRA needs a GPU,
packing needs a token budget that fits one example, ...) are checked here so that a bad combination is
reported before Ray starts, together with every other problem in the file.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, field_validator, model_validator

from raft.config import Config


class ModelConfig(Config):
    name_or_path: str = "meta-llama/Llama-3.1-8B-Instruct"
    """Base causal LM: a local directory, a Hugging Face hub name (the hub is only used if it is reachable), a
    .gguf file or the packaged short name smollm2-135m-instruct (GGUF converted once and cached)."""
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    """Weights/compute dtype. `auto`: bf16 on a GPU that supports it, else fp32 (CPU trains in fp32)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about 30% slower."""
    trust_remote_code: bool = False
    """Allow model code from the hub repository (only for models that need it)."""
    attn_implementation: Optional[str] = None
    """Attention kernel (`sdpa`, `eager`, `flash_attention_2`); None lets transformers choose."""


class LoraConfig(Config):
    r: int = Field(16, ge=1)
    """LoRA rank."""
    alpha: int = Field(32, ge=1)
    """LoRA scaling numerator (scale = alpha / r)."""
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    """Dropout on the LoRA input."""
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    """Module names to adapt (e.g. [q_proj, v_proj], or q_proj,v_proj) or `all-linear` (every nn.Linear except
    lm_head)."""
    use_dora: bool = False
    """Weight-decomposed LoRA (DoRA): a little better quality, slower; vLLM cannot serve DoRA adapters."""
    quantize: Literal["none", "4bit"] = "none"
    """`4bit` = QLoRA: base weights in 4-bit NF4 (bitsandbytes, CUDA only), adapters in bf16/fp32."""

    @field_validator("target_modules", mode="before")
    @classmethod
    def _names(cls, v):
        # `lora.target_modules=q_proj,v_proj` on the command line is a string: one name or a comma list
        if isinstance(v, str) and v != "all-linear":
            return [n.strip() for n in v.split(",") if n.strip()]
        return v


class DataConfig(Config):
    path: str = ""
    """Training data: a `raft build` output dir, a .jsonl file, a `datasets.save_to_disk` dir or a hub dataset."""
    train_split: str = "train"
    """Split used for training."""
    eval_split: Optional[str] = "validation"
    """Split for eval loss (None: no eval). A missing or empty split only disables eval, with a warning."""
    eval_path: Optional[str] = None
    """Separate file/dir for eval records (default: `eval_split` of `path`)."""
    max_seq_len: int = Field(2048, ge=16)
    """Longest training sequence in tokens. Longer examples get documents trimmed; if the answer still
    does not fit they are dropped and reported."""
    label_mode: Literal["auto", "generation", "prefix"] = "auto"
    """How answer tokens are found: `generation` uses the chat template's {% generation %} mask;
    `prefix` renders the prompt without the answer; `auto` picks `generation` when the template has it."""
    no_chat_template: Literal["error", "completion"] = "error"
    """If the tokenizer has no chat template: `error`, or `completion` = train on raft.prompt.completion_prompt
    + answer (then serve with /v1/completions and the same prompt)."""
    max_examples: Optional[int] = Field(None, ge=1)
    """Use only the first N training records (smoke runs)."""


class OptimConfig(Config):
    lr: float = Field(2e-4, gt=0)
    """Peak learning rate (AdamW)."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay on LoRA weights."""
    epochs: float = Field(1.0, gt=0)
    """Passes over the training data (fractions allowed)."""
    max_steps: Optional[int] = Field(None, ge=1)
    """Stop after this many optimizer steps (overrides `epochs`)."""
    batch_tokens: int = Field(8192, ge=16)
    """Token budget of one micro-batch per worker (packed tokens, or padded rows x longest row)."""
    grad_accum: int = Field(1, ge=1)
    """Micro-batches per optimizer step."""
    warmup_ratio: float = Field(0.03, ge=0, le=1)
    """Fraction of steps spent warming the learning rate up linearly."""
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    """Learning-rate schedule after warm-up."""
    max_grad_norm: float = Field(1.0, gt=0)
    """Gradient clipping norm."""
    batching: Literal["pack", "group", "pad"] = "group"
    """`pack`: padding-free packing: examples fill rows of `batch_tokens`, position_ids restart per example,
    and attention stays inside each example (raft.train.attention's per-example causal SDPA, or
    flash-attention's varlen kernels with model.attn_implementation=flash_attention_2; `eager` gets a dense
    block-diagonal mask). `group` (default): length-grouped padded batches, any attention kernel, no
    cross-example rows. `pad`: naive random padded batches (a baseline)."""
    trained_logits_only: bool = True
    """Run the output head and the loss only at the answer tokens (the prompt's documents carry no loss):
    the same loss and gradients, less compute, far less memory for long RAFT prompts. False computes logits
    at every position, as a plain transformers Trainer does."""


class RayConfig(Config):
    address: Optional[str] = None
    """Ray cluster address; None uses $RAY_ADDRESS if set, else starts a local Ray."""
    num_workers: int = Field(1, ge=1)
    """Training workers (one process each; one GPU each when use_gpu)."""
    use_gpu: bool = False
    """Give each worker a GPU (NCCL); otherwise CPU workers with gloo."""
    cpus_per_worker: float = Field(1.0, gt=0)
    """CPUs reserved per worker."""
    strategy: Literal["ddp", "fsdp"] = "ddp"
    """Data parallel strategy: DDP (replicated base) or FSDP (sharded; for bases that do not fit one GPU)."""
    storage_path: str = "runs"
    """Where checkpoints and logs persist: local dir, shared FS, or an object store URI (s3://, gs://; pyarrow
    options in the query, e.g. `s3://bucket/runs?endpoint_override=http://minio:9000`). Checked writable first."""
    run_name: str = "raft-train"
    """Run name; a second `raft train` with the same name and storage resumes from its latest checkpoint."""
    max_failures: int = Field(2, ge=-1)
    """Worker-group restarts allowed after a worker dies (-1: unlimited). Each restart resumes from the
    latest checkpoint."""


class TrainConfig(Config):
    model: ModelConfig = ModelConfig()
    """Base model."""
    lora: LoraConfig = LoraConfig()
    """Adapter."""
    data: DataConfig = DataConfig()
    """Training data."""
    optim: OptimConfig = OptimConfig()
    """Optimizer, schedule and batching."""
    ray: RayConfig = RayConfig()
    """Distributed execution and storage."""
    output_dir: Optional[str] = None
    """Adapter directory written at the end (default: STORAGE/RUN_NAME/adapter; must be a local path)."""
    save_every: int = Field(50, ge=1)
    """Checkpoint (and eval) every N optimizer steps, and at the end."""
    keep_best: int = Field(3, ge=1)
    """Checkpoints kept: the best N by eval loss (the latest is always kept, for resuming)."""
    export: Literal["best", "last"] = "best"
    """Which checkpoint becomes the adapter: lowest eval loss, or the last one."""
    log_every: int = Field(10, ge=1)
    """Log train loss, tokens/s and model TFLOP/s (MFU on a GPU) every N optimizer steps."""
    peak_tflops: Optional[float] = Field(None, gt=0)
    """Dense peak TFLOP/s of one device at the training dtype, for MFU. None: looked up from the GPU's name
    for bf16/fp16 (H100, H200, A100, L40S, L4, ...); no MFU on CPU or on a GPU not in the table."""
    seed: int = 0
    """Seed for LoRA init, shuffling and dropout."""

    @model_validator(mode="after")
    def _cross_checks(self) -> "TrainConfig":
        problems = []
        if self.lora.quantize == "4bit" and not self.ray.use_gpu:
            problems.append("lora.quantize=4bit (QLoRA) needs ray.use_gpu=true: bitsandbytes 4-bit is CUDA-only")
        if self.model.dtype == "fp16" and not self.ray.use_gpu:
            problems.append("model.dtype=fp16 trains on GPU only; use bf16 or fp32 on CPU")
        if self.optim.batch_tokens < self.data.max_seq_len and self.optim.batching != "pad":
            problems.append(f"optim.batch_tokens ({self.optim.batch_tokens}) must be >= data.max_seq_len "
                            f"({self.data.max_seq_len}) so that the longest example fits one micro-batch")
        if self.ray.strategy == "fsdp" and not self.ray.use_gpu:
            problems.append("ray.strategy=fsdp needs ray.use_gpu=true (Ray Train's FSDP is GPU-only); use ddp on CPU")
        if self.lora.quantize == "4bit" and self.ray.strategy == "fsdp":
            problems.append("lora.quantize=4bit with ray.strategy=fsdp is not supported; use ddp")
        if problems:
            raise ValueError("; ".join(problems))
        return self
