"""The dashboards follow their Mixin the way the alert rules do (dashboards/grafana/thresholds.py, promql.py).

* every panel that shows what an alert evaluates colours at that alert's thresholds, read back from the rule
  generated from the same Mixin and converted to the panel's unit: for the production Mixin and for one with
  every such threshold changed, so that a change moves panel and alert together;
* a non-default ``selector`` is on every selector of an otel-leak series in every panel and variable query
  (recording rules and ALERTS are already selected by the rules that record them);
* per-process panels group by the Mixin's ``process_labels``, the fleet signal by its ``service_labels``;
* ``python -m dashboards.grafana --set`` takes the parameters ``python -m dashboards.rules --set`` takes, and
  the two outputs agree.

That the committed JSON is what ``Mixin()`` generates now is checked by tests/test_dashboards.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dashboards import grafana, rules
from dashboards.grafana import queries as q
from dashboards.mixin import MiB, RECORDING_RULES as R, Mixin
from otel_leak import names

ROOT = Path(__file__).resolve().parent.parent

# Every threshold with a panel counterpart moved away from production (same validation rules hold).
CHANGED = dict(
    floor_growth_warning_bytes_per_hour=8 * MiB,
    floor_growth_critical_bytes_per_hour=40 * MiB,
    fleet_growth_bytes_per_hour=4 * MiB,
    limit_used_warning_ratio=0.5,
    limit_used_critical_ratio=0.7,
    limit_horizon_warning="12h",
    limit_horizon_critical="90m",
    gc_min_pause_seconds=0.05,
)
MIXINS = {"production": Mixin(), "changed": Mixin(**CHANGED)}
OTEL_LEAK_SERIES = q.allowed_series() - {q.ALERTS}  # names.py series (histograms with their suffixes)


def dashboards(m: Mixin) -> dict[str, dict]:
    return {name: json.loads(text) for name, text in grafana.outputs(m).items()}


def panels(m: Mixin):
    for fname, dash in dashboards(m).items():
        for panel in q.panels(dash):
            if panel["type"] != "row":
                yield fname, panel


def exprs(panel: dict) -> list[str]:
    return [t["expr"] for t in panel.get("targets", [])]


def reads(panel: dict, *series: str) -> bool:
    """The panel has a query selecting all of ``series``."""
    return any(set(series) <= q.series_names(e) for e in exprs(panel))


def steps(panel: dict) -> list[tuple[str, float | None]]:
    found = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    return [(s["color"], s["value"]) for s in found]


# --------------------------------------------------------------------------------------------------
# The alerts' thresholds, read back from the generated rules (not from the Mixin's fields)


def _number(pattern: str, expr: str) -> float:
    found = re.search(pattern, expr)
    assert found, f"{pattern!r} not in {expr!r}"
    return float(found.group(1))


NUM = r"([0-9.e+-]+)"


def alert_thresholds(m: Mixin | list[dict]) -> dict[str, float]:
    """Thresholds of the alerts with a panel counterpart, in the alerts' own units, from the alerts a Mixin
    generates (or a list of alert rules)."""
    alerts = rules.Rules(m).alerts() if isinstance(m, Mixin) else m
    by = {(a["alert"], a["labels"][names.LABEL_SEVERITY]): a["expr"] for a in alerts}
    floor = re.escape(R["floor"])
    out = {}
    for sev in ("warning", "critical"):
        out[f"floor_{sev}_bytes_per_hour"] = _number(
            rf"^{re.escape(R['floor_slope'])} \* 3600 > {NUM}\n", by["OtelLeakMemoryFloorGrowing", sev])
        filling = by["OtelLeakMemoryFillingUp", sev]
        out[f"limit_{sev}_ratio"] = _number(rf"^{floor} / .* > {NUM}\n", filling)
        out[f"limit_{sev}_seconds"] = _number(rf"predict_linear\({floor}\[[^\]]+\], {NUM}\)", filling)
    out["fleet_bytes_per_hour"] = _number(
        rf"{re.escape(R['service_mature_slope'])}\[[^\]]+\]\) \* 3600 > {NUM}\n",
        by["OtelLeakFleetMemoryGrowing", "warning"])
    out["gc_min_seconds"] = _number(
        rf"\n?and {re.escape(R['gc_pause_mean'])} > {NUM}$", by["OtelLeakGCPauseRegression", "warning"])
    return out


def test_the_changed_mixin_changes_every_alert_threshold() -> None:
    prod, changed = (alert_thresholds(m) for m in MIXINS.values())
    assert prod.keys() == changed.keys()
    assert all(prod[k] != changed[k] for k in prod), {k for k in prod if prod[k] == changed[k]}
    assert prod["floor_warning_bytes_per_hour"] == 16 * MiB and prod["limit_critical_seconds"] == 4 * 3600


# --------------------------------------------------------------------------------------------------
# Panel thresholds = alert thresholds


def expected_steps(a: dict[str, float]) -> dict[str, list]:
    hour = 3600
    return {
        # bytes/h in the rules, bytes/s on the panels
        "floor slope": [("green", None), ("orange", a["floor_warning_bytes_per_hour"] / hour),
                        ("red", a["floor_critical_bytes_per_hour"] / hour)],
        "fleet slope": [("green", None), ("orange", a["fleet_bytes_per_hour"] / hour)],
        "floor / limit": [("green", None), ("orange", a["limit_warning_ratio"]),
                          ("red", a["limit_critical_ratio"])],
        # red under the critical horizon, orange under the warning horizon (seconds on both sides)
        "time to limit": [("red", None), ("orange", a["limit_critical_seconds"]),
                          ("green", a["limit_warning_seconds"])],
    }


def counterpart(panel: dict) -> str | None:
    """Which alert threshold a (non-table) panel mirrors, from the series it shows."""
    unit = panel["fieldConfig"]["defaults"].get("unit")
    if reads(panel, R["service_mature_slope"]):
        return "fleet slope"
    if reads(panel, R["time_to_limit"]):
        return "time to limit"
    if reads(panel, R["floor"], names.MEMORY_LIMIT.prom) and unit == "percentunit":
        return "floor / limit"
    if reads(panel, R["gc_pause_mean"]):
        return "gc pause"
    # the alert's floor slope, and the other estimates of the same slope (detector, in-process floor gauge)
    if unit == "Bps" and (reads(panel, R["floor_slope"]) or reads(panel, names.DETECTOR_FLOOR_SLOPE.prom)
                          or any("deriv(" + names.MEMORY_FLOOR.prom in e for e in exprs(panel))):
        return "floor slope"
    return None


@pytest.mark.parametrize("which", MIXINS)
def test_panel_thresholds_are_the_alert_thresholds(which: str) -> None:
    m = MIXINS[which]
    alerts = alert_thresholds(m)
    expected = expected_steps(alerts)
    seen: dict[str, list[str]] = {}
    for fname, panel in panels(m):
        if panel["type"] == "table":
            continue
        kind = counterpart(panel)
        where = f"{fname} {panel['title']!r}"
        if kind is None:
            continue
        seen.setdefault(kind, []).append(where)
        got = steps(panel)
        if kind == "gc pause":
            # orange from the shortest pause the alert fires on; red (a stalling pause, no alert) may follow
            assert got[:2] == [("green", None), ("orange", pytest.approx(alerts["gc_min_seconds"]))], where
            assert all(v > alerts["gc_min_seconds"] for _, v in got[2:]), where
        else:
            assert got == [(c, None if v is None else pytest.approx(v, rel=1e-12)) for c, v in expected[kind]], (
                f"{where}: thresholds {got}, the alerts' are {expected[kind]}")
    # every pair has its panels (a panel that stops reading the alert's series would drop out here)
    assert {k: len(v) for k, v in seen.items()} == {
        "floor slope": 9, "fleet slope": 1, "floor / limit": 1, "time to limit": 3, "gc pause": 1}, seen


def test_bytes_per_second_panels_colour_only_at_alert_thresholds() -> None:
    """No Bps panel keeps colours of its own: any threshold on a slope is the floor or fleet alert's."""
    m = MIXINS["changed"]
    allowed = {tuple(v for _, v in s) for k, s in expected_steps(alert_thresholds(m)).items() if "slope" in k}
    for fname, panel in panels(m):
        if panel["type"] != "table" and panel["fieldConfig"]["defaults"].get("unit") == "Bps":
            values = tuple(v for _, v in steps(panel))
            if len(values) > 1:
                assert values in allowed, f"{fname} {panel['title']!r}: {values}"


