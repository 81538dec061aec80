"""Typed config of `raft eval` (section `eval`): the data, the systems compared, sweeps, judge, report."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from raft.config import Config
from retrieval.rerank import RerankConfig

RetrievalMode = Literal["off", "gateway", "local", "record"]


class PriceConfig(Config):
    """Per-token prices, to turn each answer's reported token counts into a cost (in any currency: the
    report shows the amounts in the unit given here)."""

    prompt_per_million: float | None = None
    """Price of one million prompt (input) tokens; null = no price set (the cost columns are left out)."""
    completion_per_million: float | None = None
    """Price of one million completion (output) tokens; null = no price set. Give both prices, or neither
    (0 is a price: a model on your own hardware)."""

    @field_validator("prompt_per_million", "completion_per_million")
    @classmethod
    def _not_negative(cls, v: float | None) -> float | None:
        if v is not None and v < 0:
            raise ValueError("a price per million tokens cannot be negative")
        return v

    @model_validator(mode="after")
    def _both_or_neither(self) -> "PriceConfig":
        given = [n for n in ("prompt_per_million", "completion_per_million") if getattr(self, n) is not None]
        if len(given) == 1:
            other = "completion_per_million" if given[0] == "prompt_per_million" else "prompt_per_million"
            raise ValueError(f"{given[0]} is set but {other} is not; give both prices (0 is a price), or "
                             "neither")
        return self

    @property
    def is_set(self) -> bool:
        return self.prompt_per_million is not None

    def cost(self, prompt_tokens: int | None, completion_tokens: int | None) -> float | None:
        """The price of one answer; None without a price or without both token counts."""
        if not self.is_set or prompt_tokens is None or completion_tokens is None:
            return None
        return (prompt_tokens * self.prompt_per_million + completion_tokens * self.completion_per_million) / 1e6


class SystemConfig(Config):
    """One system under test: an OpenAI-compatible endpoint, a model name, and where documents come from."""

    name: str
    """Label used in tables and plots, e.g. "base", "base+RAG", "RAFT+RAG"."""
    base_url: str = "http://127.0.0.1:8000/v1"
    """OpenAI-compatible base URL (ends in /v1): our gateway, vLLM, `transformers serve`, OpenAI."""
    model: str
    """Model name sent in each request (an adapter name for vLLM LoRA, a path for `transformers serve`)."""
    api_key: str = "EMPTY"
    """API key; `env:VAR` reads it from the environment variable VAR."""
    retrieval: RetrievalMode = "off"
    """Where the shown documents come from: `off` = question only (closed book); `gateway` = the endpoint
    retrieves (extension field `retrieval`, citations read back); `local` = this client searches
    `eval.index` and renders the RAFT prompt; `record` = the documents stored in each RAFT record."""
    top_k: int = Field(5, ge=1, le=100)
    """Documents retrieved per question (gateway and local retrieval)."""
    search_mode: Literal["hybrid", "dense", "bm25"] = "hybrid"
    """Search mode for gateway and local retrieval."""
    filter: dict | None = None
    """Metadata filter passed to retrieval, e.g. {"tenant": "acme"}."""
    rerank: bool = False
    """Rerank the retrieved candidates with a cross-encoder: `local` retrieval re-scores eval.rerank.candidates
    hits with eval.rerank.model; `gateway` retrieval asks the gateway for it (`retrieval.rerank: true`), and
    false asks it not to (a gateway with rerank.enabled would otherwise rerank this system too)."""
    price: PriceConfig | None = None
    """This system's token prices, replacing eval.price for it, e.g. {prompt_per_million: 0.15,
    completion_per_million: 0.6} for a hosted API (null = eval.price)."""
    extra_body: dict[str, Any] | None = None
    """Extra fields sent in every request body of this system, as the OpenAI client's `extra_body`: e.g.
    {quote_guard: false} for raft's batched engine (through the gateway too), {top_k: 20} for vLLM. The
    fields eval sets itself (model, messages, max_tokens, temperature, retrieval, stream) are refused."""

    @field_validator("extra_body")
    @classmethod
    def _not_ours(cls, v):
        taken = sorted(set(v or {}) & {"model", "messages", "max_tokens", "temperature", "retrieval", "stream"})
        if taken:
            raise ValueError(f"extra_body sets {', '.join(taken)}, which raft eval sets itself; use the system's "
                             "retrieval/top_k settings and eval.max_tokens / eval.temperature instead")
        return v

    @field_validator("retrieval", mode="before")
    @classmethod
    def _yaml_off(cls, v):
        # YAML 1.1 reads a bare `off` as false; accept it rather than confuse the user
        return "off" if v is False else v

    def price_of(self, default: PriceConfig) -> PriceConfig:
        """The prices that apply to this system: its own, else the eval-wide ones."""
        return self.price if self.price is not None else default


class SweepConfig(Config):
    """Robustness sweeps (the RAFT paper's Figure 6)."""

    top_k: list[int] = Field(default_factory=list)
    """Top-k values to sweep for every system with gateway/local retrieval (empty = no top-k sweep)."""
    distractors: list[int] = Field(default_factory=list)
    """Numbers of distractors shown next to the oracle, for records with known oracle and distractors
    (empty = no distractor sweep). Missing distractors are drawn from other records' documents. Points run
    in the order given: put first the one that matters most, so a stopped run has it."""
    systems: list[str] = Field(default_factory=list)
    """Names of the systems to sweep (empty = all systems)."""
    only: bool = False
    """Run only the sweeps, not each system's main run (for a robustness curve, where the main run would
    repeat one of its points at the cost of a full pass over the questions)."""

    @field_validator("top_k", "distractors")
    @classmethod
    def _non_negative(cls, v: list[int]) -> list[int]:
        if any(x < 0 for x in v):
            raise ValueError(f"values must be >= 0, got {v}")
        return list(dict.fromkeys(v))  # run in the order given (the report shows them sorted), once each


class JudgeConfig(Config):
    """Optional LLM-as-judge: a model scores each answer 1-5 against the gold answers."""

    enabled: bool = False
    """Ask the judge model for a 1-5 score per answer."""
    base_url: str = "http://127.0.0.1:8000/v1"
    """OpenAI-compatible base URL of the judge."""
    model: str = "gpt-4o-mini"
    """Judge model name."""
    api_key: str = "EMPTY"
    """API key of the judge; `env:VAR` reads it from the environment."""
    max_tokens: int = Field(256, ge=1)
    """Judge reply length limit."""


class EvalConfig(Config):
    """`raft eval`: score systems on a question set and write a JSON/Markdown/PNG report."""

    data: str = ""
    """Questions to evaluate: a builder split (OUT/eval/test.jsonl or OUT/raft/test.jsonl), a dataset
    directory OUT (its test split is used), or a questions.jsonl of {id, question, answers, gold_ids}."""
    split: str = "test"
    """Split read when `data` is a dataset directory."""
    limit: int = Field(0, ge=0)
    """Evaluate at most this many questions (0 = all)."""
    systems: list[SystemConfig] = Field(default_factory=list)
    """Systems compared in one table (base, base+RAG, RAFT+RAG)."""
    index: str = ""
    """Retrieval index directory for systems with `retrieval: local` (built by `raft index build`)."""
    embedder: str | None = None
    """Embedder expected by the index (None = the one recorded in the index)."""
    rerank: RerankConfig = Field(default_factory=RerankConfig)
    """Cross-encoder for systems with `retrieval: local` and `rerank: true` (`raft rerank train` writes one)."""
    answer_style: Literal["auto", "text", "api"] = "auto"
    """How answers are normalised: `text` = SQuAD style, `api` = API calls (quotes, spaces, kwarg order),
    `auto` = `api` when gold answers look like calls `f(...)`."""
    gold_level: Literal["auto", "doc", "chunk"] = "auto"
    """Match retrieved passages to gold by document id or chunk id; `auto` uses document ids when the question
    has gold document ids and the passages carry document ids, else chunk ids (RAFT records name their passages
    by chunk id only)."""
    k_values: list[int] = Field(default_factory=lambda: [1, 3, 5])
    """Cut-offs reported for recall@k."""
    sweep: SweepConfig = Field(default_factory=SweepConfig)
    """Robustness sweeps over top-k and over the number of distractors."""
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    """Optional LLM-as-judge."""
    max_tokens: int = Field(256, ge=1)
    """Generation limit per answer."""
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    """Sampling temperature (0 = greedy, reproducible)."""
    concurrency: int = Field(8, ge=1, le=256)
    """Requests in flight at once per run."""
    timeout: float = Field(120.0, gt=0)
    """Seconds a single request may take before it counts as failed."""
    connect_timeout: float = Field(5.0, gt=0)
    """Seconds to wait for an endpoint to answer the start-up check before failing clearly."""
    retries: int = Field(1, ge=0, le=10)
    """Retries per request on timeouts and 5xx answers."""
    price: PriceConfig = Field(default_factory=PriceConfig)
    """Token prices for every system without a `price` of its own: the report's cost per correct answer."""
    seed: int = 0
    """Seed for choosing distractors in the distractor sweep."""
    out: str = "runs/eval"
    """Directory for report.json, report.md, predictions.jsonl and the PNG plots."""

    @field_validator("k_values")
    @classmethod
    def _positive_k(cls, v: list[int]) -> list[int]:
        if not v or any(k < 1 for k in v):
            raise ValueError(f"k_values must be a non-empty list of integers >= 1, got {v}")
        return sorted(set(v))

    @model_validator(mode="after")
    def _check(self) -> "EvalConfig":
        names = [s.name for s in self.systems]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"system names must be unique; repeated: {dupes}")
        if self.sweep.only and not (self.sweep.top_k or self.sweep.distractors):
            raise ValueError("sweep.only=true runs only the sweeps, but sweep.top_k and sweep.distractors are "
                             "both empty; give one of them, or set sweep.only=false")
        unknown = [n for n in self.sweep.systems if n not in names]
        if unknown:
            raise ValueError(f"sweep.systems names unknown systems {unknown}; systems are {names}")
        if any(s.retrieval == "local" for s in self.systems) and not self.index:
            raise ValueError("a system uses `retrieval: local` but `index` is empty; set index=DIR")
        problems = [f"system {s.name!r} has rerank: true with retrieval {s.retrieval!r}; rerank applies to "
                    "retrieved documents (retrieval local or gateway)"
                    for s in self.systems if s.rerank and s.retrieval not in ("local", "gateway")]
        local = [s.name for s in self.systems if s.rerank and s.retrieval == "local"]
        if local and not self.rerank.model:
            problems.append(f"system(s) {local} rerank local retrieval but rerank.model is not set; set "
                            "rerank.model=DIR (what `raft rerank train` wrote)")
        if problems:
            raise ValueError("; ".join(problems))
        return self
