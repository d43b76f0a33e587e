"""What the detector's bounded-holder look costs (otel_leak.detector.bounded), in a process that has imported
what a Celery worker imports (a breakdown of the sampler thread's work, not a cost to the worker's tasks:
it runs on the sampler thread, at window closes, and a search at most every 10 s and 0.2 % of the time).

    .venv/bin/python bench/bench_bounded.py [--rounds 20]

Prints the modules imported, the holders found, the median and max of: the first search (every class's
namespace read), a repeated search (classes already read are skipped), and a re-read of the known holders.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=20)
    a = ap.parse_args()
    import asyncio  # noqa: F401
    import concurrent.futures  # noqa: F401
    import email  # noqa: F401
    import http.client  # noqa: F401
    import json  # noqa: F401
    import logging  # noqa: F401
    import urllib.request  # noqa: F401

    import celery  # noqa: F401
    import celery.app.base  # noqa: F401
    import kombu  # noqa: F401
    import opentelemetry.sdk.metrics  # noqa: F401
    import opentelemetry.sdk.trace  # noqa: F401
    import redis  # noqa: F401

    from otel_leak.detector.bounded import BoundedFills

    firsts, repeats, reads = [], [], []
    holders = 0
    for _ in range(a.rounds):
        b = BoundedFills()
        b.search(time.monotonic())
        firsts.append(b.cost)
        b.search(time.monotonic())
        repeats.append(b.cost)
        t0 = time.perf_counter()
        b.look()
        reads.append(time.perf_counter() - t0)
        holders = len(b.holders)

    def ms(xs):
        return f"median {statistics.median(xs) * 1e3:.2f} ms, max {max(xs) * 1e3:.2f} ms"

    print(f"modules: {len(sys.modules)}, bounded holders found: {holders}, rounds: {a.rounds}")
    print(f"first search: {ms(firsts)}")
    print(f"repeated search: {ms(repeats)}")
    print(f"re-read of the holders: median {statistics.median(reads) * 1e6:.0f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
