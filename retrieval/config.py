"""BaseConfig (the base of every config model, raft's included) and IndexConfig: how a corpus becomes an index (the
`index:` section of a RAFT YAML config)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator


class BaseConfig(BaseModel):
    """Base of every config model, here and in `raft` (raft.config.Config; `retrieval` never imports `raft`):
    unknown keys are errors, field docstrings become descriptions, and a boolean given for a number is an
    error."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_default=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_number(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic reads true as 1 for a number, and YAML reads `yes`, `on` and `true` as booleans, so
        # `layers=true` would silently mean one layer.
        if isinstance(value, bool) and info.field_name in cls.model_fields:
            kinds = _scalar_types(cls.model_fields[info.field_name].annotation)
            if bool not in kinds and kinds & {int, float}:
                want = type_name(cls.model_fields[info.field_name].annotation)
                raise ValueError(f"expected {want}, got a boolean (YAML reads true/false, yes/no and on/off as "
                                 "booleans)")
        return value


def _scalar_types(ann: Any) -> set:
    """The plain types a field's annotation admits at its top level: `Optional[int]` -> {int, NoneType};
    `Any` -> {Any}, which admits a boolean."""
    import types
    import typing

    origin = typing.get_origin(ann)
    if origin is typing.Annotated:
        return _scalar_types(typing.get_args(ann)[0])
    if origin in (typing.Union, types.UnionType):
        return set().union(*(_scalar_types(a) for a in typing.get_args(ann)))
    return {ann}


def type_name(ann: Any) -> str:
    """A short, readable type: `int`, `int or null`, `general|api`, `list[str]`."""
    import types
    import typing

    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is typing.Literal:
        return "|".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        parts = [type_name(a) for a in args if a is not type(None)]
        return " or ".join(parts) + (" or null" if type(None) in args else "")
    if origin is not None and args:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(type_name(a) for a in args)}]"
    return getattr(ann, "__name__", None) or str(ann).replace("typing.", "")


class IndexConfig(BaseConfig):
    """Loading, chunking, embedding and indexing settings."""

    embedder: str = "all-MiniLM-L6-v2"
    """sentence-transformers model name or path; "all-MiniLM-L6-v2" is the bundled copy (no download)."""
    device: str | None = None
    """torch device for the embedder ("cpu", "cuda", ...); None picks CUDA when present."""
    batch_size: int = Field(64, ge=1)
    """texts per embedding batch."""
    max_seq_length: int | None = None
    """truncate embedder input to this many tokens (None: the model's own limit)."""
    chunk_size: int = Field(200, ge=8)
    """chunk length in tokens of the embedder's tokenizer."""
    chunk_overlap: int = Field(30, ge=0)
    """tokens shared by consecutive chunks of one document."""
    id_field: str = "id"
    """JSON/JSONL: field holding the document id."""
    title_field: str = "title"
    """JSON/JSONL: field holding the title."""
    text_field: str = "text"
    """JSON/JSONL: field holding the text."""
    index_type: Literal["auto", "flat", "ivf_flat", "ivf_pq", "hnsw"] = "auto"
    """FAISS index; auto: flat below 50k chunks, HNSW below 2M, IVF-PQ above."""
    hnsw_m: int = Field(32, ge=4)
    """HNSW graph degree."""
    hnsw_ef_construction: int = Field(80, ge=8)
    """HNSW build-time beam width."""
    hnsw_ef_search: int = Field(64, ge=1)
    """HNSW query-time beam width (recall vs speed)."""
    ivf_nlist: int | None = None
    """IVF cells (None: about 4*sqrt(n))."""
    ivf_nprobe: int = Field(16, ge=1)
    """IVF cells visited per query."""
    pq_m: int = Field(48, ge=1)
    """IVF-PQ sub-quantizers, at most: FAISS needs a divisor of the embedding dimension, so the largest one up
    to this value is used (48 for MiniLM's 384; 7 gives 6), recorded in the manifest (`raft index stats`)."""
    shards: int = Field(1, ge=1)
    """dense index shards stored on disk (RayRetriever gives each shard actor its own)."""
    use_gpu: bool = False
    """search the FAISS index on a GPU (needs faiss-gpu and a CUDA device; HNSW always runs on the CPU).
    Without them the index searches on the CPU and logs a warning (not an error: the setting is stored in
    the index, which may be opened on a host without a GPU)."""
    fusion: Literal["rrf", "weighted"] = "weighted"
    """hybrid fusion: weighted min-max-normalised scores or reciprocal-rank fusion; weighted 0.5 had the
    best mean recall@5 + MRR@10 over the five shared QA sets (benchmarks/retrieval_quality.py)."""
    rrf_k: int = Field(60, ge=1)
    """RRF constant: score = sum 1/(rrf_k + rank)."""
    dense_weight: float = Field(0.5, ge=0.0, le=1.0)
    """hybrid weight of the dense retriever (BM25 gets 1 - this); used by both fusions."""
    candidates: int = Field(50, ge=1)
    """per-retriever candidates fused in hybrid mode (at least k)."""
    max_segments: int = Field(8, ge=1)
    """live writes add small segments; past this many, the smallest are merged (in the background with
    `background_merge`) until half as many remain."""
    merge_max_chunks: int = Field(200_000, ge=1)
    """segments larger than this are left out of automatic merges (rewriting them costs as much as a build;
    `RetrievalIndex.merge(full=True)` merges everything)."""
    merge_deletes_pct: float = Field(30.0, ge=0.0, le=100.0)
    """a segment (within merge_max_chunks) with more than this percentage of its chunks deleted is rewritten
    without them."""
    background_merge: bool = True
    """merge in a background thread after the write that made a merge due (False: the write merges before
    it returns)."""
    ray: bool = False
    """embed through Ray Data with an embedder actor pool (large corpora)."""
    ray_actors: int = Field(1, ge=1)
    """embedder actors in the Ray Data pool."""

    @model_validator(mode="after")
    def _check(self):
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError(f"chunk_overlap ({self.chunk_overlap}) must be smaller than chunk_size "
                             f"({self.chunk_size})")
        return self
