"""The HTTP surface: a thin FastAPI router over the services. The same app runs in-process under
uvicorn (`create_app(gateway)`) or as the ingress of a Ray Serve deployment (serving/ray_app.py), where
the gateway is built inside the replica and found through `set_default_gateway`.

Every error leaves in OpenAI's shape; request validation errors are 400 (not FastAPI's 422).
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
from serving.errors import GatewayError, error_body
from serving.gateway import Gateway, server_timing, start_timings
from serving.protocol import (ChatCompletionRequest, CompletionRequest, DeleteResponse, DocumentsRequest,
                              DocumentsResponse, ErrorResponse, ModelCard, ModelList)

log = logging.getLogger("raft.serve")

_DEFAULT: Optional[Gateway] = None
ENDPOINTS = {"/v1/chat/completions": "chat", "/v1/completions": "completions", "/v1/documents": "documents"}

_ERR = {"model": ErrorResponse}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {**_ERR, "description": "Invalid JSON, schema or values; context too long"},
    401: {**_ERR, "description": "Missing or bad API key (when auth is configured)"},
    404: {**_ERR, "description": "Unknown model or document"},
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


def _endpoint(path: str) -> str:
    return "documents" if path.startswith("/v1/documents") else ENDPOINTS.get(path, path.strip("/") or "root")


def _error(request: Request, err: GatewayError) -> JSONResponse:
    gw = getattr(request.app.state, "gateway", None) or _DEFAULT
    if gw is not None:
        gw.metrics.count(_endpoint(request.url.path), err.status)
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

    @app.exception_handler(GatewayError)
    async def _gateway_error(request: Request, exc: GatewayError):
        return _error(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        if first.get("type") == "json_invalid":
            msg = f"The request body is not valid JSON: {first.get('ctx', {}).get('error', first.get('msg'))}"
        else:
            details = "; ".join(f"{'.'.join(str(x) for x in e.get('loc', ()) if x != 'body') or 'body'}: "
                                f"{e.get('msg')}" for e in errors[:5])
            msg = f"Invalid request: {details}"
        return _error(request, GatewayError(400, msg, "invalid_request_error", ".".join(loc) or None, None))

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

    @app.delete("/v1/documents/{doc_id}", response_model=DeleteResponse, responses=ERROR_RESPONSES)
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


def dumps_openapi(app: FastAPI) -> str:
    return json.dumps(app.openapi(), indent=2)
