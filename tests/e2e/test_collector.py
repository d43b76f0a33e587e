"""The otelcol-leak collector, for real: configs validate with the built binary, OTLP in, Prometheus
(with resource labels and exemplars) and the trace store out, and workers unharmed by a collector
restart.

Metric and label names come from ``otel_leak.names`` (the collector's Prometheus naming is checked
against ``names.prom()`` on the way). The programs sending data use the OpenTelemetry SDK only.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from otel_leak import names

import _procs
from _procs import COLLECTOR_DIR

pytestmark = pytest.mark.e2e

EXPORTER_TIMEOUT_S = 2.0

# Every shipped collector configuration, as the binary is run with it (later files override earlier).
CONFIG_SETS = {
    "single": ["config.yaml"],
    "single+traces-to-file": ["config.yaml", "traces-to-file.yaml"],
    "agent": ["agent.yaml"],
    "gateway": ["config.yaml", "gateway.yaml"],
}


@pytest.mark.parametrize("config_set", sorted(CONFIG_SETS))
def test_shipped_configs_validate(collector_bin: str, config_set: str) -> None:
    res = _procs.validate_collector_config(collector_bin, [COLLECTOR_DIR / c for c in CONFIG_SETS[config_set]])
    assert res.returncode == 0, f"{config_set}: {res.stdout}\n{res.stderr}"


def test_shipped_configs_are_complete(collector_bin: str) -> None:
    """memory_limiter first and batch in every pipeline; every endpoint on 127.0.0.1 by default."""
    import yaml

    for config_set, files in CONFIG_SETS.items():
        merged: dict = {}
        for f in files:
            _deep_merge(merged, yaml.safe_load((COLLECTOR_DIR / f).read_text()))
        pipelines = merged["service"]["pipelines"]
        assert set(pipelines) == {"metrics", "traces", "logs"}, config_set
        for name, p in pipelines.items():
            assert p["processors"][0] == "memory_limiter", (config_set, name)
            assert "batch" in p["processors"], (config_set, name)
        text = "\n".join((COLLECTOR_DIR / f).read_text() for f in files)
        assert "0.0.0.0:" not in "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))


def test_jaeger_config_validates(jaeger_bin: str | None) -> None:
    if not jaeger_bin:
        _procs.missing("Jaeger v2 binary", "run `collector/build-tracestore.sh` first")
    res = _procs.validate_collector_config(jaeger_bin, [COLLECTOR_DIR / "jaeger.yaml"])
    assert res.returncode == 0, f"{res.stdout}\n{res.stderr}"


def test_typo_in_config_fails_validate_with_the_collectors_message(collector_bin: str, tmp_path: Path) -> None:
    good = (COLLECTOR_DIR / "config.yaml").read_text()
    assert "enable_open_metrics: true" in good

    typo = tmp_path / "typo-key.yaml"
    typo.write_text(good.replace("enable_open_metrics: true", "enable_open_metric: true"))
    res = _procs.validate_collector_config(collector_bin, [typo])
    assert res.returncode != 0
    assert "has invalid keys: enable_open_metric" in res.stderr, res.stderr
    assert "prometheus" in res.stderr

    dangling = tmp_path / "typo-reference.yaml"
    dangling.write_text(good.replace("exporters: [prometheus]", "exporters: [prometheuz]"))
    res = _procs.validate_collector_config(collector_bin, [dangling])
    assert res.returncode != 0
    assert 'references exporter "prometheuz" which is not configured' in res.stderr, res.stderr


# ------------------------------------------------------------------------------------------------
# OTLP in -> Prometheus (resource labels, exemplars) + trace store

SDK_PROGRAM = textwrap.dedent(
    """
    # A tiny SDK-only program: N task spans, a counter and a histogram recorded inside each span.
    import json, sys, time
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

    spec = json.loads(sys.argv[1])
    resource = Resource.create(spec["resource"])
    tp = TracerProvider(resource=resource)
    tp.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=spec["endpoint"], insecure=True),
                                             schedule_delay_millis=200))
    reader = PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=spec["endpoint"], insecure=True),
                                           export_interval_millis=500)
    mp = MeterProvider(resource=resource, metric_readers=[reader])
    tracer = tp.get_tracer("otel-leak-e2e")
    meter = mp.get_meter("otel-leak-e2e")
    counter = meter.create_counter(spec["counter"]["name"], unit=spec["counter"]["unit"])
    hist = meter.create_histogram(spec["histogram"]["name"], unit=spec["histogram"]["unit"])
    spans = []
    for i in range(spec["tasks"]):
        with tracer.start_as_current_span("run/e2e.task") as span:
            counter.add(1, {spec["attr"]: "e2e.task"})
            hist.record(4096 * (i + 1), {spec["attr"]: "e2e.task"})
            ctx = span.get_span_context()
            spans.append({"trace_id": format(ctx.trace_id, "032x"), "span_id": format(ctx.span_id, "016x")})
        # Exemplars go out with the export after the measurement; keep them coming for a few scrapes.
        time.sleep(spec["pause"])
    tp.force_flush(); mp.force_flush()
    tp.shutdown(); mp.shutdown()
    print(json.dumps(spans))
    """
)


def _run_sdk_program(endpoint: str, resource: dict[str, str], tmp_path: Path, tasks: int = 8) -> dict[str, str]:
    """Run SDK_PROGRAM against ``endpoint``; returns {trace_id: span_id} of its task spans."""
    counter, hist = names.TASK_COUNT, names.TASK_MEMORY_GROWTH
    spec = {
        "endpoint": endpoint,
        "resource": resource,
        "counter": {"name": counter.name, "unit": counter.unit},
        "histogram": {"name": hist.name, "unit": hist.unit},
        "attr": names.ATTR_TASK_NAME,
        "tasks": tasks,
        "pause": 0.5,
    }
    prog = tmp_path / "sdk_program.py"
    prog.write_text(SDK_PROGRAM)
    res = subprocess.run([sys.executable, str(prog), json.dumps(spec)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    spans = json.loads(res.stdout.strip().splitlines()[-1])
    return {s["trace_id"]: s["span_id"] for s in spans}


def _assert_labels_exemplars_and_traces(
    prometheus, tracestore, resource: dict[str, str], span_by_trace: dict[str, str], since: float, tasks: int = 8
) -> dict[str, str]:
    """The SDK program's data is in Prometheus under otel_leak.names' names, with the resource labels,
    and with exemplars whose trace/span ids the trace store has. Returns the histogram's labels."""
    counter, hist = names.TASK_COUNT, names.TASK_MEMORY_GROWTH
    service = resource[names.RES_SERVICE_NAME]
    sel = f'{names.LABEL_SERVICE}="{service}"'
    # The names the collector exposes are the names otel_leak.names says it does.
    hist_count = prometheus.wait_for(f"{hist.prom}_count{{{sel}}}", timeout=30)
    prometheus.wait_for(f"{counter.prom}{{{sel}}} >= {tasks}", timeout=30)

    labels = hist_count[0]["metric"]
    assert labels[names.LABEL_SERVICE] == service
    assert labels[names.LABEL_INSTANCE] == resource[names.RES_SERVICE_INSTANCE]
    assert labels[names.LABEL_VERSION] == resource[names.RES_SERVICE_VERSION]
    assert labels[names.LABEL_TASK] == "e2e.task"
    # Operators can group by them.
    grouped = prometheus.query(
        f"sum by ({names.LABEL_SERVICE}, {names.LABEL_INSTANCE}, {names.LABEL_VERSION}) ({counter.prom}{{{sel}}})"
    )
    assert len(grouped) == 1 and float(grouped[0]["value"][1]) == tasks, grouped

    # Exemplars: stored by Prometheus (exemplar-storage), trace id = one of our spans, and the trace
    # store has that very span.
    def exemplars(series: str) -> list[dict]:
        found = prometheus.query_exemplars(f"{series}{{{sel}}}", since, time.time() + 5)
        return [e for s in found for e in s["exemplars"]]

    for series in (f"{hist.prom}_bucket", counter.prom):
        exs = _procs.wait_until(lambda: exemplars(series), timeout=30, what=f"exemplars on {series}")
        linked = [e for e in exs if e["labels"].get("trace_id") in span_by_trace]
        assert linked, f"no exemplar of {series} carries one of our trace ids: {exs}"
        ex = linked[0]["labels"]
        assert ex["span_id"] == span_by_trace[ex["trace_id"]]
        stored = tracestore.wait_for_trace(ex["trace_id"], timeout=30)
        assert ex["span_id"] in stored, f"{tracestore.kind} has {stored} for trace {ex['trace_id']}"
    return labels


