"""A worker with no framework instrumentation: the manual API plus a plain SDK CONSUMER span loop.

Task types: 'grow' retains 256 KiB per call, 'churn' allocates and frees, 'sdk_job' is a plain SDK span.
Prints one line 'WORKER-DONE <pid>' when finished.
"""

import os
import sys

from opentelemetry import trace
from opentelemetry.trace import SpanKind

import otel_leak

KEEP = []


@otel_leak.task("grow")
def grow():
    KEEP.append(bytearray(256 * 1024))


def churn():
    with otel_leak.task_span("churn"):
        data = [bytes(1000) for _ in range(100)]
        del data


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    tracer = trace.get_tracer("plain-worker")
    for _ in range(n):
        grow()
        churn()
        with tracer.start_as_current_span("sdk_job", kind=SpanKind.CONSUMER):
            sum(range(1000))
    print(f"WORKER-DONE {os.getpid()}", flush=True)


if __name__ == "__main__":
    main()
