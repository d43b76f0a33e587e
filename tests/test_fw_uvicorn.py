"""uvicorn serving a Starlette app with async handlers that await mid-request: the SERVER spans of
opentelemetry-instrumentation-starlette are the task spans (otel-leak has no uvicorn integration of its
own), named by the route template, while the requests one process serves interleave.

Everything is real: ``uvicorn asgi_app:app --workers 1`` (one process) and ``--workers 2`` (a supervisor
that starts its workers with multiprocessing's *spawn*: each is a fresh interpreter, auto-instrumented
from scratch through the inherited ``PYTHONPATH``), started in examples/web_leak, under
``opentelemetry-instrument`` (console exporters) or ``otel-leak run``, driven over HTTP by
examples/web_leak/load.py from several threads.
"""

from __future__ import annotations

import asyncio
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
ROUTES = {"leak": "GET /users/{user_id}", "resize": "GET /images/resize", "hello": "GET /hello/{name}"}
LEAKY = ROUTES["leak"]
LOAD_LIMIT_S = 120.0
HEALTHY_S = 15.0  # tier 1 calls no_leak after DETECTOR_MIN_WINDOWS (5) windows: ~5-8 s here


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
    for mod in ("uvicorn", "starlette", "opentelemetry.instrumentation.starlette", "psutil"):
        if IN_CI:
            __import__(mod)
        else:
            pytest.importorskip(mod)


def _uvicorn(port: int, workers: int) -> list[str]:
    args = [str(VENV_BIN / "uvicorn"), "asgi_app:app", "--host", "127.0.0.1", "--port", str(port),
            "--workers", str(workers), "--no-access-log"]
    if workers > 1:
        # The supervisor kills a child that has not answered its health check within 5 s of being spawned;
        # auto-instrumenting a fresh interpreter takes seconds on a loaded 2-core machine.
        args += ["--timeout-worker-healthcheck", "60"]
    return args


def _rc(workers: int) -> int:
    """A single uvicorn process ends by the SIGTERM it re-raises after its graceful shutdown; the
    supervisor of --workers N exits 0."""
    return -signal.SIGTERM if workers == 1 else 0


@pytest.fixture(scope="module")
def _entry_point():
    """Auto-instrumentation loads the uvicorn integration through its entry point."""
    from importlib.metadata import entry_points

    eps = [e for e in entry_points(group="opentelemetry_instrumentor") if e.name == "otel_leak_uvicorn"]
    assert eps and eps[0].value == "otel_leak.integrations.uvicorn:UvicornInstrumentor", \
        "the otel_leak_uvicorn opentelemetry_instrumentor entry point is not installed"


def _servers(log: str) -> set[int]:
    """Pids of the processes that serve (uvicorn logs "Started server process [pid]" in each)."""
    return {int(line.rsplit("[", 1)[1].rstrip("]")) for line in log.splitlines() if "Started server process [" in line}


# ---------------------------------------------------------------------------------------------- in process
def test_uninstrument_restores_capture_signals():
    from uvicorn.server import Server

    from otel_leak.integrations.uvicorn import UvicornInstrumentor

    original = Server.__dict__["capture_signals"]
    inst = UvicornInstrumentor()
    inst.instrument()
    try:
        assert Server.__dict__["capture_signals"] is not original
        assert Server.__dict__["capture_signals"].__wrapped__ is original
    finally:
        inst.uninstrument()
    assert Server.__dict__["capture_signals"] is original


def test_a_process_that_handles_sigterm_itself_is_not_flushed_early(monkeypatch):
    """A real uvicorn Server in this (main) thread, stopped by SIGTERM: uvicorn raises the signal again
    after its shutdown; with a handler of the application's in place (not the default action) the process
    goes on, so nothing is flushed early (atexit will), and the handler still gets the signal."""
    import threading

    import uvicorn

    from otel_leak.integrations import uvicorn as integration

    flushed, handled = [], []
    monkeypatch.setattr(integration, "final_flush", lambda: flushed.append(1))
    previous = signal.signal(signal.SIGTERM, lambda *a: handled.append(a[0]))
    inst = integration.UvicornInstrumentor()
    inst.instrument()
    try:
        server = uvicorn.Server(uvicorn.Config(_example("asgi_app").app, host="127.0.0.1", port=free_port(),
                                               log_level="warning", lifespan="off"))

        def stop_when_started():
            while not server.started:
                threading.Event().wait(0.05)
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=stop_when_started, daemon=True).start()
        server.run()
    finally:
        inst.uninstrument()
        signal.signal(signal.SIGTERM, previous)
    assert handled == [signal.SIGTERM] and flushed == []


