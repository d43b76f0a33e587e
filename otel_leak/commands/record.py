"""``otel-leak record REPORT [--compare RESULT.json ...] [--title T] [--link URL ...] --out BASENAME``: write
a remediation record, ``BASENAME.md`` and ``BASENAME.json`` (what leaked, where, what holds it, the alert and
its runbook, the releases compared and whether the fix was verified).

Exit 0 written; 1 a file cannot be written; 2 REPORT or a compare result unusable.
"""

from __future__ import annotations

import argparse
import json

from otel_leak.commands.errors import CommandError, UsageError

NAME = "record"
HELP = "write a remediation record (Markdown + JSON) from a report and compare results"


def configure(p: argparse.ArgumentParser) -> None:
    p.description = "Write a remediation record from a report and, optionally, `otel-leak compare --json` results."
    p.add_argument("report", metavar="REPORT")
    p.add_argument("--compare", action="append", default=[], metavar="RESULT.json",
                   help="an `otel-leak compare --json` result (repeatable)")
    p.add_argument("--title")
    p.add_argument("--link", action="append", default=[], metavar="URL", help="a link to keep (repeatable)")
    p.add_argument("--out", required=True, metavar="BASENAME", help="writes BASENAME.md and BASENAME.json")


def execute(args: argparse.Namespace) -> int:
    from otel_leak import record
    from otel_leak.report.loading import load

    report, problems = load(args.report)
    if report is None or problems:
        raise UsageError("; ".join(problems[:3]) or f"{args.report}: not a report")
    comparisons = []
    for path in args.compare:
        try:
            with open(path, encoding="utf-8") as fh:
                doc = json.load(fh)
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read the compare result {path}: {exc}") from None
        if not isinstance(doc, dict) or doc.get("schema") != "otel-leak/compare/v1":
            raise UsageError(f"{path}: not an `otel-leak compare --json` result")
        comparisons.append(doc)
    rec = record.build(report, comparisons, title=args.title, links=args.link)
    try:
        with open(args.out + ".json", "w", encoding="utf-8") as fh:
            json.dump(rec, fh, indent=1)
        with open(args.out + ".md", "w", encoding="utf-8") as fh:
            fh.write(record.markdown(rec))
    except OSError as exc:
        raise CommandError(f"cannot write {exc.filename}: {exc.strerror or exc}") from None
    print(f"record: {rec['status']} -> {args.out}.md, {args.out}.json")
    return 0
