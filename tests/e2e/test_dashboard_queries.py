"""Every dashboard query is real: each target of the generated Grafana JSON runs against the end-to-end
Prometheus holding real data from instrumented workers, and must return series with values.

Set-up (the harness in conftest.py: the built collector, Prometheus 2.42 scraping it every second with the
generated short-window rules loaded, Alertmanager, the trace store): the session's ``dashboard_workers``, started
with the first e2e test (conftest.py): two copies of ``examples/demo_worker.py``
(one task type leaks 16 KiB per call) run under ``opentelemetry-instrument`` as service
``otel-leak-dashboards``, versions ``dash-a`` and ``dash-b`` (so the Release comparison has two sides), with
``OTEL_PYTHON_LEAK_MEMORY_LIMIT`` set (so time-to-limit panels have a limit). They keep running while the
queries are checked.

Template variables are resolved the way Grafana does: each ``label_values(selector, label)`` variable query is
itself run (``/api/v1/series``) after substituting the variables before it, and must offer the value the test
picks (this service, the ``dash-a`` instance, a task type the detector suspects, both versions). Custom
variables take their default; ``$__rate_interval``/``$__interval``/``$__range`` are computed as Grafana does
for a 1 s scrape interval.

The honest exceptions: ``ALERTS`` queries (the Fleet dashboard's firing-alert panels) can only return series
while an alert fires. They must always be accepted by Prometheus; they must return series whenever an otel-leak
alert for this service fired during the run (which the short-window rules make the normal case). Likewise the
memory-budget guard's counter (the Worker dashboard's guard panel) only exists once a guard decided something,
and the guard is off in these workers (it hooks Celery, which they are not): those queries must be accepted, and
return series whenever the counter exists for this service.

Exemplar-enabled targets must also have exemplars (``/api/v1/query_exemplars``) carrying a ``trace_id``.
"""

from __future__ import annotations

import re

import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _procs import DASHBOARD_SERVICE as SERVICE  # noqa: E402
from _procs import DASHBOARD_VERSIONS as VERSIONS  # noqa: E402
from _procs import DashboardWorkers, Prometheus  # noqa: E402

from dashboards.grafana import queries as q  # noqa: E402
from dashboards.mixin import ALERTS as ALERT_NAMES  # noqa: E402
from otel_leak import names  # noqa: E402

STEP = 5  # seconds between points of range queries (Grafana's $__interval)
SCRAPE = 1  # the harness' scrape interval
WAIT = float(os.environ.get("OTEL_LEAK_E2E_DASHBOARD_WAIT", "300"))

DASHBOARDS = q.load()
QUERIES = q.queries(DASHBOARDS)


def is_alerts_query(query: q.Query) -> bool:
    return q.ALERTS in q.series_names(query.expr)


def is_guard_query(query: q.Query) -> bool:
    return names.GUARD_RECYCLES.prom in q.series_names(query.expr)


def _guard_decided(prom: Prometheus) -> bool:
    return bool(prom.query(f'{names.GUARD_RECYCLES.prom}{{{names.LABEL_SERVICE}="{SERVICE}"}}'))


