"""What the detector tells the world: the per-process report file, the observable gauges and the diagnosis
log record, all read from a detector's state (verdict, kind, suspects, sites, trends, series, events).

The functions take the detector and never change its diagnosis; the only state written here is the
detector's "report write failed" flag, so that the failure is logged once.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

import gc

from otel_leak import names
from otel_leak.detector.report import SCHEMA, write_atomic
from otel_leak.detector import patterns, profile

_log = logging.getLogger("otel_leak")
_diag_log = logging.getLogger(names.LOG_DIAGNOSIS)

MAX_SERIES = 600
BRIEF = 5  # attributions kept in events and tier-2 run records


class Series:
    """Downsampled bounded series: when full, every other point goes and the stride doubles."""

    def __init__(self, cap: int = MAX_SERIES) -> None:
        self.cap = cap
        self.cols = {"t_s": [], "rss": [], "floor": [], "heap_blocks": []}
        self.stride = 1
        self.n = 0

    def add(self, t_s: float, rss: int, floor: int, heap: int) -> None:
        self.n += 1
        if (self.n - 1) % self.stride:
            return
        c = self.cols
        c["t_s"].append(round(t_s, 3))
        c["rss"].append(rss)
        c["floor"].append(floor)
        c["heap_blocks"].append(heap)
        if len(c["t_s"]) >= self.cap:
            for k in c:
                c[k] = c[k][::2]
            self.stride *= 2

    def as_dict(self) -> dict:
        return {k: list(v) for k, v in self.cols.items()}


# ---------------------------------------------------------------------------------------------- records
def attribution_brief(attrs) -> list[dict]:
    """The first BRIEF attributions, rounded, for events and run records."""
    return [
        {"task": a.task, "bytes_per_call": round(a.bytes_per_call, 1), "confidence": a.confidence,
         "share": a.share, "t": a.t}
        for a in attrs[:BRIEF]
    ]


def tier2_run(res, start_t: float | None) -> dict:
    """The report's record of one tier-2 window (``start_t``: the detector's first sample time)."""
    return {
        "t_s": round(res.started_t - start_t, 3) if start_t else 0.0,
        "duration_s": round(res.duration, 3),
        "tasks": res.tasks,
        "python_growth_bytes_per_s": round(res.python_growth_per_s, 1),
        "python_growth_bytes_per_task": (
            None if res.python_growth_per_task is None else round(res.python_growth_per_task, 1)),
        "error": res.error,
        "phases": res.phases,
        "attribution": attribution_brief(res.attribution),
        "attribution_method": getattr(res, "method", "regression"),
    }


def confidence(det) -> float:
    """Tier 1's confidence, raised a little by a Python-heap site, capped while inconclusive, 0 on error."""
    if det.error is not None:
        return 0.0
    c = det.tier1.confidence()
    if det.verdict == "leak" and det.sites and det.kind == "python_heap":
        c = min(0.99, c + 0.05)
    if det.verdict == "inconclusive":
        c = min(c, 0.5)
    return float(c)


def pattern(det) -> dict | None:
    """The leak's pattern and remedy (``patterns.classify``) while the verdict is leak, else None."""
    if det.verdict != "leak":
        return None
    try:
        return patterns.classify(det.kind, list(det.retention), det.allocator, gc.isenabled())
    except Exception:
        return None


# ---------------------------------------------------------------------------------------------- log
def diagnosis(det) -> dict:
    tr = det.tier1.trend
    return {
        "verdict": det.verdict,
        "confidence": confidence(det),
        "kind": det.kind,
        "floor_slope_bytes_per_s": round(tr.slope, 1),
        "detected_at_s": det.detected_at_s,
        "suspects": det.suspects,
        "allocation_sites": [{k: v for k, v in s.items() if k != "traceback"} for s in det.sites[:3]],
        "retention_paths": [p.get("text") for p in det.retention],
        "allocator": det.allocator,
        "pattern": pattern(det),
        "pid": det.pid,
    }


def emit_log(det) -> None:
    """One WARNING record on the diagnosis logger, with the diagnosis as JSON in its attributes."""
    try:
        d = diagnosis(det)
        top = det.suspects[0] if det.suspects else None
        site = det.sites[0] if det.sites else None
        msg = "otel-leak: memory leak (%s, confidence %.2f, floor +%.0f B/s)" % (
            d["kind"], d["confidence"], d["floor_slope_bytes_per_s"])
        if top:
            msg += "; task %r retains ~%.0f B/call" % (top["task"], top["retained_bytes_per_call"])
        if site:
            msg += "; top site %s:%s" % (site["file"], site["line"])
        pat = d["pattern"]
        if pat and pat["pattern"] != "unknown":
            msg += "; pattern: %s. %s" % (pat["title"], pat["remedy"])
        extra = {
            names.LOG_DIAGNOSIS: json.dumps(d, default=str),
            names.ATTR_DETECTOR_VERDICT: det.verdict,
        }
        if top:
            extra[names.ATTR_TASK_NAME] = top["task"]
        _diag_log.warning(msg, extra=extra)
    except Exception:
        pass


