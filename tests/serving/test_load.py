"""Bounded load: many requests at concurrency 64 through the gateway to a fast fake engine, zero errors.
The count is RAFT_SERVE_LOAD_REQUESTS (default 1000; the issue's 10,000 runs in
benchmarks/serve_overhead.py, or here with RAFT_SERVE_LOAD_REQUESTS=10000)."""

from __future__ import annotations

import asyncio
import os

import httpx
import pytest

from gateway_helpers import DOCS


@pytest.mark.slow
def test_many_requests_at_concurrency_64_without_errors(make_gateway):
    n = int(os.environ.get("RAFT_SERVE_LOAD_REQUESTS", "1000"))
    # engine, gateway and client share this process's GIL: the first burst of 64 connects can take
    # longer than the default sub-second connect timeout, which is for telling a dead engine fast
    srv, gw = make_gateway(engine={"connect_timeout_s": 10.0})
    words = [d.title for d in DOCS] + ["capital", "glass", "lynx", "river"]
    errors: list[str] = []
    ok = 0

    async def run():
        nonlocal ok
        todo = iter(range(n))
        async with httpx.AsyncClient(base_url=srv.url, timeout=60,
                                     limits=httpx.Limits(max_connections=64)) as client:
            async def worker():
                nonlocal ok
                for i in todo:
                    stream = i % 5 == 0
                    body = {"model": "raft", "stream": stream,
                            "messages": [{"role": "user", "content": f"{words[i % len(words)]} of Veloria {i}"}]}
                    try:
                        r = await client.post("/v1/chat/completions", json=body)
                    except httpx.HTTPError as e:
                        errors.append(repr(e))
                        continue
                    if r.status_code != 200:
                        errors.append(f"{r.status_code} {r.text[:200]}")
                    elif stream and not r.text.rstrip().endswith("data: [DONE]"):
                        errors.append("stream did not finish")
                    elif not stream and "citations" not in r.json():
                        errors.append("no citations")
                    else:
                        ok += 1

            await asyncio.gather(*(worker() for _ in range(64)))

    asyncio.run(run())
    assert errors == [] and ok == n, errors[:5]
    m = httpx.get(srv.url + "/metrics").text
    assert f'raft_requests_total{{endpoint="chat",status="200"}} {float(n)}' in m
    assert "raft_requests_in_flight 0.0" in m
