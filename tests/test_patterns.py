"""The leak pattern and its remedy, from the retention paths tier 3 really finds and the allocator's evidence."""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import queue
import sys
import tracemalloc
import types

import pytest

from otel_leak.detector.patterns import PATTERNS, classify
from otel_leak.detector.tier2 import site_frame
from otel_leak.detector.tier3 import retention_paths


def _module(name: str) -> types.ModuleType:
    mod = types.ModuleType(name)
    sys.modules[name] = mod
    return mod


def _paths_to(obj) -> list[dict]:
    f, line = site_frame(tracemalloc.get_object_traceback(obj))
    return retention_paths({"file": f, "line": line}, budget=0.5)


@pytest.fixture
def traced():
    tracemalloc.start(8)
    yield
    tracemalloc.stop()


def test_a_module_dict_is_an_unbounded_container(traced):
    mod = _module("pattern_cache_mod")
    mod.CACHE = {}
    for k in range(200):
        mod.CACHE[k] = b"c" * (3000 + k)
    got = classify("python_heap", _paths_to(mod.CACHE[199]))
    del sys.modules["pattern_cache_mod"]
    assert got["pattern"] == "unbounded_container" and got["confidence"] >= 0.5, got
    assert "pattern_cache_mod['CACHE']" in got["evidence"] and "bound it" in got["remedy"]


def test_an_lru_cache_on_a_method_is_unbounded_memoisation(traced):
    mod = _module("pattern_lru_mod")

    class Enricher:
        @functools.lru_cache(maxsize=None)
        def enrich(self, k):
            return b"e" * (3000 + k)

    mod.ENRICHER = Enricher()
    for k in range(200):
        last = mod.ENRICHER.enrich(k)
    got = classify("python_heap", _paths_to(last))
    del sys.modules["pattern_lru_mod"]
    assert got["pattern"] == "unbounded_memoisation", (got, _paths_to(last) if False else None)
    assert "maxsize" in got["remedy"]


def test_handlers_added_per_tenant_are_handler_registration(traced):
    for k in range(100):
        h = logging.NullHandler()
        h.buffer = last = b"l" * (3000 + k)
        logging.getLogger(f"pattern.tenant.{k}").addHandler(h)
    try:
        got = classify("python_heap", _paths_to(last))
    finally:
        for k in range(100):
            lg = logging.getLogger(f"pattern.tenant.{k}")
            for h in list(lg.handlers):
                lg.removeHandler(h)
    assert got["pattern"] == "handler_registration", got
    assert "removeHandler" in got["remedy"]


def test_listener_lambdas_are_handler_registration(traced):
    mod = _module("pattern_listeners_mod")
    mod.LISTENERS = []
    for k in range(200):
        data = b"r" * (3000 + k)
        mod.LISTENERS.append(lambda event, data=data: len(data))
    got = classify("python_heap", _paths_to(data))
    del sys.modules["pattern_listeners_mod"]
    assert got["pattern"] == "handler_registration", got


def test_kept_exceptions(traced):
    mod = _module("pattern_errors_mod")
    mod.ERRORS = []

    def handle(k):
        try:
            blob = b"k" * (3000 + k)
            raise ValueError(len(blob))
        except ValueError as exc:
            mod.ERRORS.append(exc)

    for k in range(100):
        handle(k)
    blob = mod.ERRORS[-1].__traceback__.tb_frame.f_locals["blob"]
    got = classify("python_heap", _paths_to(blob))
    del sys.modules["pattern_errors_mod"]
    assert got["pattern"] == "kept_exceptions", got
    assert "with_traceback(None)" in got["remedy"]


def test_a_queue_filled_faster_than_drained_is_a_backlog(traced):
    mod = _module("pattern_queue_mod")
    mod.JOBS = queue.Queue()
    mod.BACKLOG = collections.deque()
    for k in range(200):
        mod.JOBS.put(last_q := b"q" * (3000 + k))
    got = classify("python_heap", _paths_to(last_q))
    for k in range(200):
        mod.BACKLOG.append(last_d := b"d" * (3000 + k))
    got_d = classify("python_heap", _paths_to(last_d))
    del sys.modules["pattern_queue_mod"]
    assert got["pattern"] == "queue_backlog" and got["confidence"] >= 0.8, got
    assert got_d["pattern"] == "queue_backlog", got_d


def test_asyncio_tasks_kept_in_a_set(traced):
    mod = _module("pattern_tasks_mod")
    mod.BACKGROUND = set()

    async def work(data):
        await asyncio.sleep(3600)

    async def main():
        for k in range(100):
            data = b"a" * (3000 + k)
            mod.BACKGROUND.add(asyncio.ensure_future(work(data)))
        await asyncio.sleep(0)
        return data

    loop = asyncio.new_event_loop()
    try:
        data = loop.run_until_complete(main())
        got = classify("python_heap", _paths_to(data))
    finally:
        for t in mod.BACKGROUND:
            t.cancel()
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()
        del sys.modules["pattern_tasks_mod"]
    assert got["pattern"] in ("asyncio_tasks",), got


def test_native_and_allocator_evidence_without_a_path():
    assert classify("native_or_fragmentation", [], {"explains": "native_in_use"})["pattern"] == "native_memory"
    assert classify("native_or_fragmentation", [], {"explains": "allocator_free_retained"})["pattern"] == \
        "allocator_retention"
    assert classify("native_or_fragmentation", [], {"explains": "outside_malloc"})["pattern"] == "outside_malloc"
    assert classify("python_heap", [], None, gc_enabled=False)["pattern"] == "uncollected_cycles"
    unknown = classify("python_heap", [], None)
    assert unknown["pattern"] == "unknown" and unknown["confidence"] == 0.0


def test_every_pattern_has_a_title_and_a_specific_remedy():
    for p in PATTERNS.values():
        assert p.title and len(p.remedy) > 80, p


def test_the_patterns_runbook_is_generated_from_the_patterns():
    from pathlib import Path

    from otel_leak.detector.patterns import runbook_markdown

    page = Path(__file__).resolve().parent.parent / "docs" / "patterns.md"
    assert page.read_text() == runbook_markdown(), "docs/patterns.md is stale: run `make generate`"
