"""What one SDK histogram record costs: the call otel-leak makes once per task (a breakdown, not the cost).

    .venv/bin/python bench/bench_record.py      # ~5 s

``Histogram.record`` with a task's two attributes, without and with a context carrying a sampled span (what
otel-leak passes for the exemplar), 5 rounds of 20,000 calls, median microseconds per call.
"""

from __future__ import annotations

import statistics
import time

from opentelemetry.context import Context
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from opentelemetry.trace.propagation import _SPAN_KEY


def main() -> None:
    meter = MeterProvider(metric_readers=[InMemoryMetricReader()]).get_meter("bench")
    hist = meter.create_histogram("otel_leak.bench.growth", unit="By")
    attrs = {"otel_leak.task.name": "render", "process.pid": 1}
    ctx = Context({_SPAN_KEY: NonRecordingSpan(SpanContext(0x1234, 0x5678, is_remote=False,
                                                           trace_flags=TraceFlags(1)))})

    def plain():
        hist.record(1000, attrs)

    def with_context():
        hist.record(1000, attrs, context=ctx)

    def loop(f, n=20_000):
        t0 = time.perf_counter_ns()
        for _ in range(n):
            f()
        return (time.perf_counter_ns() - t0) / n / 1000

    for f in (plain, with_context):
        print(f"{f.__name__:13} {statistics.median(loop(f) for _ in range(5)):6.2f} us per record")


if __name__ == "__main__":
    main()
