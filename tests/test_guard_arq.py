"""The memory-budget guard in a real arq worker (the arq integration, otel_leak.guard_signal).

Everything is real: redis-server (the ``redis_url`` fixture), ``arq app.WorkerSettings`` serving
examples/arq_leak under ``.venv/bin/otel-leak run`` with the guard on and a low absolute hard budget;
``remember_user`` keeps 64 KiB a job (jobs interleave, up to 10 on the event loop). Over the budget the
worker stops as arq does on SIGTERM with ``job_completion_wait``: it takes no new job, lets the running ones
finish and exits 0. The supervisor's restart is played by a second worker, guard off, in burst mode: it runs
what is left. Every job completes, exactly once (arq's result of each, and one task span per job run across
the two workers' reports).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import uuid

from arq import create_pool
from arq.connections import RedisSettings
from arq.jobs import Job

from tests.conftest import ROOT, VENV_BIN
from tests.frameworks import OtelLeakRun
from tests.test_fw_arq import APP_DIR, LEAKY, _flush, _url

HARD = 110 * 1024 * 1024
JOBS = 3000  # 3000 x 64 KiB: ~190 MiB, more than the budget leaves


def _results(url: str, ids: list[str]) -> list:
    """arq's result record of each job (None: no result)."""

    async def main():
        pool = await create_pool(RedisSettings.from_dsn(url))
        out = [await Job(i, pool).result_info() for i in ids]
        await pool.aclose()
        return out

    return asyncio.run(main())


def test_an_arq_worker_over_its_hard_budget_stops_after_its_running_jobs_and_none_is_lost(redis_url, tmp_path):
    url = _url(redis_url)
    _flush(url)

    async def enqueue():
        pool = await create_pool(RedisSettings.from_dsn(url))
        ids = [(await pool.enqueue_job(LEAKY, uuid.uuid4().hex)).job_id for _ in range(JOBS)]
        await pool.aclose()
        return ids

    ids = asyncio.run(enqueue())
    run = OtelLeakRun(tmp_path, [str(VENV_BIN / "arq"), "app.WorkerSettings"], cwd=APP_DIR, env=dict(
        REDIS_URL=url, OTEL_PYTHON_LEAK_GUARD="on", OTEL_PYTHON_LEAK_GUARD_HARD_BUDGET=str(HARD),
        OTEL_PYTHON_LEAK_GUARD_JITTER="0", OTEL_PYTHON_LEAK_REPORT_INTERVAL="0.5"))
    try:
        rc = run.proc.wait(timeout=180)  # it stops by itself
    finally:
        run.close()
    out = run.log()
    assert rc == 0, out[-3000:]
    (doc,) = [d for d in run.process_files().values() if d["tasks_observed"]]
    first = doc["task_counts"][LEAKY]
    assert 0 < first < JOBS, first  # it stopped before the queue was empty
    (entry,) = doc["guard"]["entries"]  # after a job, or before one (that job raised Retry: it runs again)
    assert (entry["outcome"], entry["reason"], entry["task"]) == ("recycled", "hard_budget", LEAKY), entry
    assert entry["when"] in ("pre_task", "post_task"), entry
    assert "ongoing to cancel" in out and re.search(r"wait complete .* 0 ongoing to cancel", out), out[-3000:]
    second = OtelLeakRun(tmp_path / "second", [str(VENV_BIN / "arq"), "app.WorkerSettings", "--burst"], cwd=APP_DIR,
                         env={"REDIS_URL": url})
    try:
        assert second.proc.wait(timeout=300) == 0, second.log()[-2000:]
    finally:
        second.close()
    (doc2,) = [d for d in second.process_files().values() if d["tasks_observed"]]
    assert first + doc2["task_counts"][LEAKY] == JOBS, (first, doc2["task_counts"])  # one span per job run

    infos = _results(url, ids)
    assert all(r is not None and r.success for r in infos), sum(r is None for r in infos)  # none lost
    assert {r.job_try for r in infos} <= {1, 2}  # a try: a job refused before it started (Retry)
    assert len({r.result for r in infos}) == 2  # the pids of the two workers
    merged = json.loads(run.report_path.read_text())
    assert merged["processes"][0]["guard"]["recycles"] == 1


def test_a_job_reaching_an_arq_worker_over_the_hard_budget_does_not_start_and_runs_on_the_next(redis_url, tmp_path):
    """tests/workers/guard_arq_app.py starts with 160 MiB of ballast, above the 130 MiB hard budget: the
    first job that reaches it raises arq's Retry before it starts and the worker stops; a second worker,
    guard off, runs every job: each succeeds, the refused one on its second try, the others on their first."""
    url = _url(redis_url)
    _flush(url)

    async def enqueue():
        pool = await create_pool(RedisSettings.from_dsn(url))
        ids = [(await pool.enqueue_job("work", i)).job_id for i in range(10)]
        await pool.aclose()
        return ids

    ids = asyncio.run(enqueue())
    workers = ROOT / "tests" / "workers"
    run = OtelLeakRun(tmp_path, [str(VENV_BIN / "arq"), "guard_arq_app.WorkerSettings"], cwd=workers, env=dict(
        REDIS_URL=url, BALLAST_BYTES=str(160 << 20), OTEL_PYTHON_LEAK_GUARD="on",
        OTEL_PYTHON_LEAK_GUARD_HARD_BUDGET=str(130 << 20), OTEL_PYTHON_LEAK_GUARD_JITTER="0"))
    try:
        rc = run.proc.wait(timeout=60)  # it stops by itself
    finally:
        run.close()
    assert rc == 0, run.log()[-3000:]
    (doc,) = [d for d in run.process_files().values() if d.get("guard")]
    assert doc["tasks_observed"] == 0, doc["task_counts"]
    (entry,) = doc["guard"]["entries"]
    assert (entry["outcome"], entry["reason"], entry["when"], entry["task"]) == (
        "recycled", "hard_budget", "pre_task", "work"), entry
    second = subprocess.run([str(VENV_BIN / "arq"), "guard_arq_app.WorkerSettings", "--burst"], cwd=workers,
                            env={**os.environ, "REDIS_URL": url}, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr[-2000:]

    infos = _results(url, ids)
    assert all(r is not None and r.success for r in infos)
    tries = sorted(r.job_try for r in infos)
    assert tries[-1] == 2 and set(tries) <= {1, 2}, tries  # the refused ones (none started) ran again, once
    assert len({r.result for r in infos}) == 1  # all on the second worker
