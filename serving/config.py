"""Typed config of `raft serve` (YAML section `serve`): the engine, the retrieval layer, auth and the
gateway itself. Every field has a docstring so `raft serve --help-config` explains it.
"""

from __future__ import annotations

import os
from typing import Literal, Optional
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from raft.config import Config
from retrieval.rerank import RerankConfig

API_KEYS_ENV = "RAFT_SERVE_API_KEYS"
API_KEYS_FORM = "key:tenant[,key:tenant...]"


def mask_secret(secret: str) -> str:
    """How an API key appears in an error: enough to recognise it, never enough to use it."""
    n = f"{len(secret)} character{'' if len(secret) == 1 else 's'}"
    return f"a key of {n}" if len(secret) < 6 else f"{secret[:2]!r}... ({n})"


def parse_api_keys_env(raw: str) -> tuple[dict[str, str], list[str]]:
    """RAFT_SERVE_API_KEYS -> (key -> tenant, problems). A malformed entry is a problem, never skipped:
    skipping it would leave the gateway open (with no other key) or that key refused, without a word."""
    keys: dict[str, str] = {}
    problems = []
    for n, item in enumerate(raw.split(","), 1):
        if not item.strip():
            continue  # an empty variable, a trailing comma: nothing was meant there
        key, sep, tenant = (part.strip() for part in item.partition(":"))
        if not sep:
            what = f"({mask_secret(key)}) is not of the form key:tenant"
        elif not key:
            what = f"(':{tenant}') has an empty key"
        elif not tenant:
            what = f"({mask_secret(key)}) has an empty tenant"
        elif keys.get(key, tenant) != tenant:  # one key, two tenants: the last would win in silence
            what = f"({mask_secret(key)}) gives tenant {tenant!r} a key that tenant {keys[key]!r} already has"
        else:
            keys[key] = tenant
            continue
        problems.append(f"{API_KEYS_ENV} entry {n} {what}; set it as {API_KEYS_FORM}, e.g. "
                        f"{API_KEYS_ENV}=key1:acme,key2:globex")
    return keys, problems


class EngineConfig(Config):
    """What generates text. Every engine is reached through the OpenAI HTTP API."""

    kind: Literal["vllm", "batched", "transformers", "openai"] = "transformers"
    """`vllm`: start `vllm serve` on the base model with the LoRA adapters (GPU); `batched`: start raft's
    batched engine (`python -m serving.batched`) on a merged model, which generates concurrent requests
    together (the fast choice on a CPU); `transformers`: start `transformers serve` on a merged model (one
    request at a time); `openai`: use an engine already running at `url`."""
    model: Optional[str] = None
    """vllm: the base model (hub id or path); batched, transformers: the merged model directory
    (`raft export --merge`); openai: the engine's model name (default: the first name /v1/models lists)."""
    url: Optional[str] = None
    """Base URL of a running OpenAI-compatible engine, e.g. http://10.0.0.5:8000/v1 (kind `openai`)."""
    api_key: Optional[str] = None
    """Bearer key the gateway sends to the engine (openai kind); env RAFT_ENGINE_API_KEY also works."""
    host: str = "127.0.0.1"
    """Address the launched engine listens on (private: clients talk to the gateway)."""
    port: int = Field(8001, ge=1, le=65535)
    """Port the launched engine listens on."""
    adapters: dict[str, str] = {}
    """vllm: LoRA adapters as served name -> adapter directory (`--lora-modules name=path`)."""
    max_lora_rank: int = Field(16, ge=1)
    """vllm `--max-lora-rank`: must be at least the rank the adapters were trained with."""
    max_loras: int = Field(4, ge=1)
    """vllm `--max-loras`: adapters resident on the GPU at once."""
    max_model_len: Optional[int] = Field(None, ge=16)
    """Context window in tokens (vllm `--max-model-len`; also the gateway's context check). Default:
    the model's `max_position_embeddings` read from its config.json, when the gateway can read it."""
    device: str = "cpu"
    """batched, transformers: `--device` (cpu, cuda:0; transformers also takes auto)."""
    max_batch_size: int = Field(8, ge=1)
    """batched: most requests generated together in one forward pass. Decoding a small model is bound by
    reading its weights, so a batch of 8 costs little more than one request; raise it with the load."""
    extra_args: list[str] = []
    """Further command-line arguments appended verbatim to the engine command."""
    startup_timeout_s: float = Field(600.0, gt=0)
    """How long to wait for a launched engine's /health before giving up."""
    request_timeout_s: float = Field(300.0, gt=0)
    """Longest a single generation may take before the gateway answers 504."""
    connect_timeout_s: float = Field(0.5, gt=0)
    """Connect timeout to the engine: a down engine is reported as 503 this fast, never a hang."""
    max_connections: int = Field(256, ge=1)
    """HTTP connection pool size from the gateway to the engine."""


