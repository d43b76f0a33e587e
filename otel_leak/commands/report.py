"""``otel-leak report PATH [--html FILE] [--json FILE]``: print a report's summary, render it as HTML, or
write the merged JSON. PATH is a merged report, a per-process file, or a directory of per-process files.

Exit 0; 2 when PATH is not a readable report; 1 when a requested file could not be written or rendered.
"""

from __future__ import annotations

import argparse
import os

from otel_leak.commands.errors import EXIT_FAILED, EXIT_OK, CommandError

NAME = "report"
HELP = "print or render an existing report"


def configure(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Print a report's summary; PATH is a merged report, a per-process file, or a directory of "
        "per-process files (OTEL_PYTHON_LEAK_REPORT_DIR), which are merged."
    )
    p.add_argument("path", metavar="PATH")
    p.add_argument("--html", metavar="FILE", help="write the self-contained HTML page")
    p.add_argument("--json", metavar="FILE", help="write the (merged) report as JSON")


def execute(args: argparse.Namespace) -> int:
    from otel_leak.report.console import error, print_summary, stderr_console
    from otel_leak.report.loading import load
    from otel_leak.report.merging import write_json

    console = stderr_console()
    report, problems = load(args.path)
    if report is None:
        raise CommandError("; ".join(problems), exit_code=2)
    for p in problems[:10]:
        error(console, f"invalid report: {p}")
    code = EXIT_OK
    shown_json = shown_html = None
    if args.json:
        try:
            write_json(report, args.json)
            shown_json = args.json
        except OSError as exc:
            error(console, f"cannot write {args.json}: {exc.strerror or exc}")
            code = EXIT_FAILED
    if args.html:
        shown_html, failed = _html(console, report, args.html)
        code = code or failed
    try:
        print_summary(console, report, report_path=shown_json or (args.path if not os.path.isdir(args.path) else None),
                      html_path=shown_html)
    except Exception as exc:  # noqa: BLE001 - a hand-edited report with odd types
        error(console, f"verdict {report.get('verdict')} (cannot summarise this report: {exc})")
        code = EXIT_FAILED
    return code


def _html(console, report: dict, path: str) -> tuple[str | None, int]:
    from otel_leak.report.console import error
    from otel_leak.report.html import charts_note

    note = charts_note()
    if note:
        error(console, note)
    try:
        from otel_leak.report.html import write_html

        write_html(report, path)
        return path, EXIT_OK
    except OSError as exc:
        error(console, f"cannot write {path}: {exc.strerror or exc}")
    except Exception as exc:  # noqa: BLE001
        error(console, f"cannot render {path}: {exc.__class__.__name__}: {exc}")
    return None, EXIT_FAILED
