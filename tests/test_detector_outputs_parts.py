"""The detector's outputs built from a hand-made detector state (no sampler, no threads): the bounded
series, the report document, the confidence, the diagnosis log record and the gauges' callbacks."""

from __future__ import annotations

import json
import logging
import os
from types import SimpleNamespace

import pytest

from otel_leak import names
from otel_leak.detector import outputs as O
from otel_leak.detector import tier2 as T2
from otel_leak.detector.report import validate_process_report
from otel_leak.detector.attribution import Attribution
from otel_leak.detector.tier1 import Tier1

SITE = {"file": "app.py", "line": 12, "retained_bytes": 65536, "count": 10, "growth_bytes": 65536,
        "traceback": [{"file": "app.py", "line": 12}, {"file": "lib.py", "line": 3}]}


def state(verdict="leak", error=None, kind="python_heap", sites=(SITE,), report_dir="", **kw):
    t1 = Tier1()
    det = SimpleNamespace(
        verdict=verdict, error=error, kind=kind, sites=list(sites), retention=[{"text": "a -> b"}],
        suspects=[{"task": "ingest", "retained_bytes_per_call": 65536.0, "calls": 40, "confidence": 0.9,
                   "trace_ids": [], "source": "tier2"}],
        tier1=t1, allocator=None, pid=os.getpid(), start_unix=1e9, start_t=10.0, first_rss=50 << 20,
        last=SimpleNamespace(t=70.0, rss=60 << 20, tasks_total=1200, task_counts={"ingest": 600, "render": 600}),
        detected_at_s=30.0, detected_at_tasks=600, stats=None, tier2_time=0.6, tier2_runs=[],
        series=O.Series(), events=[], report_dir=report_dir, write_error_logged=False,
    )
    det.__dict__.update(kw)
    det.report = lambda final=False: O.build_report(det, final)
    return det


# ---------------------------------------------------------------------------------------------- series
def test_series_stays_bounded_and_spans_the_whole_run():
    s = O.Series(cap=100)
    for k in range(10_000):
        s.add(float(k), 1000 + k, 900 + k, k)
    d = s.as_dict()
    assert len(d["t_s"]) < 100 and len({len(v) for v in d.values()}) == 1
    assert d["t_s"][0] == 0.0 and d["t_s"][-1] > 9000  # from the start to near the end
    steps = {b - a for a, b in zip(d["t_s"], d["t_s"][1:])}
    assert len(steps) == 1  # evenly downsampled
    assert d["rss"][5] - d["floor"][5] == 100 and d["heap_blocks"][5] == d["t_s"][5]  # columns stay aligned


# ---------------------------------------------------------------------------------------------- report
def test_a_leak_report_is_valid_and_names_the_suspects():
    doc = O.build_report(state(), final=True)
    assert validate_process_report(doc) == []
    assert doc["verdict"] == "leak" and doc["suspects"][0]["task"] == "ingest" and doc["final"] is True
    assert doc["duration_s"] == 60.0 and doc["tasks_observed"] == 1200 and doc["memory"]["kind"] == "python_heap"
    assert doc["tier2"]["share"] == pytest.approx(0.01) and doc["task_counts"] == {"ingest": 600, "render": 600}


def test_a_failed_detector_reports_inconclusive_without_suspects():
    doc = O.build_report(state(error="tier 1: boom"))
    assert validate_process_report(doc) == []
    assert doc["verdict"] == "inconclusive" and doc["suspects"] == [] and doc["memory"]["kind"] is None
    assert doc["confidence"] == 0.0 and doc["error"] == "tier 1: boom"


def test_no_suspects_in_the_report_without_a_leak_verdict():
    doc = O.build_report(state(verdict="no_leak"))
    assert validate_process_report(doc) == [] and doc["suspects"] == []


def test_a_report_before_any_sample_is_valid():
    doc = O.build_report(state(verdict="inconclusive", last=None, start_t=None, suspects=[]))
    assert validate_process_report(doc) == [] and doc["duration_s"] == 0.0 and doc["tasks_observed"] == 0


def test_confidence_is_bounded_by_the_verdict():
    base = state().tier1.confidence()
    assert O.confidence(state(error="x")) == 0.0
    assert O.confidence(state(verdict="inconclusive")) <= 0.5
    # a Python-heap leak with its allocation site is surer than without it, never certain
    assert O.confidence(state(sites=())) <= O.confidence(state()) <= 0.99
    assert O.confidence(state(sites=(), kind="native_or_fragmentation")) == pytest.approx(min(base, 0.99))


