"""raft's batched engine on the random tiny Llama: batched greedy generation equals one-at-a-time generation,
concurrent requests really share forward passes, and the HTTP surface speaks the OpenAI API that the gateway
and `raft eval` use (checked with the openai client against the real server process)."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import threading
import time
from pathlib import Path

import pytest

from serving.batched.batcher import MicroBatcher
from serving.batched.generator import BatchGenerator, GenRequest, GenResult
from serving.batched.kv_cache import PreallocatedLayer, prefill

PROMPTS = ["The capital of Veloria is", "Fishing boats leave Portivel harbour every morning before dawn and",
           "Marenta", "The Lantern Tide is held on the first full moon of autumn in the village of Ostry, where"]


@pytest.fixture(scope="module")
def gen(tiny_model_dir) -> BatchGenerator:
    return BatchGenerator(tiny_model_dir)


def test_batched_greedy_equals_one_at_a_time(gen):
    """Left padding must not change what greedy decoding writes, for prompts of different lengths."""
    reqs = [GenRequest(prompt=p, max_tokens=12) for p in PROMPTS]
    together = gen.generate(reqs)
    alone = [gen.generate([r])[0] for r in reqs]
    assert [r.text for r in together] == [r.text for r in alone]
    assert [r.prompt_tokens for r in together] == [r.prompt_tokens for r in alone]
    assert all(r.prompt_tokens > 0 for r in together)


def _forward_shapes(gen, reqs):
    """The (batch, length) of every forward pass `gen.generate(reqs)` makes, and its results."""
    shapes = []
    hook = gen.model.register_forward_pre_hook(
        lambda _m, args, kwargs: shapes.append(tuple((kwargs.get("input_ids") if kwargs.get("input_ids") is not None
                                                      else args[0]).shape)), with_kwargs=True)
    try:
        return gen.generate(reqs), shapes
    finally:
        hook.remove()


@pytest.mark.parametrize("guard", [False, True])
def test_on_a_cpu_each_prompt_is_read_alone_then_the_batch_decodes_together(gen, guard):
    """A padded batch is read row by row (no pad token passes through the model), then decoded as one batch, and
    writes what `generate` on the padded batch writes, with the quote guard too."""
    reqs = [GenRequest(prompt=p, max_tokens=6, quote_guard=guard) for p in PROMPTS]
    assert gen.prefill_first  # the default on a CPU
    rows, shapes = _forward_shapes(gen, reqs)
    lens = [r.prompt_tokens for r in rows]
    assert len(set(lens)) > 1
    reads = [s for s in shapes if s[1] > 1]
    assert sorted(reads) == sorted((1, n - 1) for n in lens)  # each prompt alone, all but its last token
    assert shapes[len(reads)] == (len(reqs), 1)  # then the batch, one column at a time
    gen.prefill_first = False
    try:
        padded, shapes = _forward_shapes(gen, reqs)
    finally:
        gen.prefill_first = True
    assert shapes[0] == (len(reqs), max(lens))
    assert [r.text for r in rows] == [r.text for r in padded]
    assert [r.completion_tokens for r in rows] == [r.completion_tokens for r in padded]


def test_prompts_of_one_length_are_read_in_one_pass_and_one_token_prompts_take_the_plain_path(gen):
    same = [GenRequest(prompt=PROMPTS[0], max_tokens=2)] * 3
    res, shapes = _forward_shapes(gen, same)
    assert shapes[0] == (3, res[0].prompt_tokens - 1)  # no padding to save: one batched pass, then the last column
    enc = gen.tokenizer(["a", PROMPTS[1]], return_tensors="pt", padding=True, add_special_tokens=False)
    assert enc["attention_mask"].sum(dim=1).min() == 1
    assert prefill(gen.model, enc, room=2) is None  # a one-token prompt has nothing to read before its last token


def test_a_preallocated_layer_writes_in_place_until_it_runs_out_of_room():
    import torch

    keys, values = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4)
    layer = PreallocatedLayer([keys], [values], width=5, room=2)
    start = layer.keys.data_ptr()
    steps = [(torch.randn(2, 3, 1, 4), torch.randn(2, 3, 1, 4)) for _ in range(3)]
    for i, (k, v) in enumerate(steps):
        out_k, out_v = layer.update(k, v)
        assert out_k.shape == (2, 3, 6 + i, 4)
        assert (out_k.data_ptr() == start) == (i < 2)  # in place while there is room, then concatenated
    assert torch.equal(layer.keys, torch.cat([keys] + [k for k, _ in steps], dim=-2))
    assert torch.equal(layer.values, torch.cat([values] + [v for _, v in steps], dim=-2))
    layer = PreallocatedLayer([keys], [values], width=5, room=4)
    layer.batch_select_indices(torch.tensor([1]))  # a new tensor: later updates must not write into the old buffer
    k, v = steps[0]
    out_k, _ = layer.update(k[1:], v[1:])
    assert torch.equal(out_k, torch.cat([keys[1:], k[1:]], dim=-2))


def test_rows_of_different_lengths_are_left_padded_with_zeros():
    import torch

    short, long = torch.randn(1, 3, 2, 4), torch.randn(1, 3, 5, 4)
    layer = PreallocatedLayer([short, long], [short + 1, long + 1], width=5, room=1)
    assert layer.keys.shape == (2, 3, 5, 4)
    assert torch.equal(layer.keys[0, :, 3:], short[0]) and torch.equal(layer.keys[1], long[0])
    assert torch.equal(layer.values[0, :, 3:], short[0] + 1)
    assert not layer.keys[0, :, :3].any() and not layer.values[0, :, :3].any()  # finite pads, hidden by the mask


def test_a_model_whose_cache_cannot_be_read_ahead_falls_back_to_generate_once(gen, monkeypatch, caplog):
    import serving.batched.kv_cache as kv_cache

    reqs = [GenRequest(prompt=p, max_tokens=4) for p in PROMPTS]
    expected = [r.text for r in gen.generate(reqs)]
    monkeypatch.setattr(kv_cache, "DynamicLayer", type("SlidingLayer", (), {}))  # no layer is of that type
    caplog.set_level("INFO", logger="raft.batched")
    try:
        res, shapes = _forward_shapes(gen, reqs)
        assert not gen.prefill_first and "cache is DynamicCache" in caplog.text
        assert shapes[1] == (len(reqs), max(r.prompt_tokens for r in res))  # one read ahead, then generate's own
        assert [r.text for r in res] == expected
        _, shapes = _forward_shapes(gen, reqs)
        assert shapes[0][0] == len(reqs)  # not tried again
    finally:
        gen.prefill_first = True


def test_each_request_keeps_its_own_max_tokens_and_stop(gen):
    long, short = GenRequest(prompt=PROMPTS[0], max_tokens=12), GenRequest(prompt=PROMPTS[0], max_tokens=3)
    a, b = gen.generate([long, short])
    assert b.completion_tokens <= 3 and b.finish_reason in ("length", "stop")
    if a.finish_reason == "length":
        assert a.completion_tokens == 12
    # a stop string cuts the text before it, and the reason says so
    full = gen.generate([GenRequest(prompt=PROMPTS[1], max_tokens=12)])[0]
    words = full.text.split()
    if len(words) >= 3:
        stop = words[2]
        cut = gen.generate([GenRequest(prompt=PROMPTS[1], max_tokens=12, stop=[stop])])[0]
        assert stop not in cut.text and cut.finish_reason == "stop"
        assert full.text.startswith(cut.text)


def test_chat_messages_use_the_chat_template(gen):
    req = GenRequest(messages=[{"role": "user", "content": "Where is Portivel?"}], max_tokens=4)
    rendered = gen.render(req)
    assert "Where is Portivel?" in rendered and rendered != "Where is Portivel?"
    assert gen.generate([req])[0].prompt_tokens == gen.count_prompt_tokens(req)


def test_counting_prompt_tokens_while_a_batch_is_tokenized(gen):
    """The server's event loop counts prompt tokens while the worker thread pads a batch: a shared fast
    tokenizer's padding state would make ragged rows ("Unable to create tensor") or "Already borrowed"."""
    stop, errors = threading.Event(), []
    long = GenRequest(prompt="Marenta harbour " * 1500)

    def count():
        while not stop.is_set():
            try:
                assert gen.count_prompt_tokens(long) > 1500
            except Exception as e:  # collected: a thread's exception would otherwise vanish
                errors.append(f"count: {type(e).__name__}: {e}")
                return

    t = threading.Thread(target=count)
    t.start()
    try:
        for _ in range(150):
            gen.generate([GenRequest(prompt=p, max_tokens=1) for p in PROMPTS])
    finally:
        stop.set()
        t.join(60)
    assert errors == []


