"""pytest plugin (``pytest11`` entry point ``otel_leak``): a ``leak_check`` fixture that fails a test when a
callable keeps memory per call, naming the bytes per call, the allocation site and what holds it.

    def test_resize_keeps_nothing(leak_check):
        leak_check(resize, args=(image,), calls=2000, budget=256)       # bytes per call

The model is the detector's: a leak is memory that **survives a full collection** and **keeps growing with
the calls**. After ``warmup`` calls (caches fill, lazy imports happen), the calls run in ``rounds`` equal
rounds; after each round a full collection runs and the Python heap still allocated is read (tracemalloc,
started here when it is not already on). The retained bytes per call is the Theil-Sen slope of that heap
against the calls made: reference cycles the collector frees and one-off steps do not move it. A growth that
a bounded fill explains better than a line (a cache still filling, its rate falling) passes, with the fill
in the result. The test fails when the slope is above ``budget`` and the heap grew by at least
``min_growth`` bytes over the rounds; the failure names the allocation site (the innermost frame outside
libraries) and a retention path from a module global or a thread's stack.

The plugin only defines the fixture: nothing is imported, started or patched until a test uses it.
"""

from __future__ import annotations

import gc
import tracemalloc
from dataclasses import dataclass, field
from typing import Any, Callable

import pytest

FRAMES = 25
SATURATED_RATIO = 0.5  # a bounded fill whose squared residuals are under half the line's


@dataclass
class LeakCheck:
    """What one check measured (returned by the fixture's call, also when it passes)."""

    calls: int
    bytes_per_call: float
    growth_bytes: int
    saturating: bool
    heap: list[int] = field(default_factory=list)  # heap after each round's full collection
    sites: list[dict] = field(default_factory=list)
    retention_paths: list[dict] = field(default_factory=list)

    def describe(self) -> str:
        lines = [f"retains {self.bytes_per_call:,.0f} bytes per call ({self.growth_bytes:,} bytes over "
                 f"{self.calls:,} calls, after full collections)"]
        for s in self.sites[:3]:
            lines.append(f"  allocated at {s['file']}:{s['line']} (+{s['growth_bytes']:,} bytes there over the "
                         "last 60 % of the calls)")
        for p in self.retention_paths[:2]:
            lines.append(f"  held by {p.get('text')}")
        return "\n".join(lines)


class LeakCheckFailed(AssertionError):
    def __init__(self, result: LeakCheck, budget: float) -> None:
        super().__init__(f"leak over the budget of {budget:,.0f} bytes per call: {result.describe()}")
        self.result = result


def run_check(fn: Callable, args: tuple = (), kwargs: dict | None = None, *, calls: int = 1000,
              warmup: int = 100, rounds: int = 10, budget: float = 256.0, min_growth: int = 64 * 1024,
              path_budget_s: float = 2.0) -> LeakCheck:
    """Measure ``fn(*args, **kwargs)`` as described above; raises :class:`LeakCheckFailed` over budget."""
    from otel_leak.detector import robust, tier2, tier3

    kwargs = kwargs or {}
    rounds = max(5, rounds)
    per_round = max(1, calls // rounds)
    for _ in range(warmup):
        fn(*args, **kwargs)
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start(FRAMES)
    try:
        gc.collect()
        xs, heap = [0.0], [tracemalloc.get_traced_memory()[0]]
        mid = end = None
        done = 0
        for r in range(rounds):
            for _ in range(per_round):
                fn(*args, **kwargs)
            done += per_round
            gc.collect()
            xs.append(float(done))
            heap.append(tracemalloc.get_traced_memory()[0])
            if r == int(rounds * 0.4):
                mid = tracemalloc.take_snapshot()
        end = tracemalloc.take_snapshot()
        slope = robust.theil_sen(xs, [float(h) for h in heap])
        ratio, tau = robust.saturation(xs, [float(h) for h in heap])
        saturating = ratio < SATURATED_RATIO and tau < (xs[-1] - xs[0]) / 2
        result = LeakCheck(calls=done, bytes_per_call=slope, growth_bytes=heap[-1] - heap[0],
                           saturating=saturating, heap=heap)
        if slope > budget and result.growth_bytes >= min_growth and not saturating:
            result.sites = tier2._sites(mid, end)
            if result.sites:
                result.retention_paths = tier3.retention_paths(result.sites[0], path_budget_s)
            raise LeakCheckFailed(result, budget)
        return result
    finally:
        if started:
            tracemalloc.stop()


@pytest.fixture
def leak_check() -> Callable[..., LeakCheck]:
    """``leak_check(fn, args=(), kwargs=None, *, calls=1000, warmup=100, rounds=10, budget=256,
    min_growth=65536)``: fail the test when ``fn`` keeps more than ``budget`` bytes per call."""

    def check(fn: Callable, *a: Any, **kw: Any) -> LeakCheck:
        try:
            return run_check(fn, *a, **kw)
        except LeakCheckFailed as exc:
            failed = str(exc)
        pytest.fail(failed, pytrace=False)  # outside the except: no chained traceback

    return check
