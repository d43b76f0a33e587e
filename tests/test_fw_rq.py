"""RQ: one task span per job, in whichever process runs it, under real workers and real Redis.

In-process tests run a real :class:`rq.worker.SimpleWorker` (burst) on a real Redis with the SDK's in-memory
exporter. The others start workers as RQ's docs say (``rq worker``, ``rq worker-pool``) in examples/rq_leak:
under the real ``opentelemetry-instrument`` (console exporters), under ``otel-leak run``, and, for RQ 2.x, in
a virtual environment of their own that has ``rq<3``. A missing redis-server or RQ fails with ``CI=true``.
"""

from __future__ import annotations

import collections
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid

import pytest
from opentelemetry.trace import SpanKind, StatusCode

from otel_leak import names
from otel_leak.integrations import _base
from otel_leak.integrations.rq import RQInstrumentor
from tests.conftest import ROOT, VENV_BIN, instrumented_env, parse_console_exports
from tests.frameworks import BIG_LEAK, OtelLeakRun, check_healthy_report, check_leak_report, check_task_spans, sdk_env

if os.environ.get("CI") != "true":
    pytest.importorskip("rq")
from redis import Redis  # noqa: E402
from rq import Queue, SimpleWorker  # noqa: E402
from rq.job import Job, JobStatus  # noqa: E402

APP_DIR = ROOT / "examples" / "rq_leak"
QUEUE = "leak_demo"  # the example app's
LEAKY, HEALTHY = "app.remember_user", ("app.resize_image", "app.send_email")
DB = 9  # a Redis database of its own on the session's shared server (dramatiq 1-3, huey 5-8, arq 11, taskiq 12)
DONE = (JobStatus.FINISHED, JobStatus.FAILED)


def _url(redis_url: str) -> str:
    return redis_url.rsplit("/", 1)[0] + f"/{DB}"


@pytest.fixture
def conn(redis_url):
    c = Redis.from_url(_url(redis_url))
    c.flushdb()
    yield c
    c.close()


@pytest.fixture
def env(monkeypatch):
    with sdk_env(monkeypatch, RQInstrumentor()) as e:
        yield e


def _double(x):
    return 2 * x


class Boom(Exception):
    pass


_ERR = Boom("no")


def _boom():
    raise _ERR


def _simple_burst(conn, queue: Queue) -> None:
    """A real SimpleWorker drains ``queue`` here; the handlers it installs are put back afterwards."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        SimpleWorker([queue], connection=conn).work(burst=True)
    finally:
        for s, h in saved.items():
            signal.signal(s, h)


def test_instrument_uninstrument_is_symmetric(env, conn):
    inst = RQInstrumentor()
    targets = inst._targets()
    wrapped = {(o, n): vars(o)[n] for o, n, _ in targets}
    assert len(wrapped) >= 5 and all(hasattr(f, "__wrapped__") for f in wrapped.values())
    inst.uninstrument()
    try:
        for (owner, name), w in wrapped.items():
            now = vars(owner)[name]
            assert now is w.__wrapped__ and not hasattr(now, "__wrapped__"), (owner, name)  # rq's own again
            assert now.__code__.co_filename.startswith(os.path.dirname(sys.modules["rq"].__file__)), (owner, name)
        assert Job.create(_double, args=(3,), connection=conn).perform() == 6
        assert env.exporter.get_finished_spans() == ()
    finally:
        inst.instrument()  # the fixture uninstruments
    assert all(vars(o)[n] is not wrapped[(o, n)].__wrapped__ for o, n in wrapped)


def test_simple_worker_spans_failing_job_and_trace_context_from_the_producer(env, conn):
    q = Queue("unit", connection=conn)
    shared = {"tenant": "a"}
    with env.tracer.start_as_current_span("request") as producer:
        ok = q.enqueue(_double, 21, meta=shared)  # create_job puts the producer's context into the job's meta
    assert shared == {"tenant": "a"} and ok.meta["tenant"] == "a" and "traceparent" in ok.meta  # a copy
    bad = q.enqueue(_boom)
    garbled = q.enqueue(_double, 1, meta={"traceparent": "not a traceparent"})
    _simple_burst(conn, q)
    assert ok.return_value(refresh=True) == 42 and garbled.return_value(refresh=True) == 2
    assert bad.get_status(refresh=True) == JobStatus.FAILED and "Boom" in bad.latest_result().exc_string
    spans = {s.attributes[names.ATTR_MESSAGING_MESSAGE_ID]: s for s in env.exporter.get_finished_spans()
             if s.kind is SpanKind.CONSUMER}
    assert set(spans) == {ok.id, bad.id, garbled.id}
    for job in (ok, bad, garbled):
        s, a = spans[job.id], spans[job.id].attributes
        assert s.name == f"process {job.func_name}" and a[names.ATTR_TASK_NAME] == job.func_name
        assert a[names.ATTR_MESSAGING_SYSTEM] == "rq" and a[names.ATTR_MESSAGING_DESTINATION] == "unit"
        assert a[names.SPAN_PID] == os.getpid() and names.SPAN_RSS_DELTA in a
    assert spans[ok.id].attributes[names.ATTR_TASK_NAME] == "tests.test_fw_rq._double"
    assert spans[ok.id].parent is not None and spans[ok.id].parent.span_id == producer.get_span_context().span_id
    assert spans[ok.id].context.trace_id == producer.get_span_context().trace_id
    assert spans[bad.id].parent is None and spans[garbled.id].parent is None
    assert spans[bad.id].status.status_code is StatusCode.ERROR and spans[bad.id].events[0].name == "exception"
    assert spans[ok.id].status.status_code is StatusCode.UNSET
    # Job.perform lets the very same exception through
    with pytest.raises(Boom) as info:
        Job.create(_boom, connection=conn).perform()
    assert info.value is _ERR


def test_a_failure_of_the_integration_never_reaches_the_job(env, conn, monkeypatch):
    from otel_leak.integrations import rq as integration

    def broken(*args, **kwargs):
        raise RuntimeError("propagator broke")

    monkeypatch.setattr(integration.propagate, "extract", broken)
    monkeypatch.setattr(integration.propagate, "inject", broken)
    monkeypatch.setattr(_base, "_warned", set())
    with env.tracer.start_as_current_span("request"):
        job = Queue("unit", connection=conn).enqueue(_double, 4)
    assert "traceparent" not in job.meta
    job.meta["traceparent"] = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert job.perform() == 8  # no span, the same result
    assert [s.name for s in env.exporter.get_finished_spans()] == ["request"]


def test_no_second_span_when_a_consumer_span_is_current(env, conn):
    job = Job.create(_double, args=(21,), connection=conn)
    with env.tracer.start_as_current_span("another instrumentation", kind=SpanKind.CONSUMER):
        assert job.perform() == 42
    assert [s.name for s in env.exporter.get_finished_spans()] == ["another instrumentation"]


def _args(name: str) -> tuple:
    return (uuid.uuid4().hex,) if name == LEAKY else ("someone@example.com",) if name == HEALTHY[1] else ()


def _fill(conn, expected: dict[str, int]) -> list[Job]:
    q = Queue(QUEUE, connection=conn)
    return [q.enqueue(n, *_args(n)) for n, k in expected.items() for _ in range(k)]


def _instrumented(args: list[str], out, timeout: float = 120, **extra: str) -> tuple[str, int]:
    with open(out, "w") as f:
        p = subprocess.Popen([str(VENV_BIN / "opentelemetry-instrument"), *args], cwd=APP_DIR,
                             env=instrumented_env(OTEL_SERVICE_NAME="rq-test", LEAK_BYTES=BIG_LEAK, **extra), stdout=f,
                             stderr=subprocess.STDOUT)
        try:
            rc = p.wait(timeout=timeout)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait(10)
    text = out.read_text()
    assert rc == 0, text[-3000:]
    return text, p.pid


def _span_pids(tasks: list[dict], jobs: list[Job]) -> dict[str, tuple[int, int]]:
    """job id -> (process.pid on its span, the pid the job returned)."""
    by_id = {s["attributes"][names.ATTR_MESSAGING_MESSAGE_ID]: s["attributes"][names.SPAN_PID] for s in tasks}
    return {j.id: (by_id[j.id], j.return_value(refresh=True)) for j in jobs}


@pytest.mark.parametrize("worker_class", ["rq.worker.SimpleWorker", "rq.worker.Worker", "rq.worker.SpawnWorker"])
def test_opentelemetry_instrument_burst_worker_exports_one_measured_span_per_job(worker_class, conn, redis_url,
                                                                                  tmp_path):
    # SpawnWorker starts a new (auto-instrumented) interpreter per job, seconds each here: two jobs
    expected = {LEAKY: 1, HEALTHY[1]: 1} if "Spawn" in worker_class else \
        {LEAKY: 5, HEALTHY[0]: 4, HEALTHY[1]: 3}
    jobs = _fill(conn, expected)
    procs = tmp_path / "procs"
    text, worker_pid = _instrumented([str(VENV_BIN / "rq"), "worker", "--burst", "--url", _url(redis_url), "-w",
                                      worker_class, QUEUE], tmp_path / "worker.out",
                                     OTEL_PYTHON_LEAK_REPORT_DIR=str(procs))
    tasks = check_task_spans(text, "rq", expected, queue=QUEUE)
    pids = _span_pids(tasks, jobs)
    assert all(span == ran for span, ran in pids.values()), pids  # the span names the process that ran the job
    ran = {ran for _, ran in pids.values()}
    if worker_class == "rq.worker.SimpleWorker":
        assert ran == {worker_pid}, (ran, worker_pid)  # the worker itself
    else:  # one work horse per job, each exporting its own span before os._exit
        assert len(ran) == len(jobs) and worker_pid not in ran, (ran, worker_pid)
    # the detector's report: the worker's alone (a horse's memory is not the worker's to judge)
    assert sorted(f.name for f in procs.glob("*.json")) == [f"{worker_pid}.json"]


def test_a_work_horse_forked_during_a_metric_export_still_exits(conn, redis_url, tmp_path):
    """The parent exports metrics every 5 ms, so horses are often forked while its metric reader holds its
    export lock (which the SDK does not renew in a forked child): the horse's flush waits a bounded time,
    every job completes and every span is still exported (spans are flushed first)."""
    expected = {HEALTHY[1]: 6}
    jobs = _fill(conn, expected)
    text, worker_pid = _instrumented([str(VENV_BIN / "rq"), "worker", "--burst", "--url", _url(redis_url), QUEUE],
                                     tmp_path / "worker.out", timeout=100, OTEL_METRIC_EXPORT_INTERVAL="5")
    spans, _ = parse_console_exports(text)
    tasks = [s for s in spans if names.SPAN_RSS_DELTA in s["attributes"]]
    assert collections.Counter(s["attributes"][names.SPAN_TASK_NAME] for s in tasks) == expected
    assert all(j.get_status(refresh=True) == JobStatus.FINISHED for j in jobs)
    pids = _span_pids(tasks, jobs)
    assert all(span == ran != worker_pid for span, ran in pids.values()), (pids, worker_pid)


def test_opentelemetry_instrument_worker_pool_exports_every_span(conn, redis_url, tmp_path):
    """``rq worker-pool`` of two SimpleWorkers: forked worker processes leave through os._exit (multiprocessing)
    and still export every span and write their final report, each its own."""
    expected = {LEAKY: 12, HEALTHY[0]: 10, HEALTHY[1]: 8}
    jobs = _fill(conn, expected)
    procs = tmp_path / "procs"
    text, pool_pid = _instrumented([str(VENV_BIN / "rq"), "worker-pool", "--burst", "-n", "2", "-w",
                                    "rq.worker.SimpleWorker", "--url", _url(redis_url), QUEUE], tmp_path / "pool.out",
                                   OTEL_PYTHON_LEAK_REPORT_DIR=str(procs))
    tasks = check_task_spans(text, "rq", expected, queue=QUEUE)
    pids = _span_pids(tasks, jobs)
    assert all(span == ran for span, ran in pids.values()), pids
    ran = collections.Counter(ran for _, ran in pids.values())
    assert 1 <= len(ran) <= 2 and pool_pid not in ran, (ran, pool_pid)
    files = {int(f.stem): json.loads(f.read_text()) for f in procs.glob("*.json")}
    assert pool_pid in files and files[pool_pid]["tasks_observed"] == 0
    for pid, n in ran.items():  # each pool worker's final report counts the jobs it ran
        assert files[pid]["ppid"] == pool_pid and files[pid]["tasks_observed"] == n, (pid, n, files[pid])


def _drive(run: OtelLeakRun, conn, kinds: tuple[str, ...], seed: int, until, limit_s: float):
    """Keep a varying mix of ``kinds`` flowing at ~75 jobs/s until ``until()`` or ``limit_s``;
    (jobs sent, pids the jobs report, seconds of load)."""
    q = Queue(QUEUE, connection=conn)
    warm = q.enqueue(HEALTHY[1], "warmup@example.com")
    deadline = time.monotonic() + 90
    while warm.get_status(refresh=True) not in DONE and run.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    pids = {warm.return_value(refresh=True)}
    rng, sent, t0 = random.Random(seed), 1, time.monotonic()
    while time.monotonic() - t0 < limit_s and run.proc.poll() is None:
        order = [n for n in kinds for _ in range(rng.randint(4, 16))]
        rng.shuffle(order)
        jobs = [q.enqueue(n, *_args(n), result_ttl=120) for n in order]
        last, wait_until = jobs[-1], time.monotonic() + 60
        while last.get_status(refresh=True) not in DONE and time.monotonic() < wait_until:  # FIFO: all done
            time.sleep(0.01)
        pids.add(last.return_value(refresh=True))
        sent += len(jobs)
        if until():
            break
        time.sleep(max(0.0, t0 + sent / 75.0 - time.monotonic()))
    return sent, pids, time.monotonic() - t0


def _simple_worker(redis_url: str) -> list[str]:
    return [str(VENV_BIN / "rq"), "worker", "-q", "-w", "rq.worker.SimpleWorker", "--url", _url(redis_url), QUEUE]


def test_otel_leak_run_simple_worker_names_the_leaking_job(conn, redis_url, tmp_path):
    run = OtelLeakRun(tmp_path, _simple_worker(redis_url), cwd=APP_DIR)
    try:
        sent, pids, load_s = _drive(run, conn, (LEAKY, *HEALTHY), 7, lambda: run.declared(LEAKY), 120)
        rc = run.stop()
    finally:
        run.close()
    log = run.log()
    assert rc == 0, log[-3000:]
    r = run.report()
    check_leak_report(r, LEAKY, APP_DIR / "app.py", "_USERS[key] = os.urandom", log)
    assert r["suspects"][0]["retained_bytes_per_call"] > 16 * 1024, r["suspects"]
    # one process: the worker, which ran every job and declared the leak
    (proc,) = r["processes"]
    assert pids == {proc["pid"]} and proc["role"] == "command", (pids, proc["pid"], proc["role"])
    assert proc["verdict"] == "leak" and proc["tasks_observed"] >= sent, (proc["tasks_observed"], sent, load_s)
    assert set(proc["task_counts"]) == {LEAKY, *HEALTHY}


def test_otel_leak_run_healthy_simple_worker_ends_no_leak(conn, redis_url, tmp_path):
    run = OtelLeakRun(tmp_path, _simple_worker(redis_url), cwd=APP_DIR)
    cleared: list[float] = []

    def until() -> bool:
        # no_leak once the detector has DETECTOR_MIN_WINDOWS (5) windows after the start-up one (>= 3 samples
        # and >= 12 tasks each; the sampler speeds up with the task rate: a few seconds here); then ~4 s more
        if not cleared and any(d.get("verdict") == "no_leak" for d in run.process_files().values()):
            cleared.append(time.monotonic())
        return bool(cleared) and time.monotonic() - cleared[0] > 4

    try:
        sent, pids, load_s = _drive(run, conn, HEALTHY, 13, until, 75)
        rc = run.stop()
    finally:
        run.close()
    log = run.log()
    assert rc == 0, log[-3000:]
    assert cleared, (load_s, {p: (d["verdict"], d["tasks_observed"]) for p, d in run.process_files().items()})
    r = run.report()
    check_healthy_report(r, log)
    (proc,) = r["processes"]
    assert pids == {proc["pid"]} and proc["tasks_observed"] >= sent


def test_otel_leak_run_forking_worker_horses_write_no_report(conn, redis_url, tmp_path):
    """A horse per job: only the long-lived worker writes a process file; the merged report is valid."""
    jobs = _fill(conn, {LEAKY: 15, HEALTHY[1]: 15})
    run = OtelLeakRun(tmp_path, [str(VENV_BIN / "rq"), "worker", "--burst", "--url", _url(redis_url), QUEUE],
                      cwd=APP_DIR)
    try:
        rc = run.proc.wait(timeout=120)  # burst: the worker leaves once the queue is empty
    finally:
        run.close()
    log = run.log()
    assert rc == 0, log[-3000:]
    horses = [j.return_value(refresh=True) for j in jobs]
    files = run.process_files()
    (worker_pid,) = files  # the worker's own file, no horse's
    assert len(set(horses)) == len(jobs) and worker_pid not in horses, (horses, worker_pid)
    r = run.report()  # valid
    reported = [p for p in r["processes"] if p.get("reported", True)]
    assert [p["pid"] for p in reported] == [worker_pid] and reported[0]["role"] == "command"
    assert reported[0]["tasks_observed"] == 0  # the jobs ran (and were measured) in the horses
    # a horse its poll caught alive is a short-lived child of a reporting worker: neither listed nor incomplete
    assert [p for p in r["processes"] if not p.get("reported", True)] == [] and r["incomplete"] is False


def _installer() -> list[str]:
    """uv (as scripts/setup-python.sh installs it: ``python3 -m uv``, or on PATH), else the base Python's pip."""
    candidates = [[shutil.which("uv") or "uv"], ["python3", "-m", "uv"]]
    for c in candidates:
        try:
            if subprocess.run([*c, "--version"], capture_output=True, timeout=30).returncode == 0:
                return [*c, "pip", "install", "--python"]
        except (OSError, subprocess.TimeoutExpired):
            pass
    return [sys._base_executable, "-m", "pip", "install", "--python"]


def test_rq2_simple_worker_under_opentelemetry_instrument(conn, redis_url, tmp_path):
    """RQ 2.x: a virtual environment with ``rq<3`` first on the path and this project's environment after it
    (a .pth), so only RQ differs; a SimpleWorker burst there exports the task spans."""
    venv = tmp_path / "rq2"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = next((venv / "lib").glob("python3*/site-packages"))
    main_site = next(p for p in sys.path if p.endswith("site-packages") and p.startswith(sys.prefix))
    (site / "zz_otel_leak_main.pth").write_text(f"import site; site.addsitedir({main_site!r})\n")
    subprocess.run([*_installer(), str(venv / "bin" / "python"), "rq>=2,<3"], check=True, timeout=240,
                   stdout=subprocess.DEVNULL)
    version = subprocess.run([str(venv / "bin" / "python"), "-c", "import rq; print(rq.__version__)"],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert version.startswith("2."), version
    expected = {LEAKY: 3, HEALTHY[0]: 2, HEALTHY[1]: 2}
    jobs = _fill(conn, expected)
    out = tmp_path / "rq2.out"
    with open(out, "w") as f:
        p = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import sys; from opentelemetry.instrumentation.auto_instrumentation import run; run()",
                            str(venv / "bin" / "rq"), "worker", "--burst", "-w", "rq.worker.SimpleWorker", "--url",
                            _url(redis_url), QUEUE], cwd=APP_DIR, env=instrumented_env(LEAK_BYTES=BIG_LEAK), stdout=f,
                           stderr=subprocess.STDOUT, timeout=120)
    text = out.read_text()
    assert p.returncode == 0, text[-3000:]
    tasks = check_task_spans(text, "rq", expected, queue=QUEUE)
    assert {j.id for j in jobs} == {s["attributes"][names.ATTR_MESSAGING_MESSAGE_ID] for s in tasks}
    assert all(s["resource"]["attributes"].get("telemetry.sdk.name") == "opentelemetry" for s in tasks)
    spans, _ = parse_console_exports(text)
    assert all(s["kind"] == "SpanKind.CONSUMER" for s in tasks) and len(spans) >= len(tasks)