def test_concurrent_requests_share_batches():
    calls: list[int] = []

    def fake_generate(batch):  # a slow model: requests pile up while one batch runs
        calls.append(len(batch))
        time.sleep(0.05)
        return [GenResult(text=r.prompt or "", prompt_tokens=1, completion_tokens=1, finish_reason="stop")
                for r in batch]

    batcher = MicroBatcher(fake_generate, max_batch=4, max_wait_s=0.05)

    async def main():
        return await asyncio.gather(*[batcher.submit(GenRequest(prompt=str(i))) for i in range(10)])

    try:
        results = asyncio.run(main())
    finally:
        batcher.close()
    assert [r.text for r in results] == [str(i) for i in range(10)]  # each caller gets its own answer
    assert max(calls) == 4 and sum(calls) == 10 and len(calls) <= 4
    assert batcher.stats.requests == 10 and batcher.stats.batches == len(calls)


def test_different_sampling_settings_are_not_mixed():
    seen: list[set] = []

    def fake_generate(batch):
        seen.append({r.sampling_key() for r in batch})
        return [GenResult("x", 1, 1, "stop") for _ in batch]

    batcher = MicroBatcher(fake_generate, max_batch=8, max_wait_s=0.05)

    async def main():
        reqs = [GenRequest(prompt="a", temperature=t) for t in (0.0, 0.7, 0.0, 0.7, 0.0)]
        reqs.append(GenRequest(messages=[{"role": "user", "content": "a"}]))  # chat: tokenized apart
        return await asyncio.gather(*[batcher.submit(r) for r in reqs])

    try:
        assert len(asyncio.run(main())) == 6
    finally:
        batcher.close()
    assert all(len(keys) == 1 for keys in seen) and len(seen) == 3


