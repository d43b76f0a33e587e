"""The memory-budget guard in real Celery workers (otel_leak.guard_celery).

Everything is real: redis-server (the ``redis_url`` fixture; with ``CI=true`` a missing one fails the test),
``celery worker`` under ``.venv/bin/otel-leak run --report``, the app in tests/workers/guard_celery_app.py
(``guard.leak`` keeps 64 KiB per call and INCRs ``guard-exec:<task id>`` in Redis on every execution), tasks
sent from here. The budget is absolute and low, 100 MiB (a prefork child starts near 77 MiB and grows ~5 MB/s
under the load), jitter 0, the time-to-limit rule off; the soft budget waits for the detector's ``leak``
verdict, which a child reaches 13-20 s after it starts; the prefork runs also have a hard budget (150 MiB),
which does not wait for it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, parse_console_exports
from tests.frameworks import process_files as _files

OTEL_LEAK = str(Path(sys.executable).parent / "otel-leak")
APP = "tests.workers.guard_celery_app"
BUDGET = 100 * 1024 * 1024
HARD = 150 * 1024 * 1024  # a backstop: a child whose leak the detector has not declared yet is recycled here
LOAD_LIMIT_S = 28.0


def _start(tmp_path: Path, redis_url: str, mode: str, pool: str = "prefork", name: str = "w", run_args=("--quiet",),
           **extra) -> tuple:
    proc_dir = tmp_path / f"procs-{name}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(OTEL_LEAK_TEST_REDIS=redis_url, PYTHONUNBUFFERED="1", OTEL_PYTHON_LEAK_REPORT_DIR=str(proc_dir),
               OTEL_PYTHON_LEAK_REPORT_INTERVAL="0.5", OTEL_PYTHON_LEAK_GUARD=mode,
               OTEL_PYTHON_LEAK_GUARD_BUDGET=str(BUDGET), OTEL_PYTHON_LEAK_GUARD_HARD_BUDGET=str(HARD),
               OTEL_PYTHON_LEAK_GUARD_MIN_TIME_TO_LIMIT="0", OTEL_PYTHON_LEAK_GUARD_JITTER="0",
               OTEL_PYTHON_LEAK_GUARD_MAX_RECYCLES_PER_HOUR="100")
    env.update(extra)
    log_path = tmp_path / f"{name}.log"
    log = open(log_path, "w")
    args = ["--pool=prefork", "--concurrency=2"] if pool == "prefork" else [f"--pool={pool}"]
    runner = subprocess.Popen(
        [OTEL_LEAK, "run", "--report", str(tmp_path / f"{name}.json"), *run_args, "--", "celery", "-A", APP,
         "worker", *args, "--loglevel=WARNING", "--without-heartbeat", "--without-gossip", "--without-mingle",
         "-n", f"{name}@%h"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    return runner, log, log_path, proc_dir


def _wait(results, timeout: float = 60.0) -> list[int]:
    """The tasks' return values (pids), polled from the result backend (see tests/test_cli_celery.py)."""
    out = []
    deadline = time.monotonic() + timeout
    for r in results:
        while not r.ready():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no result for {r.id} in {timeout} s")
            time.sleep(0.003)
        out.append(r.get(timeout=5))
    return out


def _stop(runner) -> int:
    time.sleep(1.0)  # one more periodic report write (REPORT_INTERVAL 0.5 s)
    if runner.poll() is None:
        runner.send_signal(signal.SIGTERM)
    return runner.wait(timeout=60)


def _reap(runner, log) -> None:
    if runner.poll() is None:
        runner.kill()
        runner.wait(30)
    log.close()


def _executions(redis_url: str, ids: list[str]) -> dict[int, int]:
    import redis

    r = redis.Redis.from_url(redis_url)
    counts = [int(r.get(f"guard-exec:{i}") or 0) for i in ids]
    return {n: counts.count(n) for n in set(counts)}


def _load(client, until, batch: int = 20, limit_s: float = LOAD_LIMIT_S) -> tuple[list[str], list[int]]:
    """Batches of ``guard.leak`` until ``until(pids)`` or ``limit_s``; the ids sent and the pids returned."""
    ids, pids = [], []
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit_s and not until(pids):
        rs = [client.send_task("guard.leak") for _ in range(batch)]
        ids += [r.id for r in rs]
        pids += _wait(rs)
        time.sleep(0.03)
    return ids, pids


