"""`--threads auto`: the thread count a batched engine takes for its next batch from what its last batch
got (its own CPU time and the host's idle time, in cores), and its wiring into the engine."""

from __future__ import annotations

import pytest

from serving.batched.threads import AdaptiveThreads, host_idle_s, next_threads


@pytest.fixture(autouse=True)
def torch_threads():
    """These tests set torch's thread count: the rest of the suite gets its own back."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("own, idle, want", [
    (1.0, 0.0, 1),    # another engine holds the other core (or two engines of two threads each got one core each): one
    (1.0, 1.0, 2),    # the other core is idle: take it
    (1.0, 0.5, 1),    # half a core free is not worth a thread that waits at every barrier
    (1.95, 0.0, 2),   # alone with two threads: keep them
    (1.33, 0.0, 1),   # two threads getting 1.3 cores: someone else runs, drop to one
    (1.0, 7.0, 4),    # never above the limit
    (0.1, 0.0, 1),    # never below one
])
def test_next_threads(own, idle, want):
    assert next_threads(own, idle, limit=4) == want


class Host:
    """Wall, host-idle and process-CPU seconds that a test advances (the decision logic runs as it is)."""

    def __init__(self):
        self.t, self.idle, self.cpu = 0.0, 100.0, 10.0

    def batch(self, wall: float, idle_cores: float, own_cores: float) -> None:
        self.t, self.idle, self.cpu = self.t + wall, self.idle + idle_cores * wall, self.cpu + own_cores * wall

    def threads(self, **kw) -> AdaptiveThreads:
        return AdaptiveThreads(limit=2, idle_s=lambda: self.idle, cpu_s=lambda: self.cpu, now=lambda: self.t, **kw)


def test_adaptive_threads_follow_what_each_batch_got():
    import torch

    host = Host()
    t = host.threads()
    assert t.before() == 1 and torch.get_num_threads() == 1  # the first batch takes one thread
    host.batch(1.0, idle_cores=1.0, own_cores=1.0)  # ... and the other core stayed idle
    assert t.after() == 2
    assert t.before() == 2 and torch.get_num_threads() == 2
    host.batch(1.0, idle_cores=0.0, own_cores=1.3)  # another engine started: two threads got 1.3 cores
    assert t.after() == 1
    t.before()
    host.batch(0.1, idle_cores=2.0, own_cores=0.0)  # too short to tell: unchanged
    assert t.after() == 1


def test_the_count_is_decided_again_within_a_long_batch():
    """A batch is one generate call, tens of seconds on a CPU: a wrong start must not last all of it."""
    import torch

    host = Host()
    t = host.threads(start=2)
    assert t.before() == 2
    host.batch(0.5, idle_cores=0.0, own_cores=1.0)
    assert t.step() == 2  # under a second: too early to tell
    host.batch(0.6, idle_cores=0.0, own_cores=1.1)  # two threads get about one core: another engine runs
    assert t.step() == 1 and torch.get_num_threads() == 1  # applied at once, mid-batch
    host.batch(1.0, idle_cores=1.0, own_cores=1.0)  # the other engine is done
    assert t.step() == 2 and torch.get_num_threads() == 2
    host.batch(0.1, idle_cores=0.0, own_cores=1.0)  # the tail: too short to say anything
    assert t.after() == 2 and t._mark is None
    assert t.step() == 2  # between batches, nothing to measure


def test_without_proc_stat_the_count_stays():
    host = Host()
    t = AdaptiveThreads(limit=2, start=2, idle_s=lambda: None, cpu_s=lambda: host.cpu, now=lambda: host.t)
    t.before()
    host.batch(1.0, idle_cores=1.0, own_cores=0.5)
    assert t.after() == 2


def test_host_idle_is_read_from_proc_stat():
    v = host_idle_s()
    assert v is None or v > 0


def test_threads_flag_takes_a_count_or_auto():
    from serving.batched.app import parse_args

    assert parse_args(["m", "--threads", "auto"]).threads == "auto"
    assert parse_args(["m", "--threads", "2"]).threads == 2
    for bad in ("0", "two"):
        with pytest.raises(SystemExit):
            parse_args(["m", "--threads", bad])


def test_engine_generates_with_auto_threads(tiny_model_dir):
    from serving.batched.generator import BatchGenerator, GenRequest

    gen = BatchGenerator(tiny_model_dir, threads="auto")
    out = gen.generate([GenRequest(prompt="The capital of Veloria is", max_tokens=4)])
    assert out[0].completion_tokens > 0
    assert 1 <= gen.threads.threads <= gen.threads.limit
    assert gen.threads._mark is None  # after() ran
    steps = []
    gen.threads.step = lambda: steps.append(1) or gen.threads.threads  # count the decoding-step calls
    out = gen.generate([GenRequest(prompt="The capital of Veloria is", max_tokens=5)])
    # step() ran once per generated token (an end-of-sequence token is generated but not returned)
    assert out[0].completion_tokens <= len(steps) <= 5 and steps
