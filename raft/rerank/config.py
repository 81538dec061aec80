"""Typed config of `raft rerank train` (YAML section `rerank`): every field has a docstring, printed by
`raft rerank train --help-config`."""

from __future__ import annotations

from typing import Optional

from pydantic import Field, field_validator, model_validator

from raft.config import Config


class RerankTrainConfig(Config):
    """Fine-tune a cross-encoder on (question, oracle chunk) positives and (question, distractor) negatives."""

    base_model: str = "all-MiniLM-L6-v2"
    """Model the cross-encoder starts from (a sequence-classification head is added when it has none):
    "all-MiniLM-L6-v2" is the bundled copy (no download); any local path or hub name also works."""
    layers: Optional[int] = Field(None, ge=1)
    """Keep only the base model's first N transformer layers before training; null: all of them (the bundled
    MiniLM has 6). A pair's cost grows with its layers, so this is the latency lever beside max_length (2 layers
    score about 2.5 times as fast at 128 tokens); fewer layers may also rank less well: measure both with
    benchmarks/rerank_latency.py and benchmarks/rerank_gain.py --layers N."""
    splits: list[str] = ["train"]
    """Dataset splits whose records become training pairs (the test split is kept for `raft eval`)."""
    eval_split: Optional[str] = "validation"
    """Split on which the trained model is measured (MRR of the oracle among each record's shown chunks) and
    the fusion weight is chosen; skipped when the dataset has no such split; null: never. It must not be one of
    `splits`: a weight chosen on questions the model trained on would trust it blindly."""
    index_dir: Optional[str] = None
    """Index the dataset was built from (build.index_dir), where the text of an oracle that no record shows
    is found; null: DATASET/index, which `raft build` writes unless it reused an index."""
    negatives: Optional[int] = Field(None, ge=0)
    """Distractors used per question as negatives (the first ones shown); null: all of them."""
    epochs: float = Field(2.0, gt=0)
    """Passes over the training pairs (ignored when max_steps is set)."""
    max_steps: Optional[int] = Field(None, ge=1)
    """Stop after this many optimizer steps (overrides epochs)."""
    batch_size: int = Field(32, ge=1)
    """Pairs per optimizer step."""
    lr: float = Field(1e-4, gt=0)
    """Peak learning rate (linear warm-up, then linear decay); the new head needs a high one to learn from a
    few hundred pairs (5e-5 barely moved it in 30 steps on musique_hippo)."""
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    """Fraction of the steps spent warming the learning rate up."""
    pos_weight: Optional[float] = Field(None, gt=0)
    """Weight of a positive pair in the binary cross-entropy; null: negatives per positive in the data, so
    both classes weigh the same."""
    max_length: int = Field(256, ge=16)
    """Tokens of one (question, passage) pair; longer pairs are truncated (saved with the model, so the
    rerank stage reads pairs as training did). Shorter is faster to train and to serve."""
    candidates: int = Field(40, ge=1, le=1000)
    """Search hits per validation question when the fusion weight is chosen: what the served stage will
    rerank (serve.retrieval.rerank.candidates)."""
    weight: Optional[float] = Field(None, ge=0, le=1)
    """Fusion weight saved with the model (1: the cross-encoder's order alone, 0: the search's order); null:
    chosen on eval_split by searching the dataset's index (0, 0.1, ..., 1; best MRR@10 of the oracle among the
    weights whose gain over the search has a 95% lower bound above 0, else 0), or 1 when there is no such split
    or index."""
    device: Optional[str] = None
    """torch device ("cpu", "cuda", ...); null picks CUDA when present."""
    seed: int = 0
    """Seed of the new head's initialisation and of the pair order."""
    progress: bool = True
    """Show a progress bar while training."""

    @field_validator("splits")
    @classmethod
    def _some_split(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("name at least one split, e.g. [train]")
        return list(dict.fromkeys(v))

    @model_validator(mode="after")
    def _held_out(self) -> "RerankTrainConfig":
        if self.eval_split is not None and self.eval_split in self.splits:
            raise ValueError(
                f"eval_split {self.eval_split!r} is also in splits {self.splits}: the model would be measured, and "
                "its fusion weight chosen, on questions it trained on; drop it from splits, or set eval_split=null "
                "and weight=W (0..1) to train on every split")
        return self
