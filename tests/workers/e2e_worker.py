"""Worker for the end-to-end pipeline test: two interleaved task types for DURATION seconds.

    e2e_worker.py --leak-bytes N --seconds S [--rate R]

'ingest' keeps N bytes per call in a module-level list (the leak; 0 = healthy); 'render' allocates and
frees 2 MiB (a sawtooth that never raises the floor). Prints 'LEAK-START <unix time>' when tasks start.
"""

import argparse
import os
import random
import time

import otel_leak

KEPT = []


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--leak-bytes", type=int, default=0)
    ap.add_argument("--seconds", type=float, default=180)
    ap.add_argument("--rate", type=float, default=50, help="tasks per second (both types)")
    args = ap.parse_args()

    @otel_leak.task("ingest")
    def ingest(i: int) -> None:
        if args.leak_bytes:
            KEPT.append(os.urandom(args.leak_bytes))

    @otel_leak.task("render")
    def render(i: int) -> int:
        scratch = [bytearray(64 * 1024) for _ in range(32)]
        return len(scratch)

    print(f"LEAK-START {time.time():.3f}", flush=True)
    rng = random.Random(11)
    end = time.monotonic() + args.seconds
    period = 1.0 / args.rate
    i = 0
    share = 0.5
    while time.monotonic() < end:
        if i % int(args.rate) == 0:  # the mix of work changes every second, as real queues do
            share = rng.uniform(0.2, 0.8)
        (ingest if rng.random() < share else render)(i)
        i += 1
        time.sleep(period)
    print(f"DONE {i}", flush=True)


if __name__ == "__main__":
    main()
