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


# A real worker's heap: Celery, its broker client, the OpenTelemetry SDK and otel-leak's integrations
# loaded (~500 modules), each case in a fresh interpreter so that what the test suite loaded before does
# not decide how far the walk has to go.
_WORKER_HEAP = """
import json, sys, tracemalloc
import celery, celery.app.task, celery.worker, kombu, redis
import opentelemetry.sdk.trace, opentelemetry.sdk.metrics
import otel_leak.integrations
from otel_leak.detector.settings import TIER3_BUDGET
from otel_leak.detector.tier2 import site_frame
from otel_leak.detector.tier3 import retention_paths

def site_of(obj):
    f, line = site_frame(tracemalloc.get_object_traceback(obj))
    return {"file": f, "line": line}

def report(paths):
    print(json.dumps({"paths": paths, "modules": len(sys.modules)}))

tracemalloc.start(32)  # the detector's default frame count
"""


def _in_worker_heap(tmp_path, body: str) -> dict:
    import json
    import subprocess
    import textwrap

    script = tmp_path / "case.py"
    script.write_text(_WORKER_HEAP + textwrap.dedent(body))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["modules"] > 400, res["modules"]
    return res


def test_a_method_cache_is_named_through_its_class(tmp_path):
    res = _in_worker_heap(tmp_path, """
        import functools, types
        mod = types.ModuleType("enricher_mod")
        sys.modules["enricher_mod"] = mod

        class Enricher:
            @functools.lru_cache(maxsize=None)
            def enrich(self, key):
                return b"e" * (4096 + key)

        mod.Enricher = Enricher
        e = Enricher()
        for k in range(300):
            e.enrich(k)
        report(retention_paths(site_of(e.enrich(299)), budget=TIER3_BUDGET.default))
    """)
    paths = res["paths"]
    assert paths and "_lru_cache_wrapper" in paths[0]["text"], paths


def test_a_holder_several_attributes_deep_in_a_library_module_is_named(tmp_path):
    """A logging handler buffering records: logging's globals -> manager -> logger -> handlers -> buffer,
    found with the default budget among a worker's modules (the walk looks at data before code)."""
    res = _in_worker_heap(tmp_path, """
        import logging, logging.handlers

        def main():
            log = logging.getLogger("audit_trail_test")
            handler = logging.handlers.BufferingHandler(capacity=10**9)
            log.addHandler(handler)
            log.propagate = False
            for i in range(300):
                log.warning("user %s did %s", i, "x" * (2000 + i))
            report(retention_paths(site_of(handler.buffer[-1].args[1]), budget=TIER3_BUDGET.default))

        main()
    """)
    paths = res["paths"]
    assert paths and "BufferingHandler.buffer" in paths[0]["text"], paths
    assert paths[0]["complete"]


def test_objects_kept_by_stored_exceptions_are_traced_back_to_the_global_that_keeps_them():
    """An exception kept in a list keeps its traceback, the traceback the frame, the frame its locals: the
    path goes on through the finished frame up to the module global (only a running stack is a root)."""
    mod = _module("error_log_mod")
    mod.ERRORS = []

    def handle(k):
        try:
            blob = b"k" * (5000 + k)
            raise ValueError(f"bad input {k} ({len(blob)} bytes)")
        except ValueError as exc:
            mod.ERRORS.append(exc)

    tracemalloc.start(8)
    try:
        for k in range(200):
            handle(k)
        paths = retention_paths(_site_of(mod.ERRORS[-1].__traceback__.tb_frame.f_locals["blob"]), budget=1.0)
    finally:
        tracemalloc.stop()
        del sys.modules["error_log_mod"]
    assert paths and "handle() local 'blob'" in paths[0]["text"], paths
    assert "error_log_mod['ERRORS']" in paths[0]["text"] and paths[0]["complete"], paths[0]["text"]
    assert "ValueError.__traceback__" in paths[0]["text"], paths[0]["text"]  # the link is named


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


def test_handlers_added_to_a_logger_per_tenant_are_traced_to_the_logger_manager(tmp_path):
    """One logger per tenant, each given a handler that keeps the tenant's data: the holder is logging's
    manager (its loggerDict), a few attributes below the logging module's globals, among a worker's modules."""
    res = _in_worker_heap(tmp_path, """
        import logging

        def main():
            last = None
            for k in range(400):
                h = logging.NullHandler()
                h.buffer = last = b"l" * (4000 + k)
                logging.getLogger(f"worker.tenant.{k}").addHandler(h)
            # a tenth of the default budget: the cheap pass looks at the newest loggers' handlers first
            report(retention_paths(site_of(last), budget=TIER3_BUDGET.default / 10))

        main()
    """)
    paths = res["paths"]
    assert paths and "loggerDict" in paths[0]["text"] and "NullHandler.buffer" in paths[0]["text"], paths
    assert paths[0]["complete"]


def test_data_kept_in_the_defaults_of_registered_callbacks_is_traced_to_the_registry(tmp_path):
    """Listeners registered in a module-level list, each a lambda that keeps its event's data as a default
    argument: the holder is the list, through the function's defaults."""
    res = _in_worker_heap(tmp_path, """
        import types
        mod = types.ModuleType("listeners_mod")
        sys.modules["listeners_mod"] = mod
        mod._LISTENERS = []

        def main():
            last = None
            for k in range(400):
                data = last = b"r" * (4000 + k)
                mod._LISTENERS.append(lambda event, data=data: len(data) + len(event))
            report(retention_paths(site_of(last), budget=TIER3_BUDGET.default))

        main()
    """)
    paths = res["paths"]
    assert paths and "_LISTENERS" in paths[0]["text"], paths
    assert paths[0]["complete"]


def test_otel_leaks_own_objects_are_never_a_retention_path():
    """Data that one of otel-leak's own objects also references (reached from the worker's globals, as
    its processor is through the SDK's tracer) is traced to the worker's holder, even when the path
    through otel-leak's object is shorter: otel-leak's internals are bounded and never the leak."""
    from otel_leak.processor import TaskStats

    class Job:
        pass

    mod = _module("tenant_jobs_mod")
    tracemalloc.start(8)
    try:
        mod.stats = TaskStats()  # first in the module's globals, and one step closer to the data
        mod.job = Job()
        mod.job.parts = {"chunks": []}
        payload = b"y" * 6000
        mod.stats.last = payload
        mod.job.parts["chunks"].append(payload)
        paths = retention_paths(_site_of(payload), budget=0.5)
    finally:
        tracemalloc.stop()
        del sys.modules["tenant_jobs_mod"]
    assert paths, "no retention path"
    assert "TaskStats" not in paths[0]["text"], paths[0]["text"]
    assert "Job.parts" in paths[0]["text"] and "tenant_jobs_mod['job']" in paths[0]["text"], paths[0]["text"]
