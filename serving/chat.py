"""POST /v1/chat/completions: retrieve for the last user turn, render the RAFT prompt exactly as in
training (raft.prompt.augment_messages), generate, and attach citations."""

from __future__ import annotations

from typing import Any, AsyncIterator, Union

from raft.prompt import augment_messages, message_text
from serving.auth import Principal
from serving.errors import bad_request
from serving.gateway import Gateway
from serving.protocol import ChatCompletionRequest
from serving.streaming import generate


def _delta_text(choice: dict) -> str:
    return (choice.get("delta") or {}).get("content") or ""


def _message_text(choice: dict) -> str:
    return (choice.get("message") or {}).get("content") or ""


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
        chars = sum(len(message_text(m)) for m in messages)
        gw.check_context(await gw.count_tokens(gw.tokens.count_messages, messages, chars),
                         req.max_completion_tokens or req.max_tokens)

        return await generate(gw, "/v1/chat/completions", payload, stream=req.stream, model_name=model.name,
                              hits=hits, stream_text=_delta_text, final_text=_message_text,
                              object_name="chat.completion.chunk", endpoint=self.endpoint, t_start=t_start)
