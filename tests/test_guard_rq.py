"""The memory-budget guard in a real RQ ``SimpleWorker`` (otel_leak.guard_signal through the RQ integration).

Everything is real: redis-server (the ``redis_url`` fixture), ``rq worker -w rq.worker.SimpleWorker`` serving
examples/rq_leak under ``.venv/bin/otel-leak run`` with the guard on and a low absolute hard budget;
``app.remember_user`` keeps 64 KiB a job. Over the budget, the worker sends itself SIGTERM after a job: RQ's
warm shutdown (the job in hand finishes, the worker exits 0). The supervisor's restart is played by a second
worker, guard off, in burst mode: it runs what is left. No job fails, none is lost.
"""

from __future__ import annotations

import json
import subprocess

from rq import Queue
from rq.job import JobStatus
from rq.registry import FailedJobRegistry, StartedJobRegistry

from tests.conftest import VENV_BIN
from tests.frameworks import OtelLeakRun
from tests.test_fw_rq import APP_DIR, LEAKY, QUEUE, _simple_worker, _url, conn  # noqa: F401 (the fixture)

HARD = 100 * 1024 * 1024
JOBS = 2500  # 2500 x 64 KiB: ~160 MiB, more than the budget leaves


def test_a_simple_worker_over_its_hard_budget_stops_warm_and_no_job_is_lost(conn, redis_url, tmp_path):  # noqa: F811
    q = Queue(QUEUE, connection=conn)
    jobs = [q.enqueue(LEAKY, f"user-{i}", result_ttl=600) for i in range(JOBS)]
    run = OtelLeakRun(tmp_path, _simple_worker(redis_url), cwd=APP_DIR, env=dict(
        OTEL_PYTHON_LEAK_GUARD="on", OTEL_PYTHON_LEAK_GUARD_HARD_BUDGET=str(HARD),
        OTEL_PYTHON_LEAK_GUARD_JITTER="0", OTEL_PYTHON_LEAK_REPORT_INTERVAL="0.5"))
    try:
        rc = run.proc.wait(timeout=120)  # it stops by itself
    finally:
        run.close()
    out = run.log()
    assert rc == 0, out[-3000:]
    done_first = [j for j in jobs if j.get_status(refresh=True) == JobStatus.FINISHED]
    assert 0 < len(done_first) < JOBS, len(done_first)  # it stopped before the queue was empty
    second = subprocess.run([str(VENV_BIN / "rq"), "worker", "-q", "--burst", "-w", "rq.worker.SimpleWorker",
                             "--url", _url(redis_url), QUEUE], cwd=APP_DIR, capture_output=True, text=True,
                            timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    statuses = [j.get_status(refresh=True) for j in jobs]
    assert statuses.count(JobStatus.FINISHED) == JOBS, {s: statuses.count(s) for s in set(statuses)}
    assert len(FailedJobRegistry(QUEUE, connection=conn)) == 0
    assert len(StartedJobRegistry(QUEUE, connection=conn)) == 0
    pids = {j.return_value() for j in jobs}
    assert len(pids) == 2  # the first worker ran some, the second the rest
    (doc,) = [d for d in run.process_files().values() if d["tasks_observed"]]
    (entry,) = doc["guard"]["entries"]
    assert (entry["outcome"], entry["reason"], entry["when"], entry["task"]) == (
        "recycled", "hard_budget", "post_task", LEAKY), entry
    assert entry["floor_bytes"] >= HARD and doc["final"] is True
    merged = json.loads(run.report_path.read_text())
    assert merged["processes"][0]["guard"]["recycles"] == 1
    assert "recycling the process (hard_budget" in out
