"""taskiq: one task span per task execution, current only in that message's asyncio task, on real Redis.

In-process tests run taskiq's real :class:`~taskiq.receiver.Receiver` over a real taskiq-redis
``RedisStreamBroker`` with the SDK's in-memory exporter; the others start the worker the way taskiq's docs
say (``taskiq worker app:broker --workers 2``: two forked worker processes under a managing parent) under
the real ``opentelemetry-instrument`` and under ``otel-leak run``, with the example app in
examples/taskiq_leak. A missing redis-server fails with ``CI=true`` (the ``redis_url`` fixture).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import threading
import time
import uuid

import pytest
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode

from otel_leak import names
from otel_leak.integrations.taskiq import TaskiqInstrumentor
from tests.conftest import ROOT, VENV_BIN, instrumented_env
from tests.frameworks import BIG_LEAK, OtelLeakRun, check_healthy_report, check_leak_report, check_task_spans, sdk_env

if os.environ.get("CI") != "true":
    pytest.importorskip("taskiq")
import taskiq.compat  # noqa: E402

if not hasattr(taskiq.compat, "model_dump"):  # as examples/taskiq_leak/app.py: taskiq-redis 1.0.x on taskiq 0.13
    taskiq.compat.model_dump = lambda instance: instance.model_dump(mode="json")
    taskiq.compat.model_validate = lambda model_class, data: model_class.model_validate(data)

from taskiq import TaskiqMessage  # noqa: E402
from taskiq.kicker import AsyncKicker  # noqa: E402
from taskiq.middlewares.opentelemetry_middleware import OpenTelemetryMiddleware  # noqa: E402
from taskiq.receiver import Receiver  # noqa: E402
from taskiq_redis import RedisAsyncResultBackend, RedisStreamBroker  # noqa: E402

APP_DIR = ROOT / "examples" / "taskiq_leak"
LEAKY, HEALTHY = "app:remember_user", ("app:resize_image", "app:send_email")
QUEUE = "taskiq"  # the example broker's stream (taskiq-redis's default)
DB = 12  # a Redis database of this file's own: the session's server is shared (huey: 5-8, rq: 7)


def _url(redis_url: str) -> str:
    return redis_url.rsplit("/", 1)[0] + f"/{DB}"


@pytest.fixture
def env(monkeypatch):
    with sdk_env(monkeypatch, TaskiqInstrumentor()) as e:
        yield e


def _broker(url: str, queue: str | None = None) -> RedisStreamBroker:
    queue = queue or f"test:{uuid.uuid4().hex}"
    return RedisStreamBroker(url, queue_name=queue, consumer_group_name=queue, xread_block=200).with_result_backend(
        RedisAsyncResultBackend(url, result_ex_time=120))


def _work(redis_url, tasks: dict, sends, middlewares=(), **receiver_kw):
    """Register ``tasks`` (name -> function) on a fresh stream, run taskiq's Receiver over it in this event
    loop, send (name, args) pairs and wait for their results; (results, receiver)."""

    async def main():
        broker = _broker(_url(redis_url))
        if middlewares:
            broker.add_middlewares(*middlewares)
        for name, fn in tasks.items():
            broker.register_task(fn, task_name=name)
        await broker.startup()  # declares the consumer group before anything is sent
        receiver = Receiver(broker, run_startup=False, **receiver_kw)
        stop = asyncio.Event()
        listening = asyncio.create_task(receiver.listen(stop))
        sent = [await AsyncKicker(name, broker, {}).kiq(*args) for name, args in sends]
        results = [await t.wait_result(timeout=30, check_interval=0.02) for t in sent]
        stop.set()
        await asyncio.wait_for(listening, 30)
        await broker.shutdown()
        return results, receiver

    return asyncio.run(main())


class Boom(Exception):
    pass


_ERR = Boom("no")


async def _boom():
    raise _ERR


async def _double(x: int) -> int:
    return 2 * x


def test_instrument_uninstrument_is_symmetric(env):
    inst = TaskiqInstrumentor()
    wrapped = Receiver.__dict__["run_task"], Receiver.__dict__["listen"]
    inst.uninstrument()
    try:
        for name, w in zip(("run_task", "listen"), wrapped):
            original = Receiver.__dict__[name]
            assert original is not w and not hasattr(original, "__wrapped__"), name  # taskiq's own again
            assert original.__code__.co_filename.endswith("taskiq/receiver/receiver.py")
            assert w.__wrapped__ is original
    finally:
        inst.instrument()  # the fixture uninstruments
    assert Receiver.__dict__["run_task"] is not original


def test_interleaved_tasks_each_see_only_their_own_span(env, redis_url):
    seen, running, peak, together = {}, [0], [0], asyncio.Event()

    async def interleave(i: int, key: str) -> int:
        before = trace.get_current_span().get_span_context()
        running[0] += 1
        peak[0] = max(peak[0], running[0])
        if running[0] >= 4:
            together.set()
        await asyncio.wait_for(together.wait(), 20)  # the first four wait for each other: they interleave here
        await asyncio.sleep(0.01)  # and every one lets the others run
        after = trace.get_current_span().get_span_context()
        running[0] -= 1
        seen[key] = (before.span_id, after.span_id)
        return i

    def blocking(key: str) -> int:  # a sync task: taskiq runs it in its thread pool
        seen[key] = (trace.get_current_span().get_span_context().span_id, threading.get_ident())
        return 0

    sends = [("interleave", (i, f"k{i}")) for i in range(24)] + [("blocking", ("sync",))]
    results, _ = _work(redis_url, {"interleave": interleave, "blocking": blocking}, sends, max_async_tasks=8)
    assert [r.return_value for r in results] == [*range(24), 0] and not any(r.is_err for r in results)
    assert peak[0] >= 4  # the tasks really overlapped
    spans = env.exporter.get_finished_spans()
    by_id = {s.attributes[names.ATTR_MESSAGING_MESSAGE_ID]: s for s in spans}
    assert len(spans) == 25 and len(by_id) == 25
    assert sorted(s.name for s in spans) == ["process blocking"] + ["process interleave"] * 24
    ids = {s.context.span_id for s in spans}
    for s in spans:
        a = s.attributes
        assert s.kind is SpanKind.CONSUMER and a[names.ATTR_MESSAGING_SYSTEM] == "taskiq"
        assert a[names.ATTR_MESSAGING_DESTINATION].startswith("test:") and names.SPAN_RSS_DELTA in a
        assert s.parent is None or s.parent.span_id not in ids  # no task is the parent of another
    interleaved = sorted(s.context.span_id for s in spans if s.name == "process interleave")
    assert sorted(v[0] for k, v in seen.items() if k != "sync") == interleaved  # each its own, none shared
    assert all(before == after for k, (before, after) in seen.items() if k != "sync")
    sync_span = next(s for s in spans if s.name == "process blocking")
    assert seen["sync"][0] == sync_span.context.span_id and seen["sync"][1] != threading.get_ident()
    assert len({s.context.trace_id for s in spans}) == 25


def test_a_failing_task_keeps_its_exception_and_its_span_says_error(env, redis_url):
    results, receiver = _work(redis_url, {"boom": _boom, "double": _double}, [("boom", ()), ("double", (4,))])
    assert results[0].is_err and isinstance(results[0].error, Boom) and results[0].error.args == ("no",)
    assert not results[1].is_err and results[1].return_value == 8
    spans = {s.name: s for s in env.exporter.get_finished_spans()}
    assert spans["process boom"].status.status_code is StatusCode.ERROR
    assert spans["process boom"].events[0].name == "exception"
    assert spans["process double"].status.status_code is StatusCode.UNSET
    # taskiq's run_task hands the very same exception object on, as without otel-leak
    msg = TaskiqMessage(task_id="t-1", task_name="boom", labels={}, args=[], kwargs={})
    result = asyncio.run(receiver.run_task(target=_boom, message=msg))
    assert result.is_err and result.error is _ERR


def test_taskiqs_own_instrumentation_span_is_the_task_span(env, redis_url):
    mw = OpenTelemetryMiddleware(tracer_provider=env.tp, meter_provider=env.mp)
    results, _ = _work(redis_url, {"double": _double}, [("double", (i,)) for i in range(3)], middlewares=[mw])
    assert [r.return_value for r in results] == [0, 2, 4]
    spans = [s for s in env.exporter.get_finished_spans() if s.kind is not SpanKind.PRODUCER]  # its send spans
    assert sorted(s.name for s in spans) == ["execute/double"] * 3  # no second span
    for s in spans:
        a = s.attributes
        assert s.kind is SpanKind.CONSUMER and a[names.ATTR_TASK_NAME] == "double"  # identity added
        assert a[names.ATTR_MESSAGING_SYSTEM] == "taskiq" and a[names.ATTR_MESSAGING_DESTINATION].startswith("test:")
        assert names.SPAN_RSS_DELTA in a  # measured as the task span


def test_the_trace_context_a_sender_put_in_the_labels_is_the_parent(env, redis_url):
    trace_id, span_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]

    async def main():
        broker = _broker(_url(redis_url))
        broker.register_task(_double, task_name="double")
        await broker.startup()
        receiver = Receiver(broker, run_startup=False, max_async_tasks=4)
        stop = asyncio.Event()
        listening = asyncio.create_task(receiver.listen(stop))
        t = await AsyncKicker("double", broker, {"traceparent": f"00-{trace_id}-{span_id}-01"}).kiq(5)
        r = await t.wait_result(timeout=30, check_interval=0.02)
        stop.set()
        await asyncio.wait_for(listening, 30)
        await broker.shutdown()
        return r

    assert asyncio.run(main()).return_value == 10
    (span,) = env.exporter.get_finished_spans()
    assert span.parent.is_remote and span.parent.span_id == int(span_id, 16)
    assert span.context.trace_id == int(trace_id, 16) and names.SPAN_RSS_DELTA in span.attributes


def test_a_worker_process_leaves_even_when_its_export_never_returns(monkeypatch):
    """What a worker process does as its Receiver.listen returns, in a forked process whose export hangs
    (as on an SDK lock a parent thread held at the fork): the process still exits, after a bounded wait."""
    import multiprocessing

    from otel_leak.integrations import taskiq as integration

    monkeypatch.setattr(integration, "flush_providers", lambda *a: threading.Event().wait())
    monkeypatch.setattr(integration, "EXIT_WAIT_S", 0.5)
    p = multiprocessing.get_context("fork").Process(target=integration._flush_if_child)
    p.start()
    p.join(30)
    assert p.exitcode == 0


# ---------------------------------------------------------------- the real CLI worker


class Client:
    """Sends the example app's tasks by name (the consumer group is declared before anything is sent)."""

    def __init__(self, url: str) -> None:
        self.broker = RedisStreamBroker(url).with_result_backend(RedisAsyncResultBackend(url))  # as the app's

    async def __aenter__(self):
        await self.broker.startup()
        return self

    async def __aexit__(self, *exc):
        await self.broker.shutdown()

    async def send(self, order):
        return [await AsyncKicker(n, self.broker, {}).kiq(uuid.uuid4().hex if n == LEAKY else "someone@example.com")
                if n != HEALTHY[0] else await AsyncKicker(n, self.broker, {}).kiq() for n in order]

    async def pids(self, sent, timeout=60):
        out = set()
        for t in sent:
            r = await t.wait_result(timeout=timeout, check_interval=0.02)
            assert not r.is_err, r.error
            out.add(r.return_value)
        return out


