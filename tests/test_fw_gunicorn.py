"""gunicorn pre-fork workers serving a Flask app: the SERVER spans of opentelemetry-instrumentation-flask are
the task spans (otel-leak has no gunicorn integration of its own), named by the route template.

Everything is real: ``gunicorn -w 2`` (``-k sync`` and ``-k gthread --threads 4``) started in
examples/web_leak as its docs say, under ``opentelemetry-instrument`` (console exporters) or ``otel-leak run``,
driven over HTTP by examples/web_leak/load.py from several threads. Each worker is forked from the arbiter
after auto-instrumentation: each must export its own spans and metrics, carry its own pid, and leave through
gunicorn's ``sys.exit`` with its last spans and its final report written.
"""

from __future__ import annotations

import http.client
import importlib.util
import os
import signal
import subprocess
import sys
import uuid

import pytest

from otel_leak import names
from tests.conftest import IN_CI, ROOT, VENV_BIN, free_port, instrumented_env, parse_console_exports
from tests.frameworks import OtelLeakRun, check_healthy_report, check_leak_report, check_task_spans

APP_DIR = ROOT / "examples" / "web_leak"
ROUTES = {"leak": "GET /users/<user_id>", "resize": "GET /images/resize", "hello": "GET /hello/<name>"}
LEAKY = ROUTES["leak"]
WORKERS = {"sync": ["-k", "sync"], "gthread": ["-k", "gthread", "--threads", "4"]}
LOAD_LIMIT_S = 120.0
HEALTHY_S = 15.0  # tier 1 calls no_leak after DETECTOR_MIN_WINDOWS (5) windows: ~5-8 s per worker here


