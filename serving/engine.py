"""EngineClient: the one door to whatever generates text (vLLM, `transformers serve`, any OpenAI URL),
spoken over the OpenAI HTTP API with one pooled httpx client.

Failures map to gateway errors the client can act on: an engine that refuses connections or dies
mid-answer is a 503 (fast: the connect timeout is sub-second, so a down engine never hangs a request),
a generation that runs past the request timeout is a 504, an engine's own 4xx is passed on as it is.
"""

from __future__ import annotations

import json
import logging
from typing import Any, AsyncIterator, Optional

import httpx

from serving.errors import EngineUnavailable, GatewayError, redact

log = logging.getLogger("raft.serve.engine")

# A pooled keep-alive connection the engine closed a moment ago fails like this before the engine read
# anything; one retry on a fresh connection is safe (generation has no side effects) and hides the race.
_STALE = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)
_DOWN = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError, httpx.ReadError,
         httpx.WriteError, httpx.PoolTimeout, httpx.CloseError)


def root_url(url: str) -> str:
    """`http://h:8000/v1/` or `http://h:8000` -> `http://h:8000` (the API lives under /v1)."""
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


class EngineClient:
    def __init__(self, url: str, api_key: Optional[str] = None, connect_timeout: float = 0.5,
                 request_timeout: float = 300.0, max_connections: int = 256):
        self.url = root_url(url)
        self.display_url = redact(self.url)  # credentials in the URL are used, never shown
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout = httpx.Timeout(request_timeout, connect=connect_timeout, pool=connect_timeout * 4)
        self._client = httpx.AsyncClient(
            base_url=self.url, headers=headers, timeout=self.timeout,
            # expire idle connections before the engine's own keep-alive timeout (uvicorn, hence vLLM and
            # transformers serve: 5 s) so the gateway rarely reuses one the engine is closing
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections,
                                keepalive_expiry=2.0),
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    def _down(self, e: Exception) -> EngineUnavailable:
        detail = str(e) or "no response"
        return EngineUnavailable(f"The model engine at {self.display_url} is unavailable "
                                 f"({type(e).__name__}: {redact(detail)}); retry shortly.")

    @staticmethod
    def _engine_error(resp: httpx.Response) -> GatewayError:
        try:
            body = resp.json()
        except ValueError:
            body = {}
        err = body.get("error") if isinstance(body, dict) else None
        if isinstance(err, dict):
            msg = err.get("message") or str(err)
        elif isinstance(body, dict) and "detail" in body:
            msg = str(body["detail"])
        else:
            msg = resp.text[:500] or resp.reason_phrase
        if resp.status_code >= 500:
            # the engine failed on a request the gateway validated: a bad gateway, not the client's fault
            return GatewayError(502, f"The model engine failed: {msg}", "api_error", None, "engine_error")
        code = err.get("code") if isinstance(err, dict) else None
        param = err.get("param") if isinstance(err, dict) else None
        return GatewayError(resp.status_code, f"The model engine rejected the request: {msg}",
                            "invalid_request_error", param, code)

    async def post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Non-streamed call, e.g. post("/v1/chat/completions", body) -> the engine's JSON."""
        try:
            try:
                resp = await self._client.post(path, json=payload)
            except _STALE:
                resp = await self._client.post(path, json=payload)
        except _DOWN as e:
            raise self._down(e) from None
        except httpx.TimeoutException as e:
            raise GatewayError(504, f"The model engine did not answer within {self.timeout.read:.0f} s "
                               f"({type(e).__name__}).", "timeout", None, "engine_timeout") from None
        if resp.status_code != 200:
            raise self._engine_error(resp)
        try:
            return resp.json()
        except ValueError:
            raise GatewayError(502, "The model engine returned a body that is not JSON.", "api_error", None,
                               "engine_error") from None

    async def stream(self, path: str, payload: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Streamed call: yields each SSE `data:` chunk as a dict; ends at `[DONE]` or end of body.
        Raises EngineUnavailable if the engine goes away mid-stream."""
        started = False
        try:
            async for chunk in self._stream_once(path, payload):
                started = True
                yield chunk
        except _STALE:
            if started:
                raise self._down(httpx.ReadError("the engine closed the stream mid-answer")) from None
            try:
                async for chunk in self._stream_once(path, payload):  # stale pooled connection: once more
                    yield chunk
            except _STALE as e:
                raise self._down(e) from None

    async def _stream_once(self, path: str, payload: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        try:
            async with self._client.stream("POST", path, json=payload) as resp:
                if resp.status_code != 200:
                    await resp.aread()
                    raise self._engine_error(resp)
                async for line in resp.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    try:
                        chunk = json.loads(data)
                    except ValueError:
                        log.warning("engine sent a stream line that is not JSON: %.200s", data)
                        continue
                    if isinstance(chunk, dict) and "error" in chunk:
                        err = chunk["error"]
                        msg = err.get("message") if isinstance(err, dict) else str(err)
                        raise GatewayError(502, f"The model engine failed mid-stream: {msg}", "api_error",
                                           None, "engine_error")
                    yield chunk
        except _STALE:
            raise
        except _DOWN as e:
            raise self._down(e) from None
        except httpx.TimeoutException as e:
            raise GatewayError(504, f"The model engine stalled mid-stream ({type(e).__name__}).", "timeout",
                               None, "engine_timeout") from None

    async def health(self) -> dict[str, Any]:
        """{"status": "ok"|"down", ...}: GET /health, falling back to /v1/models for plain OpenAI URLs."""
        for path in ("/health", "/v1/models"):
            try:
                resp = await self._client.get(path, timeout=httpx.Timeout(2.0, connect=0.5))
            except (httpx.HTTPError, OSError) as e:
                return {"status": "down", "url": self.display_url,
                        "error": redact(f"{type(e).__name__}: {e}")}
            if resp.status_code == 200:
                return {"status": "ok", "url": self.display_url}
        return {"status": "down", "url": self.display_url, "error": f"HTTP {resp.status_code}"}
