"""Grafana-managed alerting (dashboards/grafana/alerts.py, notifications.py) and its provisioning in deploy/.

* ``make generate`` (into a temp dir) reproduces every committed generated file, and its promtool step passes;
* the alert-rules file has Grafana's file-provisioning structure (apiVersion, groups with orgId/name/folder/
  interval, rules with uid/title/condition/data/states/for/labels/annotations), uids unique and <= 40 chars,
  every query's data source uid the Prometheus data source provisioned in deploy/compose and deploy/k8s;
* each Grafana rule is the Prometheus alert of the committed rule file (the one the promtool suites pin): the
  same name, for, labels and runbook, its query the alert's expression with the recording rules inlined, and
  the promtool suites of dashboards/tests pass unchanged with every alert's expression replaced by its
  Grafana query;
* the annotations parse and render under Grafana's template variables and functions (Go text/template with
  Grafana's prelude; the Prometheus-only ``query`` function is gone);
* the contact point and policy deliver to the Alertmanager Prometheus alerts to, and to nothing else;
* compose and k8s switch between Prometheus- and Grafana-evaluated alerting, never both.

Real queries against real data: tests/e2e/test_grafana_alert_queries.py. promtool and go (scripts/setup-services.sh
and collector/build.sh need them) missing: FAIL under CI=true, skip elsewhere.
"""

from __future__ import annotations

import concurrent.futures

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dashboards import rules
from dashboards.grafana import alerts, notifications
from dashboards.grafana.inline import inline
from dashboards.mixin import RECORDING_RULES, Mixin, seconds
from tests.test_dashboards_mixin import MIXINS, alert_thresholds

ROOT = Path(__file__).resolve().parent.parent
GENERATED = ROOT / "dashboards" / "generated"
GRAFANA_OUT = GENERATED / "grafana"
RULES_FILE = GRAFANA_OUT / alerts.ALERTING_DIR / alerts.RULES_FILE
NOTIFY_FILE = GRAFANA_OUT / alerts.ALERTING_DIR / notifications.FILE
RECORDING_FILE = GRAFANA_OUT / alerts.RECORDING_FILE
COMPOSE = ROOT / "deploy" / "compose"
K8S = ROOT / "deploy" / "k8s"
EXPRESSION_UIDS = {"__expr__"}  # Grafana's server-side expressions, not a data source
IN_CI = os.environ.get("CI", "").lower() == "true"


def need(tool: str, *extra: str) -> str:
    path = shutil.which(tool) or next((p for p in extra if Path(p).exists()), None)
    if path is None:
        (pytest.fail if IN_CI else pytest.skip)(f"{tool} is not installed (scripts/setup-services.sh)")
    return path


def load(path: Path):
    return yaml.safe_load(path.read_text())


def grafana_rules(doc: dict | None = None) -> list[dict]:
    return [r for g in (doc or load(RULES_FILE))["groups"] for r in g["rules"]]


def query(rule: dict) -> dict:
    return next(d for d in rule["data"] if d["refId"] == alerts.QUERY)


# --------------------------------------------------------------------------------------------------
# Fresh: one command regenerates everything


