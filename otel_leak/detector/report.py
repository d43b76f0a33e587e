"""Per-process report file (schema ``otel-leak/process/v1``): atomic writer and validator.

One file per process, ``<REPORT_DIR>/<pid>.json``, rewritten every ``REPORT_INTERVAL`` seconds and at exit
(Celery prefork children leave through ``os._exit``: the periodic rewrite is what survives them). The
fields are those of ``otel-leak/report/v1`` for one process, plus ``pid``, ``ppid``, ``argv``,
``start_unix``, ``updated_unix``, ``task_counts``, a bounded ``series`` for charts, ``events``, and a few
documented extras (``detected_at_tasks``, ``tier2``, ``trend``, ``memory.allocator``, ``final``, ``error``).
"""

from __future__ import annotations

import json
import math
from typing import Any

from otel_leak._files import atomic_write_text

SCHEMA = "otel-leak/process/v1"
VERDICTS = ("leak", "no_leak", "inconclusive")
KINDS = ("python_heap", "native_or_fragmentation", "mixed", None)
SERIES_COLUMNS = ("t_s", "rss", "floor", "heap_blocks")


def write_atomic(path: str, doc: dict) -> None:
    """Write ``doc`` as JSON to ``path`` atomically (:func:`otel_leak._files.atomic_write_text`)."""
    # json.dumps runs the C encoder in one go; json.dump streams through the Python one (~5x slower).
    atomic_write_text(path, json.dumps(doc, separators=(",", ":"), allow_nan=False))


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def validate_process_report(d: Any) -> list[str]:
    """Problems with one ``otel-leak/process/v1`` document; an empty list means valid. Never raises."""
    p: list[str] = []
    try:
        _validate(d, p)
    except Exception as exc:  # pragma: no cover - defensive
        p.append(f"validator error: {type(exc).__name__}: {exc}")
    return p


def _validate(d: Any, p: list[str]) -> None:
    if not isinstance(d, dict):
        p.append("expected a JSON object")
        return

    def need(obj, key, where, check, what, nullable=False):
        if key not in obj:
            p.append(f"{where}: missing {key!r}")
            return
        v = obj[key]
        if v is None and nullable:
            return
        if not check(v):
            p.append(f"{where}.{key}: expected {what}, got {v!r}"[:200])

    if d.get("schema") != SCHEMA:
        p.append(f"schema: expected {SCHEMA!r}, got {d.get('schema')!r}")
    need(d, "verdict", "process", lambda v: v in VERDICTS, "one of " + "/".join(VERDICTS))
    need(d, "confidence", "process", lambda v: _num(v) and 0 <= v <= 1, "a number in [0, 1]")
    need(d, "detected_at_s", "process", lambda v: _num(v) and v >= 0, "seconds >= 0 or null", nullable=True)
    need(d, "duration_s", "process", lambda v: _num(v) and v >= 0, "seconds >= 0")
    need(d, "tasks_observed", "process", lambda v: _int(v) and v >= 0, "an integer >= 0")
    need(d, "pid", "process", lambda v: _int(v) and v > 0, "a pid")
    need(d, "ppid", "process", lambda v: _int(v) and v >= 0, "a pid or null", nullable=True)
    need(d, "argv", "process", lambda v: isinstance(v, list) and all(isinstance(a, str) for a in v), "a list of strings")
    need(d, "start_unix", "process", lambda v: _num(v) and v > 0, "a unix time")
    need(d, "updated_unix", "process", lambda v: _num(v) and v > 0, "a unix time")
    need(d, "task_counts", "process", lambda v: isinstance(v, dict) and all(isinstance(k, str) and _int(n) for k, n in v.items()), "an object task -> count")
    mem = d.get("memory")
    if not isinstance(mem, dict):
        p.append("process.memory: expected an object")
    else:
        need(mem, "kind", "memory", lambda v: v in KINDS, "one of " + "/".join(map(str, KINDS)), nullable=True)
        for k in ("rss_start_bytes", "rss_end_bytes"):
            need(mem, k, "memory", lambda v: _num(v) and v >= 0, "bytes", nullable=True)
        need(mem, "floor_slope_bytes_per_s", "memory", _num, "a number", nullable=True)
    sus = d.get("suspects")
    if not isinstance(sus, list):
        p.append("process.suspects: expected a list")
    else:
        if sus and d.get("verdict") != "leak":
            p.append("process.suspects: must be empty unless the verdict is 'leak'")
        for i, s in enumerate(sus):
            w = f"suspects[{i}]"
            if not isinstance(s, dict):
                p.append(f"{w}: expected an object")
                continue
            need(s, "task", w, lambda v: isinstance(v, str) and v != "", "a task identity")
            need(s, "retained_bytes_per_call", w, _num, "a number", nullable=True)
            need(s, "calls", w, lambda v: _int(v) and v >= 0, "an integer >= 0")
            need(s, "confidence", w, lambda v: _num(v) and 0 <= v <= 1, "a number in [0, 1]")
            need(s, "trace_ids", w, lambda v: isinstance(v, list) and all(isinstance(t, str) and len(t) == 32 and all(c in "0123456789abcdef" for c in t) for t in v), "a list of 32-hex trace ids")
    sites = d.get("allocation_sites")
    if not isinstance(sites, list):
        p.append("process.allocation_sites: expected a list")
    else:
        for i, s in enumerate(sites):
            w = f"allocation_sites[{i}]"
            if not isinstance(s, dict):
                p.append(f"{w}: expected an object")
                continue
            need(s, "file", w, lambda v: isinstance(v, str), "a path")
            need(s, "line", w, lambda v: _int(v) and v >= 0, "a line number", nullable=True)
            need(s, "retained_bytes", w, lambda v: _num(v) and v >= 0, "bytes")
            need(s, "count", w, lambda v: _int(v) and v >= 0, "an integer")
            need(s, "traceback", w, lambda v: isinstance(v, list) and all(isinstance(f, dict) and "file" in f and "line" in f for f in v), "a list of {file, line}")
    if not isinstance(d.get("retention_paths"), list):
        p.append("process.retention_paths: expected a list")
    series = d.get("series")
    if not isinstance(series, dict):
        p.append("process.series: expected an object of columns")
    else:
        lens = set()
        for c in SERIES_COLUMNS:
            col = series.get(c)
            if not isinstance(col, list) or not all(_num(x) for x in col):
                p.append(f"series.{c}: expected a list of numbers")
            else:
                lens.add(len(col))
        if len(lens) > 1:
            p.append("series: columns differ in length")
    if not isinstance(d.get("events"), list):
        p.append("process.events: expected a list")
    pattern = d.get("pattern")  # optional: the leak's pattern (detector.patterns), null unless the verdict is leak
    if pattern is not None and not (isinstance(pattern, dict) and isinstance(pattern.get("pattern"), str)
                                    and isinstance(pattern.get("remedy"), str)):
        p.append("process.pattern: expected null or an object with pattern and remedy")
    guard = d.get("guard")  # optional: the memory-budget guard's object (otel_leak.guard), null when it is off
    if guard is not None:
        if not isinstance(guard, dict):
            p.append("process.guard: expected an object or null")
        else:
            need(guard, "mode", "guard", lambda v: v in ("dry-run", "on"), "dry-run or on")
            for k in ("recycles", "dry_run_recycles"):
                need(guard, k, "guard", lambda v: _int(v) and v >= 0, "an integer >= 0")
            need(guard, "entries", "guard", lambda v: isinstance(v, list) and all(
                isinstance(e, dict) and isinstance(e.get("reason"), str) and isinstance(e.get("outcome"), str)
                for e in v), "a list of {reason, outcome, ...}")
