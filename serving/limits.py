"""Input limits (`serve.limits`), checked before any work is done: the request body size by an ASGI
middleware (before the body is parsed), the retrieval query and the documents by the services (before
anything is embedded, searched or written). Each failure is a 4xx in OpenAI's shape that names the
value, the limit and its config key.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Awaitable, Callable, Optional

from serving.config import LimitsConfig
from serving.errors import GatewayError, bad_request

Send = Callable[[dict], Awaitable[None]]


def too_large(size: int, limit: int) -> GatewayError:
    return GatewayError(413, f"The request body is {size} bytes; this server accepts at most {limit} "
                        "(serve.limits.max_body_bytes). Send fewer or smaller documents per request.",
                        "invalid_request_error", None, "request_too_large")


class BodyLimit:
    """ASGI middleware: a body over the limit is answered 413 without reaching the app. A declared
    Content-Length is refused at once; a chunked body is counted as it arrives and refused as soon as it
    passes the limit. Bodies under the limit are handed to the app unchanged."""

    def __init__(self, app: Any, limit: Callable[[], Optional[int]],
                 rejected: Callable[[str, GatewayError], Any]):
        self.app, self.limit, self.rejected = app, limit, rejected

    async def __call__(self, scope: dict, receive: Callable, send: Send) -> None:
        limit = self.limit() if scope["type"] == "http" else None
        if limit is None:
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await self._reject(scope, send, too_large(declared, limit))
            return
        received: list[dict] = []
        size = 0
        while True:
            message = await receive()
            received.append(message)
            if message["type"] != "http.request":
                break  # the client left: let the app see that
            size += len(message.get("body", b""))
            if size > limit:
                await self._reject(scope, send, too_large(size, limit))
                return
            if not message.get("more_body", False):
                break

        async def replay() -> dict:
            return received.pop(0) if received else await receive()

        await self.app(scope, replay, send)

    async def _reject(self, scope: dict, send: Send, err: GatewayError) -> None:
        self.rejected(scope.get("path", ""), err)
        body = json.dumps(err.body()).encode()
        await send({"type": "http.response.start", "status": err.status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: dict) -> Optional[int]:
    for name, value in scope.get("headers") or ():
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _bad_unicode(text: str) -> Optional[int]:
    """Index of the first lone surrogate (JSON "\\ud800" decodes to one; no encoder or tokenizer takes it)."""
    try:
        text.encode("utf-8")
        return None
    except UnicodeEncodeError as e:
        return e.start


def _preview(value: str, n: int = 60) -> str:
    return repr(value if len(value) <= n else value[:n] + "...")


def check_query(text: str, limits: LimitsConfig, param: str) -> None:
    """The retrieval query: what is embedded and BM25-searched."""
    if len(text) > limits.max_query_chars:
        raise bad_request(f"The retrieval query ({param}) is {len(text)} characters; this server accepts "
                          f"at most {limits.max_query_chars} (serve.limits.max_query_chars). Shorten it, or "
                          "send it with retrieval.enabled=false.", param, "query_too_long")
    at = _bad_unicode(text)
    if at is not None:
        raise bad_request(f"The retrieval query ({param}) is not valid Unicode text: it holds a lone "
                          f"surrogate at character {at}. Send UTF-8 text.", param, "invalid_text")


def check_id(doc_id: str, limits: LimitsConfig, param: str) -> None:
    if len(doc_id) > limits.max_id_chars:
        raise bad_request(f"Document id {_preview(doc_id)} is {len(doc_id)} characters; the most allowed is "
                          f"{limits.max_id_chars} (serve.limits.max_id_chars).", param, "invalid_id")
    if not re.fullmatch(limits.id_pattern, doc_id):
        raise bad_request(f"Document id {_preview(doc_id)} has characters ids may not use; ids must match "
                          f"{limits.id_pattern!r} (serve.limits.id_pattern), e.g. 'report-2024.v1'.",
                          param, "invalid_id")


def check_documents(docs: list[Any], limits: LimitsConfig) -> None:
    """POST /v1/documents: count, ids, text sizes, metadata size, depth and numbers."""
    if len(docs) > limits.max_documents_per_request:
        raise bad_request(f"{len(docs)} documents in one request; this server accepts at most "
                          f"{limits.max_documents_per_request} (serve.limits.max_documents_per_request). "
                          "Split them over several requests.", "documents", "too_many_documents")
    for i, d in enumerate(docs):
        where = f"documents[{i}]"
        check_id(d.id, limits, f"{where}.id")
        for field in ("id", "text", "title", "source"):
            at = _bad_unicode(getattr(d, field))
            if at is not None:
                raise bad_request(f"{where}.{field} is not valid Unicode text: it holds a lone surrogate at "
                                  f"character {at}. Send UTF-8 text.", f"{where}.{field}", "invalid_text")
        if len(d.text) > limits.max_document_chars:
            raise bad_request(f"{where}.text is {len(d.text)} characters; this server accepts at most "
                              f"{limits.max_document_chars} per document (serve.limits.max_document_chars). "
                              "Split the document into parts with their own ids.", f"{where}.text",
                              "document_too_large")
        if not d.text.strip():
            raise bad_request(f"{where}.text is empty or only whitespace: there is nothing to index.",
                              f"{where}.text", "empty_document")
        check_metadata(d.metadata, limits, f"{where}.metadata")


def check_metadata(meta: dict[str, Any], limits: LimitsConfig, param: str) -> None:
    """Finite numbers only (NaN, Infinity and 1e400 are not JSON, and SQLite refuses to read them back),
    valid Unicode, bounded depth and size."""
    stack: list[tuple[Any, str, int]] = [(meta, param, 1)]
    while stack:
        value, path, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > limits.max_metadata_depth:
                raise bad_request(f"{path} nests deeper than {limits.max_metadata_depth} levels "
                                  "(serve.limits.max_metadata_depth); flatten it.", param, "invalid_metadata")
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(key, str) and _bad_unicode(key) is not None:
                    raise bad_request(f"{path} has a key that is not valid Unicode text (a lone surrogate).",
                                      param, "invalid_metadata")
                where = f"{path}.{key}" if isinstance(value, dict) else f"{path}[{key}]"
                stack.append((item, where, depth + 1))
        elif isinstance(value, float) and not math.isfinite(value):
            raise bad_request(f"{path} is {value!r}; metadata numbers must be finite JSON numbers "
                              "(no NaN, Infinity or values beyond 1.8e308).", param, "invalid_metadata")
        elif isinstance(value, str) and _bad_unicode(value) is not None:
            raise bad_request(f"{path} is not valid Unicode text (a lone surrogate).", param,
                              "invalid_metadata")
        elif not isinstance(value, (str, int, float, bool, type(None), dict, list)):
            raise bad_request(f"{path} has type {type(value).__name__}; metadata holds JSON values only.",
                              param, "invalid_metadata")
    size = len(json.dumps(meta, ensure_ascii=False, separators=(",", ":")).encode())
    if size > limits.max_metadata_bytes:
        raise bad_request(f"{param} is {size} bytes as JSON; this server accepts at most "
                          f"{limits.max_metadata_bytes} (serve.limits.max_metadata_bytes).", param,
                          "invalid_metadata")
