"""``otel-leak baseline save (REPORT | --prometheus URL [--window 1h] [--selector M]) --service S --version V
[--env E] [--dir DIR | --out FILE] [--force]``: make a release's memory baseline from a report (``otel-leak
run`` output, a per-process file or a directory of them) or from the fleet's Prometheus over a window, and
store it, one file per release (``DIR/<service>/<env>/<version>.json``, default DIR ``baselines``).

Exit 0 written; 1 the file exists (never replaced without ``--force``) or cannot be written; 2 REPORT is not
a usable report, Prometheus is unreachable or has no data for the release.
"""

from __future__ import annotations

import argparse
import time

from otel_leak.commands.errors import CommandError, UsageError

NAME = "baseline"
HELP = "save a release's memory baseline from a report"


def configure(p: argparse.ArgumentParser) -> None:
    p.description = "Make and store a per-release memory baseline (service x version x environment)."
    sub = p.add_subparsers(dest="action", metavar="{save}", required=True)
    s = sub.add_parser("save", help="make a baseline from a report and store it")
    s.add_argument("report", metavar="REPORT", nargs="?")
    s.add_argument("--prometheus", metavar="URL", help="make it from Prometheus instead of a report")
    s.add_argument("--window", default="1h", help="with --prometheus: the window (Prometheus duration)")
    s.add_argument("--selector", default="", help='with --prometheus: extra PromQL matchers')
    s.add_argument("--service", required=True)
    s.add_argument("--version", required=True, dest="release")
    s.add_argument("--env", default="production", dest="environment")
    where = s.add_mutually_exclusive_group()
    where.add_argument("--dir", default="baselines", help="baseline directory (default: ./baselines)")
    where.add_argument("--out", metavar="FILE", help="write exactly this file instead")
    s.add_argument("--force", action="store_true", help="replace an existing baseline of the same release")


def _make(args: argparse.Namespace) -> dict:
    from otel_leak import baseline

    if (args.report is None) == (args.prometheus is None):
        raise UsageError("give either REPORT or --prometheus URL")
    if args.prometheus:
        from otel_leak.gate import GateError, Prometheus, evidence

        try:
            ev = evidence(Prometheus(args.prometheus), args.selector, args.service, args.release, args.window,
                          time.time())
        except GateError as exc:
            raise UsageError(str(exc)) from None
        if not ev["tasks"]:
            raise UsageError(f"Prometheus has no tasks of {args.service} {args.release} in the last {args.window}")
        return baseline.from_evidence(ev, args.service, args.release, args.environment, args.window,
                                      source=args.prometheus)
    from otel_leak.report.loading import load

    report, problems = load(args.report)
    if report is None:
        raise UsageError("; ".join(problems))
    if problems:
        raise UsageError(f"{args.report}: invalid report ({problems[0]})")
    try:
        return baseline.from_report(report, args.service, args.release, args.environment, source=args.report)
    except baseline.BaselineError as exc:
        raise UsageError(str(exc)) from None


def execute(args: argparse.Namespace) -> int:
    from otel_leak import baseline

    doc = _make(args)
    try:
        path = args.out or baseline.default_path(args.dir, args.service, args.environment, args.release)
        baseline.save(doc, path, force=args.force)
    except baseline.BaselineError as exc:
        raise CommandError(str(exc)) from None
    tasks = ", ".join(f"{t} {e['bytes_per_call']:+,.0f}±{e['se']:,.0f} B/call" for t, e in doc["per_task"].items()
                      if e["bytes_per_call"] is not None and e["se"] is not None)
    print(f"baseline {args.service} {args.release} ({args.environment}) -> {path}: verdict {doc['verdict']}; {tasks}")
    return 0
