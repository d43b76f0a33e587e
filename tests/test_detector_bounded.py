"""Bounded holders still filling (otel_leak.detector.bounded): what is found, what explains a trend, what
never runs. The holders live in a module made for each test (module globals and module-level classes are
where the search looks); the worker-level case is in tests/test_detector_e2e.py."""

from __future__ import annotations

import collections
import functools
import gc
import sys
import types
import weakref

import pytest

from otel_leak.detector import bounded as B

KiB = 1024


@pytest.fixture
def module():
    m = types.ModuleType("otel_leak_test_bounded_holders")
    sys.modules[m.__name__] = m
    yield m
    del sys.modules[m.__name__]


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _fills(clock=None) -> B.BoundedFills:
    return B.BoundedFills(clock=clock or Clock())


def _mine(fills: B.BoundedFills, module) -> dict[str, tuple]:
    """name -> (fill, bound, bytes per unit) of the test module's holders, as the last look read them."""
    out = {}
    for i, (name, ref, bound) in fills.holders.items():
        if name.startswith(module.__name__):
            out[name] = (fills.history[i][-1][1], bound, B.bytes_per_unit(ref()))
    return out


def test_finds_bounded_memoisers_and_deques_and_ignores_unbounded_ones(module):
    module.tile = functools.lru_cache(maxsize=50)(lambda k: bytes(8 * KiB))
    module.memo = functools.lru_cache(maxsize=None)(lambda k: bytes(8 * KiB))
    module.recent = collections.deque(maxlen=20)
    module.backlog = collections.deque()

    class Geo:
        @functools.lru_cache(maxsize=10)
        def lookup(self, k):
            return bytes(KiB)

        @staticmethod
        @functools.lru_cache(maxsize=7)
        def shape(k):
            return k

    module.Geo = Geo
    for i in range(5):
        module.tile(i)
        module.memo(i)
        module.recent.append(bytes(2 * KiB))
        Geo().lookup(i)
    fills = _fills()
    fills.look()
    found = _mine(fills, module)
    n = module.__name__
    assert set(found) == {f"{n}.tile", f"{n}.recent", f"{n}.Geo.lookup", f"{n}.Geo.shape"}
    fill, bound, per = found[f"{n}.tile"]
    assert (fill, bound) == (5, 50) and 8 * KiB < per < 9 * KiB  # the result and its int key
    fill, bound, per = found[f"{n}.recent"]
    assert (fill, bound) == (5, 20) and 2 * KiB <= per < 3 * KiB
    assert found[f"{n}.Geo.shape"][:2] == (0, 7)


def test_the_entries_taken_over_the_trend_explain_its_growth_and_not_a_larger_one(module):
    module.tile = functools.lru_cache(maxsize=1000)(lambda k: bytes(64 * KiB))
    clock = Clock()
    fills = _fills(clock)
    fills.look()
    start = clock.t
    for step in range(10):  # 10 entries a second for 10 s, a look at each window close
        for i in range(10):
            module.tile(step * 10 + i)
        clock.t += 1
        fills.look()
    # the trend's span began before the first entries: all 100 (6.3 MiB) count
    why = fills.explains(growth=7e6, since=start - 2)
    assert why and f"{module.__name__}.tile 100/1000 entries" in why and "~62.6 MiB at its bound" in why, why
    assert fills.explains(growth=20e6, since=start - 2) is None  # a third of that growth: declared
    # over the last 3 s of the fill only 30 entries (~2 MiB): they do not explain 7 MB
    assert fills.explains(growth=7e6, since=start + 7) is None


def test_a_cache_that_stays_full_or_an_unbounded_one_explains_nothing(module):
    module.full = functools.lru_cache(maxsize=10)(lambda k: bytes(64 * KiB))
    module.memo = functools.lru_cache(maxsize=None)(lambda k: bytes(64 * KiB))
    for i in range(20):
        module.full(i)
    clock = Clock()
    fills = _fills(clock)
    fills.look()
    start = clock.t
    for i in range(20, 120):
        module.full(i)  # evicting: its fill stays at its bound
        module.memo(i)
        clock.t += 0.1
        fills.look()
    assert fills.explains(growth=6e6, since=start) is None


def test_a_holder_found_late_counts_from_when_it_was_found_and_nothing_is_kept_alive(module):
    clock = Clock()
    fills = _fills(clock)
    fills.look()
    start = clock.t
    module.tile = functools.lru_cache(maxsize=100)(lambda k: bytes(64 * KiB))
    for i in range(50):
        module.tile(i)  # filled before any search saw the cache
    clock.t += fills.search_wait()
    fills.look()  # found now, 50 entries already in
    for i in range(50, 60):
        module.tile(i)
    clock.t += 1
    assert fills.explains(growth=4e6, since=start) is None  # 10 entries (640 KiB) since it was found
    assert fills.explains(growth=1e6, since=start)
    ref = weakref.ref(module.tile)
    del module.tile
    gc.collect()
    assert ref() is None  # a holder is referenced weakly
    fills.look()
    assert _mine(fills, module) == {}


def test_a_search_costs_little_and_is_repeated_only_when_due(module):
    clock = Clock()
    fills = _fills(clock)
    fills.look()
    fills.look()
    assert fills.searches == 1
    clock.t += fills.search_wait()
    fills.look()
    assert fills.searches == 2
    assert fills.cost < 0.5  # over this test process's modules (a few ms to tens of ms)


def test_no_application_code_runs_while_looking(module):
    calls = []

    class Meta(type):
        def __getattribute__(cls, name):
            calls.append(("meta", name))
            return super().__getattribute__(name)

        def __eq__(cls, other):
            calls.append(("eq",))
            return NotImplemented

        def __hash__(cls):
            calls.append(("hash",))
            return 1

    class Sneaky(metaclass=Meta):
        lookup = functools.lru_cache(maxsize=3)(lambda k: k)

    class Loud:
        def __getattr__(self, name):
            calls.append(("getattr", name))
            raise AttributeError(name)

        def __getattribute__(self, name):
            calls.append(("getattribute", name))
            return object.__getattribute__(self, name)

    module.Sneaky = Sneaky
    module.sneaky = Sneaky()  # its type's metaclass hashes and compares in Python
    module.loud = Loud()
    module.Loud = Loud
    calls.clear()
    fills = _fills()
    fills.look()
    assert calls == []
    assert f"{module.__name__}.Sneaky.lookup" in _mine(fills, module)  # a class of any metaclass is searched


def test_a_cachetools_cache_is_a_bounded_holder(module):
    import cachetools  # a dev dependency: installed by scripts/setup-python.sh

    module.ttl = cachetools.TTLCache(maxsize=500, ttl=600)
    module.lru = cachetools.LRUCache(maxsize=64)
    clock = Clock()
    fills = _fills(clock)
    fills.look()
    start = clock.t
    for i in range(40):
        module.ttl[i] = bytes(16 * KiB)
        module.lru[i] = i
        clock.t += 0.1
        fills.look()
    why = fills.explains(growth=700_000, since=start)  # 40 x 16 KiB
    assert why and f"{module.__name__}.ttl 40/500 entries" in why, why
    assert _mine(fills, module)[f"{module.__name__}.lru"][:2] == (40, 64)
