"""Micro-batching in front of a BatchGenerator: requests that arrive together are generated together.

Requests wait in one asyncio queue. A single worker thread (the model is not thread-safe, and one forward pass
already uses every core) takes the oldest request, waits up to `max_wait_s` for more, and runs up to
`max_batch` of those with the same sampling settings in one `generate` call. A request whose client went
away before its batch started is dropped, not generated.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable, Sequence

from serving.batched.generator import GenRequest, GenResult


@dataclass
class _Pending:
    req: GenRequest
    future: Future
    enqueued: float = field(default_factory=time.monotonic)


@dataclass
class BatchStats:
    """What /health reports: how well requests are being batched."""

    requests: int = 0
    batches: int = 0
    generated_tokens: int = 0
    busy_s: float = 0.0

    @property
    def mean_batch(self) -> float:
        return self.requests / self.batches if self.batches else 0.0


class MicroBatcher:
    def __init__(self, generate: Callable[[Sequence[GenRequest]], list[GenResult]], max_batch: int = 8,
                 max_wait_s: float = 0.02):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self._generate, self.max_batch, self.max_wait_s = generate, max_batch, max_wait_s
        self._queue: deque[_Pending] = deque()
        self._cv = threading.Condition()
        self._closed = False
        self.stats = BatchStats()
        self._thread = threading.Thread(target=self._loop, name="batched-engine", daemon=True)
        self._thread.start()

    async def submit(self, req: GenRequest) -> GenResult:
        """Queue `req` and wait for its result; cancelling the caller drops it if it has not started."""
        fut: Future = Future()
        with self._cv:
            if self._closed:
                raise RuntimeError("the engine is shutting down")
            self._queue.append(_Pending(req, fut))
            self._cv.notify()
        try:
            return await asyncio.wrap_future(fut)
        except asyncio.CancelledError:
            fut.cancel()  # not started: the worker skips it; started: its result is discarded
            raise

    def close(self, timeout: float = 5.0) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join(timeout)

    def _take_batch(self) -> list[_Pending]:
        """Block for the first request, then gather same-key requests until the batch is full or time is up."""
        with self._cv:
            while not self._queue and not self._closed:
                self._cv.wait()
            if self._closed and not self._queue:
                return []
            deadline = self._queue[0].enqueued + self.max_wait_s
            while len(self._queue) < self.max_batch and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cv.wait(left)
            key = self._queue[0].req.sampling_key()
            batch, rest = [], deque()
            while self._queue:
                p = self._queue.popleft()
                if p.future.cancelled():
                    continue
                (batch if len(batch) < self.max_batch and p.req.sampling_key() == key else rest).append(p)
            self._queue.extendleft(reversed(rest))
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take_batch()
            if not batch:
                with self._cv:
                    if self._closed:
                        return
                continue
            live = [p for p in batch if p.future.set_running_or_notify_cancel()]
            if not live:
                continue
            t0 = time.perf_counter()
            try:
                results = self._generate([p.req for p in live])
            except Exception as e:  # one bad batch fails its requests, not the engine
                for p in live:
                    p.future.set_exception(e)
                continue
            self.stats.busy_s += time.perf_counter() - t0
            self.stats.batches += 1
            self.stats.requests += len(live)
            for p, r in zip(live, results):
                self.stats.generated_tokens += r.completion_tokens
                p.future.set_result(r)

