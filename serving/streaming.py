"""Relaying an engine's SSE stream to the client: rename the model, collect the answer text, and close
with one extra chunk that carries the citations, then `data: [DONE]`.

The first engine chunk is awaited before the HTTP response starts (`open_stream`), so an engine that is
down yields a real 503 status; a failure after that (the engine dies mid-answer) becomes an OpenAI error
event, which the official client raises as APIError, and the gateway carries on serving.

The request's closing accounting (status count, total time, the in-flight gauge `_serve` raised) cannot
live only in a generator's `finally`: a client that leaves before the first byte means the generator never
starts, so that `finally` never runs, and one that leaves mid-stream leaves it suspended until garbage
collection. So the body is a `Relay` whose `aclose()` the response always calls, and `finish()` counts once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, AsyncIterator, Callable, Optional, Sequence

from serving.citations import build_citations
from serving.errors import GatewayError, error_body
from serving.gateway import note_timing

log = logging.getLogger("raft.serve")


def sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"
CLIENT_CLOSED = 499  # nginx's "client closed request": the client left before the stream ended


async def open_stream(agen: AsyncIterator[dict]) -> Optional[dict]:
    """The first chunk (None for an empty stream); errors surface here as normal HTTP errors."""
    try:
        return await agen.__anext__()
    except StopAsyncIteration:
        return None


class Relay:
    """The SSE body of one streamed answer (a StreamingResponse's iterator) and its closing accounting."""

    def __init__(self, gw: Any, agen: AsyncIterator[dict], first: Optional[dict], *, model_name: str,
                 hits: Sequence[Any], text_of: Callable[[dict], str], object_name: str, endpoint: str,
                 t_start: float, t_gen: float) -> None:
        self._gw, self._agen, self._endpoint, self._t_start = gw, agen, endpoint, t_start
        self._finished = False
        self._body = self._events(first, model_name, hits, text_of, object_name, t_gen)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._body

    async def aclose(self) -> None:
        """However the response ended; a no-op once the stream has finished on its own."""
        try:
            await self._body.aclose()  # a body suspended mid-stream finishes with its own status
        finally:
            await self.finish(CLIENT_CLOSED)  # a body that never started

    async def finish(self, status: int) -> None:
        if self._finished:
            return
        self._finished = True
        # count before awaiting anything: a cancelled task may not get past its next await
        gw = self._gw
        gw.metrics.count(self._endpoint, status)
        gw.metrics.observe("total", time.perf_counter() - self._t_start)
        gw.metrics.in_flight.dec()
        await self._agen.aclose()  # stop the engine's generation for a client that left

    async def _events(self, first: Optional[dict], model_name: str, hits: Sequence[Any],
                      text_of: Callable[[dict], str], object_name: str, t_gen: float) -> AsyncIterator[bytes]:
        gw, agen, endpoint = self._gw, self._agen, self._endpoint
        parts: list[str] = []
        last: dict = first or {}
        status = 200
        try:
            chunk = first
            while chunk is not None:
                chunk["model"] = model_name
                for choice in chunk.get("choices") or []:
                    parts.append(text_of(choice))
                last = chunk
                yield sse(chunk)
                try:
                    chunk = await agen.__anext__()
                except StopAsyncIteration:
                    chunk = None
            gw.metrics.observe("generation", time.perf_counter() - t_gen)
            yield sse({"id": last.get("id", ""), "object": object_name,
                       "created": last.get("created", int(time.time())), "model": model_name, "choices": [],
                       "citations": build_citations(hits, "".join(parts))})
            yield DONE
        except (GeneratorExit, asyncio.CancelledError):
            status = CLIENT_CLOSED
            raise
        except GatewayError as e:
            status = e.status
            log.warning("%s: stream ended by an error: %s", endpoint, e.message)
            yield sse(e.body())
        except Exception as e:  # never leave a client hanging on a half-open stream
            status = 500
            log.exception("%s: stream failed", endpoint)
            yield sse(error_body(f"The stream failed: {type(e).__name__}", "api_error", None, "stream_error"))
        finally:
            await self.finish(status)


async def generate(gw: Any, path: str, payload: dict, *, stream: bool, model_name: str, hits: Sequence,
                   stream_text: Callable[[dict], str], final_text: Callable[[dict], str], object_name: str,
                   endpoint: str, t_start: float) -> Any:
    """Send the rendered request to the engine; relay the stream, or return the body with citations.

    Shared by chat and completions: only the path, the payload and where the answer text sits differ.
    """
    t_gen = time.perf_counter()
    if stream:
        agen = gw.engine.stream(path, payload)
        first = await open_stream(agen)
        return Relay(gw, agen, first, model_name=model_name, hits=hits, text_of=stream_text,
                     object_name=object_name, endpoint=endpoint, t_start=t_start, t_gen=t_gen)
    resp = await gw.engine.post(path, payload)
    gw.metrics.observe("generation", time.perf_counter() - t_gen)
    note_timing("generation", time.perf_counter() - t_gen)
    resp["model"] = model_name
    resp["citations"] = build_citations(hits, "\n".join(final_text(c) for c in resp.get("choices") or []))
    return resp
