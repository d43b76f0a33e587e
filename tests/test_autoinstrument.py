"""Workers under the real ``opentelemetry-instrument``, exports read back from the console exporters."""

from __future__ import annotations

import subprocess
import sys

from otel_leak import names
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
