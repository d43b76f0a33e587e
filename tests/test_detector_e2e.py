"""Two real scenario runs end to end under ``opentelemetry-instrument`` (one leak, one benign), in parallel.

Sped up for the test (0.25 s samples, 14 s runs, 1 MB growth threshold); the scoring command runs the
whole suite with the defaults.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import pytest

from otel_leak.detector.report import validate_process_report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCEN = os.path.join(ROOT, "scenarios")
INSTRUMENT = os.path.join(os.path.dirname(sys.executable), "opentelemetry-instrument")

pytestmark = pytest.mark.skipif(not os.path.exists(INSTRUMENT), reason="opentelemetry-instrument not installed")


def _start(name, out):
    env = dict(os.environ)
    env.update(
        OTEL_TRACES_EXPORTER="none",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        OTEL_PYTHON_LEAK_REPORT_DIR=str(out),
        OTEL_PYTHON_LEAK_SAMPLE_INTERVAL="0.25",
        OTEL_PYTHON_LEAK_DETECTOR_MIN_GROWTH="1000000",
        SCENARIO_DURATION="14",
    )
    return subprocess.Popen(
        [INSTRUMENT, sys.executable, os.path.join(SCEN, name)], env=env, cwd=SCEN,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _report(out):
    files = glob.glob(os.path.join(str(out), "*.json"))
    assert len(files) == 1, files
    with open(files[0]) as f:
        return json.load(f)


def test_leak_and_benign_scenarios_end_to_end(tmp_path):
    leak_dir, benign_dir = tmp_path / "leak", tmp_path / "benign"
    procs = [_start("module_cache.py", leak_dir), _start("steady_pool4.py", benign_dir)]
    for p in procs:
        _, err = p.communicate(timeout=90)
        assert p.returncode == 0, err[-2000:]

    leak = _report(leak_dir)
    assert validate_process_report(leak) == []
    assert leak["final"] is True
    assert leak["verdict"] == "leak", leak["trends"]
    assert leak["suspects"][0]["task"] == "render"
    assert 8_000 < leak["suspects"][0]["retained_bytes_per_call"] < 40_000
    assert all(len(t) == 32 for t in leak["suspects"][0]["trace_ids"])
    if leak["allocation_sites"]:  # tier 2 ran before the end of the run
        site = leak["allocation_sites"][0]
        assert site["file"].endswith("module_cache.py")
        with open(os.path.join(SCEN, "module_cache.py")) as f:
            assert "leak-site" in f.read().splitlines()[site["line"] - 1]
    assert any(e["kind"] == "leak_declared" for e in leak["events"])

    benign = _report(benign_dir)
    assert validate_process_report(benign) == []
    assert benign["verdict"] == "no_leak"
    assert not any(e["kind"] == "leak_declared" for e in benign["events"])
    assert benign["suspects"] == [] and benign["tasks_observed"] > 300
