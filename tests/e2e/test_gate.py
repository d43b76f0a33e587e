"""``otel-leak gate`` against the harness's real Prometheus: two real workers of one service, release 1.0
healthy and release 1.1 keeping 32 KiB per call of ``render``, both under ``opentelemetry-instrument``
exporting through the built collector. The gate fails 1.1 against 1.0, passes 1.0 against 1.1 (the canary
is better), is inconclusive for a release with no data, and ``baseline save --prometheus`` makes a baseline
that ``compare`` reads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from otel_leak import gate as gate_mod
from otel_leak import names

ROOT = Path(__file__).resolve().parents[2]
WORKER = ROOT / "tests" / "workers" / "release_worker.py"
OTEL_LEAK = str(Path(sys.executable).parent / "otel-leak")
SERVICE = "shop-gate"
WINDOW = "42s"


def _gate(prometheus, base, canary, *extra):
    return subprocess.run([OTEL_LEAK, "gate", "--prometheus", prometheus.url, "--service", SERVICE,
                           "--baseline-version", base, "--canary-version", canary, "--window", WINDOW, *extra],
                          capture_output=True, text=True, timeout=60)


def test_gate_fails_the_leaking_canary_and_passes_the_healthy_one(prometheus, start_worker, tmp_path):
    prometheus.wait_for_targets()
    workers = {}
    for version, leak in (("1.0", ""), ("1.1", "render")):
        workers[version] = start_worker([sys.executable, str(WORKER)], name=f"gate-{version}", service_name=SERVICE,
                                        version=version, env={"LEAK_TASK": leak, "RUN_S": "150", "RATE": "150"})
    # Both releases' three task types scraped through the whole window: every sub-window of the gate has data.
    need = f"count_over_time({names.TASK_COUNT.prom}{{{names.LABEL_SERVICE}=\"{SERVICE}\"}}[{WINDOW}])"
    prometheus.wait_for(need, timeout=150, predicate=lambda r: len(r) == 6 and all(float(x["value"][1]) >= 40 for x in r))
    time.sleep(3)
    for w in workers.values():
        assert w.alive, w.name

    p = _gate(prometheus, "1.0", "1.1", "--json", str(tmp_path / "gate.json"))
    assert p.returncode == 1, p.stdout + p.stderr
    r = json.loads((tmp_path / "gate.json").read_text())
    assert r["verdict"] == "fail" and r["regressed"][0] == "render", json.dumps(r)
    assert abs(r["canary"]["suspects"]["render"] - 32 * 1024) < 8 * 1024, r["canary"]["suspects"]
    # a third of the canary's tasks keep 32 KiB each: ~11 KiB per task more than the baseline's
    assert r["growth"] and 6 * 1024 < r["growth"]["delta_bytes_per_task"] < 16 * 1024, (r["baseline"]["pooled"], r["canary"]["pooled"])
    assert r["canary"]["tasks"] >= gate_mod.MIN_TASKS and r["baseline"]["tasks"] >= gate_mod.MIN_TASKS

    # the query of the AnalysisTemplate / Flagger MetricTemplate, filled in as Argo or Flagger would
    sys.path.insert(0, str(ROOT / "deploy" / "k8s"))
    import rollouts

    growth = prometheus.query(rollouts.growth_query("", SERVICE, "1.0", "1.1", WINDOW))
    assert len(growth) == 1 and float(growth[0]["value"][1]) > gate_mod.MIN_BYTES, growth  # the template fails it
    growth = prometheus.query(rollouts.growth_query("", SERVICE, "1.1", "1.0", WINDOW))
    assert len(growth) == 1 and float(growth[0]["value"][1]) < gate_mod.MIN_BYTES, growth  # and passes this one

    p = _gate(prometheus, "1.1", "1.0")
    assert p.returncode == 0 and p.stdout.startswith("pass"), p.stdout + p.stderr
    p = _gate(prometheus, "1.0", "9.9")
    assert p.returncode == 3 and p.stdout.startswith("inconclusive"), p.stdout + p.stderr
    # the same evidence as a saved baseline, compared as files
    for version in ("1.0", "1.1"):
        p = subprocess.run([OTEL_LEAK, "baseline", "save", "--prometheus", prometheus.url, "--service", SERVICE,
                            "--version", version, "--window", WINDOW, "--dir", str(tmp_path / "bl")],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
    saved = json.loads((tmp_path / "bl" / SERVICE / "production" / "1.1.json").read_text())
    young = saved["gc_pauses"]["0"]  # from the pause histogram's buckets in Prometheus
    assert young["collections"] > 10 and 0 < young["p50_s"] <= young["p99_s"] < 1.0, saved["gc_pauses"]
    p = subprocess.run([OTEL_LEAK, "compare", str(tmp_path / "bl" / SERVICE / "production" / "1.0.json"),
                        str(tmp_path / "bl" / SERVICE / "production" / "1.1.json")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and p.stdout.startswith("regressed"), p.stdout + p.stderr


def test_gate_with_prometheus_unreachable_is_one_line_and_exit_2():
    p = subprocess.run([OTEL_LEAK, "gate", "--prometheus", "http://127.0.0.1:9", "--service", "s",
                        "--baseline-version", "a", "--canary-version", "b"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "cannot query Prometheus" in p.stderr