def test_descriptions_name_the_thresholds_they_colour_at() -> None:
    m = MIXINS["changed"]
    for fname, panel in panels(m):
        kind = counterpart(panel) if panel["type"] != "table" else None
        text = {
            "floor slope": ("8 MiB/h", "40 MiB/h"),
            "fleet slope": ("4 MiB/h",),
            "floor / limit": ("50 %", "70 %"),
            "time to limit": ("90m", "12h"),
            "gc pause": ("50 ms",),
        }.get(kind, ())
        for t in text:
            assert t in panel["description"], f"{fname} {panel['title']!r}: {t!r} not in its description"
    for fname, panel in panels(MIXINS["production"]):
        assert "6 h" not in panel["description"], f"{fname} {panel['title']!r}: the old horizon"


# --------------------------------------------------------------------------------------------------
# Selector and process labels

SELECTOR = 'job="otel-collector", k8s_cluster=~"prod-.*"'


def _all_queries(m: Mixin) -> list[tuple[str, str]]:
    """(where, expr) of every panel query and every variable query of every dashboard."""
    out = []
    for fname, dash in dashboards(m).items():
        out += [(x.where, x.expr) for x in q.queries({fname: dash})]
        out += [(f"{fname} variable {v['name']}", v["query"]) for v in q.variables(dash) if v["type"] == "query"]
    return out