@dataclass
class Run:
    prometheus: Prometheus
    start: float
    instances: dict[str, str]  # version -> service.instance.id
    values: dict[str, dict[str, str]] = field(default_factory=dict)  # dashboard -> variable -> text
    offered: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # dashboard -> variable -> values
    alert_fired: bool = False
    last_failures: dict[str, str] = field(default_factory=dict)

    # -- evaluating a target the way Grafana does
    def window(self) -> tuple[float, float]:
        end = time.time()
        return self.start, end

    def builtins(self) -> dict[str, str]:
        start, end = self.window()
        return {
            "__interval": f"{STEP}s",
            "__rate_interval": f"{max(STEP + SCRAPE, 4 * SCRAPE)}s",
            "__range": f"{max(1, int(end - start))}s",
        }

    def expr(self, query: q.Query) -> str:
        return q.substitute(query.expr, {**self.builtins(), **self.values[query.dashboard]})

    def evaluate(self, query: q.Query) -> list[dict]:
        start, end = self.window()
        expr = self.expr(query)
        if query.instant:
            return self.prometheus.query(expr, time=end)
        return self.prometheus.query_range(expr, start, end, step=f"{STEP}s")

    def failure(self, query: q.Query) -> str | None:
        """None if the query returns at least one series with a finite value, else why not."""
        try:
            result = self.evaluate(query)
        except RuntimeError as e:
            return f"rejected by Prometheus: {e}"
        if not result:
            return "no series"
        if not any(_finite(v) for r in result for v in _values(r)):
            return f"{len(result)} series, but no finite value"
        return None


def _values(series: dict) -> list[str]:
    if "values" in series:
        return [v for _, v in series["values"]]
    return [series["value"][1]]


def _finite(v: str) -> bool:
    try:
        return math.isfinite(float(v))
    except ValueError:
        return False


def _label_values(prom: Prometheus, selector: str, label: str, start: float) -> list[str]:
    series = prom.api("series", **{"match[]": selector, "start": start, "end": time.time()})
    return sorted({s[label] for s in series if s.get(label)})


def _resolve_variables(run: Run) -> str | None:
    """Pick each dashboard's variable values from what its own variable queries offer; None when done,
    else what is still missing."""
    prom = run.prometheus
    suspects = {s["metric"].get(names.LABEL_TASK) for s in prom.query(
        f'{names.DETECTOR_RETAINED_PER_CALL.prom}{{{names.LABEL_SERVICE}="{SERVICE}"}}')}
    suspects.discard(None)
    wanted = {
        "service": SERVICE,
        "instance": run.instances[VERSIONS[0]],
        "task": sorted(suspects)[0] if suspects else None,
        "version_a": VERSIONS[0],
        "version_b": VERSIONS[1],
    }
    for fname, dash in DASHBOARDS.items():
        values: dict[str, str] = {}
        offered: dict[str, list[str]] = {}
        for var in q.variables(dash):
            name = var["name"]
            if var["type"] == "datasource":
                continue
            if var["type"] in ("custom", "constant", "interval"):
                current = var.get("current") or {}
                values[name] = current.get("value") if isinstance(current.get("value"), str) else var["query"].split(",")[0]
                continue
            selector, label = q.label_values_query(var["query"])
            offered[name] = _label_values(prom, q.substitute(selector, values), label, run.start)
            want = wanted.get(name)
            if want is None:
                return f"{fname}: no value wanted yet for ${name} (does the detector suspect a task type yet?)"
            if want not in offered[name]:
                return f"{fname}: ${name} ({var['query']}) offers {offered[name]}, not {want!r}"
            values[name] = q.regex_value([want]) if (var.get("multi") or var.get("includeAll")) else want
        run.values[fname] = values
        run.offered[fname] = offered
    return None


def _otel_leak_alert_firing(prom: Prometheus) -> bool:
    expr = f'ALERTS{{alertstate="firing", alertname=~"{"|".join(ALERT_NAMES)}", {names.LABEL_SERVICE}="{SERVICE}"}}'
    return bool(prom.query(expr))