def test_a_failing_batch_fails_its_requests_not_the_engine():
    state = {"fail": True}

    def flaky(batch):
        if state.pop("fail", False):
            raise RuntimeError("out of memory")
        return [GenResult("ok", 1, 1, "stop") for _ in batch]

    batcher = MicroBatcher(flaky, max_batch=2, max_wait_s=0.0)
    try:
        with pytest.raises(RuntimeError, match="out of memory"):
            asyncio.run(batcher.submit(GenRequest(prompt="a")))
        assert asyncio.run(batcher.submit(GenRequest(prompt="b"))).text == "ok"
    finally:
        batcher.close()


def test_help_shows_the_defaults(capsys, monkeypatch):
    from serving.batched.app import parse_args

    monkeypatch.setenv("COLUMNS", "300")  # each help on one line (after its flag's, for long flags)
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    out = capsys.readouterr().out
    for flag, default in (("--max-batch", "8"), ("--batch-wait-ms", "20"), ("--port", "8001")):
        assert re.search(rf"^  {flag} [A-Z_]+\s+[^\n]*\(default: {default}\)$", out, re.M), flag


def test_max_batch_must_be_positive():
    with pytest.raises(ValueError, match="max_batch must be at least 1, got 0"):
        MicroBatcher(lambda b: [], max_batch=0)


@pytest.fixture(scope="module")
def batched_server(tiny_model_dir, tmp_path_factory):
    from engine_proc import running_engine

    from raft.netutil import free_port

    port = free_port()
    log = tmp_path_factory.mktemp("batched") / "engine.log"
    argv = [sys.executable, "-m", "serving.batched", str(tiny_model_dir), "--port", str(port),
            "--served-model-name", "tiny", "--max-batch", "4", "--batch-wait-ms", "50"]
    with running_engine(argv, port, log, "batched engine", timeout=120, interval=0.3) as url:
        yield url, str(tiny_model_dir)


def test_openai_client_chat_completion_and_models(batched_server):
    from openai import OpenAI

    url, path = batched_server
    client = OpenAI(base_url=url + "/v1", api_key="EMPTY")
    assert {"tiny", path} <= {m.id for m in client.models.list().data}
    for name in ("tiny", path):  # by a served name, or by its path as `raft eval` sends it
        r = client.chat.completions.create(model=name, messages=[{"role": "user", "content": "Hello"}],
                                           max_tokens=5, temperature=0)
        assert r.choices[0].finish_reason in ("stop", "length")
        assert r.usage.completion_tokens <= 5 and r.usage.prompt_tokens > 0
    text = client.completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=4)
    assert text.usage.completion_tokens <= 4