def _flush(url: str) -> None:
    async def main():
        from redis.asyncio import Redis

        async with Redis.from_url(url) as r:
            await r.flushdb()

    asyncio.run(main())


def test_opentelemetry_instrument_worker_processes_export_one_measured_span_per_task(redis_url, tmp_path):
    url = _url(redis_url)
    _flush(url)
    expected = {LEAKY: 7, HEALTHY[0]: 5, HEALTHY[1]: 4}
    out = tmp_path / "worker.out"
    with open(out, "w") as f:
        p = subprocess.Popen([str(VENV_BIN / "opentelemetry-instrument"), str(VENV_BIN / "taskiq"), "worker",
                              "app:broker", "--workers", "2"], cwd=APP_DIR, env=instrumented_env(REDIS_URL=url, LEAK_BYTES=BIG_LEAK),
                             stdout=f, stderr=subprocess.STDOUT)

    async def main():
        async with Client(url) as c:
            pids = await c.pids(await c.send([HEALTHY[1]]), timeout=90)  # the worker is up
            order = [n for n, k in expected.items() for _ in range(k)]
            random.Random(3).shuffle(order)
            return pids | await c.pids(await c.send(order))

    try:
        pids = asyncio.run(main())
        time.sleep(1.0)
        p.send_signal(signal.SIGTERM)  # the parent stops its worker processes, which flush as they leave
        rc = p.wait(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)
    text = out.read_text()
    assert rc == 0, text[-3000:]
    assert p.pid not in pids  # the tasks ran in the worker processes, not in the parent
    expected[HEALTHY[1]] += 1  # the first one
    check_task_spans(text, "taskiq", expected, queue=QUEUE)


