"""The embedder gate: one embedding (or tokenizing) call at a time per embedder, in arrival order, and the
embedding cache's connection shared by searches and ingest."""

from __future__ import annotations

import threading
import weakref
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from retrieval.embedders import EmbeddingCache

# Ingest embeds about this many characters (~500 tokens: a few chunks) per turn at the embedder gate: a
# waiting query gets in after one slice (tens of ms on a free CPU core), not after the whole document.
EMBED_SLICE_CHARS = 2048


class EmbedGate:
    """One embedding (or tokenizing) call at a time per embedder, in arrival order.

    The embedder's fast tokenizer is shared by queries, ingest embedding and chunking, and is not safe to
    use from two threads at once (its truncation settings are mutated per call). First come, first
    served, and ingest takes one small slice per turn: a query arriving during a large ingest waits for
    one slice, and a stream of queries cannot starve an ingest either.
    """

    def __init__(self) -> None:
        self._mu = threading.Lock()
        self._waiters: deque[threading.Event] = deque()

    @contextmanager
    def hold(self) -> Iterator[None]:
        me = threading.Event()
        with self._mu:
            self._waiters.append(me)
            if len(self._waiters) == 1:
                me.set()
        try:
            me.wait()
            yield
        finally:
            with self._mu:
                head = self._waiters[0] is me
                self._waiters.remove(me)
                if head and self._waiters:
                    self._waiters[0].set()


_GATES: "weakref.WeakKeyDictionary[Any, EmbedGate]" = weakref.WeakKeyDictionary()
_GATES_LOCK = threading.Lock()


def embed_gate(embedder: Any) -> EmbedGate:
    """The gate of an embedder object (shared by every index that uses it in this process)."""
    with _GATES_LOCK:
        gate = _GATES.get(embedder)
        if gate is None:
            gate = _GATES[embedder] = EmbedGate()
        return gate


class LockedCache:
    """The embedding cache's one SQLite connection, used by one thread at a time (searches read it while
    an ingest writes it)."""

    def __init__(self, cache: EmbeddingCache, lock: threading.Lock):
        self._cache, self._lock = cache, lock

    def get_many(self, hashes: list[str]) -> dict[str, np.ndarray]:
        with self._lock:
            return self._cache.get_many(hashes)

    def put_many(self, hashes: list[str], vectors: np.ndarray) -> None:
        with self._lock:
            self._cache.put_many(hashes, vectors)


def slices(texts: list[str], chars: int) -> Iterator[list[str]]:
    """Consecutive runs of texts of about `chars` characters together (at least one text each)."""
    run: list[str] = []
    size = 0
    for t in texts:
        if run and size + len(t) > chars:
            yield run
            run, size = [], 0
        run.append(t)
        size += len(t)
    if run:
        yield run
