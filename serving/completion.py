"""POST /v1/completions: with retrieval on, the prompt is the question and the engine receives
raft.prompt.completion_prompt(question, retrieved chunks), the text completion-style training used."""

from __future__ import annotations

from typing import Any, AsyncIterator, Union

from raft.prompt import completion_prompt
from serving.auth import Principal
from serving.errors import bad_request
from serving.gateway import Gateway
from serving.protocol import CompletionRequest
from serving.streaming import generate


def _choice_text(choice: dict) -> str:
    return choice.get("text") or ""


class CompletionService:
    endpoint = "completions"

    def __init__(self, gw: Gateway):
        self.gw = gw

    async def create(self, req: CompletionRequest, who: Principal,
                     t_start: float) -> Union[dict[str, Any], AsyncIterator[bytes]]:
        gw = self.gw
        model = gw.resolve_model(who, req.model)
        prompt = req.prompt
        hits: list = []
        if gw.retrieval_wanted(model, req.retrieval):
            if isinstance(prompt, list):
                if len(prompt) != 1:
                    raise bad_request(f"With retrieval on, `prompt` must be one question; got a list of "
                                      f"{len(prompt)}. Send one request per question, or set "
                                      f"retrieval.enabled=false.", "prompt")
                prompt = prompt[0]
            if not prompt.strip():
                raise bad_request("Retrieval needs a question: `prompt` is empty.", "prompt")
            hits = await gw.retrieve(who, prompt, req.retrieval, "prompt")
            prompt = completion_prompt(prompt, [h.chunk for h in hits])
        texts = prompt if isinstance(prompt, list) else [prompt]

        def longest(ts: list[str]) -> int:
            return max((gw.tokens.count(t) for t in ts), default=0)

        gw.check_context(await gw.count_tokens(longest, texts, sum(map(len, texts))), req.max_tokens)
        payload = gw.forward_fields(req, self.endpoint)
        payload.update(model=model.engine_model, prompt=prompt, stream=req.stream)

        return await generate(gw, "/v1/completions", payload, stream=req.stream, model_name=model.name,
                              hits=hits, stream_text=_choice_text, final_text=_choice_text,
                              object_name="text_completion", endpoint=self.endpoint, t_start=t_start)