def _resource(prefix: str) -> dict[str, str]:
    service = f"{prefix}-{uuid.uuid4().hex[:6]}"
    return {
        names.RES_SERVICE_NAME: service,
        names.RES_SERVICE_INSTANCE: f"{service}-0",
        names.RES_SERVICE_VERSION: "1.2.3",
    }


def test_otlp_metrics_reach_prometheus_with_resource_labels_and_exemplars_linked_to_traces(
    collector, prometheus, tracestore, tmp_path: Path
) -> None:
    resource = _resource("e2e-sdk")
    since = time.time() - 5
    spans = _run_sdk_program(collector.otlp_grpc_url, resource, tmp_path)
    _assert_labels_exemplars_and_traces(prometheus, tracestore, resource, spans, since)


def test_agent_forwards_to_gateway(collector_factory, prometheus, tracestore, tmp_path: Path) -> None:
    """agent.yaml -> (config.yaml + gateway.yaml): the same guarantees through the two-tier setup, plus
    the agent's host.name for resources that had none."""
    gateway = collector_factory("gateway", configs=[COLLECTOR_DIR / "config.yaml", COLLECTOR_DIR / "gateway.yaml"])
    agent = collector_factory(
        "agent",
        configs=[COLLECTOR_DIR / "agent.yaml"],
        env={"OTEL_LEAK_GATEWAY_ENDPOINT": gateway.grpc_endpoint, "OTEL_LEAK_NODE_NAME": "node-e2e"},
        tracestore=False,
    )
    targets = list(prometheus.scrape_targets)
    prometheus.set_scrape_targets(targets + [gateway.prometheus_endpoint])
    try:
        resource = _resource("e2e-agent")
        since = time.time() - 5
        spans = _run_sdk_program(agent.otlp_grpc_url, resource, tmp_path)
        labels = _assert_labels_exemplars_and_traces(prometheus, tracestore, resource, spans, since)
        assert labels["host_name"] == "node-e2e"
        assert labels["instance"] == gateway.prometheus_endpoint  # exposed by the gateway, not the agent
    finally:
        prometheus.set_scrape_targets(targets)
        agent.stop()
        gateway.stop()


