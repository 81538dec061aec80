import asyncio
import time

import pytest

from raft.data.config import TeacherConfig
from raft.data.teachers import (ExtractiveTeacher, OpenAITeacher, TeacherRequestError, request_body, vllm_batch)
from raft.errors import RaftError
from raft.prompt import extract_quotes, quote_in

from build_fakes import FakeOpenAI, chat_response


def _cfg(url, **kw):
    base = dict(kind="openai", base_url=url, model="fake", timeout_s=1.0, max_retries=4, backoff_base_s=0.01,
                backoff_max_s=0.05, concurrency=4)
    base.update(kw)
    return TeacherConfig(**base)


def _run(coro):
    return asyncio.run(coro)


def test_retries_429_5xx_timeouts_and_counts_tokens():
    script = {1: (429, {"error": "slow down"}, 0), 2: (500, "oops", 0), 3: (503, "", 0), 4: (200, "", 1.5)}

    def behave(body, n):
        return script.get(n, (200, chat_response("fine <ANSWER>: x"), 0))

    with FakeOpenAI(behave) as srv:
        async def go():
            t = OpenAITeacher(_cfg(srv.url))
            c = await t.complete([{"role": "user", "content": "hi"}], 16, seed=1)
            await t.aclose()
            return t, c

        t, c = _run(go())
    assert c.text == "fine <ANSWER>: x" and c.prompt_tokens == 10 and c.completion_tokens == 5
    assert t.stats.retries == 4 and t.stats.requests == 5 and t.stats.prompt_tokens == 10


def test_gives_up_with_a_reason_and_does_not_retry_400():
    with FakeOpenAI(lambda b, n: (200, "{not json", 0)) as srv:
        async def go():
            t = OpenAITeacher(_cfg(srv.url, max_retries=2))
            try:
                await t.complete([{"role": "user", "content": "hi"}], 16, None)
            finally:
                await t.aclose()

        with pytest.raises(TeacherRequestError) as e:
            _run(go())
        assert e.value.reason == "malformed_response" and srv.count == 3
    with FakeOpenAI(lambda b, n: (400, {"error": "context too long"}, 0)) as srv:
        with pytest.raises(TeacherRequestError) as e:
            _run(go())
        assert e.value.reason == "http_400" and srv.count == 1


def test_concurrency_is_bounded():
    active, peak = [0], [0]
    import threading
    lock = threading.Lock()

    def behave(body, n):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.05)
        with lock:
            active[0] -= 1
        return 200, chat_response("ok"), 0

    with FakeOpenAI(behave) as srv:
        async def go():
            t = OpenAITeacher(_cfg(srv.url, concurrency=3))
            await asyncio.gather(*(t.complete([{"role": "user", "content": str(i)}], 8, None) for i in range(12)))
            await t.aclose()

        t0 = time.perf_counter()
        _run(go())
    assert peak[0] == 3 and time.perf_counter() - t0 >= 4 * 0.05


def test_unreachable_teacher_fails_fast():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens here now

    async def go():
        t = OpenAITeacher(_cfg(f"http://127.0.0.1:{port}/v1", connect_check_s=2))
        try:
            await t.check()
        finally:
            await t.aclose()

    t0 = time.perf_counter()
    with pytest.raises(RaftError, match="unreachable"):
        _run(go())
    assert time.perf_counter() - t0 < 5


def _check(url, **kw):
    async def go():
        t = OpenAITeacher(_cfg(url, connect_check_s=2, **kw))
        try:
            return await t.check()
        finally:
            await t.aclose()

    return _run(go())


def test_a_base_url_without_v1_is_an_immediate_error():
    """A 404 from GET /models: every chat request would get it too, counted only after indexing."""
    def get(path):
        return (200, {"object": "list", "data": [{"id": "fake"}]}) if path == "/v1/models" else (404, "Not Found")

    with FakeOpenAI(get=get) as srv:
        root = srv.url.removesuffix("/v1")
        with pytest.raises(RaftError, match=rf"{root} answered 404 .* usually ends in /v1; try "
                                            rf"teacher.base_url={root}/v1"):
            _check(root)
        assert _check(srv.url) == [] and srv.count == 0  # the right URL passes, and the check posts nothing


def _listing(*ids, owned_by=None):
    cards = [{"id": i, "object": "model"} | ({"owned_by": owned_by} if owned_by else {}) for i in ids]
    return lambda path: (200, {"object": "list", "data": cards})


