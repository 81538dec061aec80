"""The engine dies mid-stream: the client gets a clean error (not a hang), the gateway stays up, answers
503 while the engine is away, and serves again once it is back."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from gateway_helpers import free_port, start_fake_engine_process


@pytest.mark.slow
def test_engine_killed_mid_stream_then_restarted(make_gateway):
    port = free_port()
    engine = start_fake_engine_process(port, "--stream-chunks", "40", "--chunk-delay-ms", "100")
    try:
        srv, _ = make_gateway(engine_url=f"http://127.0.0.1:{port}")
        c = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0, timeout=15)
        stream = c.chat.completions.create(model="raft", stream=True,
                                           messages=[{"role": "user", "content": "capital of Veloria"}])
        got = []
        t_kill = None
        with pytest.raises(openai.APIError) as e:
            for chunk in stream:
                got.append(chunk)
                if len(got) == 3:
                    engine.kill()
                    engine.wait(5)
                    t_kill = time.monotonic()
        assert len(got) >= 3 and time.monotonic() - t_kill < 5  # a clean error, quickly
        assert "unavailable" in str(e.value.message) or "engine" in str(e.value.message)

        h = httpx.get(srv.url + "/health", timeout=5)  # the gateway itself is alive
        assert h.status_code == 503 and h.json()["engine"]["status"] == "down"
        t0 = time.monotonic()
        with pytest.raises(openai.APIStatusError) as e:
            c.chat.completions.create(model="raft", messages=[{"role": "user", "content": "x"}])
        assert e.value.status_code == 503 and time.monotonic() - t0 < 1.0

        engine = start_fake_engine_process(port)  # the engine comes back on the same address
        # "back" is what the gateway's own health says; on a loaded box the first connect may lag
        deadline = time.monotonic() + 15
        while httpx.get(srv.url + "/health", timeout=5).status_code != 200:
            assert time.monotonic() < deadline, "the gateway never saw the engine come back"
            time.sleep(0.2)
        r = c.chat.completions.create(model="raft", messages=[{"role": "user", "content": "capital of Veloria"}])
        assert r.model_extra["citations"] and "##begin_quote##" in r.choices[0].message.content
        chunks = list(c.chat.completions.create(model="raft", stream=True,
                                                messages=[{"role": "user", "content": "capital"}]))
        assert chunks[-1].model_extra["citations"]
        assert httpx.get(srv.url + "/health").status_code == 200
    finally:
        engine.kill()
        engine.wait(5)
