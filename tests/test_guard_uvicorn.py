"""The memory-budget guard in a real ``uvicorn --workers 2`` (the uvicorn integration, otel_leak.guard_signal).

Everything is real: ``uvicorn asgi_app:app --workers 2`` (examples/web_leak, Starlette, SERVER spans of
opentelemetry-instrumentation-starlette as task spans) under ``.venv/bin/otel-leak run`` with the guard on
and a low absolute hard budget; ``GET /users/{id}`` keeps memory per request. Over the budget a worker
process sends itself SIGTERM after a request: uvicorn's graceful shutdown (requests in flight finish), and
the supervisor starts another process. Every request gets its 200, from one of >= 3 serving pids.
"""

from __future__ import annotations

import json

from tests.conftest import free_port
from tests.frameworks import OtelLeakRun
from tests.test_fw_uvicorn import APP_DIR, LEAKY, _entry_point, _installed, _uvicorn, load  # noqa: F401 (fixtures)

HARD = 120 * 1024 * 1024
REQUESTS = 2000


def test_a_uvicorn_worker_over_its_hard_budget_shuts_down_gracefully_and_is_replaced(tmp_path, _entry_point):  # noqa: F811
    port = free_port()
    run = OtelLeakRun(tmp_path, _uvicorn(port, 2), cwd=APP_DIR, env=dict(
        OTEL_PYTHON_LEAK_GUARD="on", OTEL_PYTHON_LEAK_GUARD_HARD_BUDGET=str(HARD),
        OTEL_PYTHON_LEAK_GUARD_JITTER="0", OTEL_PYTHON_LEAK_REPORT_INTERVAL="0.5"))
    try:
        load.wait_ready(load.Client(f"http://127.0.0.1:{port}"), alive=lambda: run.proc.poll() is None)
        sent, pids = 0, set()
        while sent < REQUESTS:  # each drive raises on any request that does not get its 200
            t = load.drive(f"http://127.0.0.1:{port}", seconds=5, rate=400, kinds=("leak",), seed=sent, close=True,
                           threads=8)
            sent += t.total
            pids |= t.pids
        assert run.proc.poll() is None, run.log()[-3000:]
        rc = run.stop()
    finally:
        run.close()
    out = run.log()
    assert rc == 0, out[-3000:]
    assert len(pids) >= 3, pids  # the two first worker processes and at least one replacement
    docs = [d for d in run.process_files().values() if d.get("tasks_observed")]
    recycled = [e for d in docs for e in (d.get("guard") or {}).get("entries", []) if e["outcome"] == "recycled"]
    assert recycled and all((e["reason"], e["when"], e["task"]) == ("hard_budget", "post_task", LEAKY)
                            for e in recycled), recycled
    assert sum(d["task_counts"].get(LEAKY, 0) for d in docs) == sent  # one span per request: none served twice
    assert "recycling the process (hard_budget" in out
    merged = json.loads(run.report_path.read_text())
    assert sum((p.get("guard") or {}).get("recycles", 0) for p in merged["processes"]) == len(recycled)
