"""How the in-process retriever schedules searches: micro-batches, at most `threads` at once, the last
free thread kept for a tenant that is not searching yet, callers that gave up dropped, each batch's
deadline handed to the index, and writes that never wait for searches (the index swaps generations)."""

import asyncio
import threading
import time

import numpy as np

from serving.retriever import IndexRetriever


class ScriptedIndex:
    """Records each search_batch; a search of a tenant in `slow` takes 1 s, ingest takes 1.5 s."""

    def __init__(self, slow=()):
        self.slow = set(slow)
        self.calls: list[tuple] = []
        self.running = 0
        self.most_running = 0
        self.lock = threading.Lock()

    def embed(self, texts, bulk=False):
        return np.zeros((len(texts), 4), dtype="float32")

    def search_batch(self, queries, k, mode, filter, deadline_at=None):
        with self.lock:
            self.running += 1
            self.most_running = max(self.most_running, self.running)
            self.calls.append(((filter or {}).get("tenant"), list(queries), deadline_at, time.monotonic()))
        time.sleep(1.0 if (filter or {}).get("tenant") in self.slow else 0.01)
        with self.lock:
            self.running -= 1
        return [[] for _ in queries]

    def add_documents(self, docs):
        time.sleep(1.5)
        return ["c"] * len(docs)

    def health(self):
        return {"chunks": 0}


def run(coro):
    return asyncio.run(coro)


def test_concurrent_queries_share_batches():
    idx = ScriptedIndex()
    r = IndexRetriever(idx, threads=2)

    async def scenario():
        await asyncio.gather(*(r.asearch(f"q{i}", 3, "dense", {"tenant": "a"}) for i in range(40)))

    run(scenario())
    assert sum(len(q) for _, q, _, _ in idx.calls) == 40
    assert len(idx.calls) < 40 and max(len(q) for _, q, _, _ in idx.calls) > 1


def test_a_slow_tenant_keeps_one_thread_free_for_the_others():
    idx = ScriptedIndex(slow={"a"})
    r = IndexRetriever(idx, threads=2)

    async def scenario():
        slow = [asyncio.ensure_future(r.asearch(f"a{i}", 3, "dense", {"tenant": "a", "x": i}))
                for i in range(3)]
        await asyncio.sleep(0.1)
        t0 = time.monotonic()
        await r.asearch("b", 3, "dense", {"tenant": "b"})
        fast = time.monotonic() - t0
        await asyncio.gather(*slow)
        return fast

    fast = run(scenario())
    assert fast < 0.5, f"tenant b waited {fast:.2f} s behind tenant a"
    assert idx.most_running <= 2
    a_starts = [t for tenant, _, _, t in idx.calls if tenant == "a"]
    assert all(later - earlier > 0.9 for earlier, later in zip(a_starts, a_starts[1:]))  # a: one at a time


def test_callers_that_gave_up_are_dropped_and_the_deadline_is_the_last_callers():
    idx = ScriptedIndex(slow={"a"})
    r = IndexRetriever(idx, threads=1)

    async def scenario():
        first = asyncio.ensure_future(r.asearch("first", 3, "dense", {"tenant": "a"}, deadline=100.0))
        await asyncio.sleep(0.05)  # `first` runs; the next two queue
        gave_up = asyncio.ensure_future(r.asearch("gave up", 3, "dense", {"tenant": "b"}, deadline=1.0))
        waits = asyncio.ensure_future(r.asearch("waits", 3, "dense", {"tenant": "b"}, deadline=2.0))
        late = asyncio.ensure_future(r.asearch("late", 3, "dense", {"tenant": "b"}, deadline=3.0))
        await asyncio.sleep(0.05)
        gave_up.cancel()
        await asyncio.gather(first, waits, late)

    run(scenario())
    searched = [(q, d) for _, q, d, _ in idx.calls]
    assert searched == [(["first"], 100.0), (["waits", "late"], 3.0)]


def test_searches_do_not_wait_for_an_ingest():
    idx = ScriptedIndex()
    r = IndexRetriever(idx, threads=2)

    async def scenario():
        ingest = asyncio.ensure_future(r.aadd(["doc"]))
        await asyncio.sleep(0.1)
        t0 = time.monotonic()
        await r.asearch("q", 3, "dense", {"tenant": "b"})
        took = time.monotonic() - t0
        await ingest
        return took

    assert run(scenario()) < 0.5


def test_health_is_answered_from_memory_while_searches_run():
    idx = ScriptedIndex(slow={"a"})
    r = IndexRetriever(idx, threads=1)

    async def scenario():
        busy = [asyncio.ensure_future(r.asearch(f"q{i}", 3, "dense", {"tenant": "a", "i": i}))
                for i in range(2)]
        await asyncio.sleep(0.1)
        t0 = time.monotonic()
        h = await r.ahealth()
        took = time.monotonic() - t0
        await asyncio.gather(*busy)
        return h, took

    h, took = run(scenario())
    assert took < 0.05 and h["status"] == "ok" and h["searches_running"] == 1 and h["searches_queued"] == 1
