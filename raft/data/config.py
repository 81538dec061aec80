"""Typed config of `raft build` (YAML section `build`). Every field has a docstring: `raft build --help-config`."""

from __future__ import annotations

import re
from typing import Literal, Optional

from pydantic import Field, ValidationInfo, field_validator, model_validator

from raft.config import Config
from retrieval.config import IndexConfig

# `metadata.KEY`, optionally `metadata.KEY.SUB...` into nested dicts; a key holds no dot and no whitespace
GROUP_BY_RE = re.compile(r"^metadata(\.[^.\s]+)+$")


class TeacherConfig(Config):
    """The model that writes questions and chain-of-thought answers."""

    kind: Literal["openai", "vllm_offline", "extractive"] = "extractive"
    """`openai`: any OpenAI-compatible URL (vLLM server, OpenAI, `transformers serve`); `vllm_offline`: vLLM's
    in-process batch engine (needs vllm and a GPU); `extractive`: no model, a smoke generator that copies
    sentences of the chunk (questions are templated, answers are quotes) - use it to test the pipeline, not
    to train a useful model."""
    strategy: Literal["cot", "stepwise"] = "cot"
    """How a model teacher is asked. `cot`: the model writes several questions per call and a whole quoted
    chain of thought per answer (needs a capable model, e.g. 7B+). `stepwise`: for small models (SmolLM2-135M):
    one short question per call about one sentence, and a short answer phrase that must appear in an oracle
    sentence; the teacher filters both and writes the quote and `<ANSWER>:` itself (docs/teacher.md)."""
    base_url: str = "http://127.0.0.1:8000/v1"
    """Base URL of the OpenAI-compatible API (ending in /v1) for kind=openai."""
    model: Optional[str] = None
    """Model name sent to the endpoint (or loaded by vLLM offline); recorded in every record's `teacher`.
    Required with kind=openai and kind=vllm_offline; unused by kind=extractive."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable that holds the API key (an empty key is sent as 'EMPTY', as vLLM expects)."""
    concurrency: int = Field(16, ge=1, le=1024)
    """Most requests in flight at once."""
    timeout_s: float = Field(120.0, gt=0)
    """Per-request timeout in seconds; a timed-out request is retried."""
    max_retries: int = Field(5, ge=0, le=20)
    """Retries per request on 429, 5xx, timeouts and dropped connections (exponential backoff + jitter)."""
    backoff_base_s: float = Field(0.5, ge=0)
    """First backoff delay; doubles per retry, full jitter, capped by backoff_max_s (Retry-After honoured)."""
    backoff_max_s: float = Field(30.0, ge=0)
    """Largest backoff delay in seconds."""
    connect_check_s: float = Field(5.0, gt=0)
    """Seconds to wait for the endpoint's /models at start; an unreachable teacher fails the build this fast."""
    temperature: float = Field(0.7, ge=0, le=2)
    """Sampling temperature of the teacher."""
    max_tokens: int = Field(512, ge=16)
    """Most tokens per answer (questions get a quarter of this, at least 64)."""
    seed: Optional[int] = None
    """Sampling seed sent to the endpoint (derived per request from the build seed when null)."""
    extra_body: dict = Field(default_factory=dict)
    """Extra JSON fields merged into every request body (e.g. {"top_p": 0.9})."""

    @field_validator("model")
    @classmethod
    def _model_for_a_model_teacher(cls, v: Optional[str], info: ValidationInfo) -> Optional[str]:
        # no default name fits a server: a made-up one is sent to it and every request fails with a 404
        kind = info.data.get("kind")  # absent when kind itself is invalid (reported on its own)
        if kind in ("openai", "vllm_offline") and not (v or "").strip():
            what = ("the model name the server serves (GET BASE_URL/models lists them)" if kind == "openai"
                    else "the model vLLM loads (a hub id or a local directory)")
            raise ValueError(f"is required with teacher.kind={kind}: set it to {what}, e.g. "
                             "teacher.model=Qwen/Qwen2.5-7B-Instruct")
        return v

    @model_validator(mode="after")
    def _stepwise_needs_a_model(self):
        if self.strategy == "stepwise" and self.kind == "extractive":
            raise ValueError("strategy=stepwise asks a model step by step; kind=extractive has no model: set "
                             "kind=openai (or vllm_offline), or strategy=cot")
        return self


