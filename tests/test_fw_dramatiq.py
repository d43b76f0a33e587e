"""Dramatiq: task spans from otel-leak's broker middleware, with a real ``dramatiq.Worker`` and real Redis.

* in-process: a real ``Worker`` on Dramatiq's ``StubBroker``: instrument/uninstrument restore ``Worker.__init__``
  and the broker's middleware exactly; a failing actor's exception reaches Dramatiq unchanged and its span
  says ERROR; under a user's tracing middleware that made a CONSUMER span current, no second span is made;
  an async actor (AsyncIO middleware) runs with its span current on Dramatiq's event loop thread.
* ``opentelemetry-instrument dramatiq app --processes 2 --threads 2`` (examples/dramatiq_leak, Redis broker):
  exact span counts per actor, memory and messaging attributes, exemplars.
* ``otel-leak run`` of the same command: the leaking actor is found, with its line; each forked worker
  process reports its own pid and memory. Without the leaking actor: ``no_leak``.

With ``CI=true`` a missing Dramatiq or redis-server fails the tests (never skips).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
import uuid

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode

from otel_leak import names
from tests.conftest import ROOT, VENV_BIN, instrumented_env
from tests.frameworks import BIG_LEAK, OtelLeakRun, check_healthy_report, check_leak_report, check_task_spans, sdk_env

dramatiq = pytest.importorskip("dramatiq") if os.environ.get("CI") != "true" else __import__("dramatiq")
from dramatiq.brokers.redis import RedisBroker  # noqa: E402
from dramatiq.brokers.stub import StubBroker  # noqa: E402
from dramatiq.middleware import Middleware  # noqa: E402

from otel_leak.integrations import dramatiq as integration  # noqa: E402

APP_DIR = ROOT / "examples" / "dramatiq_leak"
LEAKY, HEAVY, LIGHT = "remember_user", "resize_image", "send_email"
COMMAND = ["dramatiq", "app", "--processes", "2", "--threads", "2"]


def _db(redis_url: str, n: int) -> str:
    return redis_url.rsplit("/", 1)[0] + f"/{n}"


@pytest.fixture
def instrumentor():
    inst = integration.DramatiqInstrumentor()
    if inst.is_instrumented_by_opentelemetry:  # left on by otel_leak.instrument() elsewhere
        inst.uninstrument()
    yield inst
    if inst.is_instrumented_by_opentelemetry:
        inst.uninstrument()


@pytest.fixture
def env(monkeypatch):
    with sdk_env(monkeypatch) as e:
        yield e


def _run(broker: StubBroker, send) -> None:
    worker = dramatiq.Worker(broker, worker_timeout=50, worker_threads=1)
    worker.start()
    try:
        send()
        broker.join("default", timeout=30_000)
    finally:
        worker.stop()


def test_instrument_and_uninstrument_are_symmetric(instrumentor, env):
    original = dramatiq.Worker.__dict__["__init__"]
    broker = StubBroker()
    instrumentor.instrument()
    assert dramatiq.Worker.__dict__["__init__"] is not original
    ran = []
    actor = dramatiq.actor(lambda: ran.append(1), actor_name="ping", broker=broker)
    _run(broker, actor.send)
    assert ran == [1] and [s.name for s in env.exporter.get_finished_spans()] == ["process ping"]
    (span,) = env.exporter.get_finished_spans()
    assert span.kind is SpanKind.CONSUMER and span.attributes[names.ATTR_MESSAGING_DESTINATION] == "default"
    assert names.SPAN_RSS_DELTA in span.attributes  # measured by the processor
    dramatiq.Worker(broker)  # a second worker on the same broker: still one otel-leak middleware
    ours = integration._middleware_class()
    assert sum(isinstance(m, ours) for m in broker.middleware) == 1
    others = [m for m in broker.middleware if not isinstance(m, ours)]
    instrumentor.uninstrument()
    assert dramatiq.Worker.__dict__["__init__"] is original
    assert broker.middleware == others  # the rest untouched, in order
    _run(broker, actor.send)  # runs as without otel-leak: no span
    assert ran == [1, 1] and len(env.exporter.get_finished_spans()) == 1


def test_a_failing_actor_raises_unchanged_and_its_span_says_error(instrumentor, env):
    instrumentor.instrument()
    broker = StubBroker()
    raised = []

    def fail():
        raised.append(ValueError("boom"))
        raise raised[-1]

    actor = dramatiq.actor(fail, actor_name="fail", max_retries=0, broker=broker)
    worker = dramatiq.Worker(broker, worker_timeout=50, worker_threads=1)
    worker.start()
    try:
        actor.send()
        with pytest.raises(ValueError) as info:  # the StubBroker re-raises the dead-lettered message's error
            broker.join("default", timeout=30_000, fail_fast=True)
    finally:
        worker.stop()
    assert info.value is raised[0]
    (span,) = env.exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR and span.events[0].name == "exception"
    assert span.attributes[names.ATTR_TASK_NAME] == "fail"


def test_no_second_span_under_a_tracing_middleware_that_made_one(instrumentor, env):
    class UserTracing(Middleware):  # a user's own tracing middleware, on the broker before the worker starts
        def before_process_message(self, broker, message):
            span = env.tracer.start_span("user consumer", kind=SpanKind.CONSUMER)
            vars(message)["_user"] = (span, otel_context.attach(trace.set_span_in_context(span)))

        def after_process_message(self, broker, message, *, result=None, exception=None):
            span, token = vars(message).pop("_user")
            otel_context.detach(token)
            span.end()

    instrumentor.instrument()
    broker = StubBroker(middleware=[UserTracing()])
    seen = []
    actor = dramatiq.actor(lambda: seen.append(trace.get_current_span().name), actor_name="traced", broker=broker)
    _run(broker, actor.send)
    assert seen == ["user consumer"]
    assert [s.name for s in env.exporter.get_finished_spans()] == ["user consumer"]


def test_an_async_actor_runs_inside_its_span(instrumentor, env):
    from dramatiq.middleware.asyncio import AsyncIO

    instrumentor.instrument()
    broker = StubBroker(middleware=[AsyncIO()])  # its event loop thread starts and stops with the worker
    seen = []

    async def coro():
        seen.append(trace.get_current_span().name)

    actor = dramatiq.actor(coro, actor_name="async_one", broker=broker)
    _run(broker, actor.send)
    assert seen == ["process async_one"]  # the span is current on Dramatiq's event loop thread too
    assert [s.name for s in env.exporter.get_finished_spans()] == ["process async_one"]


def _send(client: RedisBroker, actor: str, n: int = 1) -> None:
    for i in range(n):
        args = (uuid.uuid4().hex,) if actor == LEAKY else (f"u{i}@example.com",) if actor == LIGHT else ()
        client.enqueue(dramatiq.Message("default", actor, args, {}, {}))


def test_task_spans_under_opentelemetry_instrument(redis_url, tmp_path):
    url = _db(redis_url, 1)
    out = tmp_path / "worker.out"
    with open(out, "w") as f:
        worker = subprocess.Popen([str(VENV_BIN / "opentelemetry-instrument"), str(VENV_BIN / "dramatiq"),
                                   *COMMAND[1:]], cwd=APP_DIR, stdout=f, stderr=subprocess.STDOUT,
                                  env=instrumented_env(DRAMATIQ_REDIS_URL=url, LEAK_BYTES=BIG_LEAK))
    client = RedisBroker(url=url)
    try:
        expected = {LEAKY: 7, HEAVY: 5, LIGHT: 9}
        for actor, n in expected.items():
            _send(client, actor, n)
        client.join("default", timeout=90_000)  # every message processed and acknowledged
        # No pause: the worker processes leave through os._exit, and the middleware exports before that.
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0, out.read_text()[-3000:]
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)
        client.close()
    check_task_spans(out.read_text(), "dramatiq", expected, queue="default")


def _load(run: OtelLeakRun, client: RedisBroker, actors: tuple[str, ...], seed: int, until, limit_s: float) -> dict:
    """Batches of a varying mix at ~75 messages/s, each drained before the next, until ``until()`` or the limit."""
    rng = random.Random(seed)
    sent = dict.fromkeys(actors, 0)
    sent[LIGHT] += 1  # the first message waits for the worker processes to start; the clock starts after it
    _send(client, LIGHT)
    client.join("default", timeout=90_000)
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit_s and not until():
        counts = {a: rng.randint(4, 16) for a in actors}
        order = [a for a, n in counts.items() for _ in range(n)]
        rng.shuffle(order)
        for a in order:
            _send(client, a)
        client.join("default", timeout=60_000)
        for a, n in counts.items():
            sent[a] += n
        assert run.proc.poll() is None, run.log()[-3000:]
        time.sleep(max(0.0, t0 + sum(sent.values()) / 75.0 - time.monotonic()))
    return sent


def test_leaking_actor_found_in_forked_worker_processes(redis_url, tmp_path):
    url = _db(redis_url, 2)
    client = RedisBroker(url=url)
    run = OtelLeakRun(tmp_path, COMMAND, cwd=APP_DIR, env={"DRAMATIQ_REDIS_URL": url})
    try:
        sent = _load(run, client, (LEAKY, HEAVY, LIGHT), 7, lambda: run.declared(LEAKY), 120)
        assert run.stop() == 0, run.log()[-3000:]
    finally:
        run.close()
        client.close()
    r = run.report()
    check_leak_report(r, LEAKY, APP_DIR / "app.py", "_USERS[key] =", run.log())
    assert r["tasks_observed"] == sum(sent.values())
    (main,) = [p for p in r["processes"] if p["role"] == "command"]
    assert main["tasks_observed"] == 0  # the dramatiq main process only supervises
    kids = [p for p in r["processes"] if p["role"] == "child"]
    assert len(kids) == 2 and len({k["pid"] for k in kids} | {main["pid"]}) == 3, r["processes"]
    for k in kids:  # forked worker processes, each measuring itself
        assert k["ppid"] == main["pid"] and k["tasks_observed"] > 0 and set(k["task_counts"]) <= set(sent)
        assert k["final"], k  # written at the worker's shutdown, though it leaves through os._exit
        seen_from_outside = k["observed"]["rss_max_bytes"]  # otel-leak run's own reading of that pid
        assert 0.8 * seen_from_outside <= k["memory"]["rss_end_bytes"] <= 1.1 * seen_from_outside, k
    # Both processes run the leaker; one may have declared only just before the stop: its verdict is "leak"
    # while its per-task suspects still wait for its first tier-2 window (suspects.TIER2_WAIT).
    assert any(k["verdict"] == "leak" and k["suspects"] and k["suspects"][0]["task"] == LEAKY for k in kids)


def test_healthy_actors_end_no_leak(redis_url, tmp_path):
    url = _db(redis_url, 3)
    client = RedisBroker(url=url)
    run = OtelLeakRun(tmp_path, COMMAND, cwd=APP_DIR, env={"DRAMATIQ_REDIS_URL": url})
    try:
        # The detector's verdict needs DETECTOR_MIN_WINDOWS (5) closed windows after the start-up one; at this
        # rate each worker process closes a window about every 1.2 s (measured: 12-14 windows in 18 s): 12 s of
        # load is that twice over.
        _load(run, client, (HEAVY, LIGHT), 3, lambda: False, 12)
        assert run.stop() == 0, run.log()[-3000:]
    finally:
        run.close()
        client.close()
    check_healthy_report(run.report(), run.log())