def add_log_handler(logger_provider) -> None:
    """Send the diagnosis logger to ``logger_provider``, unless an OpenTelemetry handler already does."""
    if logger_provider is None or not hasattr(logger_provider, "add_log_record_processor"):
        return
    try:
        from opentelemetry.sdk._logs import LoggingHandler

        def has(lg):
            return any(isinstance(h, LoggingHandler) for h in lg.handlers)

        if has(logging.getLogger()) or has(_diag_log) or has(logging.getLogger("otel_leak")):
            return
        _diag_log.addHandler(LoggingHandler(logger_provider=logger_provider))
    except Exception:
        pass


# ---------------------------------------------------------------------------------------------- gauges
def make_gauges(meter, det) -> list:
    """Observable gauges, per process and per suspected task type.

    Every data point carries ``process.pid`` (read at callback time, so a forked prefork child reports
    its own pid: children share their parent's resource and would otherwise collide, as in
    ``otel_leak.metrics``); per-task points also carry the task identity.
    """
    from opentelemetry.metrics import Observation

    def pid_attrs(**extra) -> dict:
        a = {names.SPAN_PID: os.getpid()}
        a.update(extra)
        return a

    def task_attrs(task: str) -> dict:
        return pid_attrs(**{names.ATTR_TASK_NAME: task})

    def verdict_cb(options):
        out = [Observation(1 if det.verdict == "leak" else 0, pid_attrs())]
        out += [Observation(1, task_attrs(s["task"])) for s in det.suspects]
        return out

    def conf_cb(options):
        out = [Observation(confidence(det), pid_attrs(**{names.ATTR_DETECTOR_VERDICT: det.verdict}))]
        out += [Observation(s["confidence"], task_attrs(s["task"])) for s in det.suspects]
        return out

    def retained_cb(options):
        return [Observation(s["retained_bytes_per_call"], task_attrs(s["task"])) for s in det.suspects]

    def slope_cb(options):
        return [Observation(det.tier1.trend.slope, pid_attrs())] if det.tier1.windows else []

    gauges = []
    for metric, cb in (
        (names.DETECTOR_VERDICT, verdict_cb),
        (names.DETECTOR_CONFIDENCE, conf_cb),
        (names.DETECTOR_RETAINED_PER_CALL, retained_cb),
        (names.DETECTOR_FLOOR_SLOPE, slope_cb),
    ):
        def safe(options, cb=cb):
            try:
                return cb(options)
            except Exception:
                return []

        gauges.append(
            meter.create_observable_gauge(metric.name, callbacks=[safe], unit=metric.unit, description=metric.description)
        )
    return gauges


# ---------------------------------------------------------------------------------------------- report
def build_report(det, final: bool = False) -> dict:
    """The per-process report (schema ``SCHEMA``); the caller holds the detector's lock."""
    last = det.last
    t1 = det.tier1
    dur = (last.t - det.start_t) if last is not None and det.start_t is not None else 0.0
    verdict = det.verdict if det.error is None else "inconclusive"
    tier2_share = det.tier2_time / dur if dur > 0 else 0.0
    counts = dict(det.stats.counts) if det.stats is not None else (dict(last.task_counts) if last else {})
    return {
        "schema": SCHEMA,
        "verdict": verdict,
        "confidence": confidence(det),
        "detected_at_s": det.detected_at_s,
        "detected_at_tasks": det.detected_at_tasks,
        "duration_s": round(max(0.0, dur), 3),
        "tasks_observed": int(last.tasks_total) if last is not None else 0,
        "memory": {
            "kind": det.kind if verdict == "leak" else None,
            "rss_start_bytes": det.first_rss,
            "rss_end_bytes": last.rss if last is not None else None,
            "floor_slope_bytes_per_s": round(t1.trend.slope, 1) if t1.windows else None,
            "allocator": det.allocator,
        },
        "suspects": list(det.suspects) if verdict == "leak" else [],
        "allocation_sites": list(det.sites),
        "retention_paths": list(det.retention),
        "pattern": pattern(det) if verdict == "leak" else None,
        "pid": det.pid,
        "ppid": os.getppid(),
        "argv": [str(a) for a in sys.argv],
        "start_unix": det.start_unix,
        "updated_unix": time.time(),
        "final": final,
        "error": det.error,
        "task_counts": {str(k): int(v) for k, v in counts.items()},
        "profile": profile.for_report(det, dur, final),
        "trend": t1.trend.as_dict(),
        "trends": {k: v.as_dict() for k, v in t1.trends.items()},
        "tier2": {
            "seconds": round(det.tier2_time, 3),
            "share": round(tier2_share, 4),
            "runs": list(det.tier2_runs),
        },
        "series": det.series.as_dict(),
        "events": list(det.events),
        "guard": det.guard.for_report() if getattr(det, "guard", None) is not None else None,  # otel_leak.guard
    }


def write_report(det, final: bool = False) -> str | None:
    """Write ``det.report(final)`` atomically to ``<report_dir>/<pid>.json``; its path, or None."""
    if not det.report_dir:
        return None
    path = os.path.join(det.report_dir, f"{os.getpid()}.json")
    try:
        write_atomic(path, det.report(final=final))
        return path
    except Exception as exc:
        if not det.write_error_logged:
            det.write_error_logged = True
            _log.warning("otel-leak: cannot write the report %s (%s)", path, exc)
        return None
