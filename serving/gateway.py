"""The gateway's shared state and the steps every endpoint uses: resolve the model for the caller,
retrieve (tenant-scoped), check the context length, pick the fields to forward to the engine.

Endpoint logic lives in serving/chat.py, serving/completion.py, serving/documents.py; the HTTP routes in
serving/app.py. Nothing here knows about HTTP beyond raising GatewayError with a status.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from typing import Any, Optional

from pydantic import BaseModel

from retrieval.errors import RetrievalError
from retrieval.filters import normalize_filter
from serving.auth import Authenticator, Principal
from serving.config import ServeConfig
from serving.engine import EngineClient
from serving.errors import GatewayError, RetrievalUnavailable, bad_request, model_not_found, redact_logs
from serving.limits import check_query
from serving.metrics import GatewayMetrics
from serving.models import ServedModel, served_models
from serving.protocol import SAMPLING_FIELDS, RetrievalOptions
from serving.retriever import Retriever
from serving.tokens import TokenCounter, context_limit

log = logging.getLogger("raft.serve")

# Stage timings of the current request, returned as a `Server-Timing` header (non-streamed responses):
# lets a client or a benchmark see the retrieval hop without scraping /metrics.
_timings: contextvars.ContextVar[Optional[dict]] = contextvars.ContextVar("raft_timings", default=None)


def start_timings() -> dict:
    d: dict = {}
    _timings.set(d)
    return d


def note_timing(stage: str, seconds: float) -> None:
    d = _timings.get()
    if d is not None:
        d[stage] = d.get(stage, 0.0) + seconds


def server_timing(d: dict) -> str:
    return ", ".join(f"{k};dur={v * 1000:.2f}" for k, v in d.items())


def check_prompt_versions(cfg: ServeConfig) -> list[str]:
    """Warn when a served adapter or merged model was trained with another RAFT prompt version: the
    model would read documents rendered differently from how it learned them."""
    import json
    from pathlib import Path

    from raft.prompt import PROMPT_VERSION

    e = cfg.engine
    dirs = list(e.adapters.values()) + ([e.model] if e.kind in ("batched", "transformers") and e.model else [])
    warnings = []
    for d in dirs:
        meta = Path(d) / "raft_meta.json"
        try:
            version = json.loads(meta.read_text()).get("prompt_version")
        except (OSError, ValueError):
            continue
        if version and version != PROMPT_VERSION:
            warnings.append(f"{d} was trained with prompt {version!r}, this gateway renders {PROMPT_VERSION!r}")
            log.warning("prompt version mismatch: %s", warnings[-1])
    return warnings


class Gateway:
    def __init__(self, cfg: ServeConfig, engine: EngineClient, retriever: Optional[Retriever]):
        redact_logs()
        self.cfg = cfg
        self.engine = engine
        self.retriever = retriever
        self.auth = Authenticator(cfg.auth)
        self.metrics = GatewayMetrics()
        self.models = served_models(cfg)
        local_model = cfg.engine.model if cfg.engine.kind in ("batched", "transformers") else None
        self.tokens = TokenCounter(cfg.tokenizer or local_model)
        self.max_context = cfg.engine.max_model_len or context_limit(cfg.engine.model)
        check_prompt_versions(cfg)

    @classmethod
    def from_config(cls, cfg: ServeConfig, engine_url: str, retriever: Optional[Retriever]) -> "Gateway":
        import os

        e = cfg.engine
        engine = EngineClient(engine_url, e.api_key or os.environ.get("RAFT_ENGINE_API_KEY"),
                              e.connect_timeout_s, e.request_timeout_s, e.max_connections)
        return cls(cfg, engine, retriever)

    async def close(self) -> None:
        await self.engine.aclose()

    # -- models ---------------------------------------------------------------------------------
    def visible_models(self, who: Principal) -> list[ServedModel]:
        return [m for m in self.models.values() if who.may_use(m.name)]

    def resolve_model(self, who: Principal, name: str) -> ServedModel:
        model = self.models.get(name)
        if model is None or not who.may_use(name):
            raise model_not_found(name, [m.name for m in self.visible_models(who)])
        return model

    # -- retrieval ------------------------------------------------------------------------------
    def retrieval_wanted(self, model: ServedModel, opts: Optional[RetrievalOptions]) -> bool:
        enabled = opts.enabled if opts and opts.enabled is not None else model.retrieval
        if enabled and self.retriever is None:
            if opts and opts.enabled:
                raise bad_request("Retrieval was requested but this gateway has no retrieval index "
                                  "(serve.retrieval.backend is 'none').", "retrieval.enabled")
            return False
        return enabled

    async def retrieve(self, who: Principal, query: str, opts: Optional[RetrievalOptions],
                       param: str = "messages") -> list[Any]:
        """Search for `query` (the request field `param`) in the caller's documents. Everything about the
        request is checked first; the search gets a deadline and stops there, even in its worker thread."""
        r = self.cfg.retrieval
        check_query(query, self.cfg.limits, param)
        k = opts.top_k if opts and opts.top_k else r.top_k
        if k > r.max_top_k:
            raise bad_request(f"retrieval.top_k is {k}; the largest this server allows is {r.max_top_k}.",
                              "retrieval.top_k")
        mode = (opts.mode if opts and opts.mode else None) or r.mode
        rerank = opts.rerank if opts and opts.rerank is not None else r.rerank.enabled
        if rerank and not r.rerank.model:
            raise bad_request("retrieval.rerank is true but this server has no reranker "
                              "(serve.retrieval.rerank.model is not set); drop the field or ask the operator to "
                              "configure one.", "retrieval.rerank")
        flt = who.scope_filter(opts.filter if opts else None)  # tenant forced in, server side
        try:
            normalize_filter(flt)
        except RetrievalError as e:
            raise bad_request(f"Invalid retrieval.filter: {e}", "retrieval.filter") from None
        t0 = time.perf_counter()
        deadline = time.monotonic() + r.timeout_s
        try:
            # the filter (with the tenant) goes into the search: the reranker only sees what it allows
            extra = {"rerank": True} if rerank else {}
            result = await asyncio.wait_for(
                self.retriever.asearch(query, k, mode, flt, deadline=deadline, **extra), r.timeout_s)
        except GatewayError:
            raise
        except (asyncio.TimeoutError, TimeoutError):  # asyncio's, or the search's own deadline
            raise RetrievalUnavailable(f"Retrieval took longer than {r.timeout_s:g} s "
                                       "(serve.retrieval.timeout_s); retry shortly.") from None
        except (ValueError, TypeError, KeyError, RetrievalError) as e:
            raise bad_request(f"Retrieval rejected the request: {e}", "retrieval") from None
        except Exception as e:  # a dead actor or a broken index: the service, not the request
            log.exception("retrieval failed")
            raise RetrievalUnavailable(f"Retrieval is unavailable ({type(e).__name__}: {e}).") from None
        took = time.perf_counter() - t0
        self.metrics.observe("retrieval", took)
        note_timing("retrieval", took)
        for stage in ("embed", "search", "rerank"):
            if stage in result.timings:
                self.metrics.observe(stage, result.timings[stage])
        if "rerank" in result.timings:  # in Server-Timing too: the stage a client may want to budget
            note_timing("rerank", result.timings["rerank"])
        hits = result.hits
        if who.tenant is not None:  # defence in depth: never show another tenant's chunk
            hits = [who.public_hit(h) for h in hits if (h.chunk.metadata or {}).get("tenant") == who.tenant]
        self.metrics.retrieved.inc(len(hits))
        return hits

    # -- request shaping ------------------------------------------------------------------------
    def forward_fields(self, req: BaseModel, endpoint: str) -> dict[str, Any]:
        """OpenAI sampling fields to pass to the engine; unknown extension fields are logged and dropped."""
        out = {k: v for k, v in req.model_dump(exclude_none=True, include=set(SAMPLING_FIELDS)).items()}
        for key, value in (req.model_extra or {}).items():
            if key in SAMPLING_FIELDS:
                out[key] = value
            else:
                self._ignored(endpoint, key)
        opts = getattr(req, "retrieval", None)
        for key in (opts.model_extra or {}) if opts is not None else ():
            self._ignored(endpoint, f"retrieval.{key}")
        return out

    def _ignored(self, endpoint: str, key: str) -> None:
        log.info("%s: ignoring unknown request field %r", endpoint, key)

    async def count_tokens(self, count: Any, arg: Any, chars: int) -> int:
        """`count(arg)`: prompt tokens. A long prompt is tokenized in a worker thread, so one huge message
        (retrieval off, up to serve.limits.max_body_bytes) never stalls the event loop for everyone."""
        if chars < 20_000:
            return count(arg)
        return await asyncio.to_thread(count, arg)

    def check_context(self, prompt_tokens: int, max_tokens: Optional[int]) -> None:
        if not self.max_context:
            return
        wanted = prompt_tokens + (max_tokens or 0)
        # Without the model's tokenizer the prompt count is a characters/4 estimate: reject only what is
        # over the limit even if the estimate ran 25% high, and leave borderline cases to the engine.
        sure = prompt_tokens if self.tokens.exact else int(prompt_tokens * 0.8)
        if sure >= self.max_context or sure + (max_tokens or 0) > self.max_context:
            how = "" if self.tokens.exact else " (estimated)"
            raise bad_request(
                f"This model's maximum context length is {self.max_context} tokens. However, you requested "
                f"{wanted} tokens{how} ({prompt_tokens} in the prompt, including retrieved documents; "
                f"{max_tokens or 0} for the completion). Shorten the messages, lower max_tokens or "
                f"retrieval.top_k.", "messages", "context_length_exceeded")

    async def health(self) -> dict[str, Any]:
        """Engine reachability (one async HTTP call) and the retriever's cached state: nothing here waits
        for a search or a write, so a busy index is reported as busy, not as down."""
        engine = await self.engine.health()
        if self.retriever is None:
            index: dict[str, Any] = {"status": "disabled"}
        else:
            try:
                index = await asyncio.wait_for(self.retriever.ahealth(), 2.0)
            except Exception as e:
                index = {"status": "down", "error": f"{type(e).__name__}: {e}"}
        ok = engine["status"] == "ok" and index["status"] in ("ok", "disabled")
        return {"status": "ok" if ok else "degraded", "engine": engine, "index": index,
                "models": list(self.models)}
