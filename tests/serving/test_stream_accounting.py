"""A streamed answer's closing accounting (in-flight gauge, request count, total time) runs exactly once,
however the stream ends: read to the end, or abandoned by the client before or during the first bytes.

The app is driven as raw ASGI so the test decides exactly when the client goes away."""

from __future__ import annotations

import asyncio
import contextlib
import json

from gateway_helpers import DOCS, make_config

from serving.app import create_app
from serving.gateway import Gateway
from serving.testing.memory_retriever import InMemoryRetriever

BODY = json.dumps({"model": "raft", "stream": True,
                   "messages": [{"role": "user", "content": "capital of Veloria"}]}).encode()


def _scope(spec_version: str) -> dict:
    return {"type": "http", "asgi": {"version": "3.0", "spec_version": spec_version}, "http_version": "1.1",
            "method": "POST", "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
            "root_path": "", "query_string": b"", "client": ("127.0.0.1", 50000), "server": ("test", 80),
            "headers": [(b"host", b"test"), (b"content-type", b"application/json"),
                        (b"content-length", str(len(BODY)).encode())]}


def _request_then_disconnect():
    """An ASGI `receive` that delivers the request body once, then reports the client gone."""
    pending = [{"type": "http.request", "body": BODY, "more_body": False}]

    async def receive():
        return pending.pop() if pending else {"type": "http.disconnect"}
    return receive


def _run(fake_engine, client):
    """Build a gateway, let `client(app)` talk to it, return (in-flight, requests by status, sent messages)."""
    async def main():
        gw = Gateway.from_config(make_config(fake_engine.url), fake_engine.url, InMemoryRetriever(DOCS))
        try:
            sent = await client(create_app(gw))
            # read before yielding to the loop: a leaked generator is only closed later, by its finalizer
            reg = gw.metrics.registry
            gauge = reg.get_sample_value("raft_requests_in_flight")
            counts = {s: reg.get_sample_value("raft_requests_total", {"endpoint": "chat", "status": s})
                      for s in ("200", "499")}
            return gauge, {k: v for k, v in counts.items() if v}, sent
        finally:
            await gw.close()
    return asyncio.run(main())


def test_stream_read_to_the_end(fake_engine):
    async def client(app):
        sent, done = [], asyncio.Event()
        pending = [{"type": "http.request", "body": BODY, "more_body": False}]

        async def receive():
            if pending:
                return pending.pop()
            await done.wait()
            return {"type": "http.disconnect"}

        async def send(msg):
            sent.append(msg)
            if msg["type"] == "http.response.body" and not msg.get("more_body"):
                done.set()

        await app(_scope("2.3"), receive, send)
        return sent

    gauge, counts, sent = _run(fake_engine, client)
    assert sent[0]["status"] == 200 and b"[DONE]" in b"".join(m.get("body", b"") for m in sent)
    assert gauge == 0 and counts == {"200": 1}


def test_client_gone_before_the_first_byte(fake_engine):
    # ASGI < 2.4: Starlette races the body against a disconnect listener; a disconnect that is already
    # there cancels the body task before the relay generator ever starts, so its `finally` never runs
    async def client(app):
        sent = []

        async def send(msg):
            sent.append(msg)
            await asyncio.sleep(0)

        await app(_scope("2.3"), _request_then_disconnect(), send)
        return sent

    gauge, counts, sent = _run(fake_engine, client)
    assert not any(m.get("body") for m in sent)  # really nothing of the answer went out
    assert gauge == 0 and counts == {"499": 1}


def test_client_gone_mid_stream(fake_engine):
    # ASGI >= 2.4: a send to a closed connection raises OSError; the relay is left suspended at a yield
    async def client(app):
        sent = []

        async def send(msg):
            if msg["type"] == "http.response.body" and len(sent) >= 2:
                raise OSError("connection reset by peer")
            sent.append(msg)

        with contextlib.suppress(Exception):
            await app(_scope("2.4"), _request_then_disconnect(), send)
        return sent

    gauge, counts, sent = _run(fake_engine, client)
    assert len(sent) == 2 and sent[1]["body"].startswith(b"data: ")
    assert gauge == 0 and counts == {"499": 1}