class MixConfig(Config):
    """How the shown documents of each example are chosen and ordered."""

    num_distractors: int = Field(4, ge=0)
    """D: distractor chunks per example (the shown set is D + the oracle chunk(s))."""
    min_distractors: Optional[int] = Field(None, ge=0)
    """When set, each example shows a seeded-random number of distractors, uniform from min_distractors to
    num_distractors, instead of always D: a model served at top-k 1, 3 or 5 then has seen every prompt size
    in training. null = always D (the RAFT paper's setting)."""
    p_oracle: float = Field(0.8, ge=0, le=1)
    """P: fraction of examples that show the oracle; exactly round(P x n), stratified over splits. Where the
    oracle is left out another distinct distractor takes its place."""
    hard_ratio: float = Field(0.5, ge=0, le=1)
    """Share of distractors mined as nearest neighbours of the question (hard negatives); the rest are random."""
    mine_k: int = Field(32, ge=1)
    """Neighbours retrieved per question when mining (more survive the exclusions below)."""
    dup_jaccard: float = Field(0.8, gt=0, le=1)
    """A chunk whose word set overlaps an oracle's this much (Jaccard) is a near-duplicate, never a distractor."""
    exclude_answer: bool = True
    """Never use a chunk that contains the final answer (whole words, case-insensitive) as a distractor."""
    exclude_same_doc: bool = False
    """Never use other chunks of the oracle's own document as distractors."""
    within_split: bool = True
    """Draw distractors only from documents of the example's own split (falls back, counted, when too few)."""
    batch_size: int = Field(1024, ge=1)
    """Questions per batched embedding/FAISS search while mining."""

    @model_validator(mode="after")
    def _range(self):
        if self.min_distractors is not None and self.min_distractors > self.num_distractors:
            raise ValueError(f"min_distractors={self.min_distractors} is above num_distractors="
                             f"{self.num_distractors}; it is the low end of the range, num_distractors the high end")
        return self


class SplitConfig(Config):
    """Train/validation/test split, by source document (no document on two sides)."""

    train: float = Field(0.8, ge=0, le=1)
    """Share of documents (weighted by examples) in train."""
    validation: float = Field(0.1, ge=0, le=1)
    """Share in validation."""
    test: float = Field(0.1, ge=0, le=1)
    """Share in test."""
    group_by: Optional[str] = None
    """`metadata.KEY`: documents whose chunks share this metadata value land in the same split (e.g.
    `metadata.article` when each document is a piece of a larger article). `metadata.A.B` reads a nested
    value (a key literally named `A.B` is tried first). A document without the key, or with a null value,
    is its own group. null: documents are grouped only by the questions they share."""

    @field_validator("group_by")
    @classmethod
    def _group_key(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not GROUP_BY_RE.match(v):
            raise ValueError(f"group_by={v!r} is not a metadata key path; write metadata.KEY, the chunk metadata "
                             "key whose value names the larger unit documents belong to (e.g. "
                             "split.group_by=metadata.article), or null for no grouping")
        return v

    @model_validator(mode="after")
    def _sum_to_one(self):
        total = self.train + self.validation + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split ratios must sum to 1, got {total:g} "
                             f"(train={self.train}, validation={self.validation}, test={self.test})")
        return self


class BuildConfig(Config):
    """`raft build CORPUS --out DIR`: questions, verified CoT answers, distractor mixing, splits, export."""

    seed: int = 0
    """Seed for sampling, splits, oracle placement and shown order; same seed + cache = same dataset."""
    mode: Literal["general", "api"] = "general"
    """`general`: questions about a text passage; `api`: API-documentation chunks (gorilla style)."""
    questions_per_chunk: int = Field(3, ge=1, le=50)
    """N: questions generated per chunk (ignored with a questions file)."""
    max_chunks: Optional[int] = Field(None, ge=1)
    """Generate questions for at most this many chunks (a seeded sample), null = all."""
    questions_file: Optional[str] = None
    """JSONL of {id, question, answers, gold_ids}: skip question generation; gold_ids are corpus doc ids."""
    index_dir: Optional[str] = None
    """Reuse this existing index directory instead of indexing the corpus into OUT/index."""
    index: IndexConfig = Field(default_factory=IndexConfig)
    """How the corpus is indexed into OUT/index (the keys of `raft index build`, e.g. index.chunk_size=512);
    typed, so a bad key or value is reported with every other problem of the config."""
    max_attempts: int = Field(3, ge=1, le=10)
    """Teacher answers per question until one passes the checks (answer tag present, quotes verified in the
    oracle, one quote holding the final answer)."""
    ray: bool = False
    """Answer the questions through Ray Data (`raft build --ray`): a pool of `ray_actors` actors, each holding
    a teacher, on the cluster named by $RAY_ADDRESS, else on a local Ray. Questions, splits, mixing and export
    stay in this process; the teacher cache, the checks and the records are those of a build without Ray."""
    ray_actors: int = Field(2, ge=1)
    """Teacher actors in the Ray Data pool with ray=true; each sends up to teacher.concurrency requests at once
    (with teacher.kind=vllm_offline each actor takes one GPU)."""
    ray_batch_size: int = Field(64, ge=1)
    """Questions per Ray Data batch with ray=true (one batch is answered concurrently by one actor)."""
    answer_hint: bool = True
    """With a questions file, tell the teacher the gold answer so it explains rather than guesses."""
    formats: list[Literal["raft", "chat", "completion", "eval"]] = ["raft", "chat", "completion", "eval"]
    """Formats written under OUT/ (HF save_to_disk of the RAFT records is always written to OUT/hf)."""
    progress: bool = True
    """Show a live progress display (rich)."""
    teacher: TeacherConfig = TeacherConfig()
    """The teacher model."""
    mix: MixConfig = MixConfig()
    """Distractor mining and oracle placement."""
    split: SplitConfig = SplitConfig()
    """Document-level splits."""