def test_prefork_children_are_recycled_between_tasks_and_no_task_is_lost_or_run_twice(redis_url, tmp_path):
    from celery import Celery

    runner, log, log_path, proc_dir = _start(
        tmp_path, redis_url, "on", OTEL_TRACES_EXPORTER="console", OTEL_METRICS_EXPORTER="console",
        OTEL_METRIC_EXPORT_INTERVAL="1000", OTEL_BSP_SCHEDULE_DELAY="200")
    client = Celery("client", broker=redis_url, backend=redis_url)
    try:
        first = _wait([client.send_task("guard.leak")], timeout=90)

        def enough(pids):
            # both first children recycled, and a replacement has run tasks
            if len(set(first + pids)) <= 2:
                return False
            return len([d for d in _files(proc_dir).values() if (d.get("guard") or {}).get("recycles")]) >= 2

        ids, pids = _load(client, enough)
        rc = _stop(runner)
    finally:
        _reap(runner, log)
    out = log_path.read_text()
    assert rc == 0, out[-3000:]
    docs = _files(proc_dir)
    recycled = {pid: d for pid, d in docs.items() if (d.get("guard") or {}).get("recycles")}
    assert len(recycled) >= 2, ({p: d.get("guard") for p, d in docs.items()}, out[-2000:])
    # every result arrived (_wait), from more processes than the pool's two slots: children were replaced
    assert len(set(pids) | set(first)) >= 3, sorted(set(pids))
    # no task lost or run twice
    assert _executions(redis_url, ids) == {1: len(ids)}
    for pid, d in recycled.items():
        (entry,) = [e for e in d["guard"]["entries"] if e["outcome"] == "recycled"]
        _check_entry(entry)
        assert entry["task"] == "guard.leak"
        # the soft budget decides only after a task; the hard one also before it (the sampler may have read
        # the floor over it between the two checks), and then the task still runs and the child exits after it
        assert entry["when"] == "post_task" or entry["reason"] == "hard_budget", entry
    # the pool replaced them the way worker_max_memory_per_child does: no lost worker, no error exit
    assert "WorkerLostError" not in out and "exited with" not in out, out[-3000:]
    # the merged report carries each process's guard record
    merged = json.loads((tmp_path / "w.json").read_text())
    assert sum((p.get("guard") or {}).get("recycles", 0) for p in merged["processes"]) == len(recycled)
    # the span event on the task span and the counter
    spans, points = parse_console_exports(out)
    events = [e["attributes"] for s in spans for e in s.get("events", []) if e["name"] == "otel_leak.guard.recycle"]
    assert len([e for e in events if e["otel_leak.guard.outcome"] == "recycled"]) >= len(recycled), events
    counted = {p["attributes"]["process.pid"] for p in points if p["metric"] == "otel_leak.guard.recycles"
               and p["attributes"]["otel_leak.guard.outcome"] == "recycled"}
    assert set(recycled) <= counted, (sorted(recycled), sorted(counted))


def test_prefork_dry_run_recycles_nothing_and_records_what_it_would_have_done(redis_url, tmp_path):
    from celery import Celery

    runner, log, log_path, proc_dir = _start(tmp_path, redis_url, "dry-run", name="dry")
    client = Celery("client", broker=redis_url, backend=redis_url)
    try:
        first = _wait([client.send_task("guard.leak")], timeout=90)

        def enough(pids):
            docs = [d for d in _files(proc_dir).values() if d["tasks_observed"]]
            return len(docs) >= 2 and all((d.get("guard") or {}).get("dry_run_recycles") for d in docs)

        ids, pids = _load(client, enough)
        ids2, pids2 = _load(client, lambda p: len(p) >= 200)  # and it goes on, in the same processes
        rc = _stop(runner)
    finally:
        _reap(runner, log)
    out = log_path.read_text()
    assert rc == 0, out[-3000:]
    assert len(set(pids + pids2) | set(first)) == 2, "dry-run recycled a child"
    assert _executions(redis_url, ids + ids2) == {1: len(ids + ids2)}
    children = [d for d in _files(proc_dir).values() if d["tasks_observed"]]
    assert len(children) == 2
    for d in children:
        g = d["guard"]
        assert g["mode"] == "dry-run" and g["recycles"] == 0 and 1 <= g["dry_run_recycles"] <= 2
        for entry in g["entries"]:
            assert entry["outcome"] == "dry_run"
            _check_entry(entry)
        assert sum(e["repeats"] for e in g["entries"]) > 0  # it went on deciding, and recycled nothing
    assert out.count("would recycle the process") == sum(d["guard"]["dry_run_recycles"] for d in children)


def _check_entry(entry: dict) -> None:
    """A soft-budget decision was backed by the leak verdict; a hard-budget one needs none."""
    if entry["reason"] == "budget":
        assert entry["verdict"] == "leak" and entry["floor_bytes"] >= BUDGET, entry
    else:
        assert entry["reason"] == "hard_budget" and entry["floor_bytes"] >= HARD, entry


# (pool, bytes kept per task, tasks sent, seconds the worker may take to stop): Celery's threads pool runs a
# few tasks a second here with the Redis broker (3.6/s measured without otel-leak), so its tasks keep more.
MAIN_PROCESS_POOLS = [("solo", 64 * 1024, 3000, LOAD_LIMIT_S), ("threads", 4 << 20, 60, 60.0)]