def _drive(run: OtelLeakRun, url: str, kinds: tuple[str, ...], seed: int, until, limit_s: float, rate: float):
    """Keep a varying mix of ``kinds`` flowing at ~``rate`` tasks/s until ``until()`` or ``limit_s``;
    (tasks sent, worker pids the tasks report, seconds of load)."""

    async def main():
        async with Client(url) as c:
            pids = await c.pids(await c.send([HEALTHY[1]]), timeout=90)
            rng, sent, t0 = random.Random(seed), 1, time.monotonic()
            while time.monotonic() - t0 < limit_s and run.proc.poll() is None:
                order = [n for n in kinds for _ in range(rng.randint(4, 16))]
                rng.shuffle(order)
                pids |= await c.pids(await c.send(order))
                sent += len(order)
                if until():
                    break
                await asyncio.sleep(max(0.0, t0 + sent / rate - time.monotonic()))
            return sent, pids, time.monotonic() - t0

    return asyncio.run(main())


def _worker_run(tmp_path, url, workers: int):
    _flush(url)
    return OtelLeakRun(tmp_path, [str(VENV_BIN / "taskiq"), "worker", "app:broker", "--workers", str(workers)],
                       cwd=APP_DIR, env={"REDIS_URL": url})


def _check_processes(r: dict, pids: set[int], sent: int, workers: int) -> list[dict]:
    """The parent (ran no task) and its worker processes, each reporting itself; the workers' entries."""
    by_pid = {p["pid"]: p for p in r["processes"]}
    (parent,) = [p for p in r["processes"] if p["role"] == "command"]
    assert parent["tasks_observed"] == 0 and parent["pid"] not in pids
    children = [p for p in r["processes"] if p["pid"] != parent["pid"]]
    assert set(by_pid) == pids | {parent["pid"]} and len(children) == workers, (sorted(by_pid), sorted(pids))
    for c in children:
        assert c["role"] == "child" and c["ppid"] == parent["pid"] and c["tasks_observed"] > 0, c
    assert sum(c["tasks_observed"] for c in children) >= sent
    return children


