"""Errors the gateway turns into OpenAI-shaped responses: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

import logging
import re
from typing import Any, Optional

_USERINFO = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s?#]+@")  # to the authority's last "@"


def redact(text: str) -> str:
    """`text` with the `user:password@` part of every URL in it masked (for responses and logs)."""
    return _USERINFO.sub(r"\1***@", text)


_redacting = False


def redact_logs() -> None:
    """Mask URL credentials in every log record of this process (the gateway's, the HTTP client's, which
    logs request URLs, uvicorn's), message and traceback, as records are made. Idempotent."""
    global _redacting
    if _redacting:
        return
    _redacting = True
    make = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        try:
            msg = record.getMessage()
        except Exception:  # a malformed record is the logging module's to report, not ours
            return record
        if redact(msg) != msg:
            record.msg, record.args = redact(msg), None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return record

    logging.setLogRecordFactory(factory)


class GatewayError(Exception):
    """A request that fails with a known HTTP status; the message says what was wrong and what to do.
    The message is redacted: an engine URL with credentials in it never reaches a client."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: Optional[str] = None, code: Optional[str] = None):
        message = redact(message)
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str, param: Optional[str] = None, code: Optional[str] = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def bad_request(message: str, param: Optional[str] = None, code: Optional[str] = None) -> GatewayError:
    return GatewayError(400, message, "invalid_request_error", param, code)


def unauthorized(message: str) -> GatewayError:
    return GatewayError(401, message, "authentication_error", None, "invalid_api_key")


def model_not_found(name: str, known: list[str]) -> GatewayError:
    return GatewayError(404, f"The model {name!r} does not exist or you do not have access to it; "
                        f"available: {', '.join(known) or '(none)'}", "invalid_request_error", "model",
                        "model_not_found")


def not_found(message: str) -> GatewayError:
    return GatewayError(404, message, "invalid_request_error", None, "not_found")


def unavailable(message: str) -> GatewayError:
    return GatewayError(503, message, "service_unavailable", None, "engine_unavailable")


class EngineUnavailable(GatewayError):
    """The engine cannot be reached (down, restarting, refusing connections)."""

    def __init__(self, message: str):
        super().__init__(503, message, "service_unavailable", None, "engine_unavailable")


class RetrievalUnavailable(GatewayError):
    def __init__(self, message: str):
        super().__init__(503, message, "service_unavailable", None, "retrieval_unavailable")
