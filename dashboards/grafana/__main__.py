"""``python -m dashboards.grafana --out DIR``: write the dashboards' JSON into DIR."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import generate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboards.grafana", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("dashboards/generated/grafana"),
                        help="output directory (default: dashboards/generated/grafana)")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
