"""arq: one task span per job, current only in the job's own asyncio task, under real workers and real Redis.

In-process tests build a real :class:`arq.worker.Worker` (burst mode) on a real Redis with the SDK's
in-memory exporter; the others start the worker the way arq's docs say (``arq app.WorkerSettings``) under
the real ``opentelemetry-instrument`` and under ``otel-leak run``, with the example app in
examples/arq_leak. A missing redis-server fails with ``CI=true`` (the ``redis_url`` fixture).
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import time
import uuid

import pytest
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode

from otel_leak import names
from otel_leak.integrations.arq import ArqInstrumentor
from tests.conftest import ROOT, VENV_BIN, instrumented_env
from tests.frameworks import BIG_LEAK, OtelLeakRun, check_healthy_report, check_leak_report, check_task_spans, sdk_env

if os.environ.get("CI") != "true":
    pytest.importorskip("arq")
from arq import create_pool  # noqa: E402
from arq.connections import RedisSettings  # noqa: E402
from arq.worker import Worker, func  # noqa: E402

APP_DIR = ROOT / "examples" / "arq_leak"
LEAKY, HEALTHY = "remember_user", ("resize_image", "send_email")
QUEUE = "arq:queue"  # the example app's (arq's default)
DB = 11  # a Redis database of this file's own: the session's server is shared (huey: 5-8, rq: 7)


def _url(redis_url: str) -> str:
    return redis_url.rsplit("/", 1)[0] + f"/{DB}"


@pytest.fixture
def env(monkeypatch):
    with sdk_env(monkeypatch, ArqInstrumentor()) as e:
        yield e


def _burst(redis_url, functions, enqueue, **settings):
    """Enqueue (name, args) pairs on a fresh queue, run a real burst worker over them; (worker, jobs)."""

    async def main():
        rs = RedisSettings.from_dsn(_url(redis_url))
        queue = f"test:{uuid.uuid4().hex}"
        pool = await create_pool(rs, default_queue_name=queue)
        jobs = [await pool.enqueue_job(name, *args) for name, args in enqueue]
        worker = Worker(functions=functions, redis_settings=rs, queue_name=queue, burst=True,
                        handle_signals=False, poll_delay=0.01, **settings)
        await asyncio.wait_for(worker.async_run(), 60)
        await worker.close()
        results = []
        for j in jobs:
            try:
                results.append(await j.result(timeout=10))
            except Exception as exc:
                results.append(exc)
        await pool.aclose()
        return worker, results

    return asyncio.run(main())


async def _double(ctx, x):
    return 2 * x


class Boom(Exception):
    pass


_ERR = Boom("no")


async def _boom(ctx):
    raise _ERR


def test_instrument_uninstrument_is_symmetric(env):
    inst = ArqInstrumentor()
    wrapped_init = Worker.__dict__["__init__"]
    user_fn = func(_double, name="double")

    async def build():
        return Worker(functions=[user_fn], queue_name="q", handle_signals=False)

    w = asyncio.run(build())
    assert w.functions["double"] is not user_fn and user_fn.coroutine is _double  # a copy; the user's untouched
    assert w.functions["double"].coroutine is not _double and w.functions["double"].timeout_s == user_fn.timeout_s
    inst.uninstrument()
    try:
        init = Worker.__dict__["__init__"]
        assert init is not wrapped_init and not hasattr(init, "__wrapped__")  # arq's own again
        assert init.__code__.co_filename.endswith("arq/worker.py")
        assert w.functions["double"] is user_fn  # the worker built meanwhile gets its entry back
        assert asyncio.run(build()).functions["double"] is user_fn
    finally:
        inst.instrument()  # the fixture uninstruments
    assert Worker.__dict__["__init__"] is not init


def test_interleaved_jobs_each_see_only_their_own_span(env, redis_url):
    seen, running, peak, together = {}, [0], [0], asyncio.Event()

    async def interleave(ctx, i):
        before = trace.get_current_span().get_span_context()
        running[0] += 1
        peak[0] = max(peak[0], running[0])
        if running[0] >= 4:
            together.set()
        await asyncio.wait_for(together.wait(), 20)  # the first four wait for each other: they interleave here
        await asyncio.sleep(0.01)  # and every one lets the others run
        after = trace.get_current_span().get_span_context()
        running[0] -= 1
        seen[ctx["job_id"]] = (before.span_id, after.span_id)
        return i

    worker, results = _burst(redis_url, [func(interleave, name="interleave")],
                             [("interleave", (i,)) for i in range(24)], max_jobs=8)
    assert results == list(range(24)) and worker.jobs_complete == 24
    assert peak[0] >= 4  # the jobs really overlapped
    spans = env.exporter.get_finished_spans()
    assert len(spans) == 24 and {s.name for s in spans} == {"process interleave"}
    ids = {s.context.span_id for s in spans}
    for s in spans:
        a = s.attributes
        assert s.kind is SpanKind.CONSUMER and a[names.ATTR_TASK_NAME] == "interleave"
        assert a[names.ATTR_MESSAGING_SYSTEM] == "arq" and a[names.ATTR_MESSAGING_DESTINATION].startswith("test:")
        assert seen[a[names.ATTR_MESSAGING_MESSAGE_ID]] == (s.context.span_id, s.context.span_id)
        assert s.parent is None or s.parent.span_id not in ids  # no job is the parent of another
        assert names.SPAN_RSS_DELTA in a
    assert len({s.context.trace_id for s in spans}) == 24


def test_a_failing_job_raises_the_same_exception_and_its_span_says_error(env, redis_url):
    worker, results = _burst(redis_url, [_boom, _double], [("_boom", ()), ("_double", (4,))])
    assert worker.jobs_failed == 1 and worker.jobs_complete == 1
    assert isinstance(results[0], Boom) and results[0].args == ("no",) and results[1] == 8  # as arq records it
    spans = {s.name: s for s in env.exporter.get_finished_spans()}
    assert spans["process _boom"].status.status_code is StatusCode.ERROR
    assert spans["process _boom"].events[0].name == "exception"
    assert spans["process _double"].status.status_code is StatusCode.UNSET
    # the wrapped coroutine lets the very same object through
    with pytest.raises(Boom) as info:
        asyncio.run(worker.functions["_boom"].coroutine({"job_id": "x"}))
    assert info.value is _ERR


def test_no_second_span_when_a_consumer_span_is_current(env):
    async def build_and_call():
        w = Worker(functions=[_double], queue_name="q", handle_signals=False)
        with env.tracer.start_as_current_span("another instrumentation", kind=SpanKind.CONSUMER):
            return await w.functions["_double"].coroutine({"job_id": "j"}, 21)

    assert asyncio.run(build_and_call()) == 42
    assert [s.name for s in env.exporter.get_finished_spans()] == ["another instrumentation"]


async def _enqueue(pool, order):
    return [await pool.enqueue_job(n, uuid.uuid4().hex) if n == LEAKY else
            await pool.enqueue_job(n, "someone@example.com") if n == HEALTHY[1] else
            await pool.enqueue_job(n) for n in order]


def test_opentelemetry_instrument_burst_worker_exports_one_measured_span_per_job(redis_url, tmp_path):
    url = _url(redis_url)
    expected = {LEAKY: 7, HEALTHY[0]: 5, HEALTHY[1]: 4}

    async def fill():
        pool = await create_pool(RedisSettings.from_dsn(url))
        await pool.flushdb()
        await _enqueue(pool, [n for n, k in expected.items() for _ in range(k)])
        await pool.aclose()

    asyncio.run(fill())
    out = tmp_path / "worker.out"
    with open(out, "w") as f:
        p = subprocess.run([str(VENV_BIN / "opentelemetry-instrument"), str(VENV_BIN / "arq"), "app.WorkerSettings",
                            "--burst"], cwd=APP_DIR, env=instrumented_env(REDIS_URL=url, LEAK_BYTES=BIG_LEAK), stdout=f,
                           stderr=subprocess.STDOUT, timeout=120)
    text = out.read_text()
    assert p.returncode == 0, text[-3000:]
    check_task_spans(text, "arq", expected, queue=QUEUE)


def _drive(run: OtelLeakRun, url: str, kinds: tuple[str, ...], seed: int, until, limit_s: float):
    """Keep a varying mix of ``kinds`` flowing at ~75 jobs/s until ``until()`` or ``limit_s``;
    (jobs sent, worker pids the jobs report, seconds of load)."""

    async def main():
        pool = await create_pool(RedisSettings.from_dsn(url))
        pids = {await (await pool.enqueue_job(HEALTHY[1], "warmup@example.com")).result(timeout=90, poll_delay=0.05)}
        rng, sent, t0 = random.Random(seed), 1, time.monotonic()
        while time.monotonic() - t0 < limit_s and run.proc.poll() is None:
            order = [n for n in kinds for _ in range(rng.randint(4, 16))]
            rng.shuffle(order)
            jobs = await _enqueue(pool, order)
            for j in jobs:
                pids.add(await j.result(timeout=60, poll_delay=0.02))
            sent += len(jobs)
            if until():
                break
            await asyncio.sleep(max(0.0, t0 + sent / 75.0 - time.monotonic()))
        await pool.aclose()
        return sent, pids, time.monotonic() - t0

    return asyncio.run(main())


def _flush(url: str) -> None:
    async def main():
        pool = await create_pool(RedisSettings.from_dsn(url))
        await pool.flushdb()
        await pool.aclose()

    asyncio.run(main())


def test_otel_leak_run_names_the_leaking_job_among_interleaved_ones(redis_url, tmp_path):
    url = _url(redis_url)
    _flush(url)
    run = OtelLeakRun(tmp_path, [str(VENV_BIN / "arq"), "app.WorkerSettings"], cwd=APP_DIR, env={"REDIS_URL": url})
    try:
        sent, pids, load_s = _drive(run, url, (LEAKY, *HEALTHY), 7, lambda: run.declared(LEAKY), 120)
        rc = run.stop()
    finally:
        run.close()
    log = run.log()
    assert rc == 0, log[-3000:]
    r = run.report()
    check_leak_report(r, LEAKY, APP_DIR / "app.py", "_USERS[key] = os.urandom", log)
    assert r["suspects"][0]["retained_bytes_per_call"] > 16 * 1024, r["suspects"]
    # one process (arq runs every job in the worker's event loop): the one the jobs ran in, which declared it
    (proc,) = r["processes"]
    assert pids == {proc["pid"]} and proc["role"] == "command", (pids, proc["pid"], proc["role"])
    assert proc["verdict"] == "leak" and proc["tasks_observed"] >= sent, (proc["tasks_observed"], sent, load_s)
    assert set(proc["task_counts"]) == {LEAKY, *HEALTHY}


def test_otel_leak_run_healthy_worker_ends_no_leak(redis_url, tmp_path):
    url = _url(redis_url)
    _flush(url)
    run = OtelLeakRun(tmp_path, [str(VENV_BIN / "arq"), "app.WorkerSettings"], cwd=APP_DIR, env={"REDIS_URL": url})
    cleared: list[float] = []

    def until() -> bool:
        # the detector says no_leak once it has DETECTOR_MIN_WINDOWS (5) windows after the start-up one
        # (windows of >= 3 one-second samples and >= 12 tasks: ~20 s); then ~4 s more of the same load
        if not cleared and any(d.get("verdict") == "no_leak" for d in run.process_files().values()):
            cleared.append(time.monotonic())
        return bool(cleared) and time.monotonic() - cleared[0] > 4

    try:
        sent, pids, load_s = _drive(run, url, HEALTHY, 13, until, 75)
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
