"""Tier 1 alone on long synthetic series: leaks too slow for the kept windows, and benign shapes over 15 min.

    .venv/bin/python bench/slow_leaks.py         # ~45 s, one core

A sweep, not a held-out score: series from ``tests.test_detector.stream`` fed to :class:`Tier1` sample by
sample. Leaks: 256 B to 2 KiB per call of one of three task types at 5-200 tasks/s (3-17 KiB/s, i.e.
0.3-1.4 GiB a day), watched for 10-20 min; each should be declared once it has retained the growth
threshold over the whole run (``otel_leak.detector.horizon``). Benign: 15 shapes (the unit tests' seven:
warm-up, GC sawtooth, an 11 s sawtooth on the floor, bursts, a one-off step, an allocator plateau, noise;
then a 60 s floor sawtooth, random-key caches with time constants of 60-600 s, sqrt and log creep, a 120 s
periodic flush, a linear fill that stops at 300 s) at 5, 40 and 300 tasks/s, three seeds, 15 min;
prints those declared and on which scale. A fill that is linear for minutes looks like a leak until it
stops, on any scale: the README states that limit.
"""

from __future__ import annotations

import math
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from tests.test_detector import BENIGN as SHORT_BENIGN, MiB, first_declared, stream  # noqa: E402

LEAKS = [(20, 1024, 900, 0.3), (50, 512, 900, 0.2), (10, 2048, 900, 0.5), (200, 256, 600, 0.1), (5, 2048, 1200, 1.0)]
BENIGN = {
    **SHORT_BENIGN,  # the unit tests' shapes (warm-up, sawtooths, bursts, step, plateau, noise), now for 15 min
    "floor sawtooth, 60 s": dict(shape=lambda t: (t % 60) * 0.05 * MiB),
    "cache, tau 60 s": dict(shape=lambda t: 24 * MiB * (1 - math.exp(-t / 60))),
    "cache, tau 200 s": dict(shape=lambda t: 24 * MiB * (1 - math.exp(-t / 200))),
    "cache, tau 600 s": dict(shape=lambda t: 24 * MiB * (1 - math.exp(-t / 600))),
    "sqrt creep": dict(shape=lambda t: 0.3 * MiB * math.sqrt(t)),
    "log creep": dict(shape=lambda t: 2 * MiB * math.log1p(t / 10)),
    "periodic flush, 120 s": dict(shape=lambda t: (t % 120) * 40_000),
    "linear fill for 300 s": dict(shape=lambda t: min(t, 300) * 20_000),
}


def main() -> int:
    print("slow leaks (rate, bytes per call, KiB/s): declared at")
    for rate, per, secs, dt in LEAKS:
        t1, s = first_declared(stream(seconds=secs, rate=rate, dt=dt, leak=("c", per), noise=150_000))
        scale = "whole run" if t1.trend.long else f"scale {t1.trend.scale}"
        print(f"  {rate:4d}/s {per:5d} B {rate * per / 3 / 1024:5.1f} KiB/s: "
              + (f"{s.t:6.0f} s ({scale})" if s else "never"))
    declared = 0
    print("benign shapes over 15 min declared (shape, rate, seed: time, scale)")
    for name, kw in BENIGN.items():
        for rate, dt in ((5, 1.0), (40, 0.3), (300, 0.1)):
            for seed in (1, 2, 3):
                t1, s = first_declared(stream(seconds=900, rate=rate, dt=dt, seed=seed, **kw))
                if s is not None:
                    declared += 1
                    print(f"  {name}, {rate}/s, seed {seed}: {s.t:.0f} s "
                          f"({'whole run' if t1.trend.long else f'scale {t1.trend.scale}'})")
    print(f"benign declared: {declared} of {len(BENIGN) * 9}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
