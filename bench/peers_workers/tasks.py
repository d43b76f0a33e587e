"""The task types every peer worker runs: CPU-bound, nothing waits.

A worker runs a fixed mix: ``render`` and ``tokenize`` (~20-30 us each, small lists and strings),
``crunch`` (~1 ms of arithmetic) for the 1 ms worker, and every ``leak_every``-th task ``remember_session``,
which builds a 16-64 KiB buffer. In the leaking variant it keeps the buffer in the module-level dict
``SESSIONS`` (never evicted); in the healthy one it drops it.
"""

from __future__ import annotations

import random

SESSIONS: dict[int, bytes] = {}
_sizes = random.Random(11)


def render(n: int = 200) -> list[str]:
    return [f"item-{i}" for i in range(n)]


def tokenize(n: int = 150) -> list[str]:
    return " ".join([str(i * 7) for i in range(n)]).split()


def crunch(n: int = 15000) -> int:
    s = 0
    for i in range(n):
        s += i * i % 7
    return s


def remember_session(key: int, leak: bool, heavy: bool = False) -> int:
    buf = b"s" * (_sizes.randrange(16, 65) * 1024)  # written, so its pages are resident
    if leak:
        SESSIONS[key] = buf
    return len(render()) + (crunch() if heavy else 0)


def plan(kind: str, k: int, leak: bool):
    """The k-th task of a worker of ``kind`` ('fast', 'ms' or 'celery'): (name, callable, args)."""
    if k % LEAK_EVERY[kind] == LEAK_EVERY[kind] - 1:
        return "remember_session", remember_session, (k, leak, kind == "ms")
    if kind == "ms":
        return "crunch", crunch, ()
    return ("render", render, ()) if k % 2 else ("tokenize", tokenize, ())


# about 4 MB/s of leak in each worker at its bare rate (~40,000, ~1,000 and ~1,500 tasks/s)
LEAK_EVERY = {"fast": 400, "ms": 10, "celery": 20}
