"""Per-task overhead of the task span processor, as ratios against a bare SDK span measured in the same run.

    .venv/bin/python bench/bench_processor.py            # prints a table and writes out/bench_processor.json

Measures, interleaving the configurations round by round so machine noise hits all of them alike:
  * bare:   SDK ``start_span(kind=CONSUMER).end()`` with no processor
  * leak:   the same with otel-leak attached in its default configuration (metrics into an SDK MeterProvider)
  * fresh:  the same with START_READING_MAX_AGE_US=0 (a /proc read at every start as well as every end)
  * 1 ms worker throughput: tasks that busy-wait 1 ms, with and without otel-leak
  * flat memory: RSS growth over N task spans through the processor (default 1,000,000)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import time

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind

from otel_leak.instrumentor import Runtime
from otel_leak.probes import MemoryProbe


def make(with_leak: bool, start_max_age_us: str | None = None):
    tp = TracerProvider()
    runtime = None
    if with_leak:
        mp = MeterProvider(metric_readers=[InMemoryMetricReader()])
        env = "OTEL_PYTHON_LEAK_START_READING_MAX_AGE_US"
        saved = os.environ.get(env)
        if start_max_age_us is not None:
            os.environ[env] = start_max_age_us
        try:
            runtime = Runtime(tp, mp)
        finally:
            os.environ.pop(env, None)
            if saved is not None:
                os.environ[env] = saved
    return tp.get_tracer("bench"), runtime


def per_span_ns(tracer, n: int) -> float:
    start_span = tracer.start_span
    consumer = SpanKind.CONSUMER
    t0 = time.perf_counter_ns()
    for _ in range(n):
        start_span("run/task", kind=consumer).end()
    return (time.perf_counter_ns() - t0) / n


def busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def throughput(tracer, n: int, task_s: float, retain: int = 0) -> float:
    """Tasks/s for tasks that busy-wait ``task_s``; with ``retain``, each keeps that many bytes (so every
    task has a non-zero memory delta and takes the metric-recording path)."""
    start_span = tracer.start_span
    consumer = SpanKind.CONSUMER
    kept = []
    t0 = time.perf_counter()
    for _ in range(n):
        span = start_span("run/task", kind=consumer)
        busy(task_s)
        if retain:
            kept.append(bytes(retain))
        span.end()
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--spans", type=int, default=20_000, help="spans per round for the per-span cost")
    ap.add_argument("--tasks", type=int, default=1000, help="1 ms tasks per round for throughput")
    ap.add_argument("--flat", type=int, default=1_000_000, help="spans for the flat-memory check (0: skip)")
    ap.add_argument("--out", default="out/bench_processor.json")
    args = ap.parse_args()

    bare, _ = make(False)
    leak, runtime = make(True)
    runtime.sampler.stop()  # per-span cost: the task path alone
    # The same with every start read fresh (START_READING_MAX_AGE_US=0): two /proc reads per task.
    fresh, fresh_runtime = make(True, "0")
    fresh_runtime.sampler.stop()
    for t in (bare, leak, fresh):
        per_span_ns(t, 2000)
    bare_ns, leak_ns, fresh_ns, bare_tp, leak_tp = [], [], [], [], []
    gc.collect()
    for _ in range(args.rounds):
        bare_ns.append(per_span_ns(bare, args.spans))
        leak_ns.append(per_span_ns(leak, args.spans))
        fresh_ns.append(per_span_ns(fresh, args.spans))
    fresh_runtime.shutdown()
    # Throughput: everything otel-leak does in the process, including the sampler thread (floor, GC pause
    # histogram, the metric records moved off the task path, detector tier 1), against the same bare SDK.
    runtime.sampler.start()
    bare_rtp, leak_rtp = [], []
    for _ in range(max(3, args.rounds // 3)):
        bare_tp.append(throughput(bare, args.tasks, 0.001))
        leak_tp.append(throughput(leak, args.tasks, 0.001))
        bare_rtp.append(throughput(bare, args.tasks, 0.001, retain=8192))
        leak_rtp.append(throughput(leak, args.tasks, 0.001, retain=8192))
    runtime.sampler.stop()
    trb, trl = statistics.median(bare_rtp), statistics.median(leak_rtp)
    b, l, lf = statistics.median(bare_ns), statistics.median(leak_ns), statistics.median(fresh_ns)
    tb, tl = statistics.median(bare_tp), statistics.median(leak_tp)

    flat = None
    if args.flat:
        mem = MemoryProbe()
        per_span_ns(leak, 50_000)  # warm: task types, metric streams, allocator pools
        gc.collect()
        before = mem.rss()
        per_span_ns(leak, args.flat)
        gc.collect()
        after = mem.rss()
        flat = {"spans": args.flat, "rss_growth_bytes": after - before}

    result = {
        "bare_span_ns": round(b),
        "leak_span_ns": round(l),
        "added_ns_per_task_span": round(l - b),
        "ratio": round(l / b, 3),
        "fresh_start_span_ns": round(lf),
        "fresh_start_added_ns_per_task_span": round(lf - b),
        "throughput_1ms_bare_per_s": round(tb, 1),
        "throughput_1ms_leak_per_s": round(tl, 1),
        "throughput_cost_pct": round(100 * (tb - tl) / tb, 3),
        "throughput_1ms_retaining_bare_per_s": round(trb, 1),
        "throughput_1ms_retaining_leak_per_s": round(trl, 1),
        "throughput_retaining_cost_pct": round(100 * (trb - trl) / trb, 3),
        "flat_memory": flat,
        "rounds": args.rounds,
        "python": os.sys.version.split()[0],
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"bare SDK span            {b:8.0f} ns")
    print(f"with otel-leak           {l:8.0f} ns   ratio {l / b:.3f}")
    print(f"added per task span      {l - b:8.0f} ns")
    print(f"  every start read fresh {lf - b:8.0f} ns   (START_READING_MAX_AGE_US=0, ratio {lf / b:.3f})")
    print(f"1 ms tasks/s bare        {tb:8.1f}")
    print(f"1 ms tasks/s otel-leak   {tl:8.1f}   cost {100 * (tb - tl) / tb:.3f} %")
    print(f"1 ms tasks keeping 8 KiB: bare {trb:.1f}/s, otel-leak {trl:.1f}/s, cost {100 * (trb - trl) / trb:.3f} %")
    if flat:
        print(f"RSS growth over {flat['spans']:,} spans: {flat['rss_growth_bytes'] / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
