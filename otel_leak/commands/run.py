"""``otel-leak run [--report FILE] [--html FILE] [--quiet] -- COMMAND [ARGS...]``: run COMMAND under
auto-instrumentation with the detector on, merge the per-process reports and print the verdict.

The work lives in :mod:`otel_leak.report.runner`; this module only declares the arguments.
"""

from __future__ import annotations

import argparse

from otel_leak.commands.errors import UsageError

NAME = "run"
HELP = "run a command with the leak detector on and report"
USAGE = "otel-leak run [--report FILE] [--html FILE] [--quiet] -- COMMAND [ARGS...]"

EPILOG = """\
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


def configure(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Run COMMAND under OpenTelemetry auto-instrumentation with the leak detector on. "
        "Processes it forks are analysed too; at exit their reports are merged into one."
    )
    p.usage = USAGE
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    p.add_argument("--report", metavar="FILE", help="merged JSON report (default: ./otel-leak-<name>.<pid>.json)")
    p.add_argument("--html", metavar="FILE", help="also write a self-contained HTML page with charts")
    p.add_argument("-q", "--quiet", action="store_true", help="no live status and no summary (errors still shown)")
    p.add_argument("command", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)


def execute(args: argparse.Namespace) -> int:
    from otel_leak.report.runner import Options, run

    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise UsageError("no command given", usage=f"usage: {USAGE}")
    return run(Options(command=command, report=args.report, html=args.html, quiet=args.quiet))
