"""A tiny worker for the README: three task types, one of which leaks (an unbounded module-level cache).

Run it under auto-instrumentation:  opentelemetry-instrument python examples/demo_worker.py
"""

import os
import random
import time

import otel_leak

_seen: dict[int, bytes] = {}  # the leak: grows by one entry per call, never evicted


@otel_leak.task("resize_image")
def resize_image(i: int) -> int:
    buf = bytearray(256 * 1024)  # transient
    return len(buf)


@otel_leak.task("remember_user")
def remember_user(i: int) -> int:
    _seen[i] = os.urandom(16 * 1024)  # retained: 16 KiB per call
    return len(_seen)


@otel_leak.task("send_email")
def send_email(i: int) -> str:
    return ("x" * 1000).upper()[:10]


def main() -> None:
    n = int(os.environ.get("DEMO_TASKS", "12000"))
    delay = float(os.environ.get("DEMO_TASK_SECONDS", "0.002"))
    tasks = [resize_image, remember_user, send_email]
    rng = random.Random(7)
    for i in range(n):
        rng.choice(tasks)(i)
        time.sleep(delay)


if __name__ == "__main__":
    main()