def test_streaming_answers_one_chunk_then_done(batched_server):
    from openai import OpenAI

    url, _ = batched_server
    client = OpenAI(base_url=url + "/v1", api_key="EMPTY")
    whole = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}],
                                           max_tokens=6, temperature=0).choices[0].message.content
    chunks = list(client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}],
                                                 max_tokens=6, temperature=0, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens <= 6


def test_errors_say_what_to_do(batched_server):
    import httpx

    url, _ = batched_server
    r = httpx.post(url + "/v1/chat/completions", json={"model": "other", "messages": [{"role": "user",
                                                                                        "content": "x"}]})
    assert r.status_code == 404 and "'other' is not served" in r.json()["error"]["message"]
    r = httpx.post(url + "/v1/chat/completions", json={"model": "tiny", "n": 2,
                                                       "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 400 and "send n requests" in r.json()["error"]["message"]
    r = httpx.post(url + "/v1/chat/completions", json={"model": "tiny", "messages": []})
    assert r.status_code == 400 and "messages" in r.json()["error"]["message"]
    r = httpx.post(url + "/v1/chat/completions", json={"model": "tiny", "quote_guard": "yes",
                                                       "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 400 and "quote_guard: 'yes' is not a boolean" in r.json()["error"]["message"]
    r = httpx.post(url + "/v1/chat/completions", json={"model": "tiny", "quote_guard": True, "max_tokens": 3,
                                                       "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 200


def test_concurrent_http_requests_are_batched(batched_server):
    import httpx

    url, _ = batched_server
    before = httpx.get(url + "/health").json()
    results: list[int] = []
    errors: list[str] = []

    def ask(i: int) -> None:
        r = httpx.post(url + "/v1/completions", json={"model": "tiny", "prompt": PROMPTS[i % 4], "max_tokens": 8},
                       timeout=60)
        results.append(r.status_code)
        if r.status_code != 200:
            errors.append(r.text)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = httpx.get(url + "/health").json()
    assert results == [200] * 8, errors
    assert after["requests"] - before["requests"] == 8
    assert after["batches"] - before["batches"] < 8  # at least two requests shared a forward pass


def _alive(pid: int) -> bool:
    try:
        return not Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except (OSError, IndexError):
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc to see the engine's state")
def test_exit_with_parent_stops_an_engine_whose_parent_was_killed(tiny_model_dir, tmp_path):
    """`raft serve` starts the engine with --exit-with-parent: a gateway killed with SIGKILL (no cleanup runs)
    must not leave the model in memory. Without the flag the orphan keeps serving (checked too)."""
    import signal
    import subprocess

    from raft.netutil import free_port, wait_healthy

    def orphan(flag: list[str]) -> int:
        port = free_port()
        parent = subprocess.Popen([sys.executable, "-c", (
            "import subprocess, sys, time\n"
            f"p = subprocess.Popen({[sys.executable, '-m', 'serving.batched', str(tiny_model_dir), '--port', str(port), *flag]!r},"
            " stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)\n"
            "print(p.pid, flush=True)\ntime.sleep(600)")], stdout=subprocess.PIPE, text=True)
        engine = int(parent.stdout.readline())
        wait_healthy(f"http://127.0.0.1:{port}/health", timeout=120, interval=0.3)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        return engine

    watched, unwatched = orphan(["--exit-with-parent"]), orphan([])
    try:
        deadline = time.monotonic() + 30
        while _alive(watched) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(watched), "the engine outlived its parent by 30 s"
        assert _alive(unwatched)  # the flag, not the parent's death alone, stopped it
    finally:
        for pid in (watched, unwatched):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_a_failed_batch_answers_500_with_the_reason(gen):
    """A batch that raises fails its own requests with the error's text (and the engine goes on serving)."""
    from starlette.testclient import TestClient

    from serving.batched.app import create_app

    def generate(batch):
        if any(r.prompt == "boom" for r in batch):
            raise RuntimeError("Already borrowed")
        return gen.generate(batch)

    batcher = MicroBatcher(generate, max_batch=1, max_wait_s=0.0)
    try:
        with TestClient(create_app(gen, batcher, ["tiny"])) as client:
            r = client.post("/v1/completions", json={"model": "tiny", "prompt": "boom", "max_tokens": 2})
            assert r.status_code == 500
            assert r.json()["error"]["message"] == "generation failed: RuntimeError: Already borrowed"
            r = client.post("/v1/completions", json={"model": "tiny", "prompt": PROMPTS[0], "max_tokens": 2})
            assert r.status_code == 200 and r.json()["choices"][0]["text"]
    finally:
        batcher.close()
