"""Tier 1 alone on synthetic series: random-key caches that must never be declared, leaks that must be.

    .venv/bin/python bench/tier1_sweep.py        # ~10 s, one core

A sweep, not a held-out score: the series come from ``tests.test_detector.stream`` (interleaved task
types, uniform transient noise per sample, page-rounded resident memory), fed to :class:`Tier1` sample by
sample, without threads or a real worker. Benign: a bounded cache filling as ``1 - exp(-t / tau)`` for
tau 3-40 s, 8-96 MiB in all, noise up to 256 KiB / 2 MiB / 8 MiB a sample, 20 and 300 tasks/s, two seeds,
watched for 120 s (180 series). Leaks: 4, 16 or 64 KiB per call of one of three task types, the same
noises and rates, with and without a 16 MiB warm-up fill (4 s time constant), watched for 90 s (72
series). Prints the benign series declared and, for the leaks, misses and the median and slowest time
to declaration.
"""

from __future__ import annotations

import itertools
import math
import os
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from otel_leak.detector.tier1 import Tier1  # noqa: E402
from tests.test_detector import MiB, stream  # noqa: E402


def first_declared(shape, noise: int, seed: int, rate: int, leak=None, seconds: float = 120) -> float | None:
    t1 = Tier1()
    dt = 0.05 if rate >= 100 else 0.25
    for s in stream(seconds=seconds, rate=rate, dt=dt, noise=noise, seed=seed, leak=leak, shape=shape):
        t1.add(s)
        if t1.declared:
            return s.t
    return None


def main() -> int:
    noises = (256 * 1024, 2 * MiB, 8 * MiB)
    declared = total = 0
    for tau, size, noise, rate in itertools.product((3, 8, 13, 20, 40), (8 * MiB, 32 * MiB, 96 * MiB), noises, (20, 300)):
        for seed in range(2):
            total += 1
            declared += first_declared(lambda t: size * (1 - math.exp(-t / tau)), noise, seed, rate) is not None
    print(f"benign caches declared: {declared} of {total}")
    times, misses, n = [], 0, 0
    for per_call, noise, rate, warm in itertools.product((4096, 16384, 65536), noises, (20, 300), (0, 16 * MiB)):
        for seed in range(2):
            n += 1
            shape = (lambda t: warm * (1 - math.exp(-t / 4))) if warm else None
            t = first_declared(shape, noise, seed, rate, leak=("b", per_call), seconds=90)
            if t is None:
                misses += 1
            else:
                times.append(t)
    print(f"leaks: {misses} of {n} missed in 90 s; declared at median {statistics.median(times):.1f} s, "
          f"slowest {max(times):.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
