"""Requests generated from the gateway's own OpenAPI schema (schemathesis; valid and malformed):
never a 5xx other than the documented 503, and every error in OpenAI's shape."""

from __future__ import annotations

import atexit

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode

from gateway_helpers import DOCS, ServerThread, make_config
from serving.app import create_app
from serving.testing.fake_engine import create_engine_app
from serving.gateway import Gateway
from serving.testing.memory_retriever import InMemoryRetriever

_engine = ServerThread(create_engine_app()).start()
atexit.register(_engine.stop)
_gateway = Gateway.from_config(make_config(_engine.url), _engine.url, InMemoryRetriever(DOCS))
app = create_app(_gateway)

schema = schemathesis.openapi.from_asgi("/openapi.json", app)
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE])


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_5xx_except_503(case):
    response = case.call()
    assert response.status_code < 500 or response.status_code == 503, (case.method, case.path, response.text)
    if response.status_code >= 400 and case.path != "/health":
        err = response.json().get("error", response.text)
        assert set(err) == {"message", "type", "param", "code"} and err["message"]