class RerankSettings(RerankConfig):
    """The gateway's cross-encoder rerank stage: `model` loads it; `enabled` reranks every request that
    does not say otherwise (a request turns it on or off with `retrieval.rerank`)."""

    enabled: bool = False
    """Rerank requests that do not set `retrieval.rerank` (needs `model`); false: only requests asking for it
    with `retrieval.rerank: true` are reranked."""


class RetrievalSettings(Config):
    """The retrieval layer the gateway queries before each RAFT request."""

    backend: Literal["ray", "local", "none"] = "local"
    """`ray`: retriever actors (RayRetriever, shards and embedders as Ray actors); `local`: the index
    in the gateway process; `none`: no retrieval (the gateway is a plain proxy)."""
    index_dir: Optional[str] = None
    """Index directory written by `raft index build` (required unless backend is `none`)."""
    embedder: Optional[str] = None
    """Embedder name or path; must match the index manifest (default: the one the index records)."""
    num_shards: int = Field(2, ge=1)
    """ray backend: index shards, one actor each."""
    num_embedders: int = Field(1, ge=1)
    """ray backend: query-embedding actors."""
    top_k: int = Field(5, ge=1, le=100)
    """Chunks retrieved per request unless the request's `retrieval.top_k` says otherwise."""
    max_top_k: int = Field(20, ge=1, le=1000)
    """Largest `retrieval.top_k` a request may ask for (bounds prompt size and latency)."""
    mode: Literal["hybrid", "dense", "bm25"] = "hybrid"
    """Default search mode."""
    timeout_s: float = Field(5.0, gt=0)
    """Longest a retrieval may take before the request fails with 503."""
    embed_threads: Optional[int] = Field(1, ge=1)
    """local backend: intra-op threads for query embedding in the gateway process (torch, or the ONNX
    Runtime session). Queries are tiny and concurrent requests are batched, so 1 avoids thread
    oversubscription (on a busy 2-core box 2 torch threads made one query embedding ~15x slower); null
    keeps the library default."""
    embed_backend: Literal["auto", "onnx", "torch"] = "auto"
    """How queries are embedded, in the gateway (local backend) or in the embedder actors (ray backend).
    `onnx`: ONNX Runtime on the same model (identical vectors, ~2-3x faster per query on CPU; exported once
    to ~/.cache/raft/onnx); `torch`: sentence-transformers; `auto`: onnx when onnxruntime is installed and
    the model is a plain Transformer+Pooling one, else torch. This value is passed to the embedder actors,
    so $RAFT_EMBED_BACKEND (read when RayRetriever is used as a library) does not apply to `raft serve`."""
    max_batch: int = Field(32, ge=1)
    """local backend: most queries embedded and searched together when requests arrive concurrently."""
    rerank: RerankSettings = RerankSettings()
    """Cross-encoder rerank stage (docs/rerank.md): off unless `rerank.model` names one (`raft rerank train`
    writes it); `rerank.candidates` hits of the search, after the tenant and metadata filters, are re-scored
    and the best top_k kept."""
    num_rerankers: int = Field(1, ge=1)
    """ray backend: cross-encoder actors of the rerank stage (its own pool, scaled apart from the shards)."""
    reranker_cpus: float = Field(1.0, ge=0)
    """ray backend: CPUs Ray reserves for each cross-encoder actor."""
    reranker_gpus: float = Field(0.0, ge=0)
    """ray backend: GPUs for each cross-encoder actor (e.g. 0.25 to share one GPU among four); a cross-encoder
    on a GPU scores 40 candidates in milliseconds, on a CPU in most of a second (docs/rerank.md). The Ray
    cluster must have them: `raft serve` refuses to start otherwise."""
    search_threads: int = Field(3, ge=1, le=64)
    """local backend: searches (micro-batches) that run at once, each on its own SQLite connection. A
    tenant already searching gets another thread only while two are free: the last one is kept for a
    tenant that is not, so one tenant's slow or numerous searches never hold the others up."""