@pytest.mark.parametrize("pool,leak,tasks,limit_s", MAIN_PROCESS_POOLS, ids=[p[0] for p in MAIN_PROCESS_POOLS])
def test_solo_and_threads_workers_shut_down_warm_over_the_hard_budget_and_the_queue_is_kept(
        redis_url, tmp_path, pool, leak, tasks, limit_s):
    """A solo or threads worker over its hard budget (no verdict needed) finishes its tasks in hand and stops
    by Celery's warm shutdown, exit code 0 (the supervisor's restart is played here by a second worker, guard
    off): the tasks left in the queue run there, each once."""
    from celery import Celery

    runner, log, log_path, proc_dir = _start(tmp_path, redis_url, "on", pool=pool, name=pool,
                                             OTEL_PYTHON_LEAK_GUARD_HARD_BUDGET=str(BUDGET), LEAK_BYTES=str(leak))
    client = Celery("client", broker=redis_url, backend=redis_url)
    second = None
    try:
        _wait([client.send_task("guard.leak")], timeout=90)
        rs = [client.send_task("guard.leak") for _ in range(tasks)]  # ~190-240 MiB of leak: more than the budget
        rc = runner.wait(timeout=limit_s)
        second, log2, _, _ = _start(tmp_path, redis_url, "off", pool="solo", name="second", LEAK_BYTES=str(leak))
        pids = _wait(rs, timeout=60)
        _stop(second)
    finally:
        _reap(runner, log)
        if second is not None:
            _reap(second, log2)
    out = log_path.read_text()
    assert rc == 0, out[-3000:]
    assert "Warm shutdown" in out and "recycling the process (hard_budget" in out, out[-3000:]
    assert len(set(pids)) == 2  # the first worker ran some, the second the rest
    assert _executions(redis_url, [r.id for r in rs]) == {1: len(rs)}
    (doc,) = [d for d in _files(proc_dir).values() if d["tasks_observed"]]
    (entry,) = doc["guard"]["entries"]
    assert entry["outcome"] == "recycled" and entry["reason"] == "hard_budget"


def test_run_guard_flags_put_a_solo_worker_in_dry_run_over_the_environment(redis_url, tmp_path):
    """``otel-leak run --guard dry-run --guard-budget BUDGET`` where the environment says the guard is off and
    has no soft budget: the flags win. No hard budget, so the decision is the soft budget's: the solo worker's
    floor crosses BUDGET and, once the detector declares the leak (13-20 s into the load), the guard records
    what it would do and recycles nothing: one process runs every task, its entries in the merged report are
    dry-run decisions for BUDGET, the summary has its line. The load ends as soon as the decision is in the
    process files; its cap is generous (60 s) because a slower machine runs fewer tasks per second and its
    solo worker crosses the budget and reaches the verdict later than a prefork child here."""
    from celery import Celery

    runner, log, log_path, proc_dir = _start(
        tmp_path, redis_url, "off", pool="solo", name="flags",
        run_args=("--guard", "dry-run", "--guard-budget", str(BUDGET)), OTEL_PYTHON_LEAK_GUARD_BUDGET="0",
        OTEL_PYTHON_LEAK_GUARD_HARD_BUDGET="0")
    client = Celery("client", broker=redis_url, backend=redis_url)
    try:
        first = _wait([client.send_task("guard.leak")], timeout=90)
        ids, pids = _load(client, lambda _: any((d.get("guard") or {}).get("dry_run_recycles")
                                                for d in _files(proc_dir).values()), limit_s=60.0)
        rc = _stop(runner)
    finally:
        _reap(runner, log)
    out = log_path.read_text()
    assert rc == 0, out[-3000:]
    assert set(first + pids) == set(first), "dry-run recycled the worker"
    assert _executions(redis_url, ids) == {1: len(ids)}
    merged = json.loads((tmp_path / "flags.json").read_text())
    (worker,) = [p for p in merged["processes"] if p["pid"] == first[0]]
    g = worker["guard"]
    assert (g["mode"], g["budget_bytes"], g["hard_budget_bytes"], g["recycles"]) == ("dry-run", BUDGET, None, 0), g
    assert len(g["entries"]) == 1, (g, {k: worker.get(k) for k in ("verdict", "detected_at_s", "duration_s",
                                                                   "tasks_observed")}, worker["memory"])
    (entry,) = g["entries"]
    assert (entry["outcome"], entry["mode"], entry["reason"], entry["budget_bytes"]) == (
        "dry_run", "dry-run", "budget", BUDGET), entry
    _check_entry(entry)  # the leak verdict backed it
    summary = " ".join(out.split())
    assert f"pid {first[0]} would recycle (dry-run): budget, floor" in summary, out[-2000:]
    assert merged["verdict"] == "leak"
    assert "recycling the process" not in out and "Warm shutdown" not in out.split("would recycle")[0]


@pytest.fixture(scope="module", autouse=True)
def _celery_installed():
    pytest.importorskip("celery") if os.environ.get("CI") != "true" else __import__("celery")
