"""Merged reports: read per-process detector files, merge them into ``otel-leak/report/v1``, validate,
print and render them (``otel-leak run`` / ``otel-leak report``)."""

from otel_leak.report.merging import RunInfo, merge, merge_dir, read_process_dir, write_json
from otel_leak.report.schema import (
    PROCESS_SCHEMA,
    REPORT_SCHEMA,
    validate_process_report,
    validate_report,
)

__all__ = [
    "PROCESS_SCHEMA",
    "REPORT_SCHEMA",
    "RunInfo",
    "merge",
    "merge_dir",
    "read_process_dir",
    "validate_process_report",
    "validate_report",
    "write_json",
]