@pytest.fixture(scope="module")
def run(prometheus: Prometheus, dashboard_workers: DashboardWorkers) -> Iterator[Run]:
    procs, instances, start = dashboard_workers.procs, dashboard_workers.instances, dashboard_workers.start
    try:
        r = Run(prometheus=prometheus, start=start, instances=instances)
        deadline = time.monotonic() + WAIT
        missing = "nothing checked yet"
        while time.monotonic() < deadline:
            dead = [p for p in procs if not p.alive]
            if dead:
                pytest.fail(f"worker {dead[0].name} exited ({dead[0].returncode}):\n{dead[0].log_text()[-3000:]}",
                            pytrace=False)
            missing = _resolve_variables(r)
            if missing is None:
                r.alert_fired = r.alert_fired or _otel_leak_alert_firing(prometheus)
                r.last_failures = {x.where: f for x in QUERIES
                                   if not is_alerts_query(x) and not is_guard_query(x) and (f := r.failure(x))}
                if not r.last_failures and r.alert_fired:
                    break
                missing = f"{len(r.last_failures)} queries without data, e.g. {next(iter(r.last_failures.items()), None)}"
            time.sleep(5)
        if missing is not None and not r.values:
            pytest.fail(f"template variables never resolved within {WAIT:.0f}s: {missing}", pytrace=False)
        print(f"\ndashboard queries: data after {time.time() - start:.0f}s, otel-leak alert fired: {r.alert_fired}, "
              f"variables: {r.values}")
        yield r
    finally:
        dashboard_workers.stop()  # started with the first e2e test (conftest.py); not needed after this module


def test_template_variables_offer_the_run(run: Run) -> None:
    """Every label_values variable of every dashboard, run against Prometheus, offers the values of the run."""
    assert set(run.values) == set(DASHBOARDS)
    for fname, offered in run.offered.items():
        assert offered.get("service") and SERVICE in offered["service"], fname
        if "version_a" in offered:
            assert set(VERSIONS) <= set(offered["version_a"]) and set(VERSIONS) <= set(offered["version_b"])


@pytest.mark.parametrize("query", QUERIES, ids=lambda x: f"{x.dashboard.removesuffix('.json')}:{x.panel}:{x.ref_id}")
def test_query_returns_series(run: Run, query: q.Query) -> None:
    expr = run.expr(query)
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    if is_alerts_query(query):
        # Accepted by Prometheus in any case (evaluate raises on a rejected query)...
        result = run.evaluate(query)
        # ...and returns the alerts whenever one fired for this run's service.
        if run.alert_fired:
            assert result, f"{query.where}: an otel-leak alert fired for {SERVICE} but the panel shows none:\n{expr}"
        return
    if is_guard_query(query):
        result = run.evaluate(query)  # accepted by Prometheus in any case...
        if _guard_decided(run.prometheus):  # ...and shows the guard's decisions whenever there are some
            assert result, f"{query.where}: the guard decided for {SERVICE} but the panel shows nothing:\n{expr}"
        return
    why = run.failure(query)
    if why is not None and _task_never_released(run, expr):
        return
    assert why is None, f"{query.where}: {why}\n{expr}"


def _task_never_released(run: Run, expr: str) -> bool:
    """The one honest empty panel: release panels for a task type that has not released resident memory
    in the window (the leaking task the variable picks may never shrink). The same query over every task
    type must then return series, so the query and its metric are real."""
    release = names.TASK_MEMORY_RELEASE.prom
    matcher = re.compile(names.LABEL_TASK + r'=~?"[^"]*"')
    if release not in expr or not matcher.search(expr):
        return False
    widened = matcher.sub(names.LABEL_TASK + '=~".+"', expr)
    return bool(run.prometheus.query(widened))


@pytest.mark.parametrize("query", [x for x in QUERIES if x.exemplar],
                         ids=lambda x: f"{x.dashboard.removesuffix('.json')}:{x.panel}:{x.ref_id}")
def test_exemplar_targets_have_exemplars_with_trace_ids(run: Run, query: q.Query) -> None:
    start, end = run.window()
    found = run.prometheus.query_exemplars(run.expr(query), start, end)
    trace_ids = {e["labels"].get("trace_id") for s in found for e in s.get("exemplars", [])}
    trace_ids.discard(None)
    if not trace_ids and _task_never_released(run, run.expr(query)):
        return
    assert trace_ids, f"{query.where}: no exemplar with a trace_id for {run.expr(query)}"
