"""The HTTP surface: a thin FastAPI router over the services. The same app runs in-process under
uvicorn (`create_app(gateway)`) or as the ingress of a Ray Serve deployment (serving/ray_app.py), where
the gateway is built inside the replica and found through `set_default_gateway`.

Every error leaves in OpenAI's shape; request validation errors are 400 (not FastAPI's 422), a body over
serve.limits.max_body_bytes is 413 before it is parsed (serving/limits.py).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Awaitable, Callable, Optional

from fastapi import Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.auth import Principal
from serving.chat import ChatService
from serving.completion import CompletionService
from serving.documents import DocumentService
from serving.errors import GatewayError
from serving.gateway import Gateway, server_timing, start_timings
from serving.limits import BodyLimit
from serving.metrics import endpoint_label
from serving.protocol import (ChatCompletionRequest, CompletionRequest, DeleteResponse, DocumentsRequest,
                              DocumentsResponse, ErrorResponse, ModelCard, ModelList)

log = logging.getLogger("raft.serve")

_DEFAULT: Optional[Gateway] = None

_ERR = {"model": ErrorResponse}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {**_ERR, "description": "Invalid JSON, schema or values; over a serve.limits limit; context too "
                                 "long"},
    401: {**_ERR, "description": "Missing or bad API key (when auth is configured)"},
    404: {**_ERR, "description": "Unknown model or document"},
    413: {**_ERR, "description": "Request body over serve.limits.max_body_bytes"},
    503: {**_ERR, "description": "Engine or retrieval unavailable; retry"},
}


# Longer than any client's idle-connection expiry (httpx/openai: 5 s): a server that closes an idle
# keep-alive connection just as a client reuses it makes that request fail with a read error.
KEEP_ALIVE_S = 30


def set_default_gateway(gw: Optional[Gateway]) -> None:
    """The gateway an app without its own (`app.state.gateway`) uses: how a Ray Serve replica plugs in."""
    global _DEFAULT
    _DEFAULT = gw


def get_gateway(request: Request) -> Gateway:
    gw = getattr(request.app.state, "gateway", None) or _DEFAULT
    if gw is None:
        raise GatewayError(503, "The gateway is starting; retry shortly.", "service_unavailable", None,
                           "starting")
    return gw


def principal(request: Request, authorization: Optional[str] = Header(None, include_in_schema=False)) -> Principal:
    return get_gateway(request).auth.authenticate(authorization)


def _current(app: Any) -> Optional[Gateway]:
    return getattr(app.state, "gateway", None) or _DEFAULT


def _error(request: Request, err: GatewayError) -> JSONResponse:
    gw = _current(request.app)
    if gw is not None:
        gw.metrics.count(endpoint_label(request.url.path), err.status)
    headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


class _RelayResponse(StreamingResponse):
    """Closes its body (a streaming.Relay) however the response ends, even when the body never started."""

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()


async def _serve(request: Request, gw: Gateway, endpoint: str,
                 call: Callable[[float], Awaitable[Any]]) -> Response:
    """Run one request: count it, time it, stream or not. Streams finish their accounting in Relay.finish()."""
    t0 = time.perf_counter()
    gw.metrics.in_flight.inc()
    streaming = False
    timings = start_timings()
    try:
        result = await call(t0)
        if isinstance(result, dict):
            gw.metrics.count(endpoint, 200)
            timings["total"] = time.perf_counter() - t0
            return JSONResponse(result, headers={"Server-Timing": server_timing(timings)})
        streaming = True
        return _RelayResponse(result, media_type="text/event-stream",
                              headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    except GatewayError as e:
        gw.metrics.count(endpoint, e.status)
        return JSONResponse(e.body(), status_code=e.status)
    finally:
        if not streaming:
            gw.metrics.in_flight.dec()
            gw.metrics.observe("total", time.perf_counter() - t0)


def create_app(gateway: Optional[Gateway] = None) -> FastAPI:
    app = FastAPI(title="RAFT gateway", version="1.0",
                  description="OpenAI-compatible chat and completions with retrieval and citations.")
    app.state.gateway = gateway

    def body_limit() -> Optional[int]:
        gw = _current(app)
        return gw.cfg.limits.max_body_bytes if gw is not None else None

    def rejected(path: str, err: GatewayError) -> None:
        gw = _current(app)
        if gw is not None:
            gw.metrics.count(endpoint_label(path), err.status)

    app.add_middleware(BodyLimit, limit=body_limit, rejected=rejected)

    @app.exception_handler(GatewayError)
    async def _gateway_error(request: Request, exc: GatewayError):
        return _error(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        if first.get("type") == "json_invalid":
            why = first.get("ctx", {}).get("error", first.get("msg"))
            where = _line_column(exc.body, first.get("loc", ()))
            return _error(request, GatewayError(400, f"The request body is not valid JSON: {why}{where}.",
                                                "invalid_request_error", None, "invalid_json"))
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        details = "; ".join(f"{'.'.join(str(x) for x in e.get('loc', ()) if x != 'body') or 'body'}: "
                            f"{e.get('msg')}{_given(e)}" for e in errors[:5])
        return _error(request, GatewayError(400, f"Invalid request: {details}", "invalid_request_error",
                                            ".".join(loc) or None, None))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        # routing errors (unknown path, wrong method) in OpenAI's shape too
        kind = "not_found" if exc.status_code == 404 else None
        return _error(request, GatewayError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}",
                                            "invalid_request_error", None, kind))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unexpected error on %s", request.url.path)
        return _error(request, GatewayError(500, f"Internal error ({type(exc).__name__}); see the gateway log.",
                                            "api_error", None, "internal_error"))

    @app.post("/v1/chat/completions", responses=ERROR_RESPONSES)
    async def chat_completions(req: ChatCompletionRequest, request: Request,
                               who: Principal = Depends(principal)) -> Response:
        gw = get_gateway(request)
        return await _serve(request, gw, "chat", lambda t0: ChatService(gw).create(req, who, t0))

    @app.post("/v1/completions", responses=ERROR_RESPONSES)
    async def completions(req: CompletionRequest, request: Request,
                          who: Principal = Depends(principal)) -> Response:
        gw = get_gateway(request)
        return await _serve(request, gw, "completions", lambda t0: CompletionService(gw).create(req, who, t0))

    @app.get("/v1/models", response_model=ModelList, responses={401: ERROR_RESPONSES[401]})
    async def models(request: Request, who: Principal = Depends(principal)):
        gw = get_gateway(request)
        gw.metrics.count("models", 200)
        return ModelList(data=[ModelCard(id=m.name, parent=m.parent, retrieval=m.retrieval)
                               for m in gw.visible_models(who)])

    @app.post("/v1/documents", response_model=DocumentsResponse, responses=ERROR_RESPONSES)
    async def add_documents(req: DocumentsRequest, request: Request, who: Principal = Depends(principal)):
        gw = get_gateway(request)
        return await _serve(request, gw, "documents", lambda t0: DocumentService(gw).add(req, who))

    # `:path`: an id with an (encoded) slash, e.g. one indexed offline from a sub-folder, still reaches the
    # handler, which answers in OpenAI's shape instead of a routing 404
    @app.delete("/v1/documents/{doc_id:path}", response_model=DeleteResponse, responses=ERROR_RESPONSES)
    async def delete_document(doc_id: str, request: Request, who: Principal = Depends(principal)):
        gw = get_gateway(request)
        return await _serve(request, gw, "documents", lambda t0: DocumentService(gw).delete(doc_id, who))

    @app.get("/health", responses={503: {"description": "Engine or index down (body says which)"}})
    async def health(request: Request):
        state = await get_gateway(request).health()
        return JSONResponse(state, status_code=200 if state["status"] == "ok" else 503)

    @app.get("/metrics", include_in_schema=True)
    async def metrics(request: Request):
        body, ctype = get_gateway(request).metrics.render()
        return Response(body, media_type=ctype)

    return app


def _line_column(body: Any, loc: tuple) -> str:
    """' at line L, column C' for the character offset FastAPI reports in `loc` (a bare offset would be
    read as a parameter name)."""
    pos = next((x for x in loc if isinstance(x, int)), None)
    if pos is None or not isinstance(body, (str, bytes)):
        return ""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    line = text.count("\n", 0, pos) + 1
    return f" at line {line}, column {pos - (text.rfind(chr(10), 0, pos) + 1) + 1}"


def _given(err: dict) -> str:
    """The rejected value, shortened, so the client sees what it sent."""
    value = err.get("input")
    if isinstance(value, (dict, list)) or err.get("type") == "missing":
        return ""
    text = repr(value)
    return f" (got {text[:60] + '...' if len(text) > 60 else text})"


def dumps_openapi(app: FastAPI) -> str:
    return json.dumps(app.openapi(), indent=2)
