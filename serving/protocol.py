"""Wire schemas of the gateway (the OpenAI API plus RAFT's extensions), as vLLM keeps them: pydantic
models only, no logic. Requests accept unknown keys (OpenAI clients send new fields all the time); the
serving layer logs and drops what neither OpenAI nor RAFT defines, and forwards the rest to the engine.

Types are strict, as in OpenAI's API: `top_k: "5"`, `stream: "yes"` or `enabled: 0` are errors, not
coerced (an int is still accepted where a float is expected). Size limits depend on the server's config
and are checked by serving/limits.py.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, Strict

Bool = Annotated[bool, Strict()]
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict()]
Str = Annotated[str, Strict()]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class RetrievalOptions(BaseModel):
    """Extension field `retrieval` (OpenAI client: `extra_body={"retrieval": {...}}`); unknown keys in
    it are ignored with a log line, like unknown top-level fields."""

    model_config = ConfigDict(extra="allow")
    enabled: Optional[Bool] = None
    """Retrieve for this request; default: on for the RAFT model and adapters, off for the base model."""
    top_k: Optional[Int] = Field(None, ge=1)
    """Chunks to retrieve (capped by the server's retrieval.max_top_k)."""
    filter: Optional[dict[str, Any]] = None
    """Metadata filter ({"key": value or [values]}); the tenant filter is always added server side."""
    mode: Optional[Literal["hybrid", "dense", "bm25"]] = None
    """Search mode; default: the server's retrieval.mode."""
    rerank: Optional[Bool] = None
    """Re-score the search's first candidates with the server's cross-encoder and keep the best top_k;
    default: the server's retrieval.rerank.enabled. True on a server without a reranker is a 400."""


class ChatMessage(_Open):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: Optional[Union[str, list[dict[str, Any]]]] = None
    name: Optional[str] = None


# OpenAI fields forwarded to the engine as they are, and `quote_guard` (raft's batched engine; vLLM ignores
# it); anything else unknown is logged and dropped.
SAMPLING_FIELDS = (
    "temperature", "top_p", "max_tokens", "max_completion_tokens", "stop", "n", "seed", "presence_penalty",
    "frequency_penalty", "logit_bias", "logprobs", "top_logprobs", "user", "response_format",
    "stream_options", "echo", "suffix", "best_of", "tools", "tool_choice", "parallel_tool_calls", "quote_guard",
)


class _SamplingParams(_Open):
    model: Str = Field(min_length=1)
    stream: Bool = False
    temperature: Optional[Float] = Field(None, ge=0, le=2)
    top_p: Optional[Float] = Field(None, ge=0, le=1)
    max_tokens: Optional[Int] = Field(None, ge=1)
    stop: Optional[Union[Str, list[Str]]] = None
    n: Optional[Int] = Field(None, ge=1, le=16)
    seed: Optional[Int] = None
    presence_penalty: Optional[Float] = Field(None, ge=-2, le=2)
    frequency_penalty: Optional[Float] = Field(None, ge=-2, le=2)
    user: Optional[Str] = None
    stream_options: Optional[dict[str, Any]] = None
    retrieval: Optional[RetrievalOptions] = None


class ChatCompletionRequest(_SamplingParams):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[Int] = Field(None, ge=1)


class CompletionRequest(_SamplingParams):
    """POST /v1/completions. With retrieval on, the prompt is the question."""

    prompt: Union[Str, list[Str]]


class Citation(BaseModel):
    """One retrieved chunk shown to the model, and the answer's quotes found in it."""

    chunk_id: str
    doc_id: str
    title: str = ""
    source: str = ""
    score: float
    quotes: list[str] = []


class DocumentIn(BaseModel):
    """A document to ingest; it is chunked and embedded by the retrieval layer. `id` is the caller's
    tenant's: two tenants may use the same id for two different documents."""

    model_config = ConfigDict(extra="forbid")
    id: Str = Field(min_length=1)
    text: Str = Field(min_length=1)
    title: Str = ""
    source: Str = ""
    metadata: dict[str, Any] = {}


class DocumentsRequest(BaseModel):
    """POST /v1/documents (how many documents, and how large, is set by serve.limits)."""

    model_config = ConfigDict(extra="forbid")
    documents: list[DocumentIn] = Field(min_length=1)


class DocumentsResponse(BaseModel):
    object: Literal["list"] = "list"
    documents: list[dict[str, Any]]
    chunks: int


class DeleteResponse(BaseModel):
    id: str
    object: Literal["document"] = "document"
    deleted: bool
    chunks: int


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "raft"
    parent: Optional[str] = None
    retrieval: bool = True


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[str] = None


class ErrorResponse(BaseModel):
    """Every error the gateway returns, in OpenAI's shape."""

    error: ErrorInfo


def completion_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"
