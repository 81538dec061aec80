"""The batched engine's HTTP surface: the OpenAI routes the gateway and `raft eval` use, over a MicroBatcher.

    python -m serving.batched MODEL_DIR --port 8001 [--device cpu] [--max-batch 8] [--batch-wait-ms 20]

Routes: GET /health, GET /v1/models, POST /v1/chat/completions, POST /v1/completions. One model per engine;
a request may name it by any of its served names or by its path. `stream: true` is accepted and answered as
one content chunk followed by `[DONE]`: the text is generated in a batch, so there is nothing to send earlier.
`n` > 1 is a 400; `tools` and `logprobs` are ignored. A request without `temperature` is decoded greedily
(OpenAI's default is 1.0): answers are then reproducible, which is what evaluation needs.

`--quote-guard` keeps every ##begin_quote## span of an answer inside the documents of its prompt
(serving/batched/quote_guard.py); a request's extension field `quote_guard` (true or false) overrides it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse

from serving.batched.batcher import MicroBatcher
from serving.batched.generator import BatchGenerator, GenRequest, GenResult, warm_up
from serving.protocol import ChatCompletionRequest, CompletionRequest, completion_id

log = logging.getLogger("raft.batched")

DEFAULT_MAX_TOKENS = 256


def _error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)


def _same_path(a: str, b: str) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def create_app(gen: BatchGenerator, batcher: MicroBatcher, names: list[str], quote_guard: bool = False) -> FastAPI:
    app = FastAPI(title="raft batched engine")
    served = names or [gen.path]

    def check_model(name: str) -> Optional[JSONResponse]:
        if name in served or _same_path(name, gen.path):
            return None
        return _error(404, f"model {name!r} is not served by this engine; it serves {served} "
                           f"(or its path {gen.path})", "not_found_error")

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", []) if p != "body")
        return _error(400, f"{where}: {first.get('msg', 'invalid request')}")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        s = batcher.stats
        return {"status": "ok", "model": served[0], "requests": s.requests, "batches": s.batches,
                "mean_batch": round(s.mean_batch, 2), "generated_tokens": s.generated_tokens,
                "busy_s": round(s.busy_s, 2),
                "threads": gen.threads.threads if gen.threads is not None else None}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        now = int(time.time())
        return {"object": "list", "data": [{"id": n, "object": "model", "created": now, "owned_by": "raft"}
                                           for n in served]}

    def unsupported(req) -> Optional[JSONResponse]:
        if (req.n or 1) > 1:
            return _error(400, f"n={req.n}: this engine returns one choice per request; send n requests")
        guard = (req.model_extra or {}).get("quote_guard")
        if guard is not None and not isinstance(guard, bool):
            return _error(400, f"quote_guard: {guard!r} is not a boolean; send true or false")
        return None

    async def run(req, gen_req: GenRequest, kind: str):
        if (bad := check_model(req.model) or unsupported(req)) is not None:
            return bad
        if gen.max_len and gen.count_prompt_tokens(gen_req) + gen_req.max_tokens > gen.max_len:
            return _error(400, f"prompt plus max_tokens ({gen_req.max_tokens}) exceeds the model's context of "
                               f"{gen.max_len} tokens; shorten the prompt or lower max_tokens")
        t0 = time.time()
        try:
            result = await batcher.submit(gen_req)
        except Exception as e:  # the batch this request was in failed: say why, and log it for the operator
            log.error("generation failed for a batch", exc_info=e)
            return _error(500, f"generation failed: {type(e).__name__}: {e}", "internal_error")
        body = _response(kind, req.model, result, int(t0))
        if not req.stream:
            return body
        return StreamingResponse(_as_stream(kind, body), media_type="text/event-stream")

    @app.post("/v1/chat/completions")
    async def chat(req: ChatCompletionRequest):
        messages = [m.model_dump(exclude_none=True) for m in req.messages]
        max_tokens = req.max_completion_tokens or req.max_tokens or DEFAULT_MAX_TOKENS
        return await run(req, _gen_request(req, max_tokens, quote_guard, messages=messages), "chat")

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest):
        if isinstance(req.prompt, list):
            if len(req.prompt) != 1:
                return _error(400, f"prompt is a list of {len(req.prompt)} strings; send one prompt per request")
            prompt = req.prompt[0]
        else:
            prompt = req.prompt
        return await run(req, _gen_request(req, req.max_tokens or 16, quote_guard, prompt=prompt), "text")

    return app


def _gen_request(req, max_tokens: int, quote_guard: bool, **what) -> GenRequest:
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    guard = (req.model_extra or {}).get("quote_guard")
    return GenRequest(max_tokens=max_tokens, temperature=req.temperature or 0.0,
                      top_p=1.0 if req.top_p is None else req.top_p, stop=stop, seed=req.seed,
                      quote_guard=quote_guard if guard is None else bool(guard), **what)


def _response(kind: str, model: str, r: GenResult, created: int) -> dict[str, Any]:
    usage = {"prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
             "total_tokens": r.prompt_tokens + r.completion_tokens}
    if kind == "chat":
        choice = {"index": 0, "message": {"role": "assistant", "content": r.text},
                  "finish_reason": r.finish_reason}
        return {"id": completion_id("chatcmpl"), "object": "chat.completion", "created": created, "model": model,
                "choices": [choice], "usage": usage}
    choice = {"index": 0, "text": r.text, "finish_reason": r.finish_reason, "logprobs": None}
    return {"id": completion_id("cmpl"), "object": "text_completion", "created": created, "model": model,
            "choices": [choice], "usage": usage}


async def _as_stream(kind: str, body: dict[str, Any]):
    choice = body["choices"][0]
    if kind == "chat":
        delta = {"index": 0, "delta": {"role": "assistant", "content": choice["message"]["content"]},
                 "finish_reason": None}
        last = {"index": 0, "delta": {}, "finish_reason": choice["finish_reason"]}
        obj = "chat.completion.chunk"
    else:
        delta = {"index": 0, "text": choice["text"], "finish_reason": None}
        last = {"index": 0, "text": "", "finish_reason": choice["finish_reason"]}
        obj = "text_completion"
    head = {k: body[k] for k in ("id", "created", "model")}
    for c in (delta, last):
        yield f"data: {json.dumps({**head, 'object': obj, 'choices': [c]})}\n\n"
    yield f"data: {json.dumps({**head, 'object': obj, 'choices': [], 'usage': body['usage']})}\n\n"
    yield "data: [DONE]\n\n"


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m serving.batched", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="model directory (a merged `raft export --merge` output or any HF causal LM), "
                                 "or a name raft resolves, e.g. smollm2-135m-instruct")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8001, help="port to listen on (default: 8001)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:0, ... (default: cpu)")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="weights' dtype (auto: fp32 on a CPU, the checkpoint's dtype elsewhere)")
    p.add_argument("--max-batch", type=int, default=8, help="most requests generated together (default: 8)")
    p.add_argument("--batch-wait-ms", type=float, default=20.0,
                   help="how long the first request of a batch waits for others to join (default: 20)")
    p.add_argument("--threads", type=_threads, default=None,
                   help="torch CPU threads, or 'auto': per batch, as many as the cores the last batch found free "
                   "(two engines sharing a host then take one each while both are busy; default: torch's choice)")
    p.add_argument("--served-model-name", action="append", default=[],
                   help="a name clients may use for the model (repeatable; default: the model argument)")
    p.add_argument("--quote-guard", action="store_true",
                   help="keep the quotes of answers inside the documents of their prompts (a request's "
                   "`quote_guard` field overrides this default)")
    p.add_argument("--exit-with-parent", action="store_true",
                   help="shut down when the process that started this engine dies (raft serve and the "
                   "quickstart pass it: a killed gateway must not leave a model in memory)")
    return p.parse_args(argv)


def _threads(v: str) -> int | str:
    if v == "auto":
        return v
    try:
        n = int(v)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{v!r} is neither a positive number of threads nor 'auto'")
    return n


def exit_with_parent(poll_s: float = 1.0, grace_s: float = 15.0) -> threading.Thread:
    """Watch the parent: when it dies, this process is re-parented (its parent pid changes), and the engine
    stops as on Ctrl-C (SIGINT: uvicorn drains and exits), then for good after `grace_s`. Polling, unlike
    PR_SET_PDEATHSIG, does not fire when merely the thread that started the engine ends."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        log.warning("parent process %d is gone: shutting down", parent)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(grace_s)
        os._exit(1)

    t = threading.Thread(target=watch, name="exit-with-parent", daemon=True)
    t.start()
    return t


def main(argv: Optional[list[str]] = None) -> None:
    import uvicorn

    from raft.model_source import resolve_model

    args = parse_args(argv)
    if args.max_batch < 1:
        raise SystemExit(f"--max-batch must be at least 1, got {args.max_batch}")
    if args.exit_with_parent:
        exit_with_parent()  # from the start: a parent killed while the model loads leaves nothing either
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    path = resolve_model(args.model, log=log.info)
    gen = BatchGenerator(path, device=args.device, dtype=args.dtype, threads=args.threads)
    log.info("warm-up generation took %.1f s", warm_up(gen, quote_guard=args.quote_guard))
    batcher = MicroBatcher(gen.generate, max_batch=args.max_batch, max_wait_s=args.batch_wait_ms / 1000)
    names = args.served_model_name or [args.model]
    app = create_app(gen, batcher, names + [n for n in (str(path),) if n not in names], quote_guard=args.quote_guard)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=os.environ.get("RAFT_ENGINE_LOG", "warning"))
    finally:
        batcher.close()