def test_make_generate_reproduces_the_committed_files(tmp_path: Path) -> None:
    need("promtool")
    gen, k8s, readme = tmp_path / "generated", tmp_path / "k8s", tmp_path / "README.md"
    readme.write_text((ROOT / "README.md").read_text())
    out = subprocess.run(["make", "-s", "generate", f"GENERATED={gen}", f"K8S_OUT={k8s}", f"README={readme}",
                          f"PYTHON={sys.executable}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert readme.read_text() == (ROOT / "README.md").read_text(), "README.md's settings table: run `make generate`"
    assert out.stdout.count("SUCCESS") == 3, out.stdout  # promtool on both rule files and the recording-only one
    # deploy/k8s/generate.py owns the top level and its component directory (other directories are not its)
    for fresh_dir, committed_dir, patterns in ((gen, GENERATED, ("**/*",)),
                                               (k8s, K8S, ("*.yaml", "grafana-alerting/*.yaml"))):
        fresh = {p.relative_to(fresh_dir) for pat in patterns for p in fresh_dir.glob(pat) if p.is_file()}
        committed = {p.relative_to(committed_dir) for pat in patterns for p in committed_dir.glob(pat) if p.is_file()}
        assert fresh == committed, f"{committed_dir}: extra or missing generated files {fresh ^ committed}"
        stale = [str(p) for p in fresh if (fresh_dir / p).read_text() != (committed_dir / p).read_text()]
        assert not stale, f"stale {stale} in {committed_dir.relative_to(ROOT)}: run `make generate` and commit"


def test_alerting_outputs_are_current() -> None:
    for rel, text in alerts.outputs().items():
        assert (GRAFANA_OUT / rel).read_text() == text, f"{rel} is stale: run `make generate`"


# --------------------------------------------------------------------------------------------------
# Grafana's file-provisioning structure


def test_alert_rules_file_has_the_provisioning_structure() -> None:
    doc = load(RULES_FILE)
    assert doc["apiVersion"] == 1 and doc["groups"]
    uids = []
    for group in doc["groups"]:
        assert set(group) == {"orgId", "name", "folder", "interval", "rules"}, group.keys()
        assert group["orgId"] == 1 and group["name"] and group["folder"] == alerts.FOLDER
        interval = seconds(group["interval"])
        assert interval >= 10 and interval % 10 == 0, "Grafana evaluates groups at multiples of 10 s"
        for r in group["rules"]:
            assert {"uid", "title", "condition", "data", "noDataState", "execErrState", "for", "labels",
                    "annotations"} <= set(r), r.keys()
            uids.append(r["uid"])
            assert re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", r["uid"]), r["uid"]
            refs = [d["refId"] for d in r["data"]]
            assert len(set(refs)) == len(refs) and r["condition"] in refs
            for d in r["data"]:
                assert {"refId", "relativeTimeRange", "datasourceUid", "model"} <= set(d)
                assert set(d["relativeTimeRange"]) == {"from", "to"} and d["model"]["refId"] == d["refId"]
            assert r["noDataState"] in {"OK", "NoData", "Alerting", "KeepLast"}
            assert r["execErrState"] in {"OK", "Error", "Alerting", "KeepLast"}
            assert seconds(r["for"]) >= interval
            assert all(isinstance(k, str) and isinstance(v, str) for k, v in r["labels"].items())
            assert {"summary", "description", "runbook_url"} <= set(r["annotations"])
            model = query(r)["model"]
            assert model["instant"] is True and model["range"] is False and model["expr"]
    assert len(set(uids)) == len(uids), "duplicate uids"


def _datasources() -> dict[str, list[dict]]:
    compose = load(COMPOSE / "grafana" / "provisioning" / "datasources" / "otel-leak.yaml")
    cm = load(K8S / "grafana-datasources.yaml")
    k8s = yaml.safe_load(next(iter(cm["data"].values())))
    return {"compose": compose["datasources"], "k8s": k8s["datasources"]}


def test_every_query_reads_the_provisioned_prometheus_data_source() -> None:
    for where, sources in _datasources().items():
        by_uid = {s["uid"]: s for s in sources}
        for r in grafana_rules():
            for d in r["data"]:
                if d["datasourceUid"] in EXPRESSION_UIDS:
                    assert d["model"]["datasource"]["type"] == "__expr__"
                    continue
                assert d["datasourceUid"] in by_uid, f"{where}: {r['uid']} reads unknown data source"
                assert by_uid[d["datasourceUid"]]["type"] == "prometheus"
                assert d["model"]["datasource"] == {"type": "prometheus", "uid": d["datasourceUid"]}


# --------------------------------------------------------------------------------------------------
# The same alerts as the Prometheus rules


def _prometheus(path: Path) -> tuple[list[dict], list[dict], str]:
    group = load(path)["groups"][0]
    return ([r for r in group["rules"] if "record" in r], [r for r in group["rules"] if "alert" in r],
            group["interval"])


def test_each_grafana_rule_is_the_prometheus_alert() -> None:
    recording, prom, interval = _prometheus(GENERATED / rules.PRODUCTION_FILE)
    graf = grafana_rules()
    assert [r["title"] for r in graf] == [a["alert"] for a in prom]
    assert load(RULES_FILE)["groups"][0]["interval"] == interval
    for a, r in zip(prom, graf):
        expr = query(r)["model"]["expr"]
        assert expr == inline(a["expr"], recording, interval), r["uid"]
        assert not set(RECORDING_RULES.values()) & set(re.findall(r"[a-z_]+:[a-z_:]+", expr)), expr
        assert (r["for"], r["labels"]) == (a["for"], a["labels"])
        assert r["annotations"] == {k: alerts.template(v) for k, v in a["annotations"].items()}
        assert r["annotations"]["runbook_url"] == a["annotations"]["runbook_url"]
    cond = {d["refId"]: d["model"] for d in graf[0]["data"]}
    assert cond["B"]["type"] == "reduce" and cond["B"]["expression"] == "A"
    assert cond["C"]["type"] == "math" and cond["C"]["expression"] == alerts.FIRES


def test_promtool_suites_pass_with_the_grafana_queries(tmp_path: Path) -> None:
    """Every dashboards/tests suite, unchanged, against rule files whose alerts evaluate the Grafana queries."""
    promtool = need("promtool")
    (tmp_path / "generated").mkdir()
    for name, m in ((rules.PRODUCTION_FILE, Mixin()), (rules.TEST_FILE, Mixin.e2e())):
        doc = load(GENERATED / name)
        prom = [r for r in doc["groups"][0]["rules"] if "alert" in r]
        graf = grafana_rules(alerts.document(m))
        assert [a["alert"] for a in prom] == [r["title"] for r in graf]
        for a, r in zip(prom, graf):
            a["expr"] = query(r)["model"]["expr"]
        (tmp_path / "generated" / name).write_text(yaml.safe_dump(doc, sort_keys=False))
    shutil.copytree(ROOT / "dashboards" / "tests", tmp_path / "tests")
    suites = sorted((tmp_path / "tests").glob("*.test.yaml"))
    assert len(suites) >= 7

    def run(suite: Path) -> subprocess.CompletedProcess:
        return subprocess.run([promtool, "test", "rules", str(suite)], capture_output=True, text=True,
                              timeout=600, cwd=tmp_path / "tests")

    # one promtool per suite, two at a time (promtool evaluates a suite on one core; the inlined queries
    # make these suites slow: ~1 min in one process)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        for suite, out in zip(suites, pool.map(run, suites)):
            assert out.returncode == 0, (suite.name, out.stdout[-4000:] + out.stderr[-2000:])


@pytest.mark.parametrize("which", MIXINS)
def test_grafana_thresholds_are_the_panels_thresholds(which: str) -> None:
    """The thresholds the panels colour at (tests/test_dashboards_mixin.py) are in the Grafana queries."""
    m = MIXINS[which]
    t = alert_thresholds(m)
    by = {(r["title"], r["labels"]["severity"]): query(r)["model"]["expr"] for r in grafana_rules(alerts.document(m))}
    for sev in ("warning", "critical"):
        assert f"3600 > {rules._num(t[f'floor_{sev}_bytes_per_hour'])}\n" in by["OtelLeakMemoryFloorGrowing", sev]
        filling = by["OtelLeakMemoryFillingUp", sev]
        assert f"> {rules._num(t[f'limit_{sev}_ratio'])}\n" in filling
        assert f", {rules._num(t[f'limit_{sev}_seconds'])})" in filling
    assert f"3600 > {rules._num(t['fleet_bytes_per_hour'])}\n" in by["OtelLeakFleetMemoryGrowing", "warning"]
    assert by["OtelLeakGCPauseRegression", "warning"].endswith(f"> {rules._num(t['gc_min_seconds'])}")


# Grafana renders annotations with Go's text/template after this prelude (variables $labels, $values, $value)
# and with Prometheus' humanize functions, but without Prometheus' query functions (query, first, value).
_GO = r'''package main
import ("encoding/json"; "fmt"; "os"; "strings"; "text/template")
type Value struct { Labels map[string]string; Value float64 }
func (v Value) String() string { return fmt.Sprint(v.Value) }
type Case struct { Template string; Labels map[string]string; Values map[string]float64 }
func main() {
  var cases []Case
  if err := json.NewDecoder(os.Stdin).Decode(&cases); err != nil { panic(err) }
  f := func(i float64) string { return fmt.Sprint(i) }
  funcs := template.FuncMap{"humanize": f, "humanize1024": f, "humanizeDuration": f, "humanizePercentage": f}
  out := []string{}
  for _, c := range cases {
    vals := map[string]Value{}
    for k, v := range c.Values { vals[k] = Value{c.Labels, v} }
    t, err := template.New("a").Funcs(funcs).Parse(
      "{{- $labels := .Labels -}}{{- $values := .Values -}}{{- $value := .Value -}}" + c.Template)
    var b strings.Builder
    if err == nil { err = t.Execute(&b, map[string]any{"Labels": c.Labels, "Values": vals, "Value": "[ ]"}) }
    if err != nil { out = append(out, "ERROR " + err.Error()) } else { out = append(out, b.String()) }
  }
  json.NewEncoder(os.Stdout).Encode(out)
}
'''


def _render(tmp_path: Path, cases: list[dict]) -> list[str]:
    go = need("go", "/usr/local/go/bin/go")
    (tmp_path / "render.go").write_text(_GO)
    env = {**os.environ, "GOFLAGS": "-mod=mod", "GO111MODULE": "on", "GOTOOLCHAIN": "local"}
    out = subprocess.run([go, "run", "render.go"], input=json.dumps(cases), capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_annotations_render_as_grafana_templates(tmp_path: Path) -> None:
    labels = {k: f"v-{k}" for k in (*Mixin().process_labels, rules.TASK, rules.GENERATION, rules.REASON, rules.OUTCOME)}
    graf = grafana_rules()
    cases = [{"Template": v, "Labels": labels, "Values": {alerts.VALUE: 12345.0, alerts.CONDITION: 1.0}}
             for r in graf for v in r["annotations"].values()]
    prom = [a for a in _prometheus(GENERATED / rules.PRODUCTION_FILE)[1] if "| query" in a["annotations"]["description"]]
    cases.append({"Template": prom[0]["annotations"]["description"], "Labels": labels, "Values": {}})
    *rendered, prometheus_only = _render(tmp_path, cases)
    for text in rendered:
        assert not text.startswith("ERROR") and "<no value>" not in text and "{{" not in text, text
    assert any("12345" in t for t in rendered) and any("v-service_instance_id" in t for t in rendered)
    assert 'function "query" not defined' in prometheus_only  # why the templates are translated


# --------------------------------------------------------------------------------------------------
# Contact point and policy; the switch in deploy/


def test_notifications_deliver_to_the_projects_alertmanager_only() -> None:
    doc = load(NOTIFY_FILE)
    assert doc["apiVersion"] == 1
    [cp] = doc["contactPoints"]
    [receiver] = cp["receivers"]
    assert receiver["type"] == "prometheus-alertmanager" and len(receiver["uid"]) <= 40
    prom = load(COMPOSE / "prometheus" / "prometheus.yml")
    [target] = [t for am in prom["alerting"]["alertmanagers"] for sc in am["static_configs"] for t in sc["targets"]]
    assert receiver["settings"] == {"url": f"http://{target}"}
    [policy] = doc["policies"]
    assert policy["receiver"] == cp["name"] and "routes" not in policy, "nothing but the Alertmanager"
    assert seconds(policy["repeat_interval"]) >= seconds(policy["group_interval"])


def _compose_mounts(service: dict) -> dict[str, Path]:
    return {v.split(":")[1]: (COMPOSE / v.split(":")[0]).resolve() for v in service.get("volumes", [])
            if v.startswith(".")}


def test_compose_switches_the_evaluator_never_adds_one() -> None:
    base = load(COMPOSE / "docker-compose.yml")["services"]
    over = load(COMPOSE / "grafana" / "alerting.compose.yml")["services"]
    rule_path = load(COMPOSE / "prometheus" / "prometheus.yml")["rule_files"][0]
    assert _compose_mounts(base["prometheus"])[rule_path] == (GENERATED / rules.PRODUCTION_FILE).resolve()
    assert _compose_mounts(over["prometheus"]) == {rule_path: RECORDING_FILE.resolve()}  # replaces it
    alerting = "/etc/grafana/provisioning/alerting"
    assert alerting not in _compose_mounts(base["grafana"]), "Prometheus-evaluated by default"
    assert _compose_mounts(over["grafana"]) == {alerting: RULES_FILE.parent.resolve()}
    recording, prom, _ = _prometheus(GENERATED / rules.PRODUCTION_FILE)
    assert load(RECORDING_FILE)["groups"][0]["rules"] == recording  # the dashboards' series, no alert
    assert base["grafana"]["image"] >= "grafana/grafana:12", "rules of one folder share titles from Grafana 12"


def test_k8s_component_switches_the_evaluator() -> None:
    comp = K8S / "grafana-alerting"
    kust = load(comp / "kustomization.yaml")
    assert kust["kind"] == "Component"
    assert "components" not in load(K8S / "kustomization.yaml"), "Prometheus-evaluated by default"
    patch = load(comp / kust["patches"][0]["path"])
    assert (patch["kind"], patch["metadata"]["name"]) == ("PrometheusRule", "otel-leak-rules")
    assert patch["spec"]["groups"] == load(RECORDING_FILE)["groups"]
    [cm] = [d for f in kust["resources"] for d in yaml.safe_load_all((comp / f).read_text()) if d]
    assert cm["metadata"]["labels"]["grafana_alert"] == "1"
    assert cm["data"][alerts.RULES_FILE] == RULES_FILE.read_text()
    mapped = load(NOTIFY_FILE)
    mapped["contactPoints"][0]["receivers"][0]["settings"]["url"] = "http://alertmanager-operated.monitoring.svc:9093"
    assert yaml.safe_load(cm["data"][notifications.FILE]) == mapped
