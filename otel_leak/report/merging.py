"""Merge per-process detector reports (``otel-leak/process/v1``) into one ``otel-leak/report/v1``.

Rules (documented in the README's report section):

* **verdict**: ``leak`` if any process declares a leak. Otherwise ``no_leak`` if at least one process that
  observed tasks says ``no_leak`` (processes that ran no task, such as a prefork pool's parent, do not count
  while others ran tasks). Otherwise ``inconclusive``. No usable process report, or any failure inside the
  merge, gives ``inconclusive``.
* **confidence**: for ``leak`` the highest confidence among leaking processes; for ``no_leak`` the task-weighted
  mean over ``no_leak`` processes times the share of tasks those processes observed; for ``inconclusive`` the
  highest confidence reported by an inconclusive process (0 without any).
* **detected_at_s**: seconds from the start of the run to the first moment any process declared its leak.
* **memory**: RSS at start and end summed over processes, floor slopes summed (processes run side by side),
  ``kind`` from the leaking processes (``mixed`` when they disagree), null without a leak.
* **suspects**: merged by task identity over leaking processes: calls summed, retained bytes per call
  call-weighted, confidence the highest, trace ids united; ordered by confidence x retained bytes per call x
  calls (estimated bytes retained by that task, discounted by doubt). Empty unless the verdict is ``leak``.
* **allocation_sites**: merged by (file, line): retained bytes and counts summed, largest first.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from otel_leak._files import atomic_write_text
from otel_leak.report.schema import (
    PROCESS_SCHEMA,
    REPORT_SCHEMA,
    VERDICTS,
    is_int,
    is_num,
    validate_process_report,
)

MAX_SUSPECTS = 20
MAX_SITES = 20
MAX_SITES_PER_PROCESS = 5
MAX_TRACE_IDS = 10
MAX_RETENTION_PATHS = 10
MAX_ERRORS = 20


@dataclass
class RunInfo:
    """What ``otel-leak run`` itself saw of the command (all optional when merging offline)."""

    command: list[str] | None = None
    pid: int | None = None  # pid of the process otel-leak started
    start_unix: float | None = None
    end_unix: float | None = None
    exit_code: int | None = None  # shell convention: 128+N when killed by signal N
    signal: str | None = None  # e.g. "SIGKILL" when the command was killed by a signal
    errors: list[str] = field(default_factory=list)
    # pid -> {"first_seen_unix", "last_seen_unix", "rss_max_bytes", "alive"} from polling the process tree
    observed: dict[int, dict] = field(default_factory=dict)


@dataclass
class Loaded:
    path: str
    doc: dict | None
    problems: list[str]


# ------------------------------------------------------------------------------------------------------
# Loading


def read_process_dir(directory: str | os.PathLike) -> list[Loaded]:
    """Read every ``*.json`` in ``directory`` (the detector's REPORT_DIR). Never raises.

    Files are written atomically by the detector; a file that does not parse (a foreign file, a disk error)
    is returned with its problem rather than dropped silently.
    """
    out: list[Loaded] = []
    try:
        names = sorted(os.listdir(directory))
    except OSError as exc:
        return [Loaded(str(directory), None, [f"cannot list {directory}: {exc.strerror or exc}"])]
    for name in names:
        if not name.endswith(".json") or name.startswith("."):
            continue
        path = os.path.join(directory, name)
        out.append(read_process_file(path))
    return out


def read_process_file(path: str) -> Loaded:
    try:
        with open(path, "rb") as fh:
            doc = json.loads(fh.read().decode("utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return Loaded(path, None, [f"{os.path.basename(path)}: unreadable ({exc.__class__.__name__}: {exc})"])
    try:
        problems = validate_process_report(doc)
    except Exception as exc:  # pragma: no cover - validators never raise, but the merge must not either
        problems = [f"validation failed: {exc!r}"]
    return Loaded(path, doc if isinstance(doc, dict) else None, problems)


# ------------------------------------------------------------------------------------------------------
# Small helpers


def _num(value: Any, default: float | None = None) -> float | None:
    return value if is_num(value) else default


def _int(value: Any, default: int = 0) -> int:
    if is_int(value):
        return value
    if is_num(value):
        return int(value)
    return default


def _clamp01(value: Any) -> float:
    v = _num(value, 0.0)
    return float(min(1.0, max(0.0, v)))


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _series(doc: dict) -> dict:
    """The process's bounded series as equal-length numeric columns (t_s, rss, floor, heap_blocks).

    Accepts columns (``{"t_s": [...], "rss": [...]}``) or rows (``[{"t_s":.., "rss":..}, ...]``); drops
    anything else.
    """
    raw = doc.get("series")
    cols = ("t_s", "rss", "floor", "heap_blocks")
    if isinstance(raw, list):
        rows = [r for r in raw if isinstance(r, dict)]
        raw = {c: [r.get(c) for r in rows] for c in cols}
    if not isinstance(raw, dict):
        return {}
    t = raw.get("t_s")
    if not isinstance(t, list):
        return {}
    out: dict[str, list] = {}
    n = len(t)
    for c in cols:
        col = raw.get(c)
        if isinstance(col, list) and len(col) == n:
            out[c] = [v if is_num(v) else None for v in col]
    # carry any other equal-length numeric column the detector adds (e.g. traced heap)
    for c, col in raw.items():
        if c not in out and isinstance(col, list) and len(col) == n and all(v is None or is_num(v) for v in col):
            out[c] = list(col)
    return out if "t_s" in out else {}


def _events(doc: dict) -> list:
    ev = doc.get("events")
    if not isinstance(ev, list):
        return []
    return [e for e in ev if isinstance(e, dict)][-200:]


def _clean_suspect(s: Any) -> dict | None:
    if not isinstance(s, dict) or not isinstance(s.get("task"), str) or not s.get("task"):
        return None
    out = dict(s)
    out["retained_bytes_per_call"] = _num(s.get("retained_bytes_per_call"))
    out["calls"] = max(0, _int(s.get("calls")))
    out["confidence"] = _clamp01(s.get("confidence"))
    tids = s.get("trace_ids")
    out["trace_ids"] = [t for t in tids if isinstance(t, str)][:MAX_TRACE_IDS] if isinstance(tids, list) else []
    return out


def _clean_site(s: Any) -> dict | None:
    if not isinstance(s, dict) or not isinstance(s.get("file"), str):
        return None
    out = dict(s)
    out["line"] = s.get("line") if is_int(s.get("line")) else None
    out["retained_bytes"] = max(0, _num(s.get("retained_bytes"), 0))
    out["count"] = max(0, _int(s.get("count")))
    tb = s.get("traceback")
    out["traceback"] = [f for f in tb if isinstance(f, dict)][:50] if isinstance(tb, list) else []
    return out


# ------------------------------------------------------------------------------------------------------
# Per-process entry


def _process_entry(doc: dict, problems: list[str], path: str, run_start: float | None, run: RunInfo) -> dict:
    pid = _int(doc.get("pid"), 0) or _pid_from_path(path)
    verdict = doc.get("verdict") if doc.get("verdict") in VERDICTS else "inconclusive"
    valid = not problems
    if not valid:
        verdict = "inconclusive"
    start = _num(doc.get("start_unix"))
    updated = _num(doc.get("updated_unix"))
    det = _num(doc.get("detected_at_s"))
    mem = doc.get("memory") if isinstance(doc.get("memory"), dict) else {}
    suspects = [s for s in (_clean_suspect(x) for x in _list(doc.get("suspects"))) if s]
    sites = [s for s in (_clean_site(x) for x in _list(doc.get("allocation_sites"))) if s]
    sites.sort(key=lambda s: -s["retained_bytes"])
    offset = (start - run_start) if (start is not None and run_start is not None) else None
    entry: dict[str, Any] = {
        "pid": pid,
        "ppid": _int(doc.get("ppid"), 0) or None,
        "argv": [a for a in doc.get("argv", []) if isinstance(a, str)] if isinstance(doc.get("argv"), list) else [],
        "role": "command" if (run.pid is not None and pid == run.pid) else "child",
        "verdict": verdict,
        "confidence": _clamp01(doc.get("confidence")),
        "detected_at_s": det if verdict == "leak" else None,
        "start_offset_s": round(offset, 3) if offset is not None else None,
        "start_unix": start,
        "updated_unix": updated,
        "duration_s": _num(doc.get("duration_s"), 0.0),
        "tasks_observed": max(0, _int(doc.get("tasks_observed"))),
        "task_counts": {k: _int(v) for k, v in doc["task_counts"].items() if isinstance(k, str)}
        if isinstance(doc.get("task_counts"), dict)
        else {},
        "memory": {
            "kind": mem.get("kind") if isinstance(mem.get("kind"), str) else None,
            "rss_start_bytes": _num(mem.get("rss_start_bytes")),
            "rss_end_bytes": _num(mem.get("rss_end_bytes")),
            "floor_slope_bytes_per_s": _num(mem.get("floor_slope_bytes_per_s")),
        },
        "suspects": suspects if verdict == "leak" else [],
        "allocation_sites": sites[:MAX_SITES_PER_PROCESS],
        "retention_paths": _list(doc.get("retention_paths"))[:MAX_RETENTION_PATHS],
        "final": doc.get("final") if isinstance(doc.get("final"), bool) else None,
        "series": _series(doc),
        "events": _events(doc),
    }
    # Extra per-task estimates the detector may publish for every task type (not only suspects), and the
    # memory-budget guard's record (otel_leak.guard).
    for key in ("tasks", "task_estimates", "profile", "guard", "pattern"):
        if isinstance(doc.get(key), (list, dict)):
            entry[key] = doc[key]
    if problems:
        entry["problems"] = problems[:10]
    seen = run.observed.get(pid)
    if seen:
        entry["observed"] = {k: seen.get(k) for k in ("first_seen_unix", "last_seen_unix", "rss_max_bytes")}
    return entry


def _list(v: Any) -> list:
    return v if isinstance(v, list) else []


def _pid_from_path(path: str) -> int:
    stem = os.path.basename(path).split(".", 1)[0]
    return int(stem) if stem.isdigit() else 0


# ------------------------------------------------------------------------------------------------------
# Merge


def merge(loaded: Iterable[Loaded], run: RunInfo | None = None) -> dict:
    """Merge loaded per-process reports into one ``otel-leak/report/v1``. Never raises: any failure gives
    an ``inconclusive`` report that says what went wrong."""
    run = run or RunInfo()
    loaded = list(loaded)
    try:
        return _merge(loaded, run)
    except Exception as exc:  # noqa: BLE001 - the report must still be written
        return failed_report(run, f"merge failed: {exc.__class__.__name__}: {exc}")


def failed_report(run: RunInfo, error: str) -> dict:
    report = _skeleton(run)
    report["errors"] = (list(run.errors) + [error])[:MAX_ERRORS]
    report["incomplete"] = True
    return report


def _skeleton(run: RunInfo) -> dict:
    duration = None
    if run.start_unix is not None and run.end_unix is not None:
        duration = max(0.0, run.end_unix - run.start_unix)
    return {
        "schema": REPORT_SCHEMA,
        "verdict": "inconclusive",
        "confidence": 0.0,
        "detected_at_s": None,
        "duration_s": round(duration, 3) if duration is not None else 0.0,
        "tasks_observed": 0,
        "memory": {"kind": None, "rss_start_bytes": None, "rss_end_bytes": None, "floor_slope_bytes_per_s": None},
        "suspects": [],
        "allocation_sites": [],
        "retention_paths": [],
        "pattern": None,
        "processes": [],
        "command": list(run.command) if run.command else None,
        "exit_code": run.exit_code,
        "signal": run.signal,
        "incomplete": False,
        "started_unix": run.start_unix,
        "errors": list(run.errors)[:MAX_ERRORS],
    }


def _merge(loaded: list[Loaded], run: RunInfo) -> dict:
    report = _skeleton(run)
    errors: list[str] = report["errors"]

    docs = []
    for item in loaded:
        if item.doc is None:
            errors.extend(item.problems[:3])
            continue
        docs.append(item)
    starts = [_num(d.doc.get("start_unix")) for d in docs]
    starts = [s for s in starts if s is not None]
    run_start = run.start_unix if run.start_unix is not None else (min(starts) if starts else None)

    procs = [_process_entry(d.doc, d.problems, d.path, run_start, run) for d in docs]
    # One entry per pid: keep the most recently updated (pids are not reused within a run in practice).
    by_pid: dict[int, dict] = {}
    for p in procs:
        old = by_pid.get(p["pid"])
        if old is None or (p["updated_unix"] or 0) >= (old["updated_unix"] or 0):
            by_pid[p["pid"]] = p
    procs = sorted(by_pid.values(), key=lambda p: (p["start_unix"] or 0, p["pid"]))
    for p in procs:
        if p.get("problems"):
            errors.append(f"pid {p['pid']}: invalid process report ({p['problems'][0]})")
    pids = {p["pid"] for p in procs}
    for p in procs:
        if p["role"] != "command" and p["ppid"] not in pids and run.pid is not None and p["ppid"] != run.pid:
            p["role"] = "descendant"
    report["processes"] = procs

    if run.start_unix is None and procs:
        ups = [p["updated_unix"] for p in procs if p["updated_unix"] is not None]
        if starts and ups:
            report["duration_s"] = round(max(0.0, max(ups) - min(starts)), 3)
            report["started_unix"] = min(starts)

    valid = [p for p in procs if not p.get("problems")]
    report["tasks_observed"] = sum(p["tasks_observed"] for p in valid)

    leaking = [p for p in valid if p["verdict"] == "leak"]
    if leaking:
        verdict = "leak"
        confidence = max(p["confidence"] for p in leaking)
    else:
        with_tasks = [p for p in valid if p["tasks_observed"] > 0]
        judged = with_tasks or valid
        clean = [p for p in judged if p["verdict"] == "no_leak"]
        if clean:
            verdict = "no_leak"
            weights = [max(1, p["tasks_observed"]) for p in clean]
            mean = sum(w * p["confidence"] for w, p in zip(weights, clean)) / sum(weights)
            total = sum(max(1, p["tasks_observed"]) for p in judged)
            confidence = mean * (sum(weights) / total if total else 1.0)
        else:
            verdict = "inconclusive"
            confidence = max((p["confidence"] for p in valid), default=0.0)
    report["verdict"] = verdict
    report["confidence"] = round(_clamp01(confidence), 4)

    if verdict == "leak":
        moments = []
        for p in leaking:
            det = _num(p["detected_at_s"])
            if det is None:
                continue
            if p["start_offset_s"] is not None:
                moments.append(p["start_offset_s"] + det)
            else:
                moments.append(det)
        report["detected_at_s"] = round(max(0.0, min(moments)), 3) if moments else None

    # memory
    mem = report["memory"]
    rs = [p["memory"]["rss_start_bytes"] for p in valid if p["memory"]["rss_start_bytes"] is not None]
    re_ = [p["memory"]["rss_end_bytes"] for p in valid if p["memory"]["rss_end_bytes"] is not None]
    sl = [p["memory"]["floor_slope_bytes_per_s"] for p in valid if p["memory"]["floor_slope_bytes_per_s"] is not None]
    mem["rss_start_bytes"] = int(sum(rs)) if rs else None
    mem["rss_end_bytes"] = int(sum(re_)) if re_ else None
    mem["floor_slope_bytes_per_s"] = float(sum(sl)) if sl else None
    kinds = {p["memory"]["kind"] for p in leaking if p["memory"]["kind"]}
    mem["kind"] = (kinds.pop() if len(kinds) == 1 else "mixed") if kinds else None

    # suspects
    if verdict == "leak":
        report["suspects"] = merge_suspects(leaking)
    sources = leaking or valid
    report["allocation_sites"] = merge_sites(sources, docs)
    paths = []
    for p in leaking:
        for rp in p["retention_paths"]:
            paths.append(dict(rp, pid=p["pid"]) if isinstance(rp, dict) else rp)
    report["retention_paths"] = paths[:MAX_RETENTION_PATHS]
    # The pattern: the most confident one of the leaking processes (each classified its own evidence).
    pats = [p["pattern"] for p in leaking if isinstance(p.get("pattern"), dict) and p["pattern"].get("pattern")]
    report["pattern"] = max(pats, key=lambda x: float(x.get("confidence") or 0)) if pats else None

    # completeness
    incomplete = False
    if run.exit_code not in (None, 0) or run.signal:
        incomplete = True
    if not valid:
        incomplete = True
        if not any("no instrumented process" in e for e in errors):
            errors.append(
                "no instrumented process wrote a report (is COMMAND a Python program running in the "
                "environment where otel-leak is installed?)"
            )
    for p in valid:
        if p["final"] is False:
            # Prefork children leave through os._exit: their last periodic write is all there is. That is
            # normal, so it is noted on the process and does not by itself make the run incomplete.
            p["note"] = "no final report (os._exit or killed); data as of its last periodic write"
    report["incomplete"] = incomplete
    del errors[MAX_ERRORS:]
    return report


def merge_suspects(leaking: list[dict]) -> list[dict]:
    merged: dict[str, dict] = {}
    for p in leaking:
        for s in p["suspects"]:
            m = merged.get(s["task"])
            if m is None:
                m = merged[s["task"]] = {
                    "task": s["task"],
                    "retained_bytes_per_call": None,
                    "calls": 0,
                    "confidence": 0.0,
                    "trace_ids": [],
                    "pids": [],
                    "_weighted": 0.0,
                    "_weight": 0,
                }
            calls = s["calls"]
            rpc = s["retained_bytes_per_call"]
            if rpc is not None:
                w = max(1, calls)
                m["_weighted"] += rpc * w
                m["_weight"] += w
            m["calls"] += calls
            m["confidence"] = max(m["confidence"], s["confidence"])
            for t in s["trace_ids"]:
                if t not in m["trace_ids"] and len(m["trace_ids"]) < MAX_TRACE_IDS:
                    m["trace_ids"].append(t)
            if p["pid"] not in m["pids"]:
                m["pids"].append(p["pid"])
    out = []
    for m in merged.values():
        if m["_weight"]:
            m["retained_bytes_per_call"] = m["_weighted"] / m["_weight"]
        del m["_weighted"], m["_weight"]
        out.append(m)

    def blame(m: dict) -> tuple:
        rpc = m["retained_bytes_per_call"] or 0.0
        return (m["confidence"] * max(rpc, 0.0) * max(m["calls"], 1), m["confidence"], rpc)

    out.sort(key=blame, reverse=True)
    for m in out:
        if m["retained_bytes_per_call"] is not None:
            m["retained_bytes_per_call"] = round(m["retained_bytes_per_call"], 1)
    return out[:MAX_SUSPECTS]


def merge_sites(procs: list[dict], docs: list[Loaded]) -> list[dict]:
    """Sites merged by (file, line) from the full per-process lists (not the per-process top few)."""
    pids = {p["pid"] for p in procs}
    merged: dict[tuple, dict] = {}
    for d in docs:
        pid = _int(d.doc.get("pid"), 0) or _pid_from_path(d.path)
        if pid not in pids or d.problems:
            continue
        for raw in _list(d.doc.get("allocation_sites")):
            s = _clean_site(raw)
            if s is None:
                continue
            key = (s["file"], s["line"])
            m = merged.get(key)
            if m is None:
                m = merged[key] = dict(s, pids=[pid], _best=s["retained_bytes"])
                continue
            m["retained_bytes"] += s["retained_bytes"]
            m["count"] += s["count"]
            if pid not in m["pids"]:
                m["pids"].append(pid)
            if s["retained_bytes"] > m["_best"] and s["traceback"]:
                m["traceback"], m["_best"] = s["traceback"], s["retained_bytes"]
    out = sorted(merged.values(), key=lambda m: -m["retained_bytes"])[:MAX_SITES]
    for m in out:
        del m["_best"]
    return out


def merge_dir(directory: str | os.PathLike, run: RunInfo | None = None) -> dict:
    """Read and merge a directory of per-process reports. Never raises."""
    run = run or RunInfo()
    try:
        return merge(read_process_dir(directory), run)
    except Exception as exc:  # noqa: BLE001
        return failed_report(run, f"merge failed: {exc.__class__.__name__}: {exc}")


def write_json(report: dict, path: str | os.PathLike) -> None:
    """Write atomically (temp file in the same directory, then rename). Raises OSError on failure."""
    data = json.dumps(_finite(report), indent=2, sort_keys=False, default=_json_default, allow_nan=False)
    atomic_write_text(path, data + "\n")


def _finite(o: Any) -> Any:
    """Copy with NaN/Infinity replaced by null: other tools read the report with strict JSON parsers."""
    if isinstance(o, float):
        return o if o == o and o not in (float("inf"), float("-inf")) else None
    if isinstance(o, dict):
        return {str(k): _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o


def _json_default(o: Any) -> Any:
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


__all__ = [
    "Loaded",
    "RunInfo",
    "failed_report",
    "merge",
    "merge_dir",
    "merge_sites",
    "merge_suspects",
    "read_process_dir",
    "read_process_file",
    "write_json",
    "PROCESS_SCHEMA",
]
