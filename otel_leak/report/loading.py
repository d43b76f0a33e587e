"""Read a report from a path the user gives: a merged report, one per-process file, or a directory of them.

Never raises on bad input: it returns the problems, one line each, for the command to print.
"""

from __future__ import annotations

import json
import os

from otel_leak.report.merging import Loaded, RunInfo, merge, merge_dir
from otel_leak.report.schema import PROCESS_SCHEMA, REPORT_SCHEMA, validate_process_report, validate_report


def load(path: str) -> tuple[dict | None, list[str]]:
    """The (merged) report at ``path`` and its validation problems; ``None`` when there is none to read."""
    if os.path.isdir(path):
        return merge_dir(path), []
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except OSError as exc:
        return None, [f"cannot read {path}: {exc.strerror or exc}"]
    except ValueError as exc:
        return None, [f"{path} is not JSON: {exc}"]
    schema = doc.get("schema") if isinstance(doc, dict) else None
    if schema == PROCESS_SCHEMA:
        return merge([Loaded(path, doc, validate_process_report(doc))], RunInfo()), []
    if schema != REPORT_SCHEMA:
        return None, [f"{path}: not an otel-leak report (schema {schema!r})"]
    return doc, validate_report(doc)