def _example(name: str):
    """An examples/web_leak module, loaded by path (a fresh instance each time)."""
    spec = importlib.util.spec_from_file_location(f"web_leak_{name}_{uuid.uuid4().hex[:6]}", APP_DIR / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


load = _example("load")


@pytest.fixture(scope="module", autouse=True)
def _installed():
    for mod in ("gunicorn", "flask", "opentelemetry.instrumentation.flask"):
        if IN_CI:
            __import__(mod)
        else:
            pytest.importorskip(mod)


def _gunicorn(port: int, worker: str, tmp_path) -> list[str]:
    return [str(VENV_BIN / "gunicorn"), "-w", "2", *WORKERS[worker], "-b", f"127.0.0.1:{port}",
            "--control-socket", str(tmp_path / "gunicorn.ctl"), "wsgi_app:app"]


def _get_404(port: int, n: int) -> None:
    for _ in range(n):  # paths no route matches, each with an id: their spans must share one identity
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", f"/no/such/{uuid.uuid4().hex}")
        assert conn.getresponse().status == 404
        conn.close()


def _pids(worker_log: str) -> set[int]:
    return {int(line.rsplit(" ", 1)[1]) for line in worker_log.splitlines() if "Booting worker with pid:" in line}


# ---------------------------------------------------------------------------------------------- in process
def test_identity_is_the_route_template_never_the_path(monkeypatch):
    """The real Flask instrumentation on the example app, with otel-leak's processor on the real SDK."""
    from opentelemetry.instrumentation.flask import FlaskInstrumentor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import StatusCode

    from otel_leak.instrumentor import Runtime

    monkeypatch.setenv("OTEL_PYTHON_LEAK_DETECTOR", "false")
    exporter = InMemorySpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    mp = MeterProvider(metric_readers=[InMemoryMetricReader()])
    runtime = Runtime(tp, mp)
    runtime.sampler.stop()
    mod = _example("wsgi_app")
    app = mod.app
    app.testing = True  # a view's exception reaches the caller, as gunicorn's error handling would see it

    @app.get("/boom/<n>")
    def boom(n):
        raise ZeroDivisionError(n)

    FlaskInstrumentor().instrument_app(app, tracer_provider=tp, meter_provider=mp)
    try:
        client = app.test_client()
        for i in range(20):
            assert client.get(f"/users/u{i}").status_code == 200
            assert client.get(f"/no/such/page{i}").status_code == 404
        assert client.get("/hello/ann").status_code == 200
        with pytest.raises(ZeroDivisionError, match="7"):
            client.get("/boom/7")
    finally:
        FlaskInstrumentor().uninstrument_app(app)
        runtime.shutdown()
    spans = exporter.get_finished_spans()
    assert len(spans) == 42 and all(names.SPAN_RSS_DELTA in s.attributes for s in spans)
    ident = {}
    for s in spans:
        ident.setdefault(s.attributes[names.SPAN_TASK_NAME], set()).add(s.name)
    # Unmatched paths: Flask names each span after its raw path; their identity is the method alone.
    assert set(ident) == {LEAKY, "GET", ROUTES["hello"], "GET /boom/<n>"}, ident
    assert len(ident["GET"]) == 20 and ident[LEAKY] == {LEAKY}
    assert set(runtime.processor.stats.counts) == set(ident)
    (err,) = [s for s in spans if s.attributes[names.SPAN_TASK_NAME] == "GET /boom/<n>"]
    assert err.status.status_code is StatusCode.ERROR and err.events[0].name == "exception"
    assert len(mod._USERS) == 20


# ---------------------------------------------------------------------------- under opentelemetry-instrument
@pytest.mark.parametrize("worker", ["sync", "gthread"])
def test_each_worker_exports_its_own_server_spans(worker, tmp_path):
    """Export intervals of a minute: what reaches the output was flushed by each worker as it exited."""
    port = free_port()
    out = tmp_path / "gunicorn.out"
    env = instrumented_env(OTEL_BSP_SCHEDULE_DELAY="60000", OTEL_METRIC_EXPORT_INTERVAL="60000",
                           OTEL_EXPERIMENTAL_RESOURCE_DETECTORS="process", OTEL_SERVICE_NAME=f"gunicorn-{worker}")
    with open(out, "w") as f:
        arbiter = subprocess.Popen([str(VENV_BIN / "opentelemetry-instrument"), *_gunicorn(port, worker, tmp_path)],
                                   cwd=APP_DIR, env=env, stdout=f, stderr=subprocess.STDOUT)
    try:
        client = load.Client(f"http://127.0.0.1:{port}")
        load.wait_ready(client, alive=lambda: arbiter.poll() is None)
        tally = load.drive(f"http://127.0.0.1:{port}", seconds=2.5, seed=7, keep=True, close=True)
        _get_404(port, 6)
        arbiter.send_signal(signal.SIGTERM)
        assert arbiter.wait(timeout=60) == 0
    finally:
        if arbiter.poll() is None:
            arbiter.kill()
            arbiter.wait(10)
    text = out.read_text()
    expected = {ROUTES[k]: n for k, n in tally.sent.items()}
    expected[ROUTES["hello"]] += 1  # wait_ready's request
    expected["GET"] = 6
    spans = check_task_spans(text, "", expected)
    workers = _pids(text)
    assert len(workers) == 2 and arbiter.pid not in workers, (workers, arbiter.pid)
    assert tally.pids == workers, (tally.pids, workers)  # both served (each request on a new connection)
    served = {trace_id: pid for _, trace_id, pid in tally.requests}
    for s in spans:
        res = s["resource"]["attributes"]
        assert res["process.pid"] in workers and res["process.parent_pid"] == arbiter.pid, res
        tid = int(s["context"]["trace_id"], 16)
        if s["attributes"][names.SPAN_TASK_NAME] != "GET" and tid in served:  # the driver's requests
            assert res["process.pid"] == served[tid], (s["name"], res["process.pid"], served[tid])
    assert len({int(s["context"]["trace_id"], 16) for s in spans} & set(served)) == tally.total
    # Per-task metrics: each worker's own series (process.pid), its exemplars name requests it served.
    _, points = parse_console_exports(text)
    task_points = [p for p in points if p["metric"] == names.TASK_MEMORY_GROWTH.name]
    assert {p["attributes"][names.SPAN_PID] for p in task_points} <= workers
    for p in task_points:
        for e in p.get("exemplars", []):
            if e["trace_id"] in served:
                assert served[e["trace_id"]] == p["attributes"][names.SPAN_PID], (e, p["attributes"])
    counts = [p for p in points if p["metric"] == names.TASK_COUNT.name]
    by_pid = {}
    for p in counts:
        by_pid.setdefault(p["attributes"][names.SPAN_PID], {})[p["attributes"][names.ATTR_TASK_NAME]] = p["value"]
    assert set(by_pid) == workers and sum(sum(c.values()) for c in by_pid.values()) == sum(expected.values())


# ---------------------------------------------------------------------------------------- under otel-leak run
def test_leaking_route_is_the_top_suspect_in_each_worker(tmp_path):
    port = free_port()
    run = OtelLeakRun(tmp_path, _gunicorn(port, "sync", tmp_path), cwd=APP_DIR)
    try:
        load.wait_ready(load.Client(f"http://127.0.0.1:{port}"), alive=lambda: run.proc.poll() is None)
        tally = load.drive(f"http://127.0.0.1:{port}", seconds=LOAD_LIMIT_S, seed=5, close=True,
                           until=lambda: run.declared(LEAKY))
        rc = run.stop()
    finally:
        run.close()
    assert rc == 0, run.log()[-3000:]
    r = run.report()
    check_leak_report(r, LEAKY, APP_DIR / "wsgi_app.py", "_USERS[user_id] =", run.log())
    assert any(p.get("complete") and p["text"].endswith("wsgi_app['_USERS']") for p in r["retention_paths"])
    _check_processes(r, run, tally, leaking=True)


def test_healthy_routes_end_no_leak(tmp_path):
    port = free_port()
    run = OtelLeakRun(tmp_path, _gunicorn(port, "gthread", tmp_path), cwd=APP_DIR)
    try:
        load.wait_ready(load.Client(f"http://127.0.0.1:{port}"), alive=lambda: run.proc.poll() is None)
        tally = load.drive(f"http://127.0.0.1:{port}", seconds=HEALTHY_S, seed=9, kinds=load.HEALTHY_KINDS,
                           close=True)
        rc = run.stop()
    finally:
        run.close()
    assert rc == 0, run.log()[-3000:]
    r = run.report()
    check_healthy_report(r, run.log())
    _check_processes(r, run, tally, leaking=False)


def _check_processes(r: dict, run: OtelLeakRun, tally, leaking: bool) -> None:
    """The arbiter (the command) ran no request; each worker reports its own pid, requests and memory, and
    wrote its final report on its way out."""
    by_pid = {p["pid"]: p for p in r["processes"]}
    workers = _pids(run.log())
    arbiter = next(p for p in r["processes"] if p["role"] == "command")
    assert set(by_pid) == workers | {arbiter["pid"]}, (sorted(by_pid), workers)
    assert arbiter["tasks_observed"] == 0 and arbiter["task_counts"] == {}
    assert tally.pids == workers
    for pid in workers:
        p = by_pid[pid]
        assert p["role"] == "child" and p["ppid"] == arbiter["pid"] and p["final"] is True, p
        served = {ROUTES[k]: n for k, n in tally.by_pid[pid].items()}
        assert all(p["task_counts"].get(route, 0) >= n for route, n in served.items()), (p["task_counts"], served)
        mem = p["memory"]
        if leaking:  # what this worker kept shows in its own memory, not in the arbiter's
            kept = served.get(LEAKY, 0) * 64 * 1024
            assert mem["rss_end_bytes"] - mem["rss_start_bytes"] > 0.5 * kept, (mem, kept)
        else:
            assert p["verdict"] == "no_leak", (pid, p["verdict"], p["tasks_observed"])
    if leaking:
        tops = {pid: (by_pid[pid]["verdict"], [s["task"] for s in by_pid[pid]["suspects"][:1]]) for pid in workers}
        assert ("leak", [LEAKY]) in tops.values(), tops  # a worker may still wait for its tier-2 window