def test_write_report_writes_the_pid_file_and_logs_a_failure_once(tmp_path, caplog):
    assert O.write_report(state()) is None  # no report directory configured
    path = O.write_report(state(report_dir=str(tmp_path)))
    assert path == str(tmp_path / f"{os.getpid()}.json") and json.load(open(path))["verdict"] == "leak"
    blocked = tmp_path / "file"
    blocked.write_text("")
    det = state(report_dir=str(blocked / "sub"))  # a directory under a file: cannot be created
    with caplog.at_level("WARNING", logger="otel_leak"):
        assert O.write_report(det) is None and O.write_report(det) is None
    assert len([r for r in caplog.records if "cannot write the report" in r.getMessage()]) == 1


def test_records_for_events_and_tier2_runs():
    attrs = [Attribution(f"t{k}", 1000.04 * k, 10, 0.5, 0.1, 4.0) for k in range(8)]
    brief = O.attribution_brief(attrs)
    assert [a["task"] for a in brief] == [f"t{k}" for k in range(O.BRIEF)] and brief[1]["bytes_per_call"] == 1000.0
    res = T2.Tier2Result()
    res.started_t, res.duration, res.tasks, res.attribution = 25.0, 0.5, 40, attrs
    run = O.tier2_run(res, 10.0)
    assert run["t_s"] == 15.0 and run["duration_s"] == 0.5 and run["python_growth_bytes_per_task"] is None
    assert len(run["attribution"]) == O.BRIEF and json.dumps(run)


# ---------------------------------------------------------------------------------------------- log
def test_diagnosis_leaves_out_tracebacks_and_keeps_three_sites():
    d = O.diagnosis(state(sites=[dict(SITE, line=k) for k in range(5)]))
    assert [s["line"] for s in d["allocation_sites"]] == [0, 1, 2]
    assert all("traceback" not in s for s in d["allocation_sites"]) and d["retention_paths"] == ["a -> b"]


def test_the_diagnosis_log_record_names_the_task_and_the_site(caplog):
    with caplog.at_level("WARNING", logger=names.LOG_DIAGNOSIS):
        O.emit_log(state())
    rec = [r for r in caplog.records if r.name == names.LOG_DIAGNOSIS][-1]
    assert "'ingest'" in rec.getMessage() and "app.py:12" in rec.getMessage()
    assert json.loads(getattr(rec, names.LOG_DIAGNOSIS))["suspects"][0]["task"] == "ingest"
    assert getattr(rec, names.ATTR_TASK_NAME) == "ingest"


def test_the_diagnosis_log_never_raises(caplog):
    with caplog.at_level("WARNING", logger=names.LOG_DIAGNOSIS):
        O.emit_log(SimpleNamespace())  # nothing to read
    assert not [r for r in caplog.records if r.name == names.LOG_DIAGNOSIS]


def test_no_log_handler_without_a_logger_provider():
    before = list(logging.getLogger(names.LOG_DIAGNOSIS).handlers)
    O.add_log_handler(None)
    O.add_log_handler(object())  # not a logger provider
    assert logging.getLogger(names.LOG_DIAGNOSIS).handlers == before


# ---------------------------------------------------------------------------------------------- gauges
class Meter:
    def __init__(self):
        self.callbacks = {}

    def create_observable_gauge(self, name, callbacks, unit, description):
        self.callbacks[name] = callbacks[0]
        return name


def test_gauges_report_the_process_and_each_suspect_and_swallow_failures():
    meter, det = Meter(), state()
    gauges = O.make_gauges(meter, det)
    assert sorted(gauges) == sorted(m.name for m in names.DETECTOR_METRICS)
    points = meter.callbacks[names.DETECTOR_VERDICT.name](None)
    assert [p.value for p in points] == [1, 1]
    assert all(p.attributes[names.SPAN_PID] == os.getpid() for p in points)
    assert points[1].attributes[names.ATTR_TASK_NAME] == "ingest"
    retained = meter.callbacks[names.DETECTOR_RETAINED_PER_CALL.name](None)
    assert [p.value for p in retained] == [65536.0]
    assert meter.callbacks[names.DETECTOR_FLOOR_SLOPE.name](None) == []  # no window yet: no slope point
    det.suspects = None  # broken state: the callbacks give nothing rather than raising into the SDK
    assert meter.callbacks[names.DETECTOR_VERDICT.name](None) == []
