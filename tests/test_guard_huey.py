"""The memory-budget guard in a real ``huey_consumer`` (the Huey integration, otel_leak.guard_signal).

Everything is real: redis-server (the ``redis_url`` fixture), ``huey_consumer app.huey -w 2 -k process|thread``
serving examples/huey_leak under ``.venv/bin/otel-leak run`` with the guard on and a low absolute hard
budget; ``app.remember_user`` keeps 64 KiB a task and returns the pid that ran it.

* ``-k process``: the worker process over the budget leaves after its task the way ``--max-tasks`` makes it
  leave, and the consumer starts another at its health check; every task's result arrives, the task spans
  counted in the processes' reports add up to the tasks sent (none lost, none run twice).
* ``-k thread``: the consumer sends itself SIGHUP, Huey's graceful restart (same pid); every result arrives.
* before a task: a worker process already over the hard budget puts the task back in the queue unrun and
  leaves, until the hourly limit stops the recycling (tests/workers/guard_huey_app.py).
"""

from __future__ import annotations

import json

from tests.conftest import ROOT
from tests.frameworks import OtelLeakRun, refused_then_served
from tests.test_fw_huey import APP_DIR, LEAKY, LIGHT, _client, _consumer, _db, _send

HARD = 110 * 1024 * 1024
TASKS = 3000  # 3000 x 64 KiB: ~190 MiB, more than the budget leaves


def _run(kind: str, url: str, tmp_path):
    client, tasks = _client(url)
    client.flush()
    run = OtelLeakRun(tmp_path, _consumer(kind), cwd=APP_DIR, env=dict(
        HUEY_REDIS_URL=url, OTEL_PYTHON_LEAK_GUARD="on", OTEL_PYTHON_LEAK_GUARD_HARD_BUDGET=str(HARD),
        OTEL_PYTHON_LEAK_GUARD_JITTER="0", OTEL_PYTHON_LEAK_REPORT_INTERVAL="0.5"))
    try:
        first = _send(tasks, LIGHT).get(blocking=True, timeout=90)  # the consumer serves
        results = [_send(tasks, LEAKY, i) for i in range(TASKS)]
        pids = [r.get(blocking=True, timeout=240) for r in results]  # every task's result arrives
        assert run.proc.poll() is None, run.log()[-3000:]  # recycled, not stopped
        assert run.stop() == 0, run.log()[-3000:]
    finally:
        run.close()
    assert all(isinstance(p, int) for p in pids)
    return run, first, pids


def _recycled(run: OtelLeakRun) -> list[dict]:
    docs = run.process_files().values()
    return [e for d in docs for e in (d.get("guard") or {}).get("entries", []) if e["outcome"] == "recycled"]


def test_a_huey_worker_process_over_its_hard_budget_leaves_after_its_task_and_is_replaced(redis_url, tmp_path):
    run, _, pids = _run("process", _db(redis_url, 9), tmp_path)
    docs = [d for d in run.process_files().values() if d.get("tasks_observed")]
    assert sum(d["task_counts"].get(LEAKY, 0) for d in docs) == TASKS  # none lost, none run twice
    assert len(set(pids)) >= 3, set(pids)  # the two first worker processes and at least one replacement
    recycled = _recycled(run)  # after a task, or before one (that task went back to the queue)
    assert recycled and all((e["reason"], e["task"]) == ("hard_budget", LEAKY) and e["when"] in ("pre_task", "post_task")
                            for e in recycled), recycled
    out = run.log()
    assert "restarting (max tasks)" in out and "recycling the process (hard_budget" in out
    merged = json.loads(run.report_path.read_text())
    assert sum((p.get("guard") or {}).get("recycles", 0) for p in merged["processes"]) == len(recycled)


def test_a_huey_consumer_with_thread_workers_restarts_gracefully_over_its_hard_budget(redis_url, tmp_path):
    run, first, pids = _run("thread", _db(redis_url, 10), tmp_path)
    assert set(pids) == {first}  # threads of the consumer, which restarted in place (exec, same pid)
    out = run.log()
    assert "recycling the process (hard_budget" in out and "Consumer will restart" in out


def test_a_huey_worker_process_over_the_hard_budget_before_a_task_puts_it_back_until_the_hourly_limit(
        redis_url, tmp_path):
    """Every worker process of tests/workers/guard_huey_app.py starts with 160 MiB of ballast, above the
    130 MiB hard budget: the first task that reaches it goes back to the queue unrun and the process leaves;
    the consumer starts another, twice (GUARD_MAX_RECYCLES_PER_HOUR=2); the third process is rate-limited, so
    the guard only records, and it runs every task. Every result arrives, each task ran once, none in the two
    recycled processes."""
    from huey import RedisHuey

    url = _db(redis_url, 11)
    client = RedisHuey("guard_pre_task", url=url)
    client.flush()

    def f(i):
        pass

    f.__module__ = "guard_huey_app"  # the consumer's registry key: guard_huey_app.work
    work = client.task(name="work")(f)
    run = OtelLeakRun(tmp_path, ["huey_consumer", "guard_huey_app.huey", "-w", "1", "-k", "process", "-c", "1"],
                      cwd=ROOT / "tests" / "workers", env=dict(
                          HUEY_REDIS_URL=url, BALLAST_BYTES=str(160 << 20), OTEL_PYTHON_LEAK_GUARD="on",
                          OTEL_PYTHON_LEAK_GUARD_HARD_BUDGET=str(130 << 20), OTEL_PYTHON_LEAK_GUARD_JITTER="0",
                          OTEL_PYTHON_LEAK_GUARD_MAX_RECYCLES_PER_HOUR="2", OTEL_PYTHON_LEAK_REPORT_INTERVAL="0.5"))
    try:
        results = [work(i) for i in range(20)]
        pids = {r.get(blocking=True, timeout=120) for r in results}  # every task runs, in the end
        assert run.stop() == 0, run.log()[-3000:]
    finally:
        run.close()
    served = refused_then_served(run.process_files().values(), "guard_huey_app.work", pids)
    assert served["tasks_observed"] == 20  # each task once, all in the third process