def test_otel_leak_run_names_the_leaking_task_among_interleaved_ones(redis_url, tmp_path):
    url = _url(redis_url)
    run = _worker_run(tmp_path, url, 1)
    try:
        sent, pids, load_s = _drive(run, url, (LEAKY, *HEALTHY), 7, lambda: run.declared(LEAKY), 120, 90)
        rc = run.stop()
    finally:
        run.close()
    log = run.log()
    assert rc == 0, log[-3000:]
    r = run.report()
    check_leak_report(r, LEAKY, APP_DIR / "app.py", "_USERS[key] = os.urandom", log)
    assert r["suspects"][0]["retained_bytes_per_call"] > 16 * 1024, r["suspects"]
    (child,) = _check_processes(r, pids, sent, 1)
    assert child["verdict"] == "leak" and child["suspects"][0]["task"] == LEAKY, (load_s, child)


def test_otel_leak_run_healthy_workers_end_no_leak(redis_url, tmp_path):
    url = _url(redis_url)
    run = _worker_run(tmp_path, url, 2)
    cleared: list[float] = []

    def until() -> bool:
        # a process says no_leak once it has DETECTOR_MIN_WINDOWS (5) windows after its start-up one
        # (windows of >= 3 one-second samples and >= 12 tasks: ~20 s); wait for both worker processes,
        # then ~4 s more of the same load
        files = [d for d in run.process_files().values() if d.get("tasks_observed")]
        if not cleared and len(files) == 2 and all(d.get("verdict") == "no_leak" for d in files):
            cleared.append(time.monotonic())
        return bool(cleared) and time.monotonic() - cleared[0] > 4

    try:
        sent, pids, load_s = _drive(run, url, HEALTHY, 13, until, 75, 75)
        rc = run.stop()
    finally:
        run.close()
    log = run.log()
    assert rc == 0, log[-3000:]
    assert cleared, (load_s, {p: (d["verdict"], d["tasks_observed"]) for p, d in run.process_files().items()})
    r = run.report()
    check_healthy_report(r, log)
    _check_processes(r, pids, sent, 2)
