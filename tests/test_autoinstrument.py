"""Workers under the real ``opentelemetry-instrument``, exports read back from the console exporters."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from otel_leak import names
from otel_leak.instrumentor import configurator_installed
from tests.conftest import ROOT, VENV_BIN, instrumented_env, parse_console_exports

WORKER = ROOT / "tests" / "workers" / "plain_worker.py"


def run_instrumented(args: list[str], timeout: float = 90, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(VENV_BIN / "opentelemetry-instrument"), sys.executable, *args],
        env=instrumented_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def test_task_spans_and_exemplars_under_opentelemetry_instrument():
    r = run_instrumented([str(WORKER), "30"])
    assert r.returncode == 0, r.stderr
    assert "WORKER-DONE" in r.stdout
    spans, points = parse_console_exports(r.stdout)
    tasks = [s for s in spans if names.SPAN_RSS_DELTA in s["attributes"]]
    by_name: dict[str, list] = {}
    for s in tasks:
        by_name.setdefault(s["attributes"][names.SPAN_TASK_NAME], []).append(s)
    assert {k: len(v) for k, v in by_name.items()} == {"grow": 30, "churn": 30, "sdk_job": 30}
    for s in tasks:
        a = s["attributes"]
        assert a[names.SPAN_RSS_END] > 0
        assert isinstance(a[names.SPAN_GC_COLLECTIONS], int)
        assert a[names.SPAN_GC_PAUSE] >= 0
    # 'grow' keeps 256 KiB per call: its spans show it
    assert sum(s["attributes"][names.SPAN_RSS_DELTA] for s in by_name["grow"]) >= 20 * 256 * 1024

    metrics = {p["metric"] for p in points}
    for m in names.PROCESS_METRICS:
        if m in (names.MEMORY_LIMIT, names.HEAP_TRACED):  # absent without a limit / without tracemalloc
            continue
        assert m.name in metrics, m.name
    assert {names.TASK_COUNT.name, names.TASK_MEMORY_GROWTH.name} <= metrics

    growth = [p for p in points if p["metric"] == names.TASK_MEMORY_GROWTH.name]
    exemplars = 0
    for p in growth:  # every exemplar points at an exported task span of the same task type
        task = p["attributes"][names.ATTR_TASK_NAME]
        trace_ids = {int(s["context"]["trace_id"], 16) for s in by_name[task]}
        for e in p.get("exemplars", []):
            assert e["trace_id"] in trace_ids
            exemplars += 1
    assert any(p["attributes"][names.ATTR_TASK_NAME] == "grow" and p.get("exemplars") for p in growth)
    assert exemplars
    counts = {}
    for p in points:
        if p["metric"] == names.TASK_COUNT.name:
            counts[p["attributes"][names.ATTR_TASK_NAME]] = p["value"]  # cumulative: last one wins
    assert counts == {"grow": 30, "churn": 30, "sdk_job": 30}


def test_disabled_by_name_through_otel_python_disabled_instrumentations():
    r = run_instrumented([str(WORKER), "5"], OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="otel_leak")
    assert r.returncode == 0, r.stderr
    spans, points = parse_console_exports(r.stdout)
    assert len(spans) == 15
    assert not any(names.SPAN_RSS_DELTA in s["attributes"] for s in spans)
    assert not any(p["metric"].startswith("otel_leak.") for p in points)


def test_invalid_setting_warns_once_and_the_worker_runs():
    r = run_instrumented([str(WORKER), "5"], OTEL_PYTHON_LEAK_MAX_TASK_TYPES="many", OTEL_PYTHON_LEAK_FLOOR_WINDOW="-3")
    assert r.returncode == 0, r.stderr
    assert "WORKER-DONE" in r.stdout
    assert r.stderr.count("OTEL_PYTHON_LEAK_MAX_TASK_TYPES") == 1
    assert "using the default 100" in r.stderr
    assert r.stderr.count("OTEL_PYTHON_LEAK_FLOOR_WINDOW") == 1
    spans, _ = parse_console_exports(r.stdout)
    assert sum(names.SPAN_RSS_DELTA in s["attributes"] for s in spans) == 15


def test_a_probe_that_raises_disables_itself_and_tasks_succeed():
    code = f"""
import runpy, sys
from otel_leak.instrumentor import LeakInstrumentor
mem = LeakInstrumentor.runtime.memory
def boom(*a):
    raise OSError("simulated /proc failure")
mem._fd = -1
mem._read = boom
sys.argv = ["plain_worker.py", "10"]
runpy.run_path({str(WORKER)!r}, run_name="__main__")
"""
    r = run_instrumented(["-c", code])
    assert r.returncode == 0, r.stderr
    assert "WORKER-DONE" in r.stdout
    assert r.stderr.count("the memory probe failed") == 1
    spans, _ = parse_console_exports(r.stdout)
    assert len(spans) == 30  # every task ran and was traced, just without memory attributes


def test_forked_worker_processes_measure_themselves():
    code = """
import multiprocessing as mp, os
import otel_leak
from opentelemetry import trace
BALLAST = []

@otel_leak.task("hold")
def hold():
    BALLAST.append(bytearray(96 * 1024 * 1024))

@otel_leak.task("probe")
def probe():
    pass

def child(q):
    hold(); probe()
    trace.get_tracer_provider().force_flush()
    with open('/proc/self/status') as f:
        rss = [int(l.split()[1]) * 1024 for l in f if l.startswith('VmRSS')][0]
    q.put((os.getpid(), rss))

