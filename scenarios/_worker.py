"""Tiny worker loop shared by the scenarios: interleaved task types at a paced rate.

Each scenario defines task functions and calls :func:`run`. Task spans come from the manual API
(``otel_leak.task_span``) or, with ``spans="sdk"``, from plain SDK CONSUMER spans. Every task also does a
little transient work (allocate, use, drop) so no task's memory delta is clean.
"""

from __future__ import annotations

import os
import random
import threading
import time

from opentelemetry import trace
from opentelemetry.trace import SpanKind

import otel_leak

DURATION = float(os.environ.get("SCENARIO_DURATION", "40"))


def transient(rnd: random.Random, size: int = 20_000) -> int:
    """Allocate and drop some short-lived objects, like real task bodies do."""
    junk = [{"i": i, "s": "x" * rnd.randint(10, 200)} for i in range(size // 200)]
    return len(junk)


def run(
    tasks: dict,
    *,
    rate: float = 40.0,
    duration: float | None = None,
    threads: int = 1,
    weights: list[float] | None = None,
    spans: str = "manual",
    seed: int = 1,
    between=None,
    transient_bytes: int = 20_000,
) -> None:
    """Run ``tasks`` (name -> fn(i, rnd)) interleaved at about ``rate`` tasks/s for ``duration`` s.

    ``weights`` is a list (fixed mix) or a callable ``weights(seconds_since_start) -> list`` (a mix that
    changes over time, as real queues do). ``transient_bytes`` sizes each task's short-lived work.
    """
    duration = DURATION if duration is None else duration
    names_ = list(tasks)
    tracer = trace.get_tracer("scenario")
    t_start = time.monotonic()
    stop_at = t_start + duration
    per_thread = rate / threads

    def loop(k: int) -> None:
        rnd = random.Random(seed * 100 + k)
        i = 0
        next_t = time.monotonic()
        while True:
            now = time.monotonic()
            if now >= stop_at:
                return
            w = weights(now - t_start) if callable(weights) else weights
            name = rnd.choices(names_, weights=w)[0]
            if spans == "sdk":
                with tracer.start_as_current_span(name, kind=SpanKind.CONSUMER):
                    tasks[name](i, rnd)
                    transient(rnd, transient_bytes)
            else:
                with otel_leak.task_span(name):
                    tasks[name](i, rnd)
                    transient(rnd, transient_bytes)
            i += 1
            if between is not None:
                between(i, rnd)
            next_t += rnd.expovariate(per_thread)
            delay = next_t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -1.0:
                next_t = time.monotonic()

    if threads == 1:
        loop(0)
    else:
        ts = [threading.Thread(target=loop, args=(k,)) for k in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
