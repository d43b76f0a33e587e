"""After a fork, in the child: the SDK's metric export lock is usable even if a parent thread held it, and the
sampler restarts only once every part has reset (its first tick never meets a half-reset detector)."""

from __future__ import annotations

import os
import threading
import time

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader
from opentelemetry.sdk.trace import TracerProvider

from otel_leak.instrumentor import Runtime


def _in_child(check) -> int:
    pid = os.fork()
    if pid == 0:  # the child: report by exit status only
        code = 1
        try:
            code = 0 if check() else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_child_gets_a_free_export_lock_and_a_running_sampler(monkeypatch):
    monkeypatch.setenv("OTEL_PYTHON_LEAK_DETECTOR", "true")
    reader = PeriodicExportingMetricReader(ConsoleMetricExporter(out=open(os.devnull, "w")),
                                           export_interval_millis=3_600_000)
    mp = MeterProvider(metric_readers=[reader])
    tp = TracerProvider()
    rt = Runtime(tp, mp)
    try:
        held = threading.Event()
        release = threading.Event()

        def exporting():  # a parent thread in the middle of an export at the moment of the fork
            with reader._export_lock:
                held.set()
                release.wait(10)

        t = threading.Thread(target=exporting, daemon=True)
        t.start()
        assert held.wait(5)

        def check() -> bool:
            if not reader._export_lock.acquire(timeout=2):
                return False
            reader._export_lock.release()
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:  # the sampler is back, and the detector took its samples
                det = rt.detector
                if rt.sampler._thread is not None and rt.sampler._thread.is_alive() and det.last is not None:
                    return det.error is None and det.pid == os.getpid()
                time.sleep(0.05)
            return False

        assert _in_child(check) == 0
        release.set()
        t.join(5)
    finally:
        rt.shutdown()
        mp.shutdown()
        tp.shutdown()


def test_a_fork_during_a_collection_leaves_the_child_a_working_meter_provider(monkeypatch):
    """A parent thread collecting (a slow observable callback) while the process forks: the child creates an
    observable instrument (taskiq's middleware does in each worker process) and collects, instead of
    waiting forever for the collection lock the parent's thread held at the fork."""
    from opentelemetry.metrics import Observation
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    monkeypatch.setenv("OTEL_PYTHON_LEAK_DETECTOR", "false")
    reader = InMemoryMetricReader()
    mp = MeterProvider(metric_readers=[reader])
    tp = TracerProvider()
    rt = Runtime(tp, mp)
    try:
        in_callback = threading.Event()

        def slow(options):
            in_callback.set()
            time.sleep(0.5)
            return [Observation(1)]

        mp.get_meter("test").create_observable_gauge("slow", callbacks=[slow])
        t = threading.Thread(target=reader.get_metrics_data, daemon=True)
        t.start()
        assert in_callback.wait(5)
        def check() -> bool:
            done = threading.Event()

            def use():
                mp.get_meter("child").create_observable_gauge("mine", callbacks=[lambda o: [Observation(2)]])
                reader.get_metrics_data()
                done.set()

            threading.Thread(target=use, daemon=True).start()
            return done.wait(5)

        assert _in_child(check) == 0
        t.join(5)
    finally:
        rt.shutdown()
        mp.shutdown()
        tp.shutdown()
