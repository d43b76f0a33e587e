"""The Prometheus rules generated from dashboards/mixin.py: fresh, valid, unit-tested with promtool, documented.

promtool comes from the Debian ``prometheus`` package (scripts/setup-services.sh). Missing, the promtool tests
FAIL under ``CI=true`` and skip elsewhere.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dashboards import rules
from dashboards.mixin import ALERTS, PARAMETERS, RECORDING_RULES, Mixin, duration, seconds
from otel_leak import names

ROOT = Path(__file__).resolve().parent.parent
GENERATED = ROOT / "dashboards" / "generated"
SUITES = sorted((ROOT / "dashboards" / "tests").glob("*.test.yaml"))
RUNBOOKS = ROOT / "docs" / "runbooks"
RULE_FILES = [GENERATED / rules.PRODUCTION_FILE, GENERATED / rules.TEST_FILE]
IN_CI = os.environ.get("CI", "").lower() == "true"


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        msg = "promtool is not installed (apt-get install prometheus; scripts/setup-services.sh does it)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=ROOT)


def load(path: Path) -> list[dict]:
    return [r for g in yaml.safe_load(path.read_text())["groups"] for r in g["rules"]]


def alerts(path: Path) -> list[dict]:
    return [r for r in load(path) if "alert" in r]


# --------------------------------------------------------------------------------------------------
# Generated files are what the generator produces now


def test_generated_files_are_not_stale(tmp_path):
    written = rules.write(tmp_path)
    assert {p.name for p in written} == {rules.PRODUCTION_FILE, rules.TEST_FILE}
    for path in written:
        committed = GENERATED / path.name
        assert committed.exists(), f"{committed} missing: run .venv/bin/python -m dashboards.rules --out {GENERATED}"
        assert committed.read_text() == path.read_text(), (
            f"{committed.relative_to(ROOT)} is stale: run .venv/bin/python -m dashboards.rules --out dashboards/generated"
        )


def test_cli_regenerates(tmp_path):
    out = run(sys.executable, "-m", "dashboards.rules", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    for name in (rules.PRODUCTION_FILE, rules.TEST_FILE):
        assert (tmp_path / name).read_text() == (GENERATED / name).read_text()


def test_cli_unknown_parameter_fails_clearly(tmp_path):
    out = run(sys.executable, "-m", "dashboards.rules", "--out", str(tmp_path), "--set", "floor_windw=5m")
    assert out.returncode == 2
    assert "floor_windw" in out.stderr and "floor_window" in out.stderr
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------------------------------
# The configuration object


def test_unknown_parameter_names_it_and_the_valid_ones():
    with pytest.raises(TypeError) as e:
        rules.generate(floor_windw="5m")
    msg = str(e.value)
    assert "'floor_windw'" in msg
    assert "did you mean 'floor_window'" in msg
    for p in PARAMETERS:
        assert p in msg
    with pytest.raises(TypeError, match="unknown Mixin parameter 'nonsense'"):
        Mixin(nonsense=1)
    with pytest.raises(TypeError, match="floor_windw"):
        Mixin.e2e(floor_windw="5m")


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"floor_window": "5 minutes"}, "floor_window.*not a Prometheus duration"),
        ({"floor_window": 300}, "floor_window.*duration string"),
        ({"floor_window": "2h"}, "floor_window must be shorter than slope_window"),
        ({"floor_for_critical": "10m"}, "floor_for_critical"),
        ({"floor_growth_warning_bytes_per_hour": -1}, "non-negative"),
        ({"limit_used_warning_ratio": 60}, "fraction"),
        ({"team": "a team"}, "team"),
        ({"selector": '{job="x"}'}, "without braces"),
        ({"process_labels": "job"}, "tuple of label names"),
        ({"process_labels": ("service_instance_id",)}, "service_labels must be a subset"),
        ({"task_for_critical": "10m"}, "task_for_critical"),
        ({"task_retained_critical_bytes_per_hour": 1}, "task_retained_critical_bytes_per_hour"),
        ({"guard_recycling_for": "1h"}, "guard_recycling_for must be shorter than guard_recycling_window"),
        ({"guard_rate_limited_window": "30s"}, "guard_rate_limited_for must be shorter"),
    ],
)
def test_invalid_values_fail_with_the_parameter_name(overrides, match):
    with pytest.raises((TypeError, ValueError), match=match):
        Mixin(**overrides)


def test_positional_arguments_are_refused():
    with pytest.raises(TypeError, match="keyword"):
        Mixin("10m")


def test_durations_round_trip():
    for d in ("10m", "1h", "1h30m", "1d", "90s", "6h"):
        assert seconds(duration(seconds(d))) == seconds(d)
    assert seconds("1d2h") == 93600


def test_parameters_change_the_output():
    groups = rules.generate(floor_window="15m", team="payments", selector='job="otel"')
    rs = [r for g in groups["groups"] for r in g["rules"]]
    exprs = "\n".join(r["expr"] for r in rs)
    assert "[15m]" in exprs and "[10m]" not in exprs.replace("[10m] offset", "")
    assert {r["labels"]["team"] for r in rs if "alert" in r} == {"payments"}
    assert 'process_memory_usage_bytes{job="otel"}' in exprs
    assert "process_memory_usage_bytes[" not in exprs


def test_e2e_preset_is_short_and_production_is_not():
    prod, e2e = Mixin(), Mixin.e2e()
    assert e2e.seconds("floor_for_critical") <= 120 < prod.seconds("floor_for_warning")
    assert e2e.seconds("floor_window") < e2e.seconds("slope_window")


# --------------------------------------------------------------------------------------------------
# Names come from otel_leak.names; alerts are complete and documented


def test_every_series_queried_is_a_project_name_or_a_recording_rule():
    known = {m.prom for m in names.ALL_METRICS}
    known |= {m.prom + s for m in names.ALL_METRICS if m.kind == "histogram" for s in ("_sum", "_count", "_bucket")}
    known |= set(RECORDING_RULES.values())
    functions = {
        "min", "max", "avg", "sum", "count", "by", "on", "and", "or", "unless", "offset", "group", "group_left",
        "min_over_time", "max_over_time", "quantile_over_time", "present_over_time", "deriv", "predict_linear",
        "rate", "resets", "clamp_min",
    }
    labels = set(Mixin().process_labels) | {names.LABEL_TASK, names.LABEL_GC_GENERATION, names.LABEL_GUARD_REASON,
                                            names.LABEL_GUARD_OUTCOME}
    for path in RULE_FILES:
        for r in load(path):
            expr = re.sub(r'"[^"]*"', "", r["expr"])  # label values
            expr = re.sub(r"\[[^\]]*\]|offset \w+", "", expr)  # ranges and offsets
            expr = re.sub(r"(?<![\w:])\d[\d.]*(e[+-]?\d+)?", "", expr)  # numbers
            for ident in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
                if ident in functions or ident in labels:
                    continue
                assert ident in known, f"{path.name}: {r.get('record') or r.get('alert')} queries unknown {ident!r}"


def test_recording_rules_are_the_declared_ones():
    for path in RULE_FILES:
        recorded = [r["record"] for r in load(path) if "record" in r]
        assert sorted(recorded) == sorted(RECORDING_RULES.values())


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_every_alert_is_complete(path):
    found = set()
    for a in alerts(path):
        found.add(a["alert"])
        assert a["labels"]["severity"] in ("warning", "critical"), a["alert"]
        assert a["labels"]["team"] == Mixin().team
        assert a.get("for"), a["alert"]
        ann = a["annotations"]
        for key in ("summary", "description", "runbook_url"):
            assert ann.get(key), f"{a['alert']} has no {key}"
        assert ann["runbook_url"] == Mixin().runbook_url(a["alert"])
        # a page names the service (and, for per-worker alerts, the worker)
        assert "$labels.service_name" in ann["summary"], a["alert"]
    assert found == set(ALERTS)


def test_warning_and_critical_pairs():
    sev: dict[str, set] = {}
    for a in alerts(GENERATED / rules.PRODUCTION_FILE):
        sev.setdefault(a["alert"], set()).add(a["labels"]["severity"])
    assert sev["OtelLeakMemoryFloorGrowing"] == {"warning", "critical"}
    assert sev["OtelLeakMemoryFillingUp"] == {"warning", "critical"}
    assert sev["OtelLeakTaskRetainingMemory"] == {"warning", "critical"}


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_guard_alerts_are_the_outcomes_someone_must_see(path):
    """A recycle (or, in dry-run, a recycle the guard would have made) warns; a recycle the hourly rate limit
    stopped pages; the other outcomes (started over its budget, another process recycling, no graceful recycle)
    are on the Worker dashboard only. Both alerts read the guard's counter and nothing else."""
    from otel_leak import guard

    assert set(guard._OUTCOMES) == set(names.GUARD_OUTCOMES)
    records = {r["record"]: r["expr"] for r in load(path) if "record" in r}
    by = {a["alert"]: a for a in alerts(path) if a["alert"].startswith("OtelLeakGuard")}
    assert {k: a["labels"]["severity"] for k, a in by.items()} == {
        "OtelLeakGuardRecycling": "warning", "OtelLeakGuardRateLimited": "critical"}
    outcome = names.LABEL_GUARD_OUTCOME
    assert f'{outcome}=~"{names.GUARD_RECYCLED}|{names.GUARD_DRY_RUN}"' in by["OtelLeakGuardRecycling"]["expr"]
    assert f'{outcome}="{names.GUARD_RATE_LIMITED}"' in by["OtelLeakGuardRateLimited"]["expr"]
    for a in by.values():
        assert _closure(a["expr"], records) & set(records) == set()
        assert names.GUARD_RECYCLES.prom in a["expr"] and "increase(" not in a["expr"], a["expr"]
    # the reasons the alert text explains are the ones the guard decides
    b = guard.Budgets(budget=100, hard=200, min_time_to_limit=600.0)
    decided = {guard.decide(guard.State(floor, 10, "leak", slope, 1000), b).reason
               for floor, slope in ((150, 0.0), (250, 0.0), (50, 10.0))}
    assert decided == set(rules.GUARD_REASONS)


