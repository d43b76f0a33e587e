"""Per-release memory baselines: a versioned profile per service × version × environment, made from a report.

A baseline (schema ``otel-leak/baseline/v1``) holds what a later release is compared with: every task type's
retained bytes per call with its standard error (combined over the run's processes, inverse-variance
weighted), the floor slope and its error (summed over processes), resident memory at steady state, the
GC pause distribution per generation (collections, p50, p99, max, the histogram), the detector's verdict,
and the workload it was measured under (tasks/s, mix, duration). It is made from a report
``otel-leak run`` wrote (or a directory of per-process files); one file per release, at
``DIR/<service>/<environment>/<version>.json`` unless a path is given, never overwritten unless asked.

Nothing here raises on bad input except :class:`BaselineError`, whose message is one line for the user.
"""

from __future__ import annotations

import json
import math
import os
import re
import time

SCHEMA = "otel-leak/baseline/v1"
MAX_SERIES = 240


class BaselineError(Exception):
    """A baseline that cannot be made, read or written: one line for the user."""


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def combine_per_task(processes: list[dict]) -> dict[str, dict]:
    """Per-task estimates of several processes as one: inverse-variance weighted mean, its error, calls."""
    acc: dict[str, list] = {}
    for p in processes:
        for task, e in ((p.get("profile") or {}).get("per_task") or {}).items():
            b, se, calls = e.get("bytes_per_call"), e.get("se"), e.get("calls") or 0
            a = acc.setdefault(task, [0.0, 0.0, 0])
            a[2] += int(calls)
            if _finite(b) and _finite(se) and se > 0:
                w = 1.0 / (se * se)
                a[0] += w * b
                a[1] += w
    out = {}
    for task, (wb, w, calls) in acc.items():
        if w > 0:
            out[task] = {"bytes_per_call": round(wb / w, 1), "se": round(1.0 / math.sqrt(w), 1), "calls": calls}
        else:
            out[task] = {"bytes_per_call": None, "se": None, "calls": calls}
    return out


def combine_gc_pauses(processes: list[dict]) -> dict[str, dict]:
    """The processes' GC pause histograms as one, per generation (their buckets added up)."""
    from otel_leak.probes import summarize_pauses

    acc: dict[str, list] = {}
    for p in processes:
        for gen, d in ((p.get("profile") or {}).get("gc_pauses") or {}).items():
            b = d.get("buckets") if isinstance(d, dict) else None
            if not isinstance(b, list) or not all(isinstance(x, int) for x in b):
                continue
            a = acc.setdefault(str(gen), [[0] * len(b), 0.0, 0.0])
            if len(a[0]) != len(b):
                continue
            a[0] = [x + y for x, y in zip(a[0], b)]
            a[1] += d.get("total_s") if _finite(d.get("total_s")) else 0.0
            a[2] = max(a[2], d.get("max_s") if _finite(d.get("max_s")) else 0.0)
    return {g: summarize_pauses(b, total, top) for g, (b, total, top) in sorted(acc.items()) if sum(b)}


def _series(processes: list[dict]) -> dict:
    """The resident-memory series of the process that ran the most tasks, thinned to MAX_SERIES points."""
    busiest = max(processes, key=lambda p: p.get("tasks_observed") or 0, default=None)
    s = (busiest or {}).get("series") or {}
    t, rss = s.get("t_s") or [], s.get("rss") or []
    n = min(len(t), len(rss))
    step = max(1, math.ceil(n / MAX_SERIES))
    return {"t_s": t[:n:step], "rss": rss[:n:step]}


def from_report(report: dict, service: str, version: str, environment: str = "production",
                source: str | None = None) -> dict:
    """The baseline of one release from its (merged) report."""
    procs = [p for p in report.get("processes") or [] if isinstance(p, dict) and not p.get("problems")]
    measured = [p for p in procs if p.get("tasks_observed")]
    if not measured:
        raise BaselineError("the report has no process that ran tasks: nothing to make a baseline from")
    profiles = [p.get("profile") or {} for p in measured]
    slopes = [(pr.get("floor_slope_bytes_per_s"), pr.get("floor_slope_se")) for pr in profiles]
    slopes = [(b, se) for b, se in slopes if _finite(b) and _finite(se)]
    steady = [pr.get("rss_steady_bytes") for pr in profiles if _finite(pr.get("rss_steady_bytes"))]
    counts: dict[str, int] = {}
    for p in measured:
        for k, v in (p.get("task_counts") or {}).items():
            counts[k] = counts.get(k, 0) + int(v)
    total = sum(counts.values())
    duration = report.get("duration_s") or max((p.get("duration_s") or 0) for p in measured)
    return {
        "schema": SCHEMA,
        "service": service,
        "version": version,
        "environment": environment,
        "created_unix": round(time.time(), 3),
        "source": {"report": source, "started_unix": report.get("started_unix"), "command": report.get("command")},
        "verdict": report.get("verdict"),
        "suspects": [s.get("task") for s in report.get("suspects") or []][:5],
        "per_task": combine_per_task(measured),
        "floor_slope_bytes_per_s": round(sum(b for b, _ in slopes), 1) if slopes else None,
        "floor_slope_se": round(math.sqrt(sum(se * se for _, se in slopes)), 1) if slopes else None,
        "rss_steady_bytes": int(sum(steady)) if steady else None,
        "gc_pauses": combine_gc_pauses(measured),
        "workload": {
            "tasks_observed": int(report.get("tasks_observed") or total),
            "duration_s": duration,
            "tasks_per_s": round(total / duration, 2) if duration else None,
            "mix": {k: round(v / total, 4) for k, v in sorted(counts.items())} if total else {},
            "processes": len(measured),
        },
        "series": _series(measured),
    }


