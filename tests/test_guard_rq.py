"""The memory-budget guard in a real RQ ``SimpleWorker`` (otel_leak.guard_signal through the RQ integration).

Everything is real: redis-server (the ``redis_url`` fixture), ``rq worker -w rq.worker.SimpleWorker`` serving
examples/rq_leak under ``.venv/bin/otel-leak run`` with the guard on and a low absolute hard budget;
``app.remember_user`` keeps 64 KiB a job. Over the budget, the worker sends itself SIGTERM after a job, or
before one it has just dequeued, which goes back to the front of the queue: RQ's warm shutdown (the job in
hand finishes, the worker exits 0). The supervisor's restart is played by a second
worker, guard off, in burst mode: it runs what is left. No job fails, none is lost.
"""

from __future__ import annotations

import json
import subprocess

from rq import Queue
from rq.job import JobStatus
from rq.registry import FailedJobRegistry, StartedJobRegistry

from tests.conftest import ROOT, VENV_BIN
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
    # over the budget after a job (the job done), or before one (the job back in the queue, unrun)
    assert (entry["outcome"], entry["reason"], entry["task"]) == ("recycled", "hard_budget", LEAKY), entry
    assert entry["when"] in ("pre_task", "post_task"), entry
    assert entry["floor_bytes"] >= HARD and doc["final"] is True
    merged = json.loads(run.report_path.read_text())
    assert merged["processes"][0]["guard"]["recycles"] == 1
    assert "recycling the process (hard_budget" in out


def test_a_job_reaching_a_simple_worker_over_the_hard_budget_goes_back_to_its_queue_unrun(conn, redis_url, tmp_path):  # noqa: F811
    """tests/workers/guard_rq_app.py's worker holds 160 MiB of ballast, above the 130 MiB hard budget: the
    first job it dequeues goes back to the front of the queue without running and the worker stops warm
    (exit 0); a second worker, guard off, runs every job, each once, the refused one first."""
    q = Queue("guard_pre_task", connection=conn)
    jobs = [q.enqueue("guard_rq_app.work", i, result_ttl=600) for i in range(10)]
    workers = ROOT / "tests" / "workers"
    run = OtelLeakRun(tmp_path, [str(VENV_BIN / "rq"), "worker", "-q", "-w", "guard_rq_app.BallastWorker",
                                 "--url", _url(redis_url), "guard_pre_task"], cwd=workers, env=dict(
        BALLAST_BYTES=str(160 << 20), OTEL_PYTHON_LEAK_GUARD="on", OTEL_PYTHON_LEAK_GUARD_HARD_BUDGET=str(130 << 20),
        OTEL_PYTHON_LEAK_GUARD_JITTER="0"))
    try:
        rc = run.proc.wait(timeout=60)  # it stops by itself
    finally:
        run.close()
    out = run.log()
    assert rc == 0, out[-3000:]
    assert [j.get_status(refresh=True) for j in jobs] == [JobStatus.QUEUED] * 10  # none ran, none failed
    assert q.job_ids == [j.id for j in jobs]  # the refused one back at the front, in order
    assert conn.llen(q.intermediate_queue_key) == 0
    (doc,) = [d for d in run.process_files().values() if d.get("guard")]
    assert doc["tasks_observed"] == 0, doc["task_counts"]
    (entry,) = doc["guard"]["entries"]
    assert (entry["outcome"], entry["reason"], entry["when"], entry["task"]) == (
        "recycled", "hard_budget", "pre_task", "guard_rq_app.work"), entry
    second = subprocess.run([str(VENV_BIN / "rq"), "worker", "-q", "--burst", "-w", "rq.worker.SimpleWorker",
                             "--url", _url(redis_url), "guard_pre_task"], cwd=workers, capture_output=True,
                            text=True, timeout=120)
    assert second.returncode == 0, second.stderr[-2000:]
    assert [j.get_status(refresh=True) for j in jobs] == [JobStatus.FINISHED] * 10
    assert len({j.return_value() for j in jobs}) == 1  # all on the second worker
    assert len(FailedJobRegistry("guard_pre_task", connection=conn)) == 0
