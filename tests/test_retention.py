"""Tier 3 names what holds leaked objects, within its time budget, on a heap with many other objects."""

from __future__ import annotations

import sys
import tracemalloc
import types

from otel_leak.detector.tier2 import site_frame
from otel_leak.detector.tier3 import retention_paths


def _module(name: str) -> types.ModuleType:
    mod = types.ModuleType(name)
    sys.modules[name] = mod
    return mod


def _site_of(obj) -> dict:
    f, line = site_frame(tracemalloc.get_object_traceback(obj))
    return {"file": f, "line": line}


def test_a_module_dict_that_grows_is_named_with_its_module_and_global():
    mod = _module("tenant_cache_mod")
    clutter = [{"i": i, "s": str(i)} for i in range(150_000)]  # a heap of unrelated containers
    tracemalloc.start(8)
    try:
        mod.REGISTRY = {}
        for k in range(500):
            mod.REGISTRY[k] = b"x" * (2048 + k)
        paths = retention_paths(_site_of(mod.REGISTRY[499]), budget=0.25)
    finally:
        tracemalloc.stop()
        del sys.modules["tenant_cache_mod"]
    assert paths, "no retention path"
    assert "tenant_cache_mod['REGISTRY']" in paths[0]["text"], paths[0]["text"]
    assert paths[0]["complete"]
    del clutter


def test_a_method_cache_is_named_through_its_class():
    import functools

    mod = _module("enricher_mod")

    class Enricher:
        @functools.lru_cache(maxsize=None)
        def enrich(self, key):
            return b"e" * (4096 + key)

    mod.Enricher = Enricher
    tracemalloc.start(8)
    try:
        e = Enricher()
        for k in range(300):
            e.enrich(k)
        paths = retention_paths(_site_of(e.enrich(299)), budget=0.5)
    finally:
        tracemalloc.stop()
        del sys.modules["enricher_mod"]
    assert paths and "_lru_cache_wrapper" in paths[0]["text"], paths



def test_a_holder_several_attributes_deep_in_a_library_module_is_named():
    """A logging handler buffering records: logging's globals -> manager -> logger -> handlers -> buffer."""
    import logging
    import logging.handlers

    tracemalloc.start(8)
    log = logging.getLogger("audit_trail_test")
    handler = logging.handlers.BufferingHandler(capacity=10**9)
    log.addHandler(handler)
    log.propagate = False
    try:
        for i in range(300):
            log.warning("user %s did %s", i, "x" * (2000 + i))
        paths = retention_paths(_site_of(handler.buffer[-1].args[1]), budget=1.0)
    finally:
        tracemalloc.stop()
        log.removeHandler(handler)
    assert paths and "BufferingHandler.buffer" in paths[0]["text"], paths
    assert paths[0]["complete"]


def test_a_local_of_another_threads_running_loop_is_named_with_its_function():
    import threading

    ready, done = threading.Event(), threading.Event()
    box = {}

    def consume_forever():
        seen = []
        for i in range(400):
            seen.append(bytearray(1500 + i))
        box["last"] = seen[-1]
        ready.set()
        done.wait(10)

    tracemalloc.start(8)
    th = threading.Thread(target=consume_forever)
    th.start()
    try:
        assert ready.wait(10)
        site = _site_of(box.pop("last"))
        paths = retention_paths(site, budget=1.0)
    finally:
        done.set()
        th.join()
        tracemalloc.stop()
    assert paths and "consume_forever() local 'seen'" in paths[0]["text"], paths


def test_the_walk_never_lets_a_user_thread_fail_building_a_tuple(monkeypatch):
    """``tuple(generator)`` fills a tuple only its builder references; a walk that held one across a thread
    switch (as anything from ``gc.get_objects`` or ``gc.get_referrers`` does) made it raise SystemError in
    the user's code. The walk runs on its own thread for its whole budget (the site is never found) while
    this thread builds tuples."""
    import gc
    import threading
    import time

    def refuse(*a, **k):
        raise AssertionError("tier 3 must not enumerate the collector's objects or search referrers")

    monkeypatch.setattr(gc, "get_objects", refuse)
    monkeypatch.setattr(gc, "get_referrers", refuse)
    clutter = [[i, str(i)] for i in range(50_000)]
    stop = threading.Event()
    walks = []

    def walk():
        while not stop.is_set():
            walks.append(retention_paths({"file": "/nowhere.py", "line": 1}, budget=0.2))

    tracemalloc.start(4)
    th = threading.Thread(target=walk)
    th.start()
    errors = built = 0
    try:
        end = time.monotonic() + 3.0
        while time.monotonic() < end:
            try:
                tuple(x for x in range(40))
                built += 1
            except SystemError:
                errors += 1
    finally:
        stop.set()
        th.join()
        tracemalloc.stop()
    assert walks and all(w == [] for w in walks)
    assert errors == 0 and built > 1000, (errors, built)
    del clutter
