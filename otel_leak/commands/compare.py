"""``otel-leak compare BASE NEW [--json FILE] [--html FILE]``: compare two releases' memory (baselines, or
reports, which are turned into baselines on the fly) with the test in :mod:`otel_leak.compare`; prints a
table, optionally writes the result as JSON and an HTML page with both releases' memory side by side.

Exit 0 unchanged or fixed; 1 regressed; 3 inconclusive; 2 BASE or NEW unusable.
"""

from __future__ import annotations

import argparse
import json

from otel_leak.commands.errors import CommandError, UsageError

NAME = "compare"
HELP = "compare two releases' memory (exit 0 unchanged/fixed, 1 regressed, 3 inconclusive)"


def configure(p: argparse.ArgumentParser) -> None:
    p.description = ("Compare two releases' memory baselines (or reports): per task type and overall, "
                     "regressed / fixed / unchanged / inconclusive.")
    p.add_argument("base", metavar="BASE")
    p.add_argument("new", metavar="NEW")
    p.add_argument("--json", metavar="FILE", help="write the comparison as JSON")
    p.add_argument("--html", metavar="FILE", help="write an HTML page with both releases side by side")


def _fmt(e: dict | None) -> str:
    if not e or e.get("bytes_per_call") is None:
        return "-"
    return f"{e['bytes_per_call']:+,.0f} ± {e['se']:,.0f}"


def _n(x) -> str:
    return "-" if x is None else f"{x:,}"


def _ms(x) -> str:
    return "-" if x is None else f"{x * 1000:.2f} ms"


def print_table(result: dict) -> None:
    from rich.table import Table

    from otel_leak.report.console import stderr_console

    b, n = result["base"], result["new"]
    t = Table(title=f"{b.get('service')} {b.get('version')} -> {n.get('version')}: {result['verdict']}")
    for col in ("task", "base B/call", "new B/call", "z", "verdict"):
        t.add_column(col)
    for r in result["tasks"]:
        t.add_row(r["task"], _fmt(r["base"]), _fmt(r["new"]), "-" if r["z"] is None else f"{r['z']:+.1f}",
                  r["verdict"] + (f" ({r['reason']})" if r.get("reason") else ""))
    console = stderr_console()
    console.print(t)
    if result.get("gc_pauses"):
        g = Table(title="GC pauses per generation (shown, not judged)")
        for col in ("generation", "collections base/new", "p50 base/new", "p99 base/new"):
            g.add_column(col)
        for r in result["gc_pauses"]:
            g.add_row(r["generation"], f"{_n(r['base_collections'])} / {_n(r['new_collections'])}",
                      f"{_ms(r['base_p50_s'])} / {_ms(r['new_p50_s'])}", f"{_ms(r['base_p99_s'])} / {_ms(r['new_p99_s'])}")
        console.print(g)
    for line in result["reasons"] + ([result["workload_note"]] if result["workload_note"] else []):
        console.print(f"  {line}")


def execute(args: argparse.Namespace) -> int:
    from otel_leak import baseline
    from otel_leak.compare import EXIT_CODES, compare

    try:
        base, new = baseline.load(args.base), baseline.load(args.new)
    except baseline.BaselineError as exc:
        raise UsageError(str(exc)) from None
    result = compare(base, new)
    print_table(result)
    print(f"{result['verdict']}: " + "; ".join(result["reasons"]))
    try:
        if args.json:
            with open(args.json, "w", encoding="utf-8") as fh:
                json.dump(result, fh, indent=1)
        if args.html:
            from otel_leak.report.compare_html import write_html

            write_html(result, args.html)
    except OSError as exc:
        raise CommandError(f"cannot write {exc.filename}: {exc.strerror or exc}") from None
    return EXIT_CODES[result["verdict"]]