def test_a_model_the_server_does_not_list():
    many = [f"m{i}" for i in range(8)]
    # vLLM answers 404 to any name it does not list: an error, naming a few served ids
    with FakeOpenAI(get=_listing("Qwen/Qwen2.5-7B-Instruct", *many, owned_by="vllm")) as srv:
        with pytest.raises(RaftError, match=r"teacher.model='qwen' is not among .*: Qwen/Qwen2.5-7B-Instruct, m0, "
                                            r"m1, m2, m3 \.\.\. \(9 in all\).*set teacher.model"):
            _check(srv.url, model="qwen")
        assert _check(srv.url, model="Qwen/Qwen2.5-7B-Instruct") == []
    # transformers serve lists its HF cache but loads any model it is asked for: only a warning
    with FakeOpenAI(get=_listing("HuggingFaceTB/SmolLM2-135M-Instruct", owned_by="HuggingFaceTB")) as srv:
        [warning] = _check(srv.url, model="./my-model")
        assert "teacher.model='./my-model' is not among" in warning and "SmolLM2-135M-Instruct" in warning
    with FakeOpenAI(get=lambda path: (200, {"object": "list", "data": []})) as srv:  # lists nothing: no opinion
        assert _check(srv.url, model="anything") == []


def test_request_construction_openai_and_vllm():
    cfg = TeacherConfig(kind="openai", model="m", temperature=0.3, extra_body={"top_p": 0.9, "foo": 1})
    msgs = [{"role": "user", "content": "q"}]
    body = request_body(cfg, msgs, 100, seed=7)
    assert body == {"model": "m", "messages": msgs, "max_tokens": 100, "temperature": 0.3, "seed": 7,
                    "top_p": 0.9, "foo": 1}
    convs, params = vllm_batch(cfg, [(msgs, 100, 7), (msgs, 50, None)])
    assert convs == [msgs, msgs]
    assert params == [{"temperature": 0.3, "max_tokens": 100, "seed": 7, "top_p": 0.9},
                      {"temperature": 0.3, "max_tokens": 50, "top_p": 0.9}]


def test_vllm_offline_without_vllm_is_a_clear_error():
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed")
    from raft.data.teachers import make_teacher

    with pytest.raises(RaftError, match="needs vllm"):
        make_teacher(TeacherConfig(kind="vllm_offline", model="m"))


def test_extractive_teacher_makes_verifiable_answers():
    text = ("The Coral Hall was built in 1655 from white limestone. It stands in Portivel, the capital. "
            "Members serve terms of five years.")
    t = ExtractiveTeacher()
    qs = _run(t.questions(text, 2, "general")).text.splitlines()
    assert len(qs) == 2 and all("_____" in q for q in qs)
    a = _run(t.answer(qs[0], [text], "general")).text
    assert a.rstrip().endswith("1655") and all(quote_in(q, text) for q in extract_quotes(a))
    hinted = _run(t.answer("Where is the hall?", [text], "general", hint="Portivel")).text
    assert "Portivel" in extract_quotes(hinted)[0] and hinted.rstrip().endswith("Portivel")


@pytest.mark.parametrize(("sentence", "answer"), [("Portivel has 9,000 residents and two ports.", "9,000"),
                                                  ("The Lune bridge is 1.5 km long and old.", "1.5"),
                                                  ("The 3rd assembly of Veloria met there.", "3rd")])
def test_extractive_teacher_blanks_a_whole_number(sentence, answer):
    """A number with a separator or a suffix is one blank and one answer ("9,000", not "9" and ",000")."""
    t = ExtractiveTeacher()
    q = _run(t.questions(sentence, 1, "general")).text
    assert q == "Fill in the blank: " + sentence.replace(answer, "_____", 1)
    assert _run(t.answer(q, [sentence], "general")).text.rstrip().endswith(f"<ANSWER>: {answer}")


def test_vllm_offline_batcher_serves_requests_that_arrive_mid_batch():
    """A request queued while a batch is generating must be answered (it once waited forever)."""
    import asyncio
    import time
    from types import SimpleNamespace

    from raft.data.teachers import ChatTeacher, VLLMOfflineTeacher

    class SlowLLM:
        def __init__(self):
            self.batches = []

        def chat(self, convs, sampling, use_tqdm=False):
            self.batches.append(len(convs))
            time.sleep(0.3)
            return [SimpleNamespace(prompt_token_ids=[1, 2], outputs=[SimpleNamespace(
                text=f"answer {c[-1]['content']}", finish_reason="stop", token_ids=[3])]) for c in convs]

    t = VLLMOfflineTeacher.__new__(VLLMOfflineTeacher)
    ChatTeacher.__init__(t, TeacherConfig(kind="vllm_offline", model="m"))
    t._SamplingParams, t._llm, t._queue, t._wait, t._flusher = dict, SlowLLM(), [], 0.01, None

    async def scenario():
        first = asyncio.create_task(t.complete([{"role": "user", "content": "a"}], 8, None))
        await asyncio.sleep(0.1)  # the first batch is generating now
        second = asyncio.create_task(t.complete([{"role": "user", "content": "b"}], 8, None))
        return await asyncio.wait_for(asyncio.gather(first, second), timeout=5)

    a, b = asyncio.run(scenario())
    assert (a.text, b.text) == ("answer a", "answer b")
    assert t._llm.batches == [1, 1] and t.stats.requests == 2
