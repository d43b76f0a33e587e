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

