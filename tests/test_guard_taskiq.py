"""The memory-budget guard in a real ``taskiq worker`` (the taskiq integration, otel_leak.guard_signal).

Everything is real: redis-server (the ``redis_url`` fixture), ``taskiq worker app:broker --workers 2``
serving examples/taskiq_leak under ``.venv/bin/otel-leak run`` with the guard on and a low absolute hard
budget; ``remember_user`` keeps 64 KiB a task and returns the pid that ran it. Over the budget, a worker
process sends itself SIGTERM after a task (or before one, which it sends back to the stream unrun): taskiq's graceful stop (no new message, the running tasks
finish); the parent starts another process. A stopping worker's messages read from the stream but not
started are claimed again by the new workers after the broker's idle timeout (5 s here, 10 minutes by
default: taskiq-redis's behaviour at any stop). Every task's result arrives, and the task spans counted in
the processes' reports add up to the tasks sent (none lost, none run twice).
"""

from __future__ import annotations

import asyncio
import json

from tests.conftest import ROOT, VENV_BIN
from tests.frameworks import OtelLeakRun, refused_then_served
from tests.test_fw_taskiq import APP_DIR, HEALTHY, LEAKY, Client, _flush, _url

HARD = 110 * 1024 * 1024
TASKS = 3000  # 3000 x 64 KiB: ~190 MiB over two processes, more than the budget leaves either of them


def test_a_taskiq_worker_process_over_its_hard_budget_stops_gracefully_and_is_replaced(redis_url, tmp_path):
    url = _url(redis_url)
    _flush(url)
    run = OtelLeakRun(tmp_path, [str(VENV_BIN / "taskiq"), "worker", "app:broker", "--workers", "2"], cwd=APP_DIR,
                      env=dict(REDIS_URL=url, TASKIQ_IDLE_TIMEOUT_MS="5000", OTEL_PYTHON_LEAK_GUARD="on", OTEL_PYTHON_LEAK_GUARD_HARD_BUDGET=str(HARD),
                               OTEL_PYTHON_LEAK_GUARD_JITTER="0", OTEL_PYTHON_LEAK_REPORT_INTERVAL="0.5"))

    async def main():
        async with Client(url) as c:
            await c.pids(await c.send([HEALTHY[1]]), timeout=90)  # the workers serve
            pids = set()
            for _ in range(TASKS // 100):
                try:
                    pids |= await c.pids(await c.send([LEAKY] * 100), timeout=120)  # every result arrives
                except Exception as exc:
                    raise AssertionError(f"{type(exc).__name__}: {exc}; {await _stream_state(url)}\n"
                                         + run.log()[-3000:]) from exc
            return pids

    try:
        pids = asyncio.run(main())
        assert run.proc.poll() is None, run.log()[-3000:]
        assert run.stop() == 0, run.log()[-3000:]
    finally:
        run.close()
    out = run.log()
    docs = [d for d in run.process_files().values() if d.get("tasks_observed")]
    assert sum(d["task_counts"].get(LEAKY, 0) for d in docs) == TASKS  # none lost, none run twice
    assert len(pids) >= 3, pids  # the two first worker processes and at least one replacement
    recycled = [e for d in docs for e in (d.get("guard") or {}).get("entries", []) if e["outcome"] == "recycled"]
    assert recycled and all((e["reason"], e["task"]) == ("hard_budget", LEAKY) and e["when"] in ("pre_task", "post_task")
                            for e in recycled), recycled  # over the budget after a task, or before one (sent back)
    assert "recycling the process (hard_budget" in out
    merged = json.loads(run.report_path.read_text())
    assert sum((p.get("guard") or {}).get("recycles", 0) for p in merged["processes"]) == len(recycled)


async def _stream_state(url: str) -> dict:
    """Where the stream's messages are when a result is late: pending per consumer, the autoclaim lock."""
    from redis.asyncio import Redis

    async with Redis.from_url(url) as r:
        return {"pending": await r.xpending("taskiq", "taskiq"),
                "consumers": await r.xinfo_consumers("taskiq", "taskiq"),
                "locks": {k: await r.get(k) for k in await r.keys("autoclaim:*")}}


def test_a_taskiq_worker_process_over_the_hard_budget_before_a_task_sends_it_back_until_the_hourly_limit(
        redis_url, tmp_path):
    """Every worker process of tests/workers/guard_taskiq_app.py holds 160 MiB of ballast, above the 130 MiB
    hard budget: the first message that reaches one goes back to the stream unrun and the process stops; the
    parent starts another, twice (GUARD_MAX_RECYCLES_PER_HOUR=2); the third is rate-limited, so the guard
    only records, and it runs every task. Every result arrives, each task ran once, all in the third process.
    (A stopping process sends back the message it was about to run; the others it had read from the stream
    but not started are claimed again after the broker's idle timeout, 5 s here.)"""
    url = _url(redis_url)
    _flush(url)
    run = OtelLeakRun(tmp_path, [str(VENV_BIN / "taskiq"), "worker", "guard_taskiq_app:broker", "--workers", "1"],
                      cwd=ROOT / "tests" / "workers", env=dict(
                          REDIS_URL=url, TASKIQ_IDLE_TIMEOUT_MS="5000", BALLAST_BYTES=str(160 << 20), OTEL_PYTHON_LEAK_GUARD="on",
                          OTEL_PYTHON_LEAK_GUARD_HARD_BUDGET=str(130 << 20), OTEL_PYTHON_LEAK_GUARD_JITTER="0",
                          OTEL_PYTHON_LEAK_GUARD_MAX_RECYCLES_PER_HOUR="2", OTEL_PYTHON_LEAK_REPORT_INTERVAL="0.5"))

    async def main():
        async with Client(url) as c:
            return await c.pids(await c.send([HEALTHY[1]] * 20), timeout=120)  # every task runs, in the end

    try:
        pids = asyncio.run(main())
        assert run.stop() == 0, run.log()[-3000:]
    finally:
        run.close()
    served = refused_then_served(run.process_files().values(), HEALTHY[1], pids)
    assert served["task_counts"] == {HEALTHY[1]: 20}  # each task once, all in the third process