POOLED = "(all tasks)"


def from_evidence(ev: dict, service: str, version: str, environment: str, window: str,
                  source: str | None = None) -> dict:
    """The baseline of one release from Prometheus evidence (:func:`otel_leak.gate.evidence`). Per task type
    it holds the change per task of all tasks pooled (``(all tasks)``), and the detector's named tasks as
    suspects: per-task figures from task spans alone can charge one task for another's leak."""
    from otel_leak.gate import seconds

    dur = seconds(window)
    total = ev["tasks"]
    return {
        "schema": SCHEMA, "service": service, "version": version, "environment": environment,
        "created_unix": round(time.time(), 3),
        "source": {"prometheus": source, "window": window},
        "verdict": "leak" if ev["detector_leak"] else "no_leak",
        "suspects": sorted(ev["suspects"]),
        "per_task": {POOLED: ev["pooled"]},
        "per_task_spans": ev["per_task_spans"],
        "floor_slope_bytes_per_s": None, "floor_slope_se": None, "rss_steady_bytes": None,
        "gc_pauses": ev.get("gc_pauses") or {},
        "workload": {"tasks_observed": total, "duration_s": dur,
                     "tasks_per_s": round(total / dur, 2) if dur else None,
                     "mix": {k: round(e["calls"] / total, 4) for k, e in ev["per_task_spans"].items()} if total else {},
                     "processes": None},
        "series": {"t_s": [], "rss": []},
    }


_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def default_path(directory: str, service: str, environment: str, version: str) -> str:
    parts = [_SAFE.sub("_", x) or "_" for x in (service, environment, version)]
    return os.path.join(directory, parts[0], parts[1], parts[2] + ".json")


def save(baseline: dict, path: str, force: bool = False) -> str:
    if os.path.exists(path) and not force:
        raise BaselineError(f"{path} exists (a baseline is never replaced silently: --force replaces it)")
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f"{path}.tmp.{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(baseline, fh, indent=1, sort_keys=True)
            fh.write("\n")
        os.replace(tmp, path)
    except OSError as exc:
        raise BaselineError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def problems(doc) -> list[str]:
    """What makes ``doc`` unusable as a baseline (empty: usable)."""
    if not isinstance(doc, dict):
        return ["not a JSON object"]
    if doc.get("schema") != SCHEMA:
        return [f"unknown schema {doc.get('schema')!r} (this otel-leak reads {SCHEMA})"]
    out = [f"missing {k}" for k in ("service", "version", "per_task", "workload") if k not in doc]
    if not isinstance(doc.get("per_task", {}), dict):
        out.append("per_task is not an object")
    return out


def load(path: str) -> dict:
    """A baseline from ``path``; a report (merged, per-process, or a directory of them) becomes one on the fly."""
    if not os.path.isdir(path):
        try:
            with open(path, encoding="utf-8") as fh:
                doc = json.load(fh)
        except OSError as exc:
            raise BaselineError(f"cannot read {path}: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise BaselineError(f"{path} is not JSON: {exc}") from None
        schema = doc.get("schema") if isinstance(doc, dict) else None
        if not (isinstance(schema, str) and schema.startswith(("otel-leak/report/", "otel-leak/process/"))):
            bad = problems(doc)
            if bad:
                raise BaselineError(f"{path}: not a usable baseline ({bad[0]})")
            return doc
    from otel_leak.report.loading import load as load_report

    report, probs = load_report(path)
    if report is None:
        raise BaselineError("; ".join(probs))
    name = os.path.splitext(os.path.basename(path.rstrip("/")))[0]
    return from_report(report, service="?", version=name, source=path)
