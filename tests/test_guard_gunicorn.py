"""The memory-budget guard in real gunicorn workers (otel_leak.guard_gunicorn).

Everything is real: ``gunicorn -w 2 -k sync`` serving examples/web_leak's Flask app under
``.venv/bin/otel-leak run`` with the console exporters, driven over HTTP by examples/web_leak/load.py (a new
connection per request, so every worker accepts some; ``GET /users/<id>`` keeps 64 KiB a request). The hard
budget is absolute and low, so no verdict is needed: a worker over it finishes its request, sends itself
SIGTERM and exits 0, and the arbiter starts another.
"""

from __future__ import annotations

import json

from tests.conftest import parse_console_exports
from tests.test_fw_gunicorn import _installed  # noqa: F401 (autouse: gunicorn and Flask are there)
from tests.test_fw_gunicorn import APP_DIR, ROUTES, _gunicorn, _pids, free_port, load
from tests.frameworks import OtelLeakRun

HARD = 100 * 1024 * 1024
LOAD_LIMIT_S = 60.0


def _env(mode: str, **extra) -> dict:
    env = dict(OTEL_PYTHON_LEAK_GUARD=mode, OTEL_PYTHON_LEAK_GUARD_HARD_BUDGET=str(HARD),
               OTEL_PYTHON_LEAK_GUARD_JITTER="0", OTEL_PYTHON_LEAK_GUARD_MAX_RECYCLES_PER_HOUR="100",
               OTEL_PYTHON_LEAK_REPORT_INTERVAL="0.5", OTEL_TRACES_EXPORTER="console",
               OTEL_METRICS_EXPORTER="console", OTEL_METRIC_EXPORT_INTERVAL="1000", OTEL_BSP_SCHEDULE_DELAY="200")
    env.update(extra)
    return env


def _recycled(run: OtelLeakRun) -> dict[int, dict]:
    return {pid: d for pid, d in run.process_files().items() if (d.get("guard") or {}).get("recycles")}


def _entries(run: OtelLeakRun, outcome: str) -> list[dict]:
    return [e for d in run.process_files().values() for e in (d.get("guard") or {}).get("entries", [])
            if e["outcome"] == outcome]


def test_workers_over_the_hard_budget_are_replaced_after_a_request_until_the_hourly_limit(tmp_path):
    """Two recycles an hour allowed: the first two workers over the budget are replaced; the next decision
    (a worker started in their place reaching the budget in turn) is only recorded, as rate_limited, and
    that worker serves on. Every request is answered."""
    port = free_port()
    run = OtelLeakRun(tmp_path, _gunicorn(port, "sync", tmp_path), cwd=APP_DIR,
                      env=_env("on", OTEL_PYTHON_LEAK_GUARD_MAX_RECYCLES_PER_HOUR="2"))
    try:
        load.wait_ready(load.Client(f"http://127.0.0.1:{port}"), alive=lambda: run.proc.poll() is None)
        # load.drive raises on any request not answered 200
        tally = load.drive(f"http://127.0.0.1:{port}", seconds=LOAD_LIMIT_S, rate=300, seed=3, close=True,
                           until=lambda: len(_recycled(run)) >= 2 and _entries(run, "rate_limited"))
        rc = run.stop()
    finally:
        run.close()
    out = run.log()
    assert rc == 0, out[-3000:]
    recycled = _recycled(run)
    booted = _pids(out)
    assert len(recycled) == 2 and len(booted) == 4, ({p: d.get("guard") for p, d in run.process_files().items()},
                                                     out[-2000:])
    assert set(recycled) < booted and tally.pids <= booted
    for pid, d in recycled.items():
        (entry,) = [e for e in d["guard"]["entries"] if e["outcome"] == "recycled"]
        # decided after whichever request the floor crossed the budget during (the hard budget needs no verdict)
        assert (entry["reason"], entry["when"]) == ("hard_budget", "post_task") and entry["task"] in ROUTES.values()
        assert entry["floor_bytes"] >= HARD
        assert d["final"] is True  # it left through gunicorn's exit, with its last report written
        assert f"Worker exiting (pid: {pid})" in out
    (limited, *_) = _entries(run, "rate_limited")
    assert limited["reason"] == "hard_budget" and limited["floor_bytes"] >= HARD
    assert "NOT recycling: the hourly recycle limit is reached" in out
    assert "WORKER TIMEOUT" not in out and "SIGKILL" not in out, out[-3000:]
    # the merged report, the span events on the requests' spans, the counter
    merged = json.loads(run.report_path.read_text())
    assert sum((p.get("guard") or {}).get("recycles", 0) for p in merged["processes"]) == 2
    spans, points = parse_console_exports(out)
    events = [(s["name"], e["attributes"]) for s in spans for e in s.get("events", [])
              if e["name"] == "otel_leak.guard.recycle"]
    outcomes = [a["otel_leak.guard.outcome"] for _, a in events]
    assert outcomes.count("recycled") == 2 and "rate_limited" in outcomes, events
    assert {name for name, _ in events} <= set(ROUTES.values())
    counted = {(p["attributes"]["process.pid"], p["attributes"]["otel_leak.guard.outcome"]) for p in points
               if p["metric"] == "otel_leak.guard.recycles"}
    assert {(pid, "recycled") for pid in recycled} <= counted and any(o == "rate_limited" for _, o in counted)


def test_dry_run_replaces_no_worker_and_records_what_it_would_have_done(tmp_path):
    port = free_port()
    run = OtelLeakRun(tmp_path, _gunicorn(port, "sync", tmp_path), cwd=APP_DIR, env=_env("dry-run"))

    def both_would():
        docs = [d for d in run.process_files().values() if d["tasks_observed"]]
        return len(docs) == 2 and all((d.get("guard") or {}).get("dry_run_recycles") for d in docs)

    try:
        load.wait_ready(load.Client(f"http://127.0.0.1:{port}"), alive=lambda: run.proc.poll() is None)
        load.drive(f"http://127.0.0.1:{port}", seconds=LOAD_LIMIT_S, rate=300, seed=4, close=True, until=both_would)
        rc = run.stop()
    finally:
        run.close()
    out = run.log()
    assert rc == 0, out[-3000:]
    assert len(_pids(out)) == 2, "dry-run replaced a worker"
    workers = [d for d in run.process_files().values() if d["tasks_observed"]]
    assert len(workers) == 2
    for d in workers:
        g = d["guard"]
        assert (g["mode"], g["recycles"], g["dry_run_recycles"]) == ("dry-run", 0, 1), g
        assert all(e["outcome"] == "dry_run" and e["reason"] == "hard_budget" for e in g["entries"])
    assert out.count("would recycle the process") == 2