def _closure(expr: str, records: dict[str, str]) -> set[str]:
    """Every series name an expression reads, through the recording rules it uses."""
    seen: set[str] = set()
    todo = [expr]
    while todo:
        for ident in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", re.sub(r'"[^"]*"', "", todo.pop())):
            if ident not in seen:
                seen.add(ident)
                if ident in records:
                    todo.append(records[ident])
    return seen


NAIVE = {RECORDING_RULES["task_net_growth_rate"], RECORDING_RULES["task_net_growth_per_call"]}


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_no_alert_pages_on_the_naive_per_task_rss_signal(path):
    """The per-task RSS deltas name a leak's neighbour as often as the leaker: dashboards only."""
    records = {r["record"]: r["expr"] for r in load(path) if "record" in r}
    assert NAIVE <= set(records)
    histograms = {names.TASK_MEMORY_GROWTH.prom + s for s in ("_sum", "_count", "_bucket")}
    histograms |= {names.TASK_MEMORY_RELEASE.prom + s for s in ("_sum", "_count", "_bucket")}
    for a in alerts(path):
        used = _closure(a["expr"], records)
        assert not used & (NAIVE | histograms), f"{a['alert']} ({a['labels']['severity']}) reads {used & (NAIVE | histograms)}"


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_task_alert_is_the_detectors_attribution(path):
    records = {r["record"]: r["expr"] for r in load(path) if "record" in r}
    task_alerts = [a for a in alerts(path) if a["alert"] == "OtelLeakTaskRetainingMemory"]
    assert len(task_alerts) == 2
    for a in task_alerts:
        used = _closure(a["expr"], records)
        # retained bytes per call of a suspected task x its call rate, only where the task's verdict is 1
        assert {names.DETECTOR_RETAINED_PER_CALL.prom, names.TASK_COUNT.prom, names.DETECTOR_VERDICT.prom} <= used
        assert RECORDING_RULES["task_detector_retained_rate"] in a["expr"]
        assert f'{names.LABEL_TASK}!=""' in a["expr"]
        # joined on the whole process identity (pid included) and the task
        join = f"on({', '.join(Mixin().process_labels)}, {names.LABEL_TASK})"
        assert join in a["expr"] and join in records[RECORDING_RULES["task_detector_retained_rate"]]


def test_process_and_service_labels_come_from_names():
    m = Mixin()
    assert m.process_labels == (
        names.LABEL_JOB, names.LABEL_PROM_INSTANCE, names.LABEL_SERVICE, names.LABEL_INSTANCE, names.LABEL_VERSION,
        names.LABEL_PID,
    )
    assert m.service_labels == (names.LABEL_JOB, names.LABEL_SERVICE)
    for a in alerts(GENERATED / rules.PRODUCTION_FILE):
        assert set(a["labels"]) == {names.LABEL_SEVERITY, names.LABEL_TEAM}


# Labels a firing alert must carry, by alert: checked on every alert the promtool suites expect to fire, so
# the pages they pin name the service, the worker (service_instance_id), the process (pid) and the task.
WORKER = {names.LABEL_SERVICE, names.LABEL_INSTANCE, names.LABEL_PID, names.LABEL_VERSION}
PAGE_LABELS = {
    "OtelLeakMemoryFloorGrowing": WORKER,
    "OtelLeakMemoryFillingUp": WORKER,
    "OtelLeakTaskRetainingMemory": WORKER | {names.LABEL_TASK},
    "OtelLeakDetectorReportsLeak": WORKER,  # and the task when the verdict is per task
    "OtelLeakGCPauseRegression": WORKER | {names.LABEL_GC_GENERATION},
    "OtelLeakTelemetryAbsent": {names.LABEL_SERVICE},  # and the worker when one worker stopped
    "OtelLeakFleetMemoryGrowing": {names.LABEL_SERVICE},
    "OtelLeakGuardRecycling": WORKER | {names.LABEL_GUARD_REASON, names.LABEL_GUARD_OUTCOME},
    "OtelLeakGuardRateLimited": WORKER | {names.LABEL_GUARD_REASON, names.LABEL_GUARD_OUTCOME},
}


def test_pages_name_service_instance_pid_and_task():
    assert set(PAGE_LABELS) == set(ALERTS)
    fired: set[str] = set()
    for suite in SUITES:
        for t in yaml.safe_load(suite.read_text())["tests"]:
            for case in t.get("alert_rule_test", []):
                for exp in case.get("exp_alerts") or []:
                    labels = exp["exp_labels"]
                    name = case["alertname"]
                    fired.add(name)
                    missing = PAGE_LABELS[name] - set(labels)
                    if names.LABEL_INSTANCE in labels:
                        missing |= WORKER - set(labels)
                    assert not missing, f"{suite.name}: {name} at {case['eval_time']} lacks {missing}"
                    assert labels[names.LABEL_SEVERITY] in ("warning", "critical")
                    assert labels[names.LABEL_TEAM] == Mixin().team
    assert fired == set(ALERTS), f"no suite pins a firing {set(ALERTS) - fired}"


@pytest.mark.parametrize("alert", ALERTS)
def test_every_alert_has_its_runbook(alert):
    path = RUNBOOKS / f"{alert}.md"
    assert path.exists(), f"runbook {path.relative_to(ROOT)} missing"
    text = path.read_text()
    assert text.startswith(f"# {alert}"), "a runbook starts with its alert's name"
    for heading in ("## Meaning", "## Confirm", "## Find the task and the code", "## Remediate", "## Roll back",
                    "## Verify the fix"):
        assert heading in text, f"{path.name} has no '{heading}' section"
    assert Mixin().runbook_url_base.endswith("docs/runbooks")


def test_readme_documents_every_parameter_alert_and_rule():
    text = (ROOT / "dashboards" / "README.md").read_text()
    for name in (*PARAMETERS, *ALERTS, *RECORDING_RULES.values()):
        assert f"`{name}`" in text, f"dashboards/README.md does not document {name}"


def test_runbooks_are_only_for_alerts():
    assert {p.stem for p in RUNBOOKS.glob("*.md")} - {"README"} == set(ALERTS)


# --------------------------------------------------------------------------------------------------
# promtool


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_promtool_check_rules(path):
    out = run(promtool(), "check", "rules", str(path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_there_are_promtool_suites():
    assert {p.name for p in SUITES} >= {
        "floor.test.yaml", "fleet.test.yaml", "absent.test.yaml", "tasks.test.yaml", "detector.test.yaml",
        "gc.test.yaml", "e2e-windows.test.yaml", "guard.test.yaml",
    }


@pytest.mark.parametrize("suite", SUITES, ids=lambda p: p.name)
def test_promtool_test_rules(suite):
    out = run(promtool(), "test", "rules", str(suite))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout
