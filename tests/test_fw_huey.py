"""Huey: task spans around ``Huey._execute``, with the real ``huey_consumer`` and real Redis.

* in-process, an ``immediate`` Huey (tasks run through the same ``execute``/``_execute`` as in a consumer):
  instrument/uninstrument restore what they wrapped exactly; a failing task's exception reaches Huey
  unchanged (its error signal, its error result) and its span says ERROR; under a current CONSUMER span no
  second span is made.
* ``opentelemetry-instrument huey_consumer app.huey -w 2 -k thread|process`` (examples/huey_leak, RedisHuey):
  exact span counts per task name, memory and messaging attributes, exemplars.
* ``otel-leak run`` of ``huey_consumer app.huey -w 2 -k process``: the leaking task is found, with its line;
  each worker process reports its own pid and memory. Without the leaking task: ``no_leak``.

The greenlet worker type (``-k greenlet``) needs gevent, which is not installed here: not tested.
With ``CI=true`` a missing Huey or redis-server fails the tests (never skips).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
import uuid

import pytest
from opentelemetry.trace import SpanKind, StatusCode

from otel_leak import names
from tests.conftest import ROOT, VENV_BIN, instrumented_env
from tests.frameworks import BIG_LEAK, OtelLeakRun, check_healthy_report, check_leak_report, check_task_spans, sdk_env

huey_pkg = pytest.importorskip("huey") if os.environ.get("CI") != "true" else __import__("huey")
from huey import RedisHuey, signals  # noqa: E402
from huey.api import Huey  # noqa: E402
from huey.consumer import Worker  # noqa: E402
from huey.exceptions import TaskException  # noqa: E402

from otel_leak.integrations import huey as integration  # noqa: E402

APP_DIR = ROOT / "examples" / "huey_leak"
QUEUE = "leak_demo"  # the app's RedisHuey name
LEAKY, HEAVY, LIGHT = "app.remember_user", "app.resize_image", "app.send_email"


def _db(redis_url: str, n: int) -> str:
    return redis_url.rsplit("/", 1)[0] + f"/{n}"


def _consumer(kind: str) -> list[str]:
    return ["huey_consumer", "app.huey", "-w", "2", "-k", kind]


@pytest.fixture
def instrumentor():
    inst = integration.HueyInstrumentor()
    if inst.is_instrumented_by_opentelemetry:  # left on by otel_leak.instrument() elsewhere
        inst.uninstrument()
    yield inst
    if inst.is_instrumented_by_opentelemetry:
        inst.uninstrument()


@pytest.fixture
def env(monkeypatch):
    with sdk_env(monkeypatch) as e:
        yield e


def test_instrument_and_uninstrument_are_symmetric(instrumentor, env):
    wrapped = {(o, n): o.__dict__[n] for o, n in ((Huey, "_execute"), (Huey, "_emit"), (Worker, "shutdown"))}
    instrumentor.instrument()
    assert all(o.__dict__[n] is not f for (o, n), f in wrapped.items())
    h = RedisHuey("unit", immediate=True)
    ping = h.task(name="ping")(lambda: 7)
    assert ping().get() == 7
    (span,) = env.exporter.get_finished_spans()
    a = span.attributes
    assert span.kind is SpanKind.CONSUMER and a[names.ATTR_TASK_NAME] == f"{__name__}.ping"
    assert a[names.ATTR_MESSAGING_SYSTEM] == "huey" and a[names.ATTR_MESSAGING_DESTINATION] == "unit"
    assert names.SPAN_RSS_DELTA in a  # measured by the processor
    instrumentor.uninstrument()
    assert all(o.__dict__[n] is f for (o, n), f in wrapped.items())
    assert ping().get() == 7 and len(env.exporter.get_finished_spans()) == 1  # as without otel-leak


def test_a_failing_task_reaches_huey_unchanged_and_its_span_says_error(instrumentor, env):
    instrumentor.instrument()
    h = RedisHuey("unit", immediate=True)
    err = ValueError("boom")
    seen = []
    h.signal(signals.SIGNAL_ERROR)(lambda sig, task, exc: seen.append(exc))

    @h.task()
    def fail():
        raise err

    result = fail()
    assert seen == [err] and seen[0] is err  # the very exception, as Huey reports it
    with pytest.raises(TaskException, match="boom"):
        result.get()
    (span,) = env.exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.events[0].name == "exception" and span.events[0].attributes["exception.type"] == "ValueError"


def test_no_second_span_under_a_current_consumer_span(instrumentor, env):
    instrumentor.instrument()
    h = RedisHuey("unit", immediate=True)
    ok = h.task(name="ok")(lambda: "ran")
    with env.tracer.start_as_current_span("user consumer", kind=SpanKind.CONSUMER):
        assert ok().get() == "ran"
    assert [s.name for s in env.exporter.get_finished_spans()] == ["user consumer"]


def _client(url: str) -> tuple[RedisHuey, dict]:
    """A producer knowing the app's task names only (as a separate service would): tasks registered under the
    same registry keys as the consumer's (``app.<function>``)."""
    h = RedisHuey(QUEUE, url=url)
    tasks = {}
    for key in (LEAKY, HEAVY, LIGHT):
        def f(*args):
            pass

        f.__module__, name = key.split(".")
        tasks[key] = h.task(name=name)(f)
    return h, tasks


def _send(tasks: dict, key: str, i: int = 0):
    return tasks[key](uuid.uuid4().hex) if key == LEAKY else tasks[key](f"u{i}@example.com") if key == LIGHT \
        else tasks[key]()


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_task_spans_under_opentelemetry_instrument(kind, redis_url, tmp_path):
    url = _db(redis_url, 5 if kind == "thread" else 6)
    out = tmp_path / "worker.out"
    with open(out, "w") as f:
        worker = subprocess.Popen([str(VENV_BIN / "opentelemetry-instrument"), str(VENV_BIN / "huey_consumer"),
                                   *_consumer(kind)[1:]], cwd=APP_DIR, stdout=f, stderr=subprocess.STDOUT,
                                  env=instrumented_env(HUEY_REDIS_URL=url, LEAK_BYTES=BIG_LEAK))
    client, tasks = _client(url)
    try:
        expected = {LEAKY: 7, HEAVY: 5, LIGHT: 9}
        results = [_send(tasks, key, i) for key, n in expected.items() for i in range(n)]
        pids = {r.get(blocking=True, timeout=90) for r in results}
        # No pause: process workers leave through os._exit, and their shutdown exports before that.
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0, out.read_text()[-3000:]
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)
    assert (pids == {worker.pid}) == (kind == "thread"), (pids, worker.pid)
    check_task_spans(out.read_text(), "huey", expected, queue=QUEUE)


def _load(run: OtelLeakRun, tasks: dict, keys: tuple[str, ...], seed: int, until, limit_s: float):
    """Batches of a varying mix at ~75 tasks/s, each awaited before the next, until ``until()`` or the limit;
    (tasks sent per name, pids that ran them)."""
    rng = random.Random(seed)
    sent = dict.fromkeys(keys, 0)
    sent[LIGHT] += 1  # the first task waits for the consumer to start; the clock starts after it
    pids = {_send(tasks, LIGHT).get(blocking=True, timeout=90)}
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit_s and not until():
        counts = {k: rng.randint(4, 16) for k in keys}
        order = [k for k, n in counts.items() for _ in range(n)]
        rng.shuffle(order)
        results = [_send(tasks, k, i) for i, k in enumerate(order)]
        pids.update(r.get(blocking=True, timeout=60) for r in results)
        for k, n in counts.items():
            sent[k] += n
        assert run.proc.poll() is None, run.log()[-3000:]
        time.sleep(max(0.0, t0 + sum(sent.values()) / 75.0 - time.monotonic()))
    return sent, pids


def test_leaking_task_found_in_process_workers(redis_url, tmp_path):
    url = _db(redis_url, 7)
    client, tasks = _client(url)
    run = OtelLeakRun(tmp_path, _consumer("process"), cwd=APP_DIR, env={"HUEY_REDIS_URL": url})
    try:
        sent, pids = _load(run, tasks, (LEAKY, HEAVY, LIGHT), 7, lambda: run.declared(LEAKY), 120)
        assert run.stop() == 0, run.log()[-3000:]
    finally:
        run.close()
    r = run.report()
    check_leak_report(r, LEAKY, APP_DIR / "app.py", "_USERS[key] =", run.log())
    assert r["tasks_observed"] == sum(sent.values())
    (main,) = [p for p in r["processes"] if p["role"] == "command"]
    assert main["tasks_observed"] == 0  # the consumer process only supervises
    by_pid = {p["pid"]: p for p in r["processes"]}
    assert len(pids) == 2 and main["pid"] not in pids, (pids, main["pid"])
    others = set(by_pid) - pids - {main["pid"]}
    assert len(others) == 1 and by_pid[others.pop()]["tasks_observed"] == 0  # the scheduler process
    for pid in pids:  # the forked worker processes, each measuring itself
        k = by_pid[pid]
        assert k["role"] == "child" and k["ppid"] == main["pid"] and k["tasks_observed"] > 0, k
        assert set(k["task_counts"]) <= set(sent) and k["final"], k  # final: written though it leaves by os._exit
        seen_from_outside = k["observed"]["rss_max_bytes"]  # otel-leak run's own reading of that pid
        assert 0.8 * seen_from_outside <= k["memory"]["rss_end_bytes"] <= 1.1 * seen_from_outside, k
    # Both processes run the leaker; one may have declared only just before the stop: its verdict is "leak"
    # while its per-task suspects still wait for its first tier-2 window (suspects.TIER2_WAIT).
    assert any(by_pid[p]["verdict"] == "leak" and by_pid[p]["suspects"] and by_pid[p]["suspects"][0]["task"] == LEAKY
               for p in pids)


def test_healthy_tasks_end_no_leak(redis_url, tmp_path):
    url = _db(redis_url, 8)
    client, tasks = _client(url)
    run = OtelLeakRun(tmp_path, _consumer("process"), cwd=APP_DIR, env={"HUEY_REDIS_URL": url})
    try:
        # The detector's verdict needs DETECTOR_MIN_WINDOWS (5) closed windows after the start-up one; at this
        # rate each worker process closes a window about every 1.2 s: 12 s of load is that twice over.
        _load(run, tasks, (HEAVY, LIGHT), 3, lambda: False, 12)
        assert run.stop() == 0, run.log()[-3000:]
    finally:
        run.close()
    check_healthy_report(run.report(), run.log())