def test_selector_is_on_every_otel_leak_series() -> None:
    m = Mixin(selector=SELECTOR)
    wanted = [x.strip() for x in SELECTOR.split(",")]
    checked = 0
    for where, expr in _all_queries(m):
        found = q.selectors(expr)
        assert found, f"{where}: no series in {expr}"
        for series, matchers in found:
            if series in OTEL_LEAK_SERIES:
                assert matchers.startswith(SELECTOR), f"{where}: {series}{{{matchers}}} lacks the selector"
                checked += 1
            else:  # a recording rule (selected when recorded) or ALERTS
                assert not any(w in matchers for w in wanted), f"{where}: {series}{{{matchers}}}"
    assert checked >= 70
    # and the production Mixin's empty selector adds nothing
    for where, expr in _all_queries(Mixin()):
        assert "job=" not in expr and ", ," not in expr and "{," not in expr, where


def test_selector_selection_reads_like_the_rules() -> None:
    """The dashboards put the selector where dashboards.rules puts it: first, before the panel's matchers."""
    m = Mixin(selector=SELECTOR)
    rule_text = "\n".join(r["expr"] for g in rules.Rules(m).groups()["groups"] for r in g["rules"])
    rss = f"{names.PROCESS_MEMORY_USAGE.prom}{{{SELECTOR}"
    assert rss in rule_text
    assert any(rss in expr for _, expr in _all_queries(m))


def test_per_process_panels_group_by_the_process_labels() -> None:
    labels = (names.LABEL_JOB, names.LABEL_SERVICE, names.LABEL_INSTANCE, names.LABEL_PID, "k8s_pod")
    m = Mixin(process_labels=labels, service_labels=(names.LABEL_JOB, names.LABEL_SERVICE))
    extra = {"le", names.LABEL_TASK, names.LABEL_GC_GENERATION}
    per_process = 0
    for where, expr in _all_queries(m):
        for group in q.groupings(expr):
            if names.LABEL_PID in group:  # a per-process grouping
                assert set(group) - extra == set(labels), f"{where}: by ({', '.join(group)})"
                per_process += 1
    assert per_process >= 40
    fleet = [e for _, e in _all_queries(m) if R["service_mature_slope"] in e]
    assert fleet and all(q.groupings(e) == [m.service_labels] for e in fleet), fleet


# --------------------------------------------------------------------------------------------------
# Command line: the same --set for rules and dashboards gives agreeing outputs


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_cli_set_moves_rules_and_dashboards_together(tmp_path: Path) -> None:
    sets = ["--set", f"selector={SELECTOR}", "--set", "floor_growth_warning_bytes_per_hour=3600000",
            "--set", "limit_used_critical_ratio=0.75"]
    out = run("-m", "dashboards.rules", "--out", str(tmp_path / "rules"), *sets)
    assert out.returncode == 0, out.stderr
    out = run("-m", "dashboards.grafana", "--out", str(tmp_path / "grafana"), *sets)
    assert out.returncode == 0, out.stderr
    doc = yaml.safe_load((tmp_path / "rules" / rules.PRODUCTION_FILE).read_text())
    rs = [r for g in doc["groups"] for r in g["rules"]]
    a = alert_thresholds([r for r in rs if "alert" in r])
    assert a["floor_warning_bytes_per_hour"] == 3600000 and a["limit_critical_ratio"] == 0.75
    assert all(SELECTOR in r["expr"] for r in rs if names.PROCESS_MEMORY_USAGE.prom in r["expr"])
    worker = json.loads((tmp_path / "grafana" / "otel-leak-worker.json").read_text())
    by_title = {p["title"]: p for p in q.panels(worker)}
    expected = expected_steps(a)
    assert steps(by_title["Floor slope"]) == expected["floor slope"]  # 1000 B/s = 3600000 B/h
    assert steps(by_title["Floor slope"])[1] == ("orange", 1000)
    assert steps(by_title["Floor as share of limit"]) == expected["floor / limit"]
    assert all(SELECTOR in t["expr"] for t in by_title["Resident memory"]["targets"])


def test_cli_unknown_parameter_fails_with_its_name(tmp_path: Path) -> None:
    out = run("-m", "dashboards.grafana", "--out", str(tmp_path), "--set", "floor_windw=5m")
    assert out.returncode == 2 and "floor_windw" in out.stderr and "floor_window" in out.stderr
    assert not list(tmp_path.glob("*.json"))
