"""Every Grafana-managed alert rule, evaluated the way Grafana evaluates it, against the end-to-end harness's
real Prometheus holding real data: it fires for a leaking worker and not for a healthy one.

Set-up (the harness in conftest.py: the built collector, Prometheus 2.42 scraping it every second with the
generated short-window rules ``prometheus-rules.test.yaml`` loaded): the session's ``leak_pair``,
``tests/workers/e2e_worker.py`` twice under ``opentelemetry-instrument`` at 100 tasks/s, one keeping 64 KiB per
``ingest`` call (service ``e2e-leaky``, ~3 MB/s), one keeping nothing (``e2e-healthy``), both reporting a
400 MiB memory limit (so the limit alerts have one), started with the first e2e test.

The rules are the ones ``dashboards.grafana.alerts`` generates for ``Mixin.e2e()`` (the parameters of the
loaded Prometheus rules; the committed production file has hour-long windows no test run can fill). Every
rule interval (2 s) from the pair's start each rule's query ``A`` runs as an instant query at that time (the
times already past are replayed at once, the rest as they come); Grafana's reduce ``B`` (last) and math
condition ``C`` (``is_number($B) || is_nan($B) || is_inf($B)``) are applied per returned series, and an
instance whose condition holds for the rule's ``for`` has fired (Grafana's pending period).

Asserted: every query is accepted every time; the alerts the harness makes happen (floor growth, limit,
the task type the detector names, the detector's verdict, the fleet's in-lifetime slope; warning and
critical) fire for the leaking worker, the task alert for ``ingest`` only; no rule fires for the healthy
worker; every alert the loaded Prometheus rules fired for the leaking worker had its Grafana condition true
too; the queries are the committed Prometheus alerts' expressions with the recording rules inlined. The
GC-pause and absent alerts need a regressed baseline or a silent worker, the guard alerts a memory-budget guard
decision (the guard hooks Celery; these workers are not Celery): for them, only the healthy side and the
cross-check apply.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _procs import HEALTHY, LEAKY, REPO, LeakPair, Prometheus  # noqa: E402

from dashboards import rules  # noqa: E402
from dashboards.grafana import alerts  # noqa: E402
from dashboards.grafana.inline import inline  # noqa: E402
from dashboards.mixin import Mixin, seconds  # noqa: E402
from otel_leak import names  # noqa: E402

TIMEOUT = 330  # from the pair's start
M = Mixin.e2e()
RULES = [r for g in alerts.document(M)["groups"] for r in g["rules"]]
INTERVAL = M.seconds("rule_interval")
MUST_FIRE = {(a, s) for a in ("OtelLeakMemoryFloorGrowing", "OtelLeakMemoryFillingUp", "OtelLeakTaskRetainingMemory")
             for s in ("warning", "critical")} | {("OtelLeakDetectorReportsLeak", "warning"), ("OtelLeakFleetMemoryGrowing", "warning")}


def key(rule: dict) -> tuple[str, str]:
    return rule["title"], rule["labels"][names.LABEL_SEVERITY]


def data(rule: dict) -> dict[str, dict]:
    return {d["refId"]: d["model"] for d in rule["data"]}


def condition(value: float, math_expression: str) -> bool:
    """Grafana's math condition ``C`` on the reduced value ``B`` of one series."""
    assert math_expression == alerts.FIRES, f"the evaluator below knows {alerts.FIRES!r} only"
    return isinstance(value, float)  # is_number or is_nan or is_inf: every float


@dataclass
class Instance:
    since: float | None = None  # condition true since (Grafana's pending); None while false
    true_ever: bool = False
    fired: bool = False
    labels: dict = field(default_factory=dict)


@dataclass
class Run:
    instances: dict[tuple[str, str], dict[tuple, Instance]] = field(default_factory=dict)  # rule uid -> ...
    errors: list[str] = field(default_factory=list)
    prometheus_fired: set[tuple[str, str]] = field(default_factory=set)  # (alertname, severity) for LEAKY
    evaluations: int = 0

    def service(self, uid: str, service: str) -> list[Instance]:
        return [i for (svc, *_), i in self.instances.get(uid, {}).items() if svc == service]

    def evaluate(self, prom: Prometheus, now: float) -> None:
        for rule in RULES:
            models = data(rule)
            try:
                result = prom.query(models[alerts.QUERY]["expr"], time=now)
            except RuntimeError as e:
                self.errors.append(f"{rule['uid']}: {e}")
                continue
            seen = set()
            for series in result:
                labels = series["metric"]
                svc = labels.get(names.LABEL_SERVICE)
                if svc not in (LEAKY, HEALTHY):
                    continue
                ident = (svc, *sorted(labels.items()))
                seen.add(ident)
                inst = self.instances.setdefault(rule["uid"], {}).setdefault(ident, Instance(labels=labels))
                value = float(series["value"][1])  # reduce B = last of an instant vector's one sample
                if condition(value, models[alerts.CONDITION]["expression"]):
                    inst.true_ever = True
                    inst.since = now if inst.since is None else inst.since
                    inst.fired = inst.fired or now - inst.since >= seconds(_for(rule))
            for ident, inst in self.instances.get(rule["uid"], {}).items():
                if ident not in seen:
                    inst.since = None  # no data: noDataState OK, the instance is normal again
        self.evaluations += 1

    def fired(self, service: str) -> set[tuple[str, str]]:
        return {key(r) for r in RULES if any(i.fired for i in self.service(r["uid"], service))}

    def true_ever(self, service: str) -> set[tuple[str, str]]:
        return {key(r) for r in RULES if any(i.true_ever for i in self.service(r["uid"], service))}


