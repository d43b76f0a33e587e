"""What a tool needs inside the worker process (the command-line wrappers are in ``bench/peers.py``).

``setup(tool, out)`` runs before the worker's first task and returns a ``wrap(name)`` context factory for
the task span (or None); ``finish(tool, out)`` runs after the last. Both run once per worker process (each
Celery child calls them from its own process-init and -shutdown signals; tracemalloc's baseline snapshot
is taken once in the Celery main process, before it forks the children).
"""

from __future__ import annotations

import json
import os
import threading
import tracemalloc

_state: dict = {}


def setup(tool: str, out: str):
    os.makedirs(out, exist_ok=True)
    if tool in ("sdk-spans", "otel-leak", "otel-leak-tier2"):
        return _spans(tool)
    if tool.startswith("tracemalloc") and os.environ.get("PEERS_ANSWER"):  # the diff only where it is read
        _state["snap0"] = tracemalloc.take_snapshot()
    elif tool == "pyroscope":
        import pyroscope

        pyroscope.configure(application_name="peers", server_address=os.environ["PEERS_SINK"], mem_enabled=True)
    elif tool == "system-metrics":
        from opentelemetry.instrumentation.system_metrics import SystemMetricsInstrumentor
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader

        f = open(os.path.join(out, f"metrics.{os.getpid()}.jsonl"), "w")
        exporter = ConsoleMetricExporter(out=f, formatter=lambda d: d.to_json(indent=None) + "\n")
        # 1 s instead of the SDK's 60 s, so that a run of seconds shows a series, as hours would
        mp = MeterProvider([PeriodicExportingMetricReader(exporter, export_interval_millis=1000)])
        SystemMetricsInstrumentor().instrument(meter_provider=mp)
        _state["mp"] = mp
    return None


def _spans(tool: str):
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import SpanKind

    tp, mp = TracerProvider(), MeterProvider()
    trace.set_tracer_provider(tp)
    metrics.set_meter_provider(mp)
    if tool != "sdk-spans":
        import otel_leak

        otel_leak.instrument(tracer_provider=tp, meter_provider=mp)
    if tool == "otel-leak-tier2":
        force_tier2()
    tracer = tp.get_tracer("peers")

    def wrap(name):
        return tracer.start_as_current_span(name, kind=SpanKind.CONSUMER, attributes={"otel_leak.task.name": name})

    return wrap


def force_tier2(out: str | None = None) -> None:
    """Tier-2 windows back to back until finish(): otel-leak has no setting that starts one, so this calls
    the detector's own window function (``otel_leak.detector.tier2.run_window``, internal) from a thread,
    as the detector does on suspicion, with its configured frames and without tier 3."""
    from otel_leak import detector
    from otel_leak.detector import tier2

    det = detector.active()
    stop = threading.Event()
    _state["tier2"] = stop, []

    def loop():
        while not stop.is_set():
            res = tier2.run_window(det.stats, window=det.tier2_window, frames=det.tier2_frames, tier3=False,
                                   tier3_budget=0.0, stop_event=stop)
            _state["tier2"][1].append(round(res.duration, 3))

    threading.Thread(target=loop, name="peers-tier2", daemon=True).start()


def finish(tool: str, out: str) -> None:
    pid = os.getpid()
    if "tier2" in _state:
        _state["tier2"][0].set()
        _dump(out, f"tier2.{pid}.json", {"windows_s": _state["tier2"][1]})
    if tool.startswith("tracemalloc") and "snap0" in _state:
        frames = tracemalloc.get_traceback_limit()
        snap = tracemalloc.take_snapshot()
        diff = snap.compare_to(_state["snap0"], "traceback" if frames > 1 else "lineno")[:3]
        _dump(out, f"tracemalloc.{pid}.json", {"frames": frames, "top": [
            {"size_diff": st.size_diff, "count_diff": st.count_diff,
             "traceback": [f"{fr.filename}:{fr.lineno}" for fr in st.traceback]} for st in diff]})
    elif tool == "pyroscope":
        import pyroscope

        pyroscope.shutdown()
    elif tool == "system-metrics" and "mp" in _state:
        _state["mp"].shutdown()


def _dump(out: str, name: str, doc: dict) -> None:
    with open(os.path.join(out, name), "w") as f:
        json.dump(doc, f)
