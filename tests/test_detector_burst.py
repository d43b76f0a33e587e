"""The attribution burst's rows on fake probes and a fake clock: per-tick differences of resident memory,
heap blocks, allocator in-use bytes and task counts, for as long as the burst lasts or until stopped."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from otel_leak.detector import burst


class Clock:
    """A clock that the stop event's wait advances (no sleeping)."""

    def __init__(self):
        self.t = 0.0
        self.stop_after: float | None = None

    def __call__(self):
        return self.t

    def is_set(self):
        return self.stop_after is not None and self.t >= self.stop_after

    def wait(self, dt):
        self.t += dt


def probes(clock, per_tick_rss=4096, per_tick_blocks=10):
    mem = SimpleNamespace(read=lambda: (int(1e7 + per_tick_rss * round(clock.t / burst.TICK)), 0))
    heap = SimpleNamespace(blocks=lambda: int(1000 + per_tick_blocks * round(clock.t / burst.TICK)))
    return mem, heap


class Stats:
    """Task 'a' completes a call every tick, 'b' every other tick."""

    def __init__(self, clock):
        self.clock = clock

    @property
    def counts(self):
        k = round(self.clock.t / burst.TICK)
        return {"a": k, "b": k // 2, "idle": 3}


def test_rows_are_the_differences_between_ticks():
    clock = Clock()
    mem, heap = probes(clock)
    rows = burst.collect(mem, heap, Stats(clock), lambda: None, clock, seconds=1.0, clock=clock)
    assert len(rows) == pytest.approx(1.0 / burst.TICK - 1, abs=1)
    for dt, d_rss, d_blocks, d_used, calls, flag in rows:
        assert dt == pytest.approx(burst.TICK) and d_rss == 4096 and d_blocks == 10
        assert d_used is None  # no allocator readings
        assert calls.get("a") == 1 and "idle" not in calls  # tasks without new calls are left out
        assert flag is False
    assert sum(r[4].get("b", 0) for r in rows) == pytest.approx(len(rows) / 2, abs=1)


def test_allocator_in_use_differences_when_readings_are_cheap():
    clock = Clock()
    mem, heap = probes(clock)
    used = iter(range(10_000_000, 20_000_000, 2048))
    rows = burst.collect(mem, heap, Stats(clock), lambda: (next(used), 0), clock, seconds=0.5, clock=clock)
    assert rows and all(r[3] == 2048 for r in rows)


def test_the_burst_ends_when_stopped():
    clock = Clock()
    clock.stop_after = 0.3
    mem, heap = probes(clock)
    rows = burst.collect(mem, heap, Stats(clock), lambda: None, clock, seconds=10.0, clock=clock)
    assert len(rows) <= round(0.3 / burst.TICK)


def test_no_burst_without_the_samplers_probes():
    started = burst.start(None, SimpleNamespace(), SimpleNamespace(counts={}), lambda: None, lambda stop, rows: None)
    assert started is False
