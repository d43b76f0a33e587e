"""Allocator readings within their time budget, and what their trend says about a resident-memory growth.

The walk cost is simulated: a fake ``malloc_info`` advances a fake ``perf_counter`` by the cost it is given,
so the budget is exercised without sleeping or threads.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from otel_leak.detector import allocator as A


class FakeAllocator:
    """malloc_info that costs ``costs[k]`` seconds on call k (the last cost repeats) on a fake clock."""

    def __init__(self, monkeypatch, costs, used=10 << 20, free=1 << 20):
        self.clock = 0.0
        self.costs = list(costs)
        self.calls = 0
        self.spent = 0.0
        self.used, self.free = used, free
        monkeypatch.setattr(A, "time", SimpleNamespace(perf_counter=lambda: self.clock))
        monkeypatch.setattr(A.T2, "malloc_info", self)

    def __call__(self):
        cost = self.costs[min(self.calls, len(self.costs) - 1)]
        self.calls += 1
        self.clock += cost
        self.spent += cost
        return (self.used, self.free)


def test_walks_stay_within_the_duty_share_after_an_expensive_start(monkeypatch):
    fake = FakeAllocator(monkeypatch, [0.004] + [0.0002])
    r = A.AllocatorReader()
    run_s = 120.0
    taken = [now for now in (k * 0.05 for k in range(int(run_s / 0.05))) if r.read(now) is not None]
    assert taken[0] == 0.0
    assert taken[1] < 1.0  # the allowance absorbed the expensive first walk: readings went on
    assert fake.spent <= A.MALLINFO_BURST + run_s / A.MALLINFO_DUTY + 0.004  # at most one walk over
    # steady state: about as many walks as the share allows, so the readings do not stop either
    assert len(taken) >= 0.8 * (run_s / A.MALLINFO_DUTY) / 0.0002


def test_cheap_walks_are_read_on_every_sample(monkeypatch):
    FakeAllocator(monkeypatch, [0.00001])
    r = A.AllocatorReader()
    assert all(r.read(k * 1.0) is not None for k in range(100))  # 10 us a second is far below the share
    assert r.cheap


def test_the_cost_of_each_walk_is_exempted_from_the_callers_budget(monkeypatch):
    fake = FakeAllocator(monkeypatch, [0.0003])
    exempted = []
    r = A.AllocatorReader()
    for k in range(20):
        r.read(k * 1.0, exempted.append)
    assert sum(exempted) == pytest.approx(fake.spent) and len(exempted) == fake.calls


def test_without_glibc_readings_stop_for_good(monkeypatch):
    calls = []
    monkeypatch.setattr(A.T2, "malloc_info", lambda: calls.append(1))
    r = A.AllocatorReader()
    assert r.read(0.0) is None and r.off
    assert r.read(100.0) is None and r.read_outside_budget() is None and r.freed_by(lambda: None) is None
    assert len(calls) == 1


def test_readings_outside_the_budget_only_when_cheap_if_asked(monkeypatch):
    FakeAllocator(monkeypatch, [0.002])
    r = A.AllocatorReader()
    r.read(0.0)
    assert not r.cheap
    assert r.read_outside_budget(cheap_only=True) is None  # a burst must not pay milliseconds per tick
    assert r.read_outside_budget() is not None


def test_freed_by_is_the_in_use_drop_across_the_action(monkeypatch):
    fake = FakeAllocator(monkeypatch, [0.00001], used=50 << 20)

    def collect():
        fake.used -= 3 << 20

    r = A.AllocatorReader()
    assert r.freed_by(collect) == 3 << 20

    def grow():
        fake.used += 1 << 20

    assert r.freed_by(grow) == 0  # growth during the action is not negative freeing


def _trend_of(used_slope, free_slope, rss_slope=100_000.0, n=10):
    r = A.AllocatorReader()
    for k in range(n):
        r.record(k * 10.0, (int(1e7 + used_slope * k * 10), int(1e6 + free_slope * k * 10)))
    return r.trend(rss_slope)


def test_trend_says_which_allocator_bytes_explain_the_growth():
    assert _trend_of(90_000, 0)["explains"] == "native_in_use"
    assert _trend_of(0, 80_000)["explains"] == "allocator_free_retained"  # freed memory the allocator keeps
    assert _trend_of(1_000, 1_000)["explains"] == "outside_malloc"  # e.g. mmap'd or Python arenas
    t = _trend_of(90_000, 0)
    assert t["in_use_slope_bytes_per_s"] == pytest.approx(90_000, rel=0.01) and t["allocator"] == "glibc"


def test_no_trend_from_too_few_readings():
    assert _trend_of(90_000, 0, n=2) is None
