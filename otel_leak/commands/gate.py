"""``otel-leak gate --prometheus URL --service S --baseline-version A --canary-version B [--window 15m]
[--selector MATCHERS] [--json FILE]``: pass / fail / inconclusive for a canary release's memory, from the
fleet's Prometheus (:mod:`otel_leak.gate`), for an Argo Rollouts Job analysis or a Flagger webhook.

Prints the verdict and its reasons, the JSON to ``--json FILE`` (``-`` for stdout). Exit 0 pass, 1 fail,
3 inconclusive, 2 bad arguments or Prometheus unreachable.
"""

from __future__ import annotations

import argparse
import json
import sys

from otel_leak.commands.errors import CommandError, UsageError

NAME = "gate"
HELP = "gate a canary release on its memory against a baseline release (exit 0 pass, 1 fail, 3 inconclusive)"
EXIT = {"pass": 0, "fail": 1, "inconclusive": 3}


def configure(p: argparse.ArgumentParser) -> None:
    p.description = "Compare a canary release's memory with a baseline release's, from Prometheus."
    p.add_argument("--prometheus", required=True, metavar="URL")
    p.add_argument("--service", required=True)
    p.add_argument("--baseline-version", required=True)
    p.add_argument("--canary-version", required=True)
    p.add_argument("--window", default="15m", help="Prometheus duration (default 15m)")
    p.add_argument("--selector", default="", help='extra PromQL matchers, e.g. job="otel-collector"')
    p.add_argument("--json", metavar="FILE", help="write the result as JSON (- for stdout)")


def execute(args: argparse.Namespace) -> int:
    from otel_leak.gate import GateError, gate

    try:
        result = gate(args.prometheus, args.service, args.baseline_version, args.canary_version,
                      window=args.window, selector=args.selector)
    except GateError as exc:
        raise UsageError(str(exc)) from None
    text = json.dumps(result, indent=1)
    if args.json == "-":
        print(text)
    else:
        print(f"{result['verdict']}: " + "; ".join(result["reasons"]))
        if args.json:
            try:
                with open(args.json, "w", encoding="utf-8") as fh:
                    fh.write(text)
            except OSError as exc:
                raise CommandError(f"cannot write {args.json}: {exc.strerror or exc}") from None
    sys.stdout.flush()
    return EXIT[result["verdict"]]
