"""``otel-leak run [--report FILE] [--html FILE] [--quiet] [--guard MODE] [--guard-budget VALUE] -- COMMAND
[ARGS...]``: run COMMAND under auto-instrumentation with the detector on, merge the per-process reports and
print the verdict.

The work lives in :mod:`otel_leak.supervisor.run`; this module declares the arguments and turns the guard's
flags into COMMAND's environment.
"""

from __future__ import annotations

import argparse
import math

from otel_leak import config
from otel_leak.commands.errors import UsageError

NAME = "run"
HELP = "run a command with the leak detector on and report"
GUARD_MODES = config.GUARD.choices  # off, dry-run, on
USAGE = (
    "otel-leak run [--report FILE] [--html FILE] [--quiet] [--guard {" + ",".join(GUARD_MODES) + "}] "
    "[--guard-budget VALUE] -- COMMAND [ARGS...]"
)

EPILOG = f"""\
exit status:
  COMMAND's own exit status; 128+N when signal N killed it; 127 command not found;
  126 not executable; 2 usage error; 1 when COMMAND succeeded but a file could not be written.

memory-budget guard:
  --guard sets {config.GUARD.env} and --guard-budget {config.GUARD_BUDGET.env} for COMMAND:
  a flag replaces the variable's value in the environment; without the flag the variable passes
  unchanged. Start with dry-run (it records what it would recycle, recycles nothing; the summary
  shows one line per such process), then on. The guard hooks Celery workers only so far.

environment:
  With no OTEL_EXPORTER_OTLP_*ENDPOINT and no OTEL_<SIGNAL>_EXPORTER set, the signals are not
  exported (OTEL_*_EXPORTER=none): no collector needed. Set an endpoint to export them as well
  (without opentelemetry-distro, also OTEL_<SIGNAL>_EXPORTER=otlp and opentelemetry-exporter-otlp).
  Without opentelemetry-distro, otel-leak sets up the OpenTelemetry SDK in COMMAND itself
  (OTEL_PYTHON_LEAK_SETUP_SDK=true); with it, the distro does, as under opentelemetry-instrument.
  OTEL_PYTHON_LEAK_REPORT_DIR=DIR keeps the per-process reports in DIR (default: a temporary
  directory, removed). Other OTEL_PYTHON_LEAK_* settings reach the detector unchanged.

examples:
  otel-leak run --html leak.html -- celery -A app worker --pool=prefork --concurrency=4
  otel-leak run --guard dry-run --guard-budget 0.8 -- celery -A app worker --pool=prefork
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
    p.add_argument("--guard", metavar="{" + ",".join(GUARD_MODES) + "}",
                   help=f"memory-budget guard mode ({config.GUARD.env}; the flag wins over the variable): off; "
                        "dry-run records what it would recycle and recycles nothing; on recycles a leaking "
                        "process between tasks")
    p.add_argument("--guard-budget", metavar="VALUE",
                   help=f"the guard's soft budget per process ({config.GUARD_BUDGET.env}; the flag wins): bytes, "
                        "or a share 0 < x <= 1 of the memory limit; 0 for none")
    p.add_argument("command", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)


def guard_env(mode: str | None, budget: str | None) -> dict[str, str]:
    """COMMAND's guard variables from ``--guard`` and ``--guard-budget`` (none without them), each checked as
    the guard reads it; a bad value is a :class:`UsageError`."""
    env = {}
    if mode is not None:
        if mode.strip().lower() not in GUARD_MODES:
            raise UsageError(f"--guard takes {', '.join(GUARD_MODES)}, not {mode!r}")
        env[config.GUARD.env] = mode.strip().lower()
    if budget is not None:
        try:
            ok = math.isfinite(config.parse(config.GUARD_BUDGET, budget))
        except ValueError:
            ok = False
        if not ok:
            raise UsageError(f"--guard-budget takes bytes, a share 0 < x <= 1 of the memory limit, or 0 for none; "
                             f"not {budget!r}")
        env[config.GUARD_BUDGET.env] = budget.strip()
    return env


def execute(args: argparse.Namespace) -> int:
    from otel_leak.supervisor.run import Options, run

    env = guard_env(args.guard, args.guard_budget)
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise UsageError("no command given", usage=f"usage: {USAGE}")
    return run(Options(command=command, report=args.report, html=args.html, quiet=args.quiet, env=env))
