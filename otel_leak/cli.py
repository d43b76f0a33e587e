"""The ``otel-leak`` command.

    otel-leak run [--report FILE] [--html FILE] [--quiet] -- COMMAND [ARGS...]
        Run COMMAND under auto-instrumentation with the leak detector on; exit with its exit code
        (128+N when a signal killed it); write the merged report (otel-leak/report/v1).
    otel-leak report PATH [--html FILE] [--json FILE]
        Print (and render) a report: a merged report, one per-process file, or a directory of them.
    otel-leak check PATH
        Validate a report and exit by its verdict: 0 no leak, 1 leak, 3 inconclusive, 2 unusable file.

The work lives in :mod:`otel_leak.report`; this module only parses arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

EXIT_USAGE = 2

RUN_EPILOG = """\
exit status:
  COMMAND's own exit status; 128+N when signal N killed it; 127 command not found;
  126 not executable; 2 usage error; 1 when COMMAND succeeded but a file could not be written.

environment:
  With no OTEL_EXPORTER_OTLP_*ENDPOINT and no OTEL_<SIGNAL>_EXPORTER set, the signals are not
  exported (OTEL_*_EXPORTER=none): no collector needed. Set an endpoint to export them as well
  (without opentelemetry-distro, also OTEL_<SIGNAL>_EXPORTER=otlp and opentelemetry-exporter-otlp).
  Without opentelemetry-distro, otel-leak sets up the OpenTelemetry SDK in COMMAND itself
  (OTEL_PYTHON_LEAK_SETUP_SDK=true); with it, the distro does, as under opentelemetry-instrument.
  OTEL_PYTHON_LEAK_REPORT_DIR=DIR keeps the per-process reports in DIR (default: a temporary
  directory, removed). Other OTEL_PYTHON_LEAK_* settings reach the detector unchanged.

example:
  otel-leak run --html leak.html -- celery -A app worker --pool=prefork --concurrency=4
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="otel-leak",
        description="Find memory leaks in long-running Python workers with OpenTelemetry.",
    )
    from otel_leak.version import __version__

    p.add_argument("--version", action="version", version=f"otel-leak {__version__}")
    sub = p.add_subparsers(dest="verb", metavar="{run,report,check}")

    r = sub.add_parser(
        "run",
        help="run a command with the leak detector on and report",
        description="Run COMMAND under OpenTelemetry auto-instrumentation with the leak detector on. "
        "Processes it forks are analysed too; at exit their reports are merged into one.",
        usage="otel-leak run [--report FILE] [--html FILE] [--quiet] -- COMMAND [ARGS...]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=RUN_EPILOG,
    )
    r.add_argument("--report", metavar="FILE", help="merged JSON report (default: ./otel-leak-<name>.<pid>.json)")
    r.add_argument("--html", metavar="FILE", help="also write a self-contained HTML page with charts")
    r.add_argument("-q", "--quiet", action="store_true", help="no live status and no summary (errors still shown)")
    r.add_argument("command", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)

    rep = sub.add_parser(
        "report",
        help="print or render an existing report",
        description="Print a report's summary; PATH is a merged report, a per-process file, or a directory of "
        "per-process files (OTEL_PYTHON_LEAK_REPORT_DIR), which are merged.",
    )
    rep.add_argument("path", metavar="PATH")
    rep.add_argument("--html", metavar="FILE", help="write the self-contained HTML page")
    rep.add_argument("--json", metavar="FILE", help="write the (merged) report as JSON")

    chk = sub.add_parser(
        "check",
        help="exit by a report's verdict (0 no leak, 1 leak, 3 inconclusive)",
        description="Validate a report and exit by its verdict: 0 no_leak, 1 leak, 3 inconclusive, "
        "2 unreadable or invalid.",
    )
    chk.add_argument("path", metavar="PATH")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    if args.verb is None:
        parser.print_usage(sys.stderr)
        print("otel-leak: error: a verb is required (run, report, check)", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.verb == "run":
            return _run(args, parser)
        if args.verb == "report":
            return _report(args)
        if args.verb == "check":
            return _check(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - one clear line, never a traceback
        print(f"otel-leak: internal error: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        if os.environ.get("OTEL_LEAK_DEBUG"):
            raise
        return 1
    return EXIT_USAGE  # pragma: no cover


def _run(args, parser) -> int:
    from otel_leak.report.runner import Options, run

    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        print("usage: otel-leak run [--report FILE] [--html FILE] [--quiet] -- COMMAND [ARGS...]", file=sys.stderr)
        print("otel-leak run: error: no command given", file=sys.stderr)
        return EXIT_USAGE
    return run(Options(command=command, report=args.report, html=args.html, quiet=args.quiet))


def load(path: str) -> tuple[dict | None, list[str]]:
    """A merged report from PATH (merged report, per-process file, or directory of them), and problems."""
    from otel_leak.report.merging import Loaded, RunInfo, merge, merge_dir
    from otel_leak.report.schema import PROCESS_SCHEMA, REPORT_SCHEMA, validate_process_report, validate_report

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


def _report(args) -> int:
    from otel_leak.report.console import error, print_summary, stderr_console
    from otel_leak.report.merging import write_json

    console = stderr_console()
    report, problems = load(args.path)
    if report is None:
        for p in problems:
            error(console, p)
        return EXIT_USAGE
    for p in problems[:10]:
        error(console, f"invalid report: {p}")
    code = 0
    shown_json = shown_html = None
    if args.json:
        try:
            write_json(report, args.json)
            shown_json = args.json
        except OSError as exc:
            error(console, f"cannot write {args.json}: {exc.strerror or exc}")
            code = 1
    if args.html:
        from otel_leak.report.runner import charts_note

        note = charts_note()
        if note:
            error(console, note)
        try:
            from otel_leak.report.html import write_html

            write_html(report, args.html)
            shown_html = args.html
        except OSError as exc:
            error(console, f"cannot write {args.html}: {exc.strerror or exc}")
            code = 1
        except Exception as exc:  # noqa: BLE001
            error(console, f"cannot render {args.html}: {exc.__class__.__name__}: {exc}")
            code = 1
    try:
        print_summary(console, report, report_path=shown_json or (args.path if not os.path.isdir(args.path) else None),
                      html_path=shown_html)
    except Exception as exc:  # noqa: BLE001 - a hand-edited report with odd types
        error(console, f"verdict {report.get('verdict')} (cannot summarise this report: {exc})")
        code = 1
    return code


def _check(args) -> int:
    report, problems = load(args.path)
    if report is None or problems:
        for p in problems[:10]:
            print(f"otel-leak: {p}", file=sys.stderr)
        return EXIT_USAGE
    verdict = report.get("verdict")
    suspects = report.get("suspects") or []
    line = f"{verdict} confidence={float(report.get('confidence') or 0):.2f}"
    if suspects:
        line += f" task={suspects[0].get('task')}"
    print(line)
    return {"no_leak": 0, "leak": 1}.get(verdict, 3)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
