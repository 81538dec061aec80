"""Relaying an engine's SSE stream to the client: rename the model, collect the answer text, and close
with one extra chunk that carries the citations, then `data: [DONE]`.

The first engine chunk is awaited before the HTTP response starts (`open_stream`), so an engine that is
down yields a real 503 status; a failure after that (the engine dies mid-answer) becomes an OpenAI error
event, which the official client raises as APIError, and the gateway carries on serving.
"""

from __future__ import annotations

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


async def open_stream(agen: AsyncIterator[dict]) -> Optional[dict]:
    """The first chunk (None for an empty stream); errors surface here as normal HTTP errors."""
    try:
        return await agen.__anext__()
    except StopAsyncIteration:
        return None


async def relay(gw: Any, agen: AsyncIterator[dict], first: Optional[dict], *, model_name: str,
                hits: Sequence[Any], text_of: Callable[[dict], str], object_name: str, endpoint: str,
                t_start: float, t_gen: float) -> AsyncIterator[bytes]:
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
        yield sse({"id": last.get("id", ""), "object": object_name, "created": last.get("created", int(time.time())),
                   "model": model_name, "choices": [], "citations": build_citations(hits, "".join(parts))})
        yield DONE
    except GatewayError as e:
        status = e.status
        log.warning("%s: stream ended by an error: %s", endpoint, e.message)
        yield sse(e.body())
    except Exception as e:  # never leave a client hanging on a half-open stream
        status = 500
        log.exception("%s: stream failed", endpoint)
        yield sse(error_body(f"The stream failed: {type(e).__name__}", "api_error", None, "stream_error"))
    finally:
        await agen.aclose()
        gw.metrics.count(endpoint, status)
        gw.metrics.observe("total", time.perf_counter() - t_start)
        gw.metrics.in_flight.dec()


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
        return relay(gw, agen, first, model_name=model_name, hits=hits, text_of=stream_text,
                     object_name=object_name, endpoint=endpoint, t_start=t_start, t_gen=t_gen)
    resp = await gw.engine.post(path, payload)
    gw.metrics.observe("generation", time.perf_counter() - t_gen)
    note_timing("generation", time.perf_counter() - t_gen)
    resp["model"] = model_name
    resp["citations"] = build_citations(hits, "\n".join(final_text(c) for c in resp.get("choices") or []))
    return resp
