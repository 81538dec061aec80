"""POST /v1/chat/completions: retrieve for the last user turn, render the RAFT prompt exactly as in
training (raft.prompt.augment_messages), generate, and attach citations."""

from __future__ import annotations

import time
from typing import Any, AsyncIterator, Union

from raft.prompt import augment_messages, message_text
from serving.auth import Principal
from serving.citations import build_citations
from serving.errors import bad_request
from serving.gateway import Gateway, note_timing
from serving.protocol import ChatCompletionRequest
from serving.streaming import open_stream, relay


def _delta_text(choice: dict) -> str:
    return (choice.get("delta") or {}).get("content") or ""


class ChatService:
    endpoint = "chat"

    def __init__(self, gw: Gateway):
        self.gw = gw

    async def create(self, req: ChatCompletionRequest, who: Principal,
                     t_start: float) -> Union[dict[str, Any], AsyncIterator[bytes]]:
        gw = self.gw
        model = gw.resolve_model(who, req.model)
        messages = [m.model_dump(exclude_none=True) for m in req.messages]
        hits: list = []
        if gw.retrieval_wanted(model, req.retrieval):
            users = [m for m in messages if m["role"] == "user"]
            if not users or not message_text(users[-1]).strip():
                raise bad_request("Retrieval needs a question: the last user message is missing or empty.",
                                  "messages")
            hits = await gw.retrieve(who, message_text(users[-1]), req.retrieval)
            messages = augment_messages(messages, [h.chunk for h in hits])
        payload = gw.forward_fields(req, self.endpoint)
        payload.update(model=model.engine_model, messages=messages, stream=req.stream)
        gw.check_context(gw.tokens.count_messages(messages), req.max_completion_tokens or req.max_tokens)

        t_gen = time.perf_counter()
        if req.stream:
            agen = gw.engine.stream("/v1/chat/completions", payload)
            first = await open_stream(agen)
            return relay(gw, agen, first, model_name=model.name, hits=hits, text_of=_delta_text,
                         object_name="chat.completion.chunk", endpoint=self.endpoint,
                         t_start=t_start, t_gen=t_gen)
        resp = await gw.engine.post("/v1/chat/completions", payload)
        gw.metrics.observe("generation", time.perf_counter() - t_gen)
        note_timing("generation", time.perf_counter() - t_gen)
        resp["model"] = model.name
        answer = "\n".join(((c.get("message") or {}).get("content") or "") for c in resp.get("choices") or [])
        resp["citations"] = build_citations(hits, answer)
        return resp
