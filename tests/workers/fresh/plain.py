"""Workers without a framework for the packaging test, run by a fresh virtual environment's Python.

    python plain.py manual SECONDS [REPORT_DIR]   # task spans from otel_leak.task_span
    python plain.py api SECONDS [REPORT_DIR]      # OpenTelemetry API CONSUMER spans only, no otel_leak import

Three task types in batches whose mix changes from batch to batch, about 100 tasks/s; one type keeps
24 KiB per call (``ingest`` / ``refresh_cache``), the others allocate and free. Runs for SECONDS, or less once
a report in REPORT_DIR declares a leak and its suspects are named. Prints one line, ``RESULT`` and JSON: tasks per
type, the tracer provider's class and its resource's ``telemetry.auto.version`` (a distro's configurator
sets it).
"""

import json
import os
import random
import sys
import time

from opentelemetry import trace
from opentelemetry.trace import SpanKind

from until import declared

KEEP = {}


def leaky(i):
    KEEP[i] = os.urandom(24 * 1024)  # never evicted: the leak


def transient(i):
    buf = bytearray(64 * 1024)
    buf[0] = i & 0xFF
    return sum(buf[:16])


def small(i):
    return ("job %d " % i * 20).upper()


def main():
    mode, seconds = sys.argv[1], float(sys.argv[2])
    report_dir = sys.argv[3] if len(sys.argv) > 3 else None
    if mode == "manual":
        import otel_leak

        work = {"ingest": leaky, "render": transient, "notify": small}
        span = otel_leak.task_span
    else:
        tracer = trace.get_tracer("fresh-env-worker")
        work = {"refresh_cache": leaky, "charge_card": transient, "send_receipt": small}

        def span(name):
            return tracer.start_as_current_span(name, kind=SpanKind.CONSUMER)

    rng = random.Random(3)
    counts = dict.fromkeys(work, 0)
    i = 0
    start = time.monotonic()
    while time.monotonic() - start < seconds and not (report_dir and declared(report_dir)):
        batch = [name for name in work for _ in range(rng.randint(2, 12))]
        rng.shuffle(batch)
        for name in batch:
            with span(name):
                work[name](i)
            counts[name] += 1
            i += 1
            time.sleep(max(0.0, start + i * 0.01 - time.monotonic()))  # ~100 tasks/s
    provider = trace.get_tracer_provider()
    resource = getattr(provider, "resource", None)
    auto = resource.attributes.get("telemetry.auto.version") if resource is not None else None
    print("RESULT", json.dumps({"counts": counts, "provider": type(provider).__name__, "auto_version": auto}), flush=True)


if __name__ == "__main__":
    main()
