"""otel-leak Grafana dashboards, built with grafanalib from :mod:`otel_leak.names`.

Regenerate the committed JSON after changing anything here or in ``otel_leak/names.py``::

    .venv/bin/python -m dashboards.grafana --out dashboards/generated/grafana

``tests/test_dashboards.py`` fails while the committed JSON is stale.
"""

from __future__ import annotations

import json
from pathlib import Path

from grafanalib._gen import DashboardEncoder

from . import fleet, release, tasks, worker

# file name -> builder; the file names are what Grafana provisioning and deploy/ mount.
DASHBOARDS = {
    "otel-leak-fleet.json": fleet.build,
    "otel-leak-worker.json": worker.build,
    "otel-leak-tasks.json": tasks.build,
    "otel-leak-release.json": release.build,
}


def render(build) -> str:
    """Deterministic JSON text of one dashboard (sorted keys, trailing newline)."""
    data = json.loads(json.dumps(build().to_json_data(), cls=DashboardEncoder))
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def generate(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, build in DASHBOARDS.items():
        path = out / name
        path.write_text(render(build), encoding="utf-8")
        written.append(path)
    return written
