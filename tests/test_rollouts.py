"""The canary-analysis templates in deploy/k8s/rollouts/: fresh, well-formed, and running otel-leak's gate."""

from __future__ import annotations

import re
import sys

import yaml

from otel_leak import gate
from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "deploy" / "k8s"))
import rollouts  # noqa: E402


def test_generated_templates_are_fresh(tmp_path):
    for p in rollouts.write(tmp_path):
        assert p.read_text() == (ROOT / "deploy" / "k8s" / "rollouts" / p.name).read_text(), \
            f"{p.name} is stale: run .venv/bin/python deploy/k8s/rollouts.py"


def test_analysis_template_runs_the_gate_and_its_growth_query():
    doc = yaml.safe_load((ROOT / "deploy/k8s/rollouts/analysis-template.yaml").read_text())
    assert (doc["apiVersion"], doc["kind"]) == ("argoproj.io/v1alpha1", "AnalysisTemplate")
    declared = {a["name"] for a in doc["spec"]["args"]}
    text = yaml.safe_dump(doc)
    assert set(re.findall(r"\{\{args\.([\w-]+)\}\}", text)) <= declared  # every argument used is declared
    assert not re.search(r"(?<!\{)\{args\.", text), "a placeholder lost a brace"
    job, prom = doc["spec"]["metrics"]
    cmd = job["provider"]["job"]["spec"]["template"]["spec"]["containers"][0]["command"][-1]
    assert "otel-leak gate" in cmd and re.search(r"otel-leak==\d", cmd)  # a pinned release
    assert prom["successCondition"] == f"result[0] < {gate.MIN_BYTES:g}"
    assert prom["provider"]["prometheus"]["query"] == rollouts.growth_query(
        "", "{{args.service}}", "{{args.baseline-version}}", "{{args.canary-version}}", "{{args.window}}")


def test_flagger_template_has_the_same_query():
    doc = yaml.safe_load((ROOT / "deploy/k8s/rollouts/flagger-metric-template.yaml").read_text())
    assert (doc["apiVersion"], doc["kind"]) == ("flagger.app/v1beta1", "MetricTemplate")
    assert doc["spec"]["provider"]["type"] == "prometheus"
    assert doc["spec"]["query"] == rollouts.growth_query(
        "", "{{ variables.service }}", "{{ variables.baseline_version }}", "{{ variables.canary_version }}",
        "{{ interval }}")