class LimitsConfig(Config):
    """Input limits. Each is checked before any work is done, and a request over one gets a 4xx in
    OpenAI's error shape naming the limit and its config key."""

    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    """Largest request body in bytes (413 above it, before the body is parsed)."""
    max_query_chars: int = Field(8000, ge=1)
    """Largest retrieval query in characters: the last user message (chat) or the prompt (completions)
    when retrieval is on. It is what gets embedded and BM25-searched, so it bounds the work per search."""
    max_document_chars: int = Field(200_000, ge=1)
    """Largest `text` of one ingested document, in characters (roughly 300 chunks at the default
    chunk_size of 200 tokens)."""
    max_documents_per_request: int = Field(100, ge=1)
    """Most documents in one POST /v1/documents."""
    max_metadata_bytes: int = Field(4096, ge=2)
    """Largest `metadata` of one document, as compact JSON in UTF-8 bytes."""
    max_metadata_depth: int = Field(4, ge=1)
    """Deepest nesting of objects and arrays in `metadata` (`{"a": [1]}` has depth 2)."""
    max_id_chars: int = Field(256, ge=1)
    """Longest document id, in characters."""
    id_pattern: str = r"[A-Za-z0-9][A-Za-z0-9._:@=+~-]*"
    """Characters a document id may use (a Python regular expression the whole id must match). The
    default keeps ids safe in a URL path as they are, so DELETE /v1/documents/{id} finds every id that
    ingest accepted."""

    @model_validator(mode="after")
    def _pattern_compiles(self) -> "LimitsConfig":
        import re

        try:
            re.compile(self.id_pattern)
        except re.error as e:
            raise ValueError(f"limits.id_pattern is not a valid regular expression: {e}") from None
        return self


class AuthConfig(Config):
    """API keys, each mapped to a tenant. With no keys configured the gateway is open (one tenant)."""

    keys: dict[str, str] = {}
    """API key -> tenant name. Also read from env RAFT_SERVE_API_KEYS as `key1:tenantA,key2:tenantB`."""
    tenant_models: dict[str, list[str]] = {}
    """Tenant -> served model names (base or adapters) it may use; a tenant not listed may use all."""

    @field_validator("keys", mode="before")
    @classmethod
    def _keys_well_formed(cls, keys):
        # checked here, before pydantic's own errors, which would print a bad key whole in their location;
        # the rules are those of RAFT_SERVE_API_KEYS, and keys are stripped as the bearer key given is
        if not isinstance(keys, dict):
            return keys
        problems = []
        for key, tenant in keys.items():
            if not isinstance(key, str):
                problems.append(f"a key is a YAML {type(key).__name__}, not a string; quote it "
                                "(e.g. \"12345\": acme)")
            elif not key.strip():
                problems.append(f"a key is empty (tenant {tenant!r}); give that tenant a real key")
            elif not isinstance(tenant, str) or not tenant.strip():
                problems.append(f"key {mask_secret(key)} has no tenant (got {tenant!r}); map each key to a "
                                "tenant name, e.g. key1: acme")
        if problems:
            raise ValueError("; ".join(problems))
        return {key.strip(): tenant.strip() for key, tenant in keys.items()}

    def resolved_keys(self) -> dict[str, str]:
        """Keys from the config plus the environment (the environment wins on a clash). A malformed
        environment raises ValueError (ServeConfig reports it as a config problem first)."""
        env_keys, problems = parse_api_keys_env(os.environ.get(API_KEYS_ENV, ""))
        if problems:
            raise ValueError("; ".join(problems))
        return {**self.keys, **env_keys}


class RayServeSettings(Config):
    """How the gateway runs under Ray Serve."""

    address: Optional[str] = None
    """Ray cluster address; default: env RAY_ADDRESS, else a local Ray started for this process."""
    num_replicas: int = Field(1, ge=1)
    """Gateway replicas (each holds an HTTP pool to the engine; retrieval actors are shared)."""
    max_ongoing_requests: int = Field(256, ge=1)
    """Concurrent requests one replica accepts (requests are I/O-bound, so this can be high)."""
    num_cpus: float = Field(0.5, ge=0)
    """CPUs reserved per gateway replica."""