# ------------------------------------------------------------------------------------------------
# The collector goes away for 30 s: the worker must not notice

RESTART_WORKER = textwrap.dedent(
    """
    # Runs task spans (measured by otel_leak) until the stop file appears (or a hard limit), timing each.
    import json, os, sys, time
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind

    stop_file = sys.argv[1]
    tracer = trace.get_tracer("otel-leak-e2e.restart")
    durations, errors = [], 0
    t_start = time.monotonic()
    while not os.path.exists(stop_file) and time.monotonic() - t_start < 150:
        t0 = time.monotonic()
        try:
            with tracer.start_as_current_span("run/e2e.restart", kind=SpanKind.CONSUMER):
                sum(i * i for i in range(20000))
                time.sleep(0.05)
        except Exception as e:  # a task that fails is what this test is about
            errors += 1
            print("task failed:", repr(e), file=sys.stderr, flush=True)
        durations.append(time.monotonic() - t0)
    print("RESULT " + json.dumps({"durations": durations, "errors": errors}), flush=True)
    """
)


def test_worker_unharmed_when_collector_restarts(collector_factory, prometheus, start_worker, tmp_path: Path) -> None:
    col = collector_factory("collector-restart")
    prometheus.set_scrape_targets(prometheus.scrape_targets + [col.prometheus_endpoint])
    try:
        _restart_scenario(col, prometheus, start_worker, tmp_path)
    finally:
        prometheus.set_scrape_targets([t for t in prometheus.scrape_targets if t != col.prometheus_endpoint])
        col.stop()


def _restart_scenario(col, prometheus, start_worker, tmp_path: Path) -> None:
    service = f"e2e-restart-{uuid.uuid4().hex[:6]}"
    counter = names.TASK_COUNT
    stop_file = tmp_path / "stop"
    script = tmp_path / "restart_worker.py"
    script.write_text(RESTART_WORKER)
    worker = start_worker(
        [sys.executable, str(script), str(stop_file)],
        name="restart-worker",
        service_name=service,
        collector=col,
        timeout_s=EXPORTER_TIMEOUT_S,
        export_interval_ms=1000,
    )
    # otel_leak's own per-task count for the worker's task spans
    expr = f'{counter.prom}{{{names.LABEL_SERVICE}="{service}",{names.LABEL_TASK}="run/e2e.restart"}}'
    try:
        prometheus.wait_for(f"{expr} > 0", timeout=30)
        col.stop()
        down_at = time.time()
        before = prometheus.value(expr)
        time.sleep(30)
        assert worker.alive, f"worker died while the collector was down:\n{worker.log_tail()}"
        col.start()
        restarted_at = time.time()
        # Metrics resume: the cumulative count after the restart is past the count before the stop.
        prometheus.wait_for(f"{expr} > {before}", timeout=30)
        resumed_after = time.time() - restarted_at
        stop_file.write_text("stop")
        _procs.wait_until(lambda: not worker.alive, timeout=30, what="worker exit")
    finally:
        stop_file.write_text("stop")
    assert worker.returncode == 0, worker.log_tail()
    result_line = next(ln for ln in reversed(worker.log_text().splitlines()) if ln.startswith("RESULT "))
    result = json.loads(result_line[len("RESULT ") :])
    durations = result["durations"]
    assert result["errors"] == 0, worker.log_tail()
    assert len(durations) > 100, "the worker ran too few tasks to say anything"
    typical = statistics.median(durations)
    slowest = max(durations)
    assert slowest - typical < EXPORTER_TIMEOUT_S, (
        f"a task took {slowest:.3f}s (median {typical:.3f}s) with the collector down since {down_at:.0f}"
    )
    print(
        f"restart: {len(durations)} tasks, median {typical * 1000:.0f} ms, slowest {slowest * 1000:.0f} ms, "
        f"metrics back {resumed_after:.1f}s after restart"
    )


def _deep_merge(dst: dict, src: dict) -> dict:
    for k, v in (src or {}).items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _deep_merge(dst[k], v)
        else:
            dst[k] = v
    return dst
