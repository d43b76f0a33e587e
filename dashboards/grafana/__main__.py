"""``python -m dashboards.grafana --out DIR [--set NAME=VALUE ...]``: write the dashboards' JSON into DIR, and
the Grafana-managed alert rules, contact point and policy into DIR/alerting (with the recording-rules-only
Prometheus file of the Grafana-evaluated mode in DIR), for the production ``Mixin()`` or with some of its
parameters changed (as ``python -m dashboards.rules`` takes them, so that rules, alerts and dashboards
generated with the same ``--set`` agree)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dashboards.mixin import PARAMETERS, Mixin, parse_set

from . import alerts, generate


def write_alerts(out: Path, m: Mixin) -> list[Path]:
    written = []
    for rel, text in alerts.outputs(m).items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboards.grafana", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("dashboards/generated/grafana"),
                        help="output directory (default: dashboards/generated/grafana)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help=f"override a Mixin parameter (one of: {', '.join(PARAMETERS)})")
    args = parser.parse_args(argv)
    try:
        m = Mixin(**parse_set(args.set))
    except (TypeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path in generate(args.out, m) + write_alerts(args.out, m):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
