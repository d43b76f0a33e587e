"""Static checks of the Grafana dashboards (dashboards/grafana -> dashboards/generated/grafana/*.json).

* the committed JSON is what the sources generate now (regenerated into a temp dir and compared);
* every panel has a description and a unit, Stat panels reduce with lastNotNull, heatmaps carry exemplars;
* every query names only series from otel_leak/names.py, Prometheus' ALERTS, or recording rules that the
  committed rules files actually record, and only labels names.py defines;
* every variable a query uses is defined by its dashboard.

The queries themselves run against real data in tests/e2e/test_dashboard_queries.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from dashboards import grafana
from dashboards.grafana import queries as q
from otel_leak import names

REPO = Path(__file__).resolve().parents[1]
GENERATED = REPO / "dashboards" / "generated" / "grafana"
RULE_FILES = [REPO / "dashboards" / "generated" / "prometheus-rules.yaml",
              REPO / "dashboards" / "generated" / "prometheus-rules.test.yaml"]
BUILTIN_VARIABLES = {"__rate_interval", "__interval", "__range", "__url_time_range"}

DASHBOARDS = q.load(GENERATED)
QUERIES = q.queries(DASHBOARDS)


def _panels():
    for fname, dash in DASHBOARDS.items():
        for panel in q.panels(dash):
            if panel["type"] != "row":
                yield fname, panel


def _recorded(path: Path) -> set[str]:
    doc = yaml.safe_load(path.read_text())
    return {r["record"] for g in doc["groups"] for r in g["rules"] if "record" in r}


def test_generated_json_is_current(tmp_path: Path) -> None:
    fresh = {p.name: p.read_text() for p in grafana.generate(tmp_path)}
    committed = {p.name: p.read_text() for p in GENERATED.glob("*.json")}
    assert sorted(committed) == sorted(fresh), "dashboards/generated/grafana has extra or missing files"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, (
        f"stale generated dashboards {stale}: run `.venv/bin/python -m dashboards.grafana "
        "--out dashboards/generated/grafana` and commit the result"
    )


def test_four_dashboards_with_unique_uids() -> None:
    uids = {d["uid"] for d in DASHBOARDS.values()}
    assert len(DASHBOARDS) == 4 and len(uids) == 4
    assert {d["title"] for d in DASHBOARDS.values()} == {
        "otel-leak / Fleet", "otel-leak / Worker", "otel-leak / Tasks", "otel-leak / Release comparison"}


def _unit(panel: dict) -> str:
    if panel["type"] == "heatmap":
        return (panel.get("options") or {}).get("yAxis", {}).get("unit") or ""
    return ((panel.get("fieldConfig") or {}).get("defaults") or {}).get("unit") or ""


@pytest.mark.parametrize("fname,panel", list(_panels()), ids=lambda x: x if isinstance(x, str) else x["title"])
def test_panel_has_description_unit_and_targets(fname: str, panel: dict) -> None:
    desc = panel.get("description") or ""
    assert len(desc) >= 100, f"{fname} {panel['title']!r}: description must say what it means and what to do"
    assert _unit(panel), f"{fname} {panel['title']!r}: no unit"
    assert panel["targets"], f"{fname} {panel['title']!r}: no query"
    refs = [t["refId"] for t in panel["targets"]]
    assert all(refs) and len(set(refs)) == len(refs), f"{fname} {panel['title']!r}: refIds {refs}"
    for t in panel["targets"]:
        assert t["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        if not t.get("instant") and panel["type"] in ("timeseries", "heatmap"):
            assert t["legendFormat"], f"{fname} {panel['title']!r} {t['refId']}: legend must name the series"
    assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24


def test_stat_panels_reduce_with_last_not_null() -> None:
    stats = [(f, p) for f, p in _panels() if p["type"] == "stat"]
    assert stats
    for fname, panel in stats:
        assert panel["options"]["reduceOptions"]["calcs"] == ["lastNotNull"], f"{fname} {panel['title']!r}"


def test_heatmaps_show_histogram_buckets_with_exemplars() -> None:
    heatmaps = [(f, p) for f, p in _panels() if p["type"] == "heatmap"]
    assert {p["title"] for _, p in heatmaps} >= {"Resident growth per call", "Resident release per call"}
    for fname, panel in heatmaps:
        assert panel["options"]["calculate"] is False, "Prometheus buckets are already buckets"
        for t in panel["targets"]:
            assert t["exemplar"] is True, f"{fname} {panel['title']!r}: exemplars off"
            assert t["format"] == "heatmap" and "_bucket" in t["expr"]
    exemplar_series = {s for x in QUERIES if x.exemplar for s in q.series_names(x.expr)}
    assert exemplar_series == {names.TASK_MEMORY_GROWTH.prom + "_bucket", names.TASK_MEMORY_RELEASE.prom + "_bucket"}


def test_panels_near_a_limit_have_thresholds() -> None:
    """Where a limit exists (memory limit, time to it, GC pause, uncollectable objects) a threshold shows it."""
    limit_words = (names.MEMORY_LIMIT.prom, "time_to_limit", "uncollectable", "gc_pause_seconds_sum")
    checked = 0
    for fname, panel in _panels():
        exprs = " ".join(t["expr"] for t in panel["targets"])
        if panel["type"] == "table" or not any(w in exprs for w in limit_words):
            continue
        steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
        overrides = json.dumps(panel["fieldConfig"].get("overrides", []))
        assert len(steps) >= 2 or "fixedColor" in overrides, f"{fname} {panel['title']!r}: no threshold"
        checked += 1
    assert checked >= 6


def test_recording_rules_the_dashboards_use_are_recorded() -> None:
    for path in RULE_FILES:
        assert path.exists(), f"{path} missing: the dashboards query its recording rules"
    recorded = set.intersection(*(_recorded(p) for p in RULE_FILES))
    from dashboards.mixin import RECORDING_RULES

    used = {s for x in QUERIES for s in q.series_names(x.expr)} & set(RECORDING_RULES.values())
    assert used, "the dashboards should show what the alerts evaluate"
    assert used <= recorded, f"recording rules used by dashboards but not generated: {used - recorded}"


def test_every_query_names_only_known_series_and_labels() -> None:
    recorded = set.intersection(*(_recorded(p) for p in RULE_FILES))
    allowed = q.allowed_series(frozenset(recorded))
    labels = q.allowed_labels()
    assert len(QUERIES) >= 60
    problems = []
    for x in QUERIES:
        series = q.series_names(x.expr)
        if not series:
            problems.append(f"{x.where}: names no series: {x.expr}")
        if series - allowed:
            problems.append(f"{x.where}: unknown series {sorted(series - allowed)}")
        if q.label_names(x.expr) - labels:
            problems.append(f"{x.where}: unknown labels {sorted(q.label_names(x.expr) - labels)}")
    assert not problems, "\n".join(problems)
    # every metric names.py defines is on some dashboard
    used = {s for x in QUERIES for s in q.series_names(x.expr)}
    for m in names.ALL_METRICS:
        forms = {m.prom} | ({m.prom + s for s in ("_bucket", "_sum", "_count")} if m.kind == "histogram" else set())
        assert used & forms, f"{m.prom} is on no dashboard"


def test_series_extraction_catches_unknown_names() -> None:
    """The check above is only as good as the extractor: it must see through functions, grouping, matchers,
    durations, numbers, strings and variables, and still see a bad name."""
    expr = (
        'histogram_quantile(0.99, sum by (le, service_name) (rate(otel_leak_gc_pause_seconds_bucket'
        '{service_name=~"$service", x="a{b}"}[$__rate_interval]))) > 1e-9 and on (service_name) '
        'process_memory_usage_bytes offset 5m / ignoring (le) group_left () typo_metric_bytes'
    )
    assert q.series_names(expr) == {"otel_leak_gc_pause_seconds_bucket", "process_memory_usage_bytes",
                                    "typo_metric_bytes"}
    assert q.label_names(expr) == {"le", "service_name", "x"}
    assert "typo_metric_bytes" not in q.allowed_series()


@pytest.mark.parametrize("fname", sorted(DASHBOARDS))
def test_variables(fname: str) -> None:
    dash = DASHBOARDS[fname]
    defined = {v["name"]: v for v in q.variables(dash)}
    assert defined["datasource"]["type"] == "datasource" and defined["datasource"]["query"] == "prometheus"
    for name in ("service",):
        assert name in defined
    used = {v for x in QUERIES if x.dashboard == fname for v in q.used_variables(x.expr)}
    assert used - BUILTIN_VARIABLES <= set(defined), f"undefined variables {used - BUILTIN_VARIABLES - set(defined)}"
    for name, v in defined.items():
        if v["type"] == "query":
            parsed = q.label_values_query(v["query"])
            assert parsed, f"{name}: expected label_values(selector, label)"
            selector, label = parsed
            assert q.series_names(selector) <= q.allowed_series() and label in q.allowed_labels()
            assert v["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            for dep in q.used_variables(selector):
                assert list(defined).index(dep) < list(defined).index(name), f"{name} depends on later {dep}"
    if "release" in fname:
        assert {"version_a", "version_b"} <= set(defined)
        assert defined["version_a"]["multi"] is False and defined["version_b"]["multi"] is False
    if "worker" in fname or "tasks" in fname:
        assert "instance" in defined
    if "tasks" in fname:
        assert "task" in defined
