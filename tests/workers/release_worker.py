"""A worker whose release is chosen by environment, for the baseline/compare tests.

Three task types in batches whose mix changes (random.Random(seed)); ``LEAK_TASK`` (if set) keeps
``LEAK_BYTES`` per call in a module-level dict. Runs ``RUN_S`` seconds at about ``RATE`` tasks/s.
"""

import os
import random
import time

import otel_leak

LEAK_TASK = os.environ.get("LEAK_TASK", "")
LEAK_BYTES = int(os.environ.get("LEAK_BYTES", "32768"))
RUN_S = float(os.environ.get("RUN_S", "15"))
RATE = float(os.environ.get("RATE", "200"))
_KEPT = {}


def body(name, i):
    if name == LEAK_TASK:
        _KEPT[i] = os.urandom(LEAK_BYTES)  # the leak of the leaking release
    elif name == "resize":
        buf = bytearray(128 * 1024)
        buf[0] = 1
    else:
        ("x" * 200).upper()


def main():
    otel_leak.instrument()
    rnd = random.Random(int(os.environ.get("SEED", "1")))
    t0 = time.monotonic()
    i = 0
    while time.monotonic() - t0 < RUN_S:
        batch = [n for n in ("resize", "render", "notify") for _ in range(rnd.randint(1, 12))]
        rnd.shuffle(batch)
        for name in batch:
            i += 1
            with otel_leak.task_span(name):
                body(name, i)
        time.sleep(max(0.0, t0 + i / RATE - time.monotonic()))


if __name__ == "__main__":
    main()
