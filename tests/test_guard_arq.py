"""The memory-budget guard in a real arq worker (the arq integration, otel_leak.guard_signal).

Everything is real: redis-server (the ``redis_url`` fixture), ``arq app.WorkerSettings`` serving
examples/arq_leak under ``.venv/bin/otel-leak run`` with the guard on and a low absolute hard budget;
``remember_user`` keeps 64 KiB a job (jobs interleave, up to 10 on the event loop). Over the budget the
worker stops as arq does on SIGTERM with ``job_completion_wait``: it takes no new job, lets the running ones
finish and exits 0. The supervisor's restart is played by a second worker, guard off, in burst mode: it runs
what is left. Every job completes, exactly once (arq's result of each: success, first try).
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

from tests.conftest import VENV_BIN
from tests.frameworks import OtelLeakRun
from tests.test_fw_arq import APP_DIR, LEAKY, _flush, _url

HARD = 110 * 1024 * 1024
JOBS = 3000  # 3000 x 64 KiB: ~190 MiB, more than the budget leaves


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
    (entry,) = doc["guard"]["entries"]
    assert (entry["outcome"], entry["reason"], entry["when"], entry["task"]) == (
        "recycled", "hard_budget", "post_task", LEAKY), entry
    assert "ongoing to cancel" in out and re.search(r"wait complete .* 0 ongoing to cancel", out), out[-3000:]
    second = subprocess.run([str(VENV_BIN / "arq"), "app.WorkerSettings", "--burst"], cwd=APP_DIR,
                            env={**os.environ, "REDIS_URL": url}, capture_output=True, text=True,
                            timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]

    async def results():
        pool = await create_pool(RedisSettings.from_dsn(url))
        out = [await Job(i, pool).result_info() for i in ids]
        await pool.aclose()
        return out

    infos = asyncio.run(results())
    assert all(r is not None and r.success for r in infos), sum(r is None for r in infos)  # none lost
    assert {r.job_try for r in infos} == {1}  # none started twice (arq counts every start of a job)
    assert len({r.result for r in infos}) == 2  # the pids of the two workers
    merged = json.loads(run.report_path.read_text())
    assert merged["processes"][0]["guard"]["recycles"] == 1
