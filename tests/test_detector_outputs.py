"""The detector's outputs around the process: gauges with ``process.pid``, the adaptive sampling interval,
and the final report of Celery prefork children (which leave through ``os._exit``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from otel_leak import names
from tests.test_detector import MiB, FakeSampler, FakeStats, make_detector, stream

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_BIN = os.path.dirname(sys.executable)


# ---------------------------------------------------------------------------------------------- gauges
def _collect(reader) -> dict[str, list]:
    data = reader.get_metrics_data()
    out: dict[str, list] = {}
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                out.setdefault(m.name, []).extend(m.data.data_points)
    return out


def _leaking_detector_with_meter():
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from otel_leak.detector.detector import Detector

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    sampler, stats = FakeSampler(), FakeStats()
    det = Detector(stats=stats, sampler=sampler, meter=provider.get_meter("t"),
                   environ={"OTEL_PYTHON_LEAK_DETECTOR_TIER2": "false"})
    det._mi_off = True
    for s in stream(leak=("b", 32 * 1024)):
        stats.counts, stats.total = dict(s.task_counts), s.tasks_total
        sampler.feed(s)
    assert det.verdict == "leak" and det.suspects
    return det, reader, provider


def test_every_detector_gauge_point_carries_the_pid_and_task_points_the_task():
    det, reader, provider = _leaking_detector_with_meter()
    try:
        points = _collect(reader)
        for metric in names.DETECTOR_METRICS:
            assert points.get(metric.name), f"no data point for {metric.name}"
            for p in points[metric.name]:
                assert p.attributes.get(names.SPAN_PID) == os.getpid(), (metric.name, dict(p.attributes))
        per_task = [p for m in names.DETECTOR_METRICS for p in points[m.name] if names.ATTR_TASK_NAME in p.attributes]
        assert per_task and {p.attributes[names.ATTR_TASK_NAME] for p in per_task} == {s["task"] for s in det.suspects}
        assert all(names.ATTR_TASK_NAME in p.attributes for p in points[names.DETECTOR_RETAINED_PER_CALL.name])
        # per-process points: exactly one verdict point without a task
        assert len([p for p in points[names.DETECTOR_VERDICT.name] if names.ATTR_TASK_NAME not in p.attributes]) == 1
    finally:
        det.stop()
        provider.shutdown()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_gauge_pid_is_read_at_callback_time_in_a_forked_child():
    det, reader, provider = _leaking_detector_with_meter()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: collect through the inherited reader, report the pids seen
        try:
            os.close(r)
            pts = _collect(reader)
            seen = sorted({p.attributes.get(names.SPAN_PID) for ps in pts.values() for p in ps})
            os.write(w, json.dumps({"me": os.getpid(), "seen": seen}).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        doc = json.loads(f.read() or "{}")
    os.waitpid(pid, 0)
    try:
        assert doc["seen"] == [doc["me"]] and doc["me"] != os.getpid()
    finally:
        det.stop()
        provider.shutdown()


# ---------------------------------------------------------------------------------------------- interval
class IntervalSampler(FakeSampler):
    def __init__(self, interval=1.0):
        super().__init__()
        self.interval = interval


def _tick(t, total, counts=None, rss=50 * MiB):
    return SimpleNamespace(t=t, wall=1e9 + t, rss=rss, vms=2 * rss, heap_blocks=1000, traced=None, floor=rss,
                           task_counts=counts if counts is not None else {"a": total}, tasks_total=total)


def test_sampling_interval_follows_the_task_rate_within_bounds_and_is_restored():
    from otel_leak.detector import detector as D

    sampler = IntervalSampler(1.0)
    det = D.Detector(stats=FakeStats(), sampler=sampler, meter=None, environ={"OTEL_PYTHON_LEAK_DETECTOR_TIER2": "false"})
    det._mi_off = True
    t, total = 0.0, 0
    seen = []
    # 300 tasks/s: the sampler speeds up, never below the floor
    for _ in range(200):
        sampler.feed(_tick(t, total))
        seen.append(sampler.interval)
        t += sampler.interval
        total += int(300 * sampler.interval)
    assert min(seen) >= D.FAST_INTERVAL - 1e-9
    assert sampler.interval <= 0.1, sampler.interval
    # the rate drops to 2 tasks/s: back to the configured interval
    for _ in range(40):
        sampler.feed(_tick(t, total))
        t += sampler.interval
        total += max(0, round(2 * sampler.interval))
    assert sampler.interval == 1.0
    # idle: stays at the configured interval; stop() leaves the configured value
    sampler.interval = 0.05
    det.stop()
    assert sampler.interval == 1.0


def test_sampling_interval_never_exceeds_the_configured_one():
    from otel_leak.detector import detector as D

    sampler = IntervalSampler(0.2)  # a user who configured faster sampling keeps it
    det = D.Detector(stats=FakeStats(), sampler=sampler, meter=None, environ={"OTEL_PYTHON_LEAK_DETECTOR_TIER2": "false"})
    det._mi_off = True
    for k in range(30):
        sampler.feed(_tick(k * 0.2, k))  # 5 tasks/s
        assert D.FAST_INTERVAL <= sampler.interval <= 0.2
    det.stop()
    assert sampler.interval == 0.2


# ---------------------------------------------------------------------------------------------- Celery
def test_detector_never_imports_celery():
    code = (
        "import sys\n"
        "from otel_leak.detector.detector import Detector\n"
        "from tests.test_detector import FakeSampler, FakeStats\n"
        "d = Detector(stats=FakeStats(), sampler=FakeSampler(), environ={})\n"
        "d.on_sample(__import__('types').SimpleNamespace(t=0.0, wall=0.0, rss=1 << 20, vms=0, heap_blocks=0,"
        " traced=None, floor=0, task_counts={}, tasks_total=0))\n"
        "assert not [m for m in sys.modules if m == 'celery' or m.startswith('celery.')], 'celery imported'\n"
        "assert not d._celery_hooked\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


def test_celery_worker_process_shutdown_writes_the_final_report(tmp_path):
    signals = pytest.importorskip("celery.signals")
    det, sampler, stats = make_detector(tmp_path)
    try:
        assert det._celery_hooked  # celery.signals was already imported: hooked at start
        for s in stream(seconds=5):
            stats.counts, stats.total = dict(s.task_counts), s.tasks_total
            sampler.feed(s)
        path = tmp_path / f"{os.getpid()}.json"
        assert not json.loads(path.read_text())["final"]
        signals.worker_process_shutdown.send(sender=None, pid=os.getpid(), exitcode=0)
        doc = json.loads(path.read_text())
        assert doc["final"] is True and doc["tasks_observed"] == stats.total
    finally:
        signals.worker_process_shutdown.disconnect(det._on_worker_process_shutdown,
                                                       dispatch_uid=det.celery_dispatch_uid)
        det.stop()


def test_hooked_later_when_celery_is_imported_after_the_detector_started(tmp_path):
    signals = pytest.importorskip("celery.signals")
    saved = sys.modules.pop("celery.signals")
    try:
        det, sampler, stats = make_detector(tmp_path)
        assert not det._celery_hooked
    finally:
        sys.modules["celery.signals"] = saved
    try:
        sampler.feed(next(stream(seconds=1)))
        assert det._celery_hooked
    finally:
        signals.worker_process_shutdown.disconnect(det._on_worker_process_shutdown,
                                                       dispatch_uid=det.celery_dispatch_uid)
        det.stop()


APP = '''
import os
from celery import Celery

app = Celery("otel_leak_t", broker=os.environ["CELERY_BROKER_URL"], backend=os.environ["CELERY_RESULT_BACKEND"])


@app.task(name="otel_leak_t.work")
def work(n):
    return os.getpid()
'''


def test_prefork_child_leaving_through_os_exit_writes_a_final_report(redis_url, tmp_path):
    """A real prefork pool whose child exits after 3 tasks (billiard's os._exit): its report is final and
    counts the 3 tasks, although the periodic rewrite is an hour apart."""
    pytest.importorskip("celery")
    from celery import Celery

    (tmp_path / "app.py").write_text(APP)
    out = tmp_path / "reports"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(CELERY_BROKER_URL=redis_url, CELERY_RESULT_BACKEND=redis_url, PYTHONUNBUFFERED="1",
               OTEL_TRACES_EXPORTER="none", OTEL_METRICS_EXPORTER="none", OTEL_LOGS_EXPORTER="none",
               OTEL_PYTHON_LEAK_REPORT_DIR=str(out), OTEL_PYTHON_LEAK_REPORT_INTERVAL="3600")
    log = open(tmp_path / "worker.log", "w")
    proc = subprocess.Popen(
        [os.path.join(VENV_BIN, "opentelemetry-instrument"), os.path.join(VENV_BIN, "celery"), "-A", "app", "worker", "--pool=prefork",
         "--concurrency=1", "--max-tasks-per-child=3", "--loglevel=WARNING", "--without-heartbeat",
         "--without-gossip", "--without-mingle"],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    client = Celery("client", broker=redis_url, backend=redis_url)
    try:
        pending = [client.send_task("otel_leak_t.work", args=[k]) for k in range(3)]
        deadline = time.monotonic() + 90
        while not all(p.ready() for p in pending):
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "worker.log").read_text()[-2000:]
            time.sleep(0.1)
        first = {p.get(timeout=5) for p in pending}
        assert len(first) == 1
        child = first.pop()
        path = out / f"{child}.json"
        deadline = time.monotonic() + 30
        doc = {}
        while time.monotonic() < deadline:
            try:
                doc = json.loads(path.read_text())
            except (OSError, ValueError):
                doc = {}
            if doc.get("final"):
                break
            time.sleep(0.2)
        assert doc.get("final") is True, (doc.get("final"), doc.get("tasks_observed"))
        assert doc["tasks_observed"] == 3 and doc["pid"] == child
        # the pool replaced the child; the next one works as well
        assert client.send_task("otel_leak_t.work", args=[9]).get(timeout=60) != child
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


def test_each_detector_connects_its_own_celery_receiver(tmp_path):
    signals = pytest.importorskip("celery.signals")
    made = [make_detector(tmp_path / name) for name in ("a", "b")]
    try:
        for det, sampler, stats in made:
            sampler.feed(next(stream(seconds=1)))
        signals.worker_process_shutdown.send(sender=None, pid=os.getpid(), exitcode=0)
        for name in ("a", "b"):
            assert json.loads((tmp_path / name / f"{os.getpid()}.json").read_text())["final"] is True
    finally:
        for det, _, _ in made:
            signals.worker_process_shutdown.disconnect(det._on_worker_process_shutdown,
                                                       dispatch_uid=det.celery_dispatch_uid)
            det.stop()


def test_detector_sees_the_first_sample_the_sampler_takes():
    """Attached before the sampler starts: its baseline is the first tick, not one interval later (at
    300 tasks/s a 1 s late baseline is ~300 tasks of a leak unseen)."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider

    from otel_leak.instrumentor import Runtime

    mp = MeterProvider(metric_readers=[InMemoryMetricReader()])
    runtime = Runtime(TracerProvider(), mp)
    try:
        deadline = time.monotonic() + 0.5  # the configured interval is 1 s
        while runtime.detector.start_t is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert runtime.detector.start_t is not None
    finally:
        runtime.shutdown()
        mp.shutdown()