def _for(rule: dict) -> str:
    return rule["for"]


@pytest.fixture(scope="module")
def run(prometheus: Prometheus, leak_pair: LeakPair) -> Run:
    r = Run()
    firing = f'ALERTS{{alertstate="firing", {names.LABEL_SERVICE}="{LEAKY}"}}'
    t = leak_pair.started
    while t < leak_pair.started + TIMEOUT:
        for p in (leak_pair.leaky, leak_pair.healthy):
            if not p.alive:
                pytest.fail(f"worker {p.name} exited ({p.returncode}):\n{p.log_text()[-3000:]}", pytrace=False)
        time.sleep(max(0.0, t - time.time()))  # a time already past is evaluated at once
        r.evaluate(prometheus, t)
        r.prometheus_fired |= {(s["metric"]["alertname"], s["metric"][names.LABEL_SEVERITY])
                               for s in prometheus.query(firing, time=t)}
        if MUST_FIRE <= r.fired(LEAKY) and r.prometheus_fired <= r.true_ever(LEAKY):
            break
        t += INTERVAL
    print(f"\ngrafana rules: {r.evaluations} evaluations over {t - leak_pair.started:.0f}s from the pair's start "
          f"({time.time() - leak_pair.started:.0f}s ago); fired for {LEAKY}: {sorted(r.fired(LEAKY))}; "
          f"for {HEALTHY}: {sorted(r.fired(HEALTHY))}; Prometheus fired for {LEAKY}: {sorted(r.prometheus_fired)}")
    return r


def test_queries_are_the_loaded_prometheus_alerts_inlined() -> None:
    group = yaml.safe_load((REPO / "dashboards" / "generated" / rules.TEST_FILE).read_text())["groups"][0]
    recording = [x for x in group["rules"] if "record" in x]
    prom = [x for x in group["rules"] if "alert" in x]
    assert [(a["alert"], a["labels"][names.LABEL_SEVERITY]) for a in prom] == [key(r) for r in RULES]
    for a, r in zip(prom, RULES):
        assert data(r)[alerts.QUERY]["expr"] == inline(a["expr"], recording, group["interval"]), r["uid"]
        assert (_for(r), r["labels"]) == (a["for"], a["labels"])


def test_every_query_is_accepted_every_time(run: Run) -> None:
    assert run.evaluations >= 10 and not run.errors, run.errors[:3]


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r["uid"])
def test_fires_for_the_leak_and_not_for_the_healthy_worker(run: Run, rule: dict) -> None:
    healthy = [i.labels for i in run.service(rule["uid"], HEALTHY) if i.fired]
    assert not healthy, f"{rule['uid']} fired for the healthy worker: {healthy}"
    if key(rule) in MUST_FIRE:
        assert any(i.fired for i in run.service(rule["uid"], LEAKY)), (
            f"{rule['uid']} never held its condition for {_for(rule)} for {LEAKY} within {TIMEOUT}s; "
            f"true at all: {any(i.true_ever for i in run.service(rule['uid'], LEAKY))}")
    if key(rule) in run.prometheus_fired:
        assert key(rule) in run.true_ever(LEAKY), f"Prometheus fired {key(rule)} for {LEAKY}, Grafana's never held"


def test_task_alert_names_the_leaking_task(run: Run) -> None:
    for rule in RULES:
        if rule["title"] == "OtelLeakTaskRetainingMemory":
            tasks = {i.labels.get(names.LABEL_TASK) for i in run.service(rule["uid"], LEAKY) if i.fired}
            assert tasks == {"ingest"}, f"{rule['uid']}: {tasks}"
            instances = {i.labels.get(names.LABEL_INSTANCE) for i in run.service(rule["uid"], LEAKY) if i.fired}
            assert instances == {"leaky-1"}


def test_condition_is_true_for_every_float() -> None:
    assert all(condition(v, alerts.FIRES) for v in (0.0, 1.5, math.nan, math.inf))
