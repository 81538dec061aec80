"""Async access to any OpenAI-compatible endpoint (our gateway, vLLM, OpenAI, `transformers serve`):
a fast reachability check, then chat completions with timeouts, retries and bounded concurrency.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from typing import Any

from raft.errors import RaftError


def resolve_api_key(value: str) -> str:
    """`env:VAR` -> the value of VAR (a clear error when unset); anything else as given."""
    if value.startswith("env:"):
        var = value[4:]
        key = os.environ.get(var)
        if not key:
            raise RaftError(f"api_key says env:{var} but the environment variable {var} is not set")
        return key
    return value or "EMPTY"


@dataclass
class Reply:
    """One completion: the text, the gateway's citations (if any), latency, the token counts the endpoint
    reported in `usage` (None when it reported none: never estimated), or the error that stopped it."""

    text: str = ""
    citations: list[dict[str, Any]] = field(default_factory=list)
    latency_s: float = 0.0
    error: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


def _count(usage: Any, name: str) -> int | None:
    """One token count from an OpenAI `usage` object or dict; None when absent or not a count."""
    if usage is None:
        return None
    value = usage.get(name) if isinstance(usage, dict) else getattr(usage, name, None)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        return None
    return int(value)


class Endpoint:
    """One OpenAI-compatible base URL + model; `semaphore` bounds requests in flight across calls."""

    def __init__(self, base_url: str, model: str, api_key: str = "EMPTY", *, timeout: float = 120.0,
                 retries: int = 1, concurrency: int = 8):
        import openai

        self.base_url, self.model = base_url.rstrip("/"), model
        self.client = openai.AsyncOpenAI(base_url=self.base_url, api_key=resolve_api_key(api_key),
                                         timeout=timeout, max_retries=retries)
        self.semaphore = asyncio.Semaphore(concurrency)

    async def check(self, connect_timeout: float = 5.0) -> list[str]:
        """Fail within `connect_timeout` seconds, with the URL in the message, when nothing answers.
        Returns the served model names (empty when the endpoint does not list models)."""
        import openai

        try:
            page = await self.client.with_options(timeout=connect_timeout, max_retries=0).models.list()
            return [m.id for m in page.data]
        except (openai.APIConnectionError, openai.APITimeoutError) as e:
            raise RaftError(f"endpoint {self.base_url} is unreachable ({type(e).__name__}: {e}); start the "
                            "server or fix base_url (it must end in /v1)") from None
        except openai.AuthenticationError:
            raise RaftError(f"endpoint {self.base_url} rejected the API key; set api_key "
                            "(e.g. api_key=env:OPENAI_API_KEY)") from None
        except openai.NotFoundError:
            # an OpenAI-compatible server answers GET {base}/models; a 404 means the path is wrong (usually a
            # base URL without /v1), and every request would fail the same way
            hint = (f"; try {self.base_url}/v1" if not self.base_url.endswith("/v1") else
                    "; check the path of base_url")
            raise RaftError(f"endpoint {self.base_url} answered 404 Not Found to GET {self.base_url}/models: it is "
                            f"not the root of an OpenAI-compatible API (base_url must end in /v1){hint}") from None
        except openai.APIStatusError:
            return []  # reachable; it just does not list models

    async def chat(self, messages: list[dict[str, Any]], *, max_tokens: int = 256, temperature: float = 0.0,
                   extra_body: dict | None = None) -> Reply:
        """One chat completion; failures come back as Reply.error rather than raising, so one bad
        request does not lose a whole run."""
        import openai

        async with self.semaphore:
            start = time.perf_counter()
            try:
                resp = await self.client.chat.completions.create(
                    model=self.model, messages=messages, max_tokens=max_tokens, temperature=temperature,
                    extra_body=extra_body or None)
            except openai.APIStatusError as e:
                return Reply(error=f"HTTP {e.status_code}: {str(e)[:300]}",
                             latency_s=time.perf_counter() - start)
            except (openai.APIConnectionError, openai.APITimeoutError) as e:
                return Reply(error=f"{type(e).__name__}: {str(e)[:300]}", latency_s=time.perf_counter() - start)
            latency = time.perf_counter() - start
        choice = resp.choices[0] if resp.choices else None
        text = (choice.message.content or "") if choice and choice.message else ""
        extra = resp.model_extra or {}
        citations = extra.get("citations") or []
        if not citations and choice is not None:  # some gateways put it on the message
            citations = (choice.message.model_extra or {}).get("citations") or []
        return Reply(text=text, citations=[c for c in citations if isinstance(c, dict)], latency_s=latency,
                     prompt_tokens=_count(resp.usage, "prompt_tokens"),
                     completion_tokens=_count(resp.usage, "completion_tokens"))

    async def aclose(self) -> None:
        await self.client.close()