def test_interleaved_requests_keep_their_route_identity(monkeypatch):
    """The real Starlette instrumentation on the example app, otel-leak's processor on the real SDK, and
    40 requests in flight at once on one event loop."""
    from opentelemetry.instrumentation.starlette import StarletteInstrumentor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind, StatusCode
    from starlette.routing import Route

    from otel_leak.instrumentor import Runtime

    monkeypatch.setenv("OTEL_PYTHON_LEAK_DETECTOR", "false")
    exporter = InMemorySpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    mp = MeterProvider(metric_readers=[InMemoryMetricReader()])
    runtime = Runtime(tp, mp)
    runtime.sampler.stop()
    mod = _example("asgi_app")

    async def boom(request):
        await asyncio.sleep(0.001)
        raise ZeroDivisionError(request.path_params["n"])

    mod.app.router.routes.append(Route("/boom/{n}", boom))
    StarletteInstrumentor.instrument_app(mod.app, tracer_provider=tp, meter_provider=mp)

    async def get(path: str) -> int:
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
                 "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
                 "headers": [(b"host", b"test")], "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
        sent = []

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(msg):
            sent.append(msg)

        await mod.app(scope, receive, send)
        return sent[0]["status"]

    paths = [f"/users/u{i}" for i in range(10)] + ["/images/resize"] * 10 + [f"/hello/h{i}" for i in range(10)]
    paths += [f"/no/such/{i}" for i in range(10)]

    async def main():
        statuses = await asyncio.gather(*(get(p) for p in paths))
        with pytest.raises(ZeroDivisionError, match="7"):
            await get("/boom/7")
        return statuses

    try:
        statuses = asyncio.run(main())
    finally:
        StarletteInstrumentor.uninstrument_app(mod.app)
        runtime.shutdown()
    assert statuses == [200] * 30 + [404] * 10
    spans = exporter.get_finished_spans()
    measured = [s for s in spans if names.SPAN_RSS_DELTA in s.attributes]
    # one task span per request; the ASGI instrumentation's "http send" children are not task spans
    assert all(s.kind is SpanKind.SERVER for s in measured) and len(measured) == 41
    assert all(names.SPAN_RSS_DELTA not in s.attributes for s in spans if s.kind is SpanKind.INTERNAL)
    counts = {}
    for s in measured:
        counts[s.attributes[names.SPAN_TASK_NAME]] = counts.get(s.attributes[names.SPAN_TASK_NAME], 0) + 1
    assert counts == {LEAKY: 10, ROUTES["resize"]: 10, ROUTES["hello"]: 10, "GET": 10, "GET /boom/{n}": 1}
    (err,) = [s for s in measured if s.attributes[names.SPAN_TASK_NAME] == "GET /boom/{n}"]
    assert err.status.status_code is StatusCode.ERROR
    assert len(mod._USERS) == 10


# ---------------------------------------------------------------------------- under opentelemetry-instrument
@pytest.mark.parametrize("workers", [1, 2])
def test_each_worker_exports_its_own_server_spans(workers, tmp_path, _entry_point):
    """Export intervals of a minute: what reaches the output was flushed by each worker as it exited,
    killed by the SIGTERM uvicorn raises again after its graceful shutdown (no atexit: the uvicorn
    integration flushes first)."""
    import psutil

    port = free_port()
    out = tmp_path / "uvicorn.out"
    env = instrumented_env(OTEL_BSP_SCHEDULE_DELAY="60000", OTEL_METRIC_EXPORT_INTERVAL="60000",
                           OTEL_EXPERIMENTAL_RESOURCE_DETECTORS="process", OTEL_SERVICE_NAME=f"uvicorn-{workers}")
    with open(out, "w") as f:
        main = subprocess.Popen([str(VENV_BIN / "opentelemetry-instrument"), *_uvicorn(port, workers)],
                                cwd=APP_DIR, env=env, stdout=f, stderr=subprocess.STDOUT)
    try:
        load.wait_ready(load.Client(f"http://127.0.0.1:{port}"), alive=lambda: main.poll() is None)
        children = [c.cmdline() for c in psutil.Process(main.pid).children()]
        tally = load.drive(f"http://127.0.0.1:{port}", seconds=2.5, seed=7, keep=True, close=True, threads=8)
        main.send_signal(signal.SIGTERM)
        assert main.wait(timeout=60) == _rc(workers)
    finally:
        if main.poll() is None:
            main.kill()
            main.wait(10)
    text = out.read_text()
    expected = {ROUTES[k]: n for k, n in tally.sent.items()}
    expected[ROUTES["hello"]] += 1  # wait_ready's request
    spans = check_task_spans(text, "", expected)
    servers = _servers(text)
    if workers == 1:
        assert servers == {main.pid}
    else:  # spawned, not forked: fresh interpreters that instrumented themselves
        spawned = [c for c in children if any("multiprocessing.spawn" in a for a in c)]
        assert len(spawned) == 2 and len(servers) == 2 and main.pid not in servers, (children, servers)
    assert tally.pids == servers, (tally.pids, servers)
    served = {trace_id: pid for _, trace_id, pid in tally.requests}
    assert len({int(s["context"]["trace_id"], 16) for s in spans} & set(served)) == tally.total
    for s in spans:
        res = s["resource"]["attributes"]
        assert res["process.pid"] in servers, res
        tid = int(s["context"]["trace_id"], 16)
        if tid in served:
            assert res["process.pid"] == served[tid], (s["name"], res["process.pid"], served[tid])
    _, points = parse_console_exports(text)
    task_points = [p for p in points if p["metric"] == names.TASK_MEMORY_GROWTH.name]
    assert {p["attributes"][names.SPAN_PID] for p in task_points} <= servers
    for p in task_points:
        for e in p.get("exemplars", []):
            if e["trace_id"] in served:
                assert served[e["trace_id"]] == p["attributes"][names.SPAN_PID], (e, p["attributes"])


