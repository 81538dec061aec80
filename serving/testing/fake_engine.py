"""A fast fake OpenAI engine for tests and the overhead benchmark: no model, a fixed answer that quotes
the first shown document (so citations carry a quote), an optional delay standing in for generation
time, and the last request body kept for inspection (GET /_last).

    python -m serving.testing.fake_engine --port 8101 --delay-ms 50
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
import uuid

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from raft.prompt import prompt_documents

def answer_for(text: str) -> str:
    """A RAFT-shaped answer quoting the first sentence of the first shown document."""
    docs = prompt_documents(text)
    if not docs:
        return "I have no documents to quote.\n<ANSWER>: unknown"
    sentence = re.split(r"(?<=[.!?])\s", docs[0].strip(), maxsplit=1)[0]
    return f"The document says ##begin_quote##{sentence}##end_quote##\n<ANSWER>: {sentence[:40]}"


def create_engine_app(delay_s: float = 0.0, stream_chunks: int = 4, chunk_delay_s: float = 0.0,
                      model: str = "fake-model") -> Starlette:
    state: dict = {"last": None, "count": 0}

    async def health(request: Request):
        return JSONResponse({"status": "ok"})

    async def models(request: Request):
        return JSONResponse({"object": "list", "data": [{"id": model, "object": "model", "owned_by": "fake"}]})

    async def last(request: Request):
        return Response(state["last"] or b"null", media_type="application/json")

    async def generate(request: Request):
        raw = await request.body()
        state["last"], state["count"] = raw, state["count"] + 1
        body = json.loads(raw)
        chat = "messages" in body
        prompt = "".join(str(m.get("content") or "") for m in body["messages"]) if chat else str(body.get("prompt"))
        text = answer_for(prompt)
        if delay_s:
            await asyncio.sleep(delay_s)
        rid, created = f"fake-{uuid.uuid4().hex[:12]}", int(time.time())
        obj = "chat.completion" if chat else "text_completion"
        usage = {"prompt_tokens": len(prompt) // 4, "completion_tokens": len(text) // 4,
                 "total_tokens": (len(prompt) + len(text)) // 4}
        if not body.get("stream"):
            choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                      if chat else {"index": 0, "text": text, "finish_reason": "stop"})
            return JSONResponse({"id": rid, "object": obj, "created": created, "model": body.get("model"),
                                 "choices": [choice], "usage": usage})

        async def events():
            n = max(1, stream_chunks)
            step = -(-len(text) // n)
            for i in range(0, len(text), step):
                piece = text[i:i + step]
                choice = ({"index": 0, "delta": {"content": piece}, "finish_reason": None} if chat
                          else {"index": 0, "text": piece, "finish_reason": None})
                chunk = {"id": rid, "object": obj + (".chunk" if chat else ""), "created": created,
                         "model": body.get("model"), "choices": [choice]}
                yield f"data: {json.dumps(chunk)}\n\n"
                if chunk_delay_s:
                    await asyncio.sleep(chunk_delay_s)
            end = ({"index": 0, "delta": {}, "finish_reason": "stop"} if chat
                   else {"index": 0, "text": "", "finish_reason": "stop"})
            yield f"data: {json.dumps({'id': rid, 'object': obj + ('.chunk' if chat else ''), 'created': created, 'model': body.get('model'), 'choices': [end]})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    app = Starlette(routes=[
        Route("/health", health), Route("/v1/models", models), Route("/_last", last),
        Route("/v1/chat/completions", generate, methods=["POST"]),
        Route("/v1/completions", generate, methods=["POST"]),
    ])
    app.state.engine = state
    return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8101)
    p.add_argument("--delay-ms", type=float, default=0.0, help="time per answer, standing in for generation")
    p.add_argument("--stream-chunks", type=int, default=4)
    p.add_argument("--chunk-delay-ms", type=float, default=0.0)
    a = p.parse_args()
    import uvicorn

    uvicorn.run(create_engine_app(a.delay_ms / 1000, a.stream_chunks, a.chunk_delay_ms / 1000),
                host=a.host, port=a.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
