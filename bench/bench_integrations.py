"""What otel-leak's framework integrations add per job, against each framework's own per-job cost, in one run.

    .venv/bin/python bench/bench_integrations.py                 # ~3 min; a table and out/bench_integrations.json
    .venv/bin/python bench/bench_integrations.py --rounds 3 --jobs 500   # quicker

Everything runs in this process with the real SDK (TracerProvider, MeterProvider with an in-memory reader) and
otel-leak's Runtime attached with its sampler and detector running, as ``otel_leak.instrument()`` sets them up.
Per framework, rounds alternate the integration off (no task span: the framework's own cost per job) and on
(task span + processor + background); the added cost per job is the difference of the medians. In the same
rounds a bare SDK span (start_span/end, no processor) and a span with otel-leak's processor are timed: the
issue's bounds are "at most a bare SDK span + 3 us" where otel-leak makes the span and "at most 3 us on top
of the span it measures" where an instrumentation makes it.

Frameworks without a broker round trip run in-process on their own in-memory brokers: Huey (MemoryHuey,
immediate mode: enqueue and execute in the caller), Dramatiq (StubBroker and a real Worker with 1 thread,
``broker.join``), taskiq (InMemoryBroker with ``await_inplace``: ``await task.kiq()`` runs the task, then the result). Job bodies are empty: the
framework's overhead is all there is to compare with.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind

import otel_leak
from otel_leak.instrumentor import LeakInstrumentor

BARE = TracerProvider()


def time_spans(tracer, n: int) -> float:
    start = tracer.start_span
    t0 = time.perf_counter_ns()
    for _ in range(n):
        start("job", kind=SpanKind.CONSUMER).end()
    return (time.perf_counter_ns() - t0) / n / 1000


def huey_case():
    from huey import MemoryHuey

    h = MemoryHuey("bench", immediate=True)

    @h.task()
    def noop():
        return None

    def run(n):
        t0 = time.perf_counter_ns()
        for _ in range(n):
            noop()
        return (time.perf_counter_ns() - t0) / n / 1000

    from otel_leak.integrations.huey import HueyInstrumentor

    return HueyInstrumentor(), run


def dramatiq_case():
    import dramatiq
    from dramatiq.brokers.stub import StubBroker

    from otel_leak.integrations.dramatiq import DramatiqInstrumentor

    def run(n):
        # A broker, an actor and a Worker per round: the integration joins a broker as its Worker is made.
        broker = StubBroker()
        broker.emit_after("process_boot")
        noop = dramatiq.actor(lambda: None, actor_name="noop", broker=broker, max_retries=0)
        worker = dramatiq.Worker(broker, worker_threads=1)
        worker.start()
        try:
            t0 = time.perf_counter_ns()
            for _ in range(n):
                noop.send()
            broker.join(noop.queue_name)
            worker.join()
            return (time.perf_counter_ns() - t0) / n / 1000
        finally:
            worker.stop()
            broker.close()

    return DramatiqInstrumentor(), run


def taskiq_case():
    from taskiq import InMemoryBroker

    broker = InMemoryBroker(await_inplace=True)  # kiq() runs the task in the caller's loop: no polling

    @broker.task
    async def noop():
        return None

    loop = asyncio.new_event_loop()  # one loop for the whole run: the broker lives in it
    loop.run_until_complete(broker.startup())

    async def many(n):
        t0 = time.perf_counter_ns()
        for _ in range(n):
            t = await noop.kiq()
            await t.wait_result(check_interval=0.0)
        return (time.perf_counter_ns() - t0) / n / 1000

    from otel_leak.integrations.taskiq import TaskiqInstrumentor

    return TaskiqInstrumentor(), lambda n: loop.run_until_complete(many(n))


CASES = {"huey": huey_case, "dramatiq": dramatiq_case, "taskiq": taskiq_case}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--jobs", type=int, default=2000, help="jobs per round")
    ap.add_argument("--spans", type=int, default=20000, help="spans per round for the span breakdown")
    ap.add_argument("--out", default="out/bench_integrations.json")
    args = ap.parse_args()

    tp = TracerProvider()
    mp = MeterProvider(metric_readers=[InMemoryMetricReader()])
    trace.set_tracer_provider(tp)
    metrics.set_meter_provider(mp)
    otel_leak.instrument()  # Runtime attached (sampler, detector) and every installed integration on
    assert LeakInstrumentor.runtime is not None
    leak_tracer, bare_tracer = tp.get_tracer("bench"), BARE.get_tracer("bench")

    cases = {}
    for name, make in CASES.items():
        try:
            inst, run = make()
        except Exception as exc:  # a framework not installed: said, not hidden
            print(f"{name}: skipped ({type(exc).__name__}: {exc})")
            continue
        cases[name] = (inst, run)
    results = {}
    spans = {"bare": [], "processor": []}
    per = {name: {"off": [], "on": []} for name in cases}
    for name, (inst, run) in cases.items():  # warm-up, both ways
        inst.uninstrument()
        run(200)
        inst.instrument()
        run(200)
    for _ in range(args.rounds):
        spans["bare"].append(time_spans(bare_tracer, args.spans))
        spans["processor"].append(time_spans(leak_tracer, args.spans))
        for name, (inst, run) in cases.items():
            inst.uninstrument()
            per[name]["off"].append(run(args.jobs))
            inst.instrument()
            per[name]["on"].append(run(args.jobs))
    bare_span = statistics.median(spans["bare"])
    proc_span = statistics.median(spans["processor"])
    results["spans_us"] = {"bare_sdk_span": round(bare_span, 2), "span_with_processor": round(proc_span, 2),
                           "processor_added": round(proc_span - bare_span, 2)}
    print(f"bare SDK span {bare_span:.2f} us; with otel-leak's processor {proc_span:.2f} us "
          f"(+{proc_span - bare_span:.2f} us on top of the span it measures)")
    print(f"{'framework':10} {'own us/job':>11} {'with otel-leak':>15} {'added':>8} {'bound (span+3)':>15}  ranges")
    for name, d in per.items():
        off, on = statistics.median(d["off"]), statistics.median(d["on"])
        added = on - off
        results[name] = {"own_us_per_job": round(off, 2), "with_otel_leak_us_per_job": round(on, 2),
                         "added_us_per_job": round(added, 2), "bound_us": round(bare_span + 3, 2),
                         "ratio": round(on / off, 3), "off_range": [round(min(d["off"]), 2), round(max(d["off"]), 2)],
                         "on_range": [round(min(d["on"]), 2), round(max(d["on"]), 2)]}
        print(f"{name:10} {off:11.1f} {on:15.1f} {added:+8.1f} {bare_span + 3:15.1f}  "
              f"off {min(d['off']):.1f}-{max(d['off']):.1f}, on {min(d['on']):.1f}-{max(d['on']):.1f}")
    results["rounds"], results["jobs_per_round"] = args.rounds, args.jobs
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