# ---------------------------------------------------------------------------------------- under otel-leak run
def test_leaking_route_is_the_top_suspect_with_two_workers(tmp_path, _entry_point):
    port = free_port()
    run = OtelLeakRun(tmp_path, _uvicorn(port, 2), cwd=APP_DIR)
    try:
        load.wait_ready(load.Client(f"http://127.0.0.1:{port}"), alive=lambda: run.proc.poll() is None)
        tally = load.drive(f"http://127.0.0.1:{port}", seconds=LOAD_LIMIT_S, seed=5, close=True, threads=8,
                           until=lambda: run.declared(LEAKY))
        rc = run.stop()
    finally:
        run.close()
    assert rc == 0, run.log()[-3000:]
    r = run.report()
    check_leak_report(r, LEAKY, APP_DIR / "asgi_app.py", "_USERS[user_id] =", run.log())
    assert any(p.get("complete") and p["text"].endswith("asgi_app['_USERS']") for p in r["retention_paths"])
    _check_processes(r, run, tally, leaking=True)


def test_healthy_routes_end_no_leak(tmp_path, _entry_point):
    port = free_port()
    run = OtelLeakRun(tmp_path, _uvicorn(port, 1), cwd=APP_DIR)
    try:
        load.wait_ready(load.Client(f"http://127.0.0.1:{port}"), alive=lambda: run.proc.poll() is None)
        tally = load.drive(f"http://127.0.0.1:{port}", seconds=HEALTHY_S, seed=9, kinds=load.HEALTHY_KINDS,
                           threads=8)
        rc = run.stop()
    finally:
        run.close()
    assert rc == 128 + signal.SIGTERM, run.log()[-3000:]
    r = run.report()
    assert r["signal"] == "SIGTERM"
    check_healthy_report(r, run.log())
    _check_processes(r, run, tally, leaking=False)


def _check_processes(r: dict, run: OtelLeakRun, tally, leaking: bool) -> None:
    """Each serving process reports its own pid, requests and memory, and wrote its final report on its way
    out; with --workers N the supervisor (the command) and multiprocessing's resource tracker ran none."""
    by_pid = {p["pid"]: p for p in r["processes"]}
    servers = _servers(run.log())
    command = next(p for p in r["processes"] if p["role"] == "command")
    assert tally.pids == servers
    others = [p for p in r["processes"] if p["pid"] not in servers]
    for p in others:  # the supervisor; multiprocessing's resource tracker (``python -c``, outlives it)
        assert p["tasks_observed"] == 0 and p["task_counts"] == {}, p
    assert len([p for p in others if p["pid"] != command["pid"] and p["argv"] != ["-c"]]) == 0, others
    for pid in servers:
        p = by_pid[pid]
        assert p["final"] is True, p
        if pid != command["pid"]:
            assert p["role"] == "child" and p["ppid"] == command["pid"], p
        served = {ROUTES[k]: n for k, n in tally.by_pid[pid].items()}
        assert all(p["task_counts"].get(route, 0) >= n for route, n in served.items()), (p["task_counts"], served)
        mem = p["memory"]
        if leaking:  # what this worker kept shows in its own memory
            kept = served.get(LEAKY, 0) * 64 * 1024
            assert mem["rss_end_bytes"] - mem["rss_start_bytes"] > 0.5 * kept, (mem, kept)
        else:
            assert p["verdict"] == "no_leak", (pid, p["verdict"], p["tasks_observed"])
    if leaking:
        assert len(servers) == 2 and command["pid"] not in servers
        tops = {pid: (by_pid[pid]["verdict"], [s["task"] for s in by_pid[pid]["suspects"][:1]]) for pid in servers}
        assert ("leak", [LEAKY]) in tops.values(), tops  # a worker may still wait for its tier-2 window