class ServeConfig(Config):
    """`raft serve`: an OpenAI-compatible endpoint that retrieves, answers with the RAFT model, and cites."""

    engine: EngineConfig = EngineConfig()
    """The text-generation engine."""
    retrieval: RetrievalSettings = RetrievalSettings()
    """The retrieval layer."""
    auth: AuthConfig = AuthConfig()
    """API keys and tenants."""
    limits: LimitsConfig = LimitsConfig()
    """Input limits (request, query, document and metadata sizes; id characters)."""
    ray: RayServeSettings = RayServeSettings()
    """Ray Serve settings (runner `ray`)."""
    runner: Literal["ray", "uvicorn"] = "ray"
    """`ray`: the gateway is a Ray Serve application; `uvicorn`: the same FastAPI app in this process."""
    host: str = "127.0.0.1"
    """Address the gateway listens on (0.0.0.0 to accept remote clients)."""
    port: int = Field(8000, ge=1, le=65535)
    """Port the gateway listens on."""
    model_name: str = "raft"
    """Name clients use for the RAFT model (the merged model, or with vllm the first adapter unless an
    adapter has this name). Retrieval is on by default for it and for every adapter."""
    base_model_name: Optional[str] = "base"
    """Name for the base model without retrieval (vllm only; null hides it)."""
    tokenizer: Optional[str] = None
    """Tokenizer (directory with tokenizer.json) used to count prompt tokens for the context check;
    default: the engine model directory when it has one, else a 4-characters-per-token estimate."""
    log_level: str = "info"
    """Gateway log level."""
    shutdown_timeout_s: float = Field(10.0, gt=0)
    """On SIGTERM or Ctrl-C: how long requests in flight may finish before the gateway, the engine it
    started and the local Ray it started are stopped anyway."""

    @model_validator(mode="after")
    def _check(self) -> "ServeConfig":
        e, r = self.engine, self.retrieval
        problems = []
        if e.kind == "openai" and not e.url:
            problems.append("engine.url is required when engine.kind is 'openai' (e.g. http://host:8000/v1)")
        if e.url:
            # httpx takes 'localhost:9' as scheme 'localhost': the gateway would report ready, then every
            # request would fail with a 500
            try:
                u = urlsplit(e.url)
            except ValueError as err:  # e.g. an unclosed [ of an IPv6 address
                problems.append(f"engine.url is not a valid URL ({err}), got {e.url!r} (e.g. http://host:8000/v1)")
            else:
                if u.scheme.lower() not in ("http", "https"):
                    problems.append(f"engine.url must start with http:// or https://, got {e.url!r} "
                                    f"(e.g. http://{e.url.split('://')[-1]})")
                elif not u.hostname:
                    problems.append(f"engine.url has no host, got {e.url!r} (e.g. http://host:8000/v1)")
        problems += parse_api_keys_env(os.environ.get(API_KEYS_ENV, ""))[1]
        if e.kind in ("vllm", "batched", "transformers") and not e.model:
            problems.append(f"engine.model is required when engine.kind is {e.kind!r} "
                            "(vllm: base model; batched, transformers: merged model directory)")
        if r.backend != "none" and not r.index_dir:
            problems.append(f"retrieval.index_dir is required when retrieval.backend is {r.backend!r} "
                            "(or set retrieval.backend: none)")
        if r.backend == "local" and self.ray.num_replicas > 1 and self.runner == "ray":
            problems.append(f"retrieval.backend 'local' with ray.num_replicas={self.ray.num_replicas}: each replica "
                            "would hold its own copy of the index and live document writes would not reach the "
                            "others; use retrieval.backend: ray (shared retriever actors) or one replica")
        if r.top_k > r.max_top_k:
            problems.append(f"retrieval.top_k ({r.top_k}) is larger than retrieval.max_top_k ({r.max_top_k})")
        if r.rerank.enabled and not r.rerank.model:
            problems.append("retrieval.rerank.enabled is true but retrieval.rerank.model is not set; name the "
                            "directory `raft rerank train` wrote, or set retrieval.rerank.enabled: false")
        if r.rerank.model and r.backend == "none":
            problems.append(f"retrieval.rerank.model is {r.rerank.model!r} but retrieval.backend is 'none' (no "
                            "retrieval to rerank); set a backend and retrieval.index_dir, or drop the model")
        if problems:
            raise ValueError("; ".join(problems))
        return self
