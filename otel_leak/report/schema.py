"""Report schemas: the merged ``otel-leak/report/v1``, validated here, and the per-process
``otel-leak/process/v1``, defined and validated next to its writer (:mod:`otel_leak.detector.report`) and
re-exported.

``otel-leak/report/v1`` is a stable interface other tools read: its required fields are the ones
:func:`validate_report` checks; the merge adds a few documented extras (``command``, ``exit_code``, ``signal``,
``incomplete``, ``errors``, ``started_unix``) and per-process details (``series``, ``events`` ...) that the HTML
page draws from. Validators return a list of human-readable problems (empty when valid); they never raise.
"""

from __future__ import annotations

import math
import re
from typing import Any

from otel_leak.detector.report import KINDS as MEMORY_KINDS
from otel_leak.detector.report import SCHEMA as PROCESS_SCHEMA
from otel_leak.detector.report import VERDICTS
from otel_leak.detector.report import validate_process_report

REPORT_SCHEMA = "otel-leak/report/v1"
_HEX = re.compile(r"^[0-9a-fA-F]+$")


def is_num(value: Any) -> bool:
    """A finite int or float (bool is not a number here)."""
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _Checker:
    def __init__(self) -> None:
        self.problems: list[str] = []

    def fail(self, where: str, msg: str) -> None:
        if len(self.problems) < 50:
            self.problems.append(f"{where}: {msg}")

    def field(self, obj: dict, key: str, where: str) -> tuple[bool, Any]:
        if key not in obj:
            self.fail(where, f"missing field {key!r}")
            return False, None
        return True, obj[key]

    def num(self, obj: dict, key: str, where: str, *, nullable=False, lo=None, hi=None, integer=False):
        ok, v = self.field(obj, key, where)
        if not ok:
            return
        if v is None:
            if not nullable:
                self.fail(f"{where}.{key}", "must not be null")
            return
        if integer and not is_int(v):
            self.fail(f"{where}.{key}", f"expected an integer, got {v!r}")
            return
        if not is_num(v):
            self.fail(f"{where}.{key}", f"expected a finite number, got {v!r}")
            return
        if lo is not None and v < lo:
            self.fail(f"{where}.{key}", f"must be >= {lo}, got {v!r}")
        if hi is not None and v > hi:
            self.fail(f"{where}.{key}", f"must be <= {hi}, got {v!r}")

    def list_(self, obj: dict, key: str, where: str) -> list:
        ok, v = self.field(obj, key, where)
        if not ok:
            return []
        if not isinstance(v, list):
            self.fail(f"{where}.{key}", f"expected a list, got {type(v).__name__}")
            return []
        return v

    # -- shared pieces ------------------------------------------------------------------------------
    def verdict_fields(self, doc: dict, where: str) -> None:
        ok, v = self.field(doc, "verdict", where)
        if ok and v not in VERDICTS:
            self.fail(f"{where}.verdict", f"expected one of {', '.join(VERDICTS)}, got {v!r}")
        self.num(doc, "confidence", where, lo=0.0, hi=1.0)
        self.num(doc, "detected_at_s", where, nullable=True, lo=0.0)
        self.num(doc, "duration_s", where, lo=0.0)
        self.num(doc, "tasks_observed", where, lo=0, integer=True)
        ok, mem = self.field(doc, "memory", where)
        if ok:
            if not isinstance(mem, dict):
                self.fail(f"{where}.memory", "expected an object")
            else:
                w = f"{where}.memory"
                ok, kind = self.field(mem, "kind", w)
                if ok and kind not in MEMORY_KINDS:
                    self.fail(f"{w}.kind", f"unexpected kind {kind!r}")
                self.num(mem, "rss_start_bytes", w, nullable=True, lo=0)
                self.num(mem, "rss_end_bytes", w, nullable=True, lo=0)
                self.num(mem, "floor_slope_bytes_per_s", w, nullable=True)
        suspects = self.list_(doc, "suspects", where)
        for i, s in enumerate(suspects):
            self.suspect(s, f"{where}.suspects[{i}]")
        if suspects and doc.get("verdict") != "leak":
            self.fail(f"{where}.suspects", "must be empty unless the verdict is 'leak'")
        for i, site in enumerate(self.list_(doc, "allocation_sites", where)):
            self.site(site, f"{where}.allocation_sites[{i}]")
        self.list_(doc, "retention_paths", where)

    def suspect(self, s: Any, where: str) -> None:
        if not isinstance(s, dict):
            self.fail(where, "expected an object")
            return
        ok, task = self.field(s, "task", where)
        if ok and not (isinstance(task, str) and task):
            self.fail(f"{where}.task", "expected a non-empty string")
        self.num(s, "retained_bytes_per_call", where, nullable=True)
        self.num(s, "calls", where, lo=0, integer=True)
        self.num(s, "confidence", where, lo=0.0, hi=1.0)
        for j, t in enumerate(self.list_(s, "trace_ids", where)):
            if not (isinstance(t, str) and _HEX.match(t)):
                self.fail(f"{where}.trace_ids[{j}]", f"expected a hex string, got {t!r}")

    def site(self, site: Any, where: str) -> None:
        if not isinstance(site, dict):
            self.fail(where, "expected an object")
            return
        ok, f = self.field(site, "file", where)
        if ok and not isinstance(f, str):
            self.fail(f"{where}.file", "expected a string")
        self.num(site, "line", where, integer=True, nullable=True)
        self.num(site, "retained_bytes", where, lo=0)
        self.num(site, "count", where, lo=0, integer=True)
        for j, fr in enumerate(self.list_(site, "traceback", where)):
            if not isinstance(fr, dict) or "file" not in fr or "line" not in fr:
                self.fail(f"{where}.traceback[{j}]", "expected {file, line}")


def validate_report(doc: Any) -> list[str]:
    """Problems with a merged ``otel-leak/report/v1`` document (empty list: valid)."""
    c = _Checker()
    if not isinstance(doc, dict):
        return ["report: expected a JSON object"]
    if doc.get("schema") != REPORT_SCHEMA:
        c.fail("report.schema", f"expected {REPORT_SCHEMA!r}, got {doc.get('schema')!r}")
    c.verdict_fields(doc, "report")
    for i, p in enumerate(c.list_(doc, "processes", "report")):
        w = f"report.processes[{i}]"
        if not isinstance(p, dict):
            c.fail(w, "expected an object")
            continue
        c.num(p, "pid", w, integer=True)
        ok, v = c.field(p, "verdict", w)
        if ok and v not in VERDICTS:
            c.fail(f"{w}.verdict", f"unexpected verdict {v!r}")
        for j, s in enumerate(c.list_(p, "suspects", w)):
            c.suspect(s, f"{w}.suspects[{j}]")
    return c.problems
