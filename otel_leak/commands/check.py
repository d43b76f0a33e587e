"""``otel-leak check PATH``: validate a report and exit by its verdict, for scripts and CI.

Prints one line (``<verdict> confidence=<c> [task=<top suspect>]``); exit 0 no_leak, 1 leak,
3 inconclusive, 2 when PATH is unreadable or not a valid report.
"""

from __future__ import annotations

import argparse

from otel_leak.commands.errors import EXIT_INCONCLUSIVE, UsageError

NAME = "check"
HELP = "exit by a report's verdict (0 no leak, 1 leak, 3 inconclusive)"
EXIT_BY_VERDICT = {"no_leak": 0, "leak": 1}


def configure(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Validate a report and exit by its verdict: 0 no_leak, 1 leak, 3 inconclusive, 2 unreadable or invalid."
    )
    p.add_argument("path", metavar="PATH")


def execute(args: argparse.Namespace) -> int:
    from otel_leak.report.loading import load

    report, problems = load(args.path)
    if report is None or problems:
        raise UsageError("; ".join(problems[:10]) or f"{args.path}: not a report")
    verdict = report.get("verdict")
    suspects = report.get("suspects") or []
    line = f"{verdict} confidence={float(report.get('confidence') or 0):.2f}"
    if suspects:
        line += f" task={suspects[0].get('task')}"
    print(line)
    return EXIT_BY_VERDICT.get(verdict, EXIT_INCONCLUSIVE)
