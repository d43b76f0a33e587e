"""otel-leak Grafana dashboards, built with grafanalib from :mod:`otel_leak.names` and one
:class:`~dashboards.mixin.Mixin`, the parameters of the alert rules.

The Mixin's ``selector`` is on every otel-leak series of every query, per-process panels group by its
``process_labels``, and a panel showing what an alert evaluates colours at that alert's thresholds
(:mod:`.thresholds`). Regenerate the committed JSON (production ``Mixin()``) after changing anything here, in
``dashboards/mixin.py`` or in ``otel_leak/names.py``::

    .venv/bin/python -m dashboards.grafana --out dashboards/generated/grafana
    .venv/bin/python -m dashboards.grafana --out /tmp/d --set selector='job="otel-collector"'   # own Mixin

``tests/test_dashboards.py`` fails while the committed JSON is stale; ``tests/test_dashboards_mixin.py``
checks the thresholds against the alerts and the selector on every query, for other Mixins too.
"""

from __future__ import annotations

import json
from pathlib import Path

from grafanalib._gen import DashboardEncoder

from dashboards.mixin import Mixin

from . import fleet, release, tasks, worker

# file name -> builder (Mixin -> grafanalib Dashboard); the file names are what Grafana provisioning and
# deploy/ mount.
DASHBOARDS = {
    "otel-leak-fleet.json": fleet.build,
    "otel-leak-worker.json": worker.build,
    "otel-leak-tasks.json": tasks.build,
    "otel-leak-release.json": release.build,
}


def render(build, m: Mixin | None = None) -> str:
    """Deterministic JSON text of one dashboard for ``m`` (default ``Mixin()``): sorted keys, trailing newline."""
    dash = build(Mixin() if m is None else m)
    data = json.loads(json.dumps(dash.to_json_data(), cls=DashboardEncoder))
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def outputs(m: Mixin | None = None) -> dict[str, str]:
    """File name -> JSON text of every dashboard for ``m`` (default ``Mixin()``)."""
    return {name: render(build, m) for name, build in DASHBOARDS.items()}


def generate(out: Path, m: Mixin | None = None) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in outputs(m).items():
        path = out / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
