"""The in-process index never sees a write while a search runs (FAISS and the SQLite store swap forbid it)."""

import asyncio
import threading
import time

import numpy as np

from serving.retriever import IndexRetriever


class OverlapDetectingIndex:
    def __init__(self):
        self.busy = threading.Lock()
        self.overlaps = 0
        self.calls = 0

    def _enter(self):
        if not self.busy.acquire(blocking=False):
            self.overlaps += 1
            self.busy.acquire()
        self.calls += 1
        time.sleep(0.01)
        self.busy.release()

    def embed(self, texts):
        return np.zeros((len(texts), 4), dtype="float32")

    def search_batch(self, queries, k, mode, filter):
        self._enter()
        return [[] for _ in queries]

    def add_documents(self, docs):
        self._enter()
        return []

    def delete_documents(self, ids):
        self._enter()
        return 0

    def chunks_for_doc(self, doc_id):
        return []


def test_writes_and_searches_take_turns():
    idx = OverlapDetectingIndex()
    r = IndexRetriever(idx)

    async def scenario():
        tasks = [r.asearch(f"q{i}", 3, "dense", None) for i in range(40)]
        tasks += [r.aadd([]) for _ in range(10)] + [r.adelete(["x"]) for _ in range(10)]
        await asyncio.gather(*tasks)

    asyncio.run(scenario())
    assert idx.calls >= 21 and idx.overlaps == 0