if __name__ == '__main__':
    ctx = mp.get_context('fork')
    q = ctx.Queue()
    p = ctx.Process(target=child, args=(q,)); p.start(); pid, rss = q.get(); p.join()
    print('CHILD', pid, rss, flush=True)
    probe()
"""
    r = run_instrumented(["-c", code])
    assert r.returncode == 0, r.stderr
    line = next(l for l in r.stdout.splitlines() if l.startswith("CHILD"))
    _, child_pid, child_rss = line.split()
    spans, _ = parse_console_exports(r.stdout)
    probes = [s["attributes"][names.SPAN_RSS_END] for s in spans if s["name"] == "probe"]
    assert len(probes) == 2
    child_span_rss = max(probes)
    parent_span_rss = min(probes)
    assert abs(child_span_rss - int(child_rss)) < 8 * 1024 * 1024  # the child's own memory
    assert child_span_rss > parent_span_rss + 80 * 1024 * 1024


def test_without_an_sdk_the_instrumentor_does_nothing_quietly():
    code = """
import sys
sys.modules['opentelemetry.sdk'] = None          # as if the SDK were not installed
sys.modules['opentelemetry.sdk.trace'] = None
import otel_leak
from otel_leak.instrumentor import LeakInstrumentor
otel_leak.instrument()
assert LeakInstrumentor.runtime is None
with otel_leak.task_span('job'):
    pass
@otel_leak.task
def f():
    return 42
assert f() == 42
print('OK')
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "OK"
    assert r.stderr == ""


# ------------------------------------------------------------------------------------------------------
# Setting up the SDK where nothing else does (no opentelemetry-distro)

PROVIDERS = """
import json, os
from opentelemetry import metrics, trace
import otel_leak
from otel_leak import instrumentor
from otel_leak.instrumentor import LeakInstrumentor

def state():
    tp = trace.get_tracer_provider()
    procs = getattr(getattr(tp, "_active_span_processor", None), "_span_processors", ())
    return {"tracer": type(tp).__name__, "meter": type(metrics.get_meter_provider()).__name__,
            "attached": LeakInstrumentor.runtime is not None, "processors": [type(p).__name__ for p in procs]}
"""


def _providers(body: str, first: str = "", **env: str) -> tuple[list[dict], str]:
    """Run PROVIDERS, ``first`` and ``body`` in a fresh interpreter (no auto-instrumentation); the JSON
    lines it prints, and its stderr."""
    clean = {k: v for k, v in instrumented_env().items() if not k.startswith("OTEL_")}
    clean.update(env)
    r = subprocess.run([sys.executable, "-c", PROVIDERS + first + textwrap.dedent(body)], env=clean, capture_output=True,
                       text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")], r.stderr


def test_instrument_by_hand_sets_up_the_sdk_without_exporters_when_nothing_did():
    (s,), err = _providers("""
        otel_leak.instrument()
        with otel_leak.task_span("job"):
            pass
        print(json.dumps(dict(state(), tasks=LeakInstrumentor.runtime.processor.stats.total)))
    """)
    assert s == {"tracer": "TracerProvider", "meter": "MeterProvider", "attached": True,
                 "processors": ["TaskSpanProcessor"], "tasks": 1}, err
    assert err == ""


def test_instrument_by_hand_exports_what_otel_exporter_variables_name():
    (s,), err = _providers("""
        otel_leak.instrument()
        print(json.dumps(state()))
    """, OTEL_TRACES_EXPORTER="console")
    assert s["processors"] == ["BatchSpanProcessor", "TaskSpanProcessor"] and s["attached"], err
    # an exporter that is not installed: one warning, the providers without exporters, otel-leak attached
    (s,), err = _providers("""
        otel_leak.instrument()
        print(json.dumps(state()))
    """, OTEL_TRACES_EXPORTER="no_such_exporter")
    assert s["processors"] == ["TaskSpanProcessor"] and s["attached"]
    assert err.count("otel-leak:") == 1 and "no_such_exporter" in err and "without exporters" in err


def test_providers_the_application_set_are_used_unchanged():
    (s,), err = _providers("""
        from opentelemetry.sdk.trace import TracerProvider
        mine = TracerProvider()
        trace.set_tracer_provider(mine)
        otel_leak.instrument()
        print(json.dumps(dict(state(), same=trace.get_tracer_provider() is mine)))
    """)
    assert s["same"] and s["attached"] and s["meter"] == "_ProxyMeterProvider", (s, err)


def test_the_entry_point_sets_up_the_sdk_only_when_asked_and_no_configurator_is_installed():
    body = """
        LeakInstrumentor().instrument(skip_dep_check=True)   # what opentelemetry-instrument calls
        print(json.dumps(state()))
        otel_leak.instrument()                                # a later call by hand still attaches
        print(json.dumps(state()))
    """
    # plain opentelemetry-instrument without a distro: standard behaviour, no SDK behind the user's back
    no_distro = "instrumentor.configurator_installed = lambda: False\n"
    (first, by_hand), _ = _providers(body, no_distro)
    assert first["tracer"] == "ProxyTracerProvider" and not first["attached"]
    assert by_hand["tracer"] == "TracerProvider" and by_hand["attached"]
    # what otel-leak run asks for
    (first, _), _ = _providers(body, no_distro, OTEL_PYTHON_LEAK_SETUP_SDK="true")
    assert first["tracer"] == "TracerProvider" and first["attached"]
    # a configurator is installed (this environment has opentelemetry-distro's): it owns the providers
    assert configurator_installed()
    (first, _), _ = _providers(body, OTEL_PYTHON_LEAK_SETUP_SDK="true")
    assert first["tracer"] == "ProxyTracerProvider" and not first["attached"]
