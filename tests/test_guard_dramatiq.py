"""The memory-budget guard in a real ``dramatiq`` command (otel_leak.guard_signal through the Dramatiq
integration).

Everything is real: redis-server (the ``redis_url`` fixture), ``dramatiq app --processes 2 --threads 2``
serving examples/dramatiq_leak under ``.venv/bin/otel-leak run`` with the guard on and a low absolute hard
budget; ``remember_user`` keeps 64 KiB a message. Over the budget, a worker process sends the command SIGHUP
after a message: Dramatiq's own reload (every worker process finishes the messages in hand, the command
starts itself again with the same pid and arguments, new worker processes consume the rest). Every message
is processed exactly once (the task spans counted in the processes' reports), none is lost.
"""

from __future__ import annotations

import json
import time

from dramatiq.brokers.redis import RedisBroker

from tests.frameworks import OtelLeakRun
from tests.test_fw_dramatiq import APP_DIR, COMMAND, LEAKY, LIGHT, _db, _send

HARD = 110 * 1024 * 1024
MESSAGES = 3000  # 3000 x 64 KiB: ~190 MiB over two processes, more than the budget leaves either of them


def test_a_dramatiq_command_over_its_hard_budget_reloads_and_no_message_is_lost(redis_url, tmp_path):
    url = _db(redis_url, 4)
    client = RedisBroker(url=url)
    client.flush_all()
    run = OtelLeakRun(tmp_path, COMMAND, cwd=APP_DIR, env=dict(
        DRAMATIQ_REDIS_URL=url, OTEL_PYTHON_LEAK_GUARD="on", OTEL_PYTHON_LEAK_GUARD_HARD_BUDGET=str(HARD),
        OTEL_PYTHON_LEAK_GUARD_JITTER="0", OTEL_PYTHON_LEAK_REPORT_INTERVAL="0.5"))
    try:
        _send(client, LIGHT)  # the clock starts once the worker processes serve
        client.join("default", timeout=90_000)
        for _ in range(MESSAGES // 100):  # in batches, so each process takes its share and passes the budget
            _send(client, LEAKY, 100)
            time.sleep(0.1)
        client.join("default", timeout=240_000)  # every message processed and acknowledged, across the reload
        _reloaded(run)
        assert run.proc.poll() is None, run.log()[-3000:]  # the command reloaded itself, it did not exit
        assert run.stop() == 0, run.log()[-3000:]
    finally:
        run.close()
        client.close()
    out = run.log()
    docs = [d for d in run.process_files().values() if d.get("tasks_observed")]
    counts = [d["task_counts"].get(LEAKY, 0) for d in docs]
    assert sum(counts) == MESSAGES, counts  # none lost, none run twice
    assert len(docs) >= 3, [d["pid"] for d in docs]  # the first worker processes and their replacements
    recycled = [e for d in docs for e in (d.get("guard") or {}).get("entries", []) if e["outcome"] == "recycled"]
    assert recycled and all((e["reason"], e["task"]) == ("hard_budget", LEAKY) and e["when"] in ("pre_task", "post_task")
                            for e in recycled), recycled  # before a message: it went back to the queue
    assert all(e["floor_bytes"] >= HARD for e in recycled)
    assert "recycling the process (hard_budget" in out
    merged = json.loads(run.report_path.read_text())
    assert sum((p.get("guard") or {}).get("recycles", 0) for p in merged["processes"]) == len(recycled)


def test_a_worker_outside_the_dramatiq_command_has_no_graceful_recycle():
    from otel_leak.integrations import dramatiq as integration

    assert integration._command_pid() == 0  # pytest's process: the guard records "unsupported" here


def _reloaded(run: OtelLeakRun, processes: int = 2, timeout: float = 60) -> None:
    """Wait until every reload the guard started has finished: after the command's last SIGHUP, its worker
    processes have shut down and ``processes`` new ones are ready, and still so a second later. (The command
    reloads by exec: a SIGTERM that lands before the new command has installed its handlers kills it with
    143; the stop that follows must not race a reload. A replacement process can cross the budget too and
    start a second reload while the last messages are acknowledged, so the queue being empty says nothing.)"""
    def settled(text: str) -> bool:
        last_down = text.rfind("Worker has been shut down")
        return (text.rfind("Sending signal 'SIGHUP'") < last_down
                and text.count("Worker process is ready for action", last_down) >= processes)

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if settled(run.log()):
            time.sleep(1.0)
            if settled(run.log()):
                return
        time.sleep(0.2)
    raise AssertionError("the Dramatiq command did not finish its reload: " + run.log()[-2000:])
