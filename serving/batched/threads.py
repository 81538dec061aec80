"""`--threads auto`: intra-op threads for each batch from the cores the last batch found free.

Two CPU engines on one host (the quickstart's base model and RAFT model, or any engine next to other work) want
one thread each while both generate: OpenMP threads of one engine that wait at every operator's barrier for a
thread the OS has given to the other engine make both slower. When the other goes quiet, one thread leaves the
rest of the machine idle. So after each batch the engine looks at what it got: the CPU time its process used
and the host's idle time over the batch, both in cores, and runs the next batch with about that many threads.
A batch under contention (two threads getting 1.3 cores) drops to one thread; one thread next to an idle core
takes it. The host's idle time is read from /proc/stat (Linux); elsewhere the thread count stays where it is.

A batch is one `generate` call: tens of seconds of decoding on a CPU. Deciding only between batches let a bad
start last a whole batch (the quickstart's RAFT engine began its first evaluation batch with the two threads
its idle warm-up questions had earned, next to the base engine's thread, and that batch took 100 s instead of
about 20). So the engine also calls `step()` at every decoding step, and the count is decided again once a
window of `_WINDOW_S` has passed.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Optional

_SHORT_S = 0.2  # batches shorter than this say too little (idle time is counted in 10 ms ticks)
_MARGIN = 0.25  # take another thread only for at least 3/4 of an idle core
_WINDOW_S = 1.0  # within a batch, decide again after this much wall time (a few decoding steps)


def host_idle_s() -> Optional[float]:
    """Seconds all cores of the host have spent idle since boot (idle + iowait of /proc/stat); None if unknown."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        return (int(fields[4]) + int(fields[5])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def next_threads(own_cores: float, idle_cores: float, limit: int) -> int:
    """Threads for the next batch: the cores this process used plus those left idle, between 1 and `limit`."""
    return max(1, min(limit, int(own_cores + idle_cores + _MARGIN)))


class AdaptiveThreads:
    """Call `before()` and `after()` around each batch, in the thread that runs it (OpenMP's thread count is
    that thread's own setting)."""

    def __init__(self, limit: Optional[int] = None, start: int = 1,
                 idle_s: Callable[[], Optional[float]] = host_idle_s,
                 cpu_s: Callable[[], float] = time.process_time, now: Callable[[], float] = time.monotonic):
        """`limit`: at most this many threads (default: the cores this process may run on). `start`: threads
        of the first batch (one: an engine that starts next to a busy one must not slow it down)."""
        if limit is None:
            limit = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        self.limit = max(1, limit)
        self.threads = max(1, min(start, self.limit))
        self._idle_s, self._cpu_s, self._now = idle_s, cpu_s, now
        self._mark: Optional[tuple[float, Optional[float], float]] = None

    def before(self) -> int:
        import torch

        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        self._mark = (self._now(), self._idle_s(), self._cpu_s())
        return self.threads

    def step(self) -> int:
        """Within a batch (at a decoding step): once `_WINDOW_S` has passed since the last decision, decide
        again from that window and apply the count at once."""
        if self._mark is None or self._now() - self._mark[0] < _WINDOW_S:
            return self.threads
        self._decide()
        return self.before()  # apply the count and open the next window, as at a batch's start

    def after(self) -> int:
        self._decide()
        self._mark = None
        return self.threads

    def _decide(self) -> None:
        if self._mark is None:
            return
        t0, idle0, cpu0 = self._mark
        wall, idle1 = self._now() - t0, self._idle_s()
        if wall >= _SHORT_S and idle0 is not None and idle1 is not None:
            self.threads = next_threads((self._cpu_s() - cpu0) / wall, (idle1 - idle0) / wall,
                                        self.limit)


class StepProbe:
    """A transformers logits processor that changes nothing: it calls `AdaptiveThreads.step()` at every
    decoding step, in the thread that runs `generate`."""

    def __init__(self, threads: AdaptiveThreads):
        self.threads = threads

    def __call__(self, input_ids, scores):
        self.threads.step()
        return scores
