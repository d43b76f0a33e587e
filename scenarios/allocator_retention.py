"""Benign: at ~10 s a big batch of small objects is built and mostly freed; pymalloc arenas stay (plateau)."""
import time

from _worker import run

T0 = time.monotonic()
KEEP = []
DONE = [False]


def batch(i, rnd):
    if not DONE[0] and time.monotonic() - T0 > 10:
        DONE[0] = True
        objs = [{"n": k, "s": "v%d" % k} for k in range(250000)]
        KEEP.extend(objs[::100])  # a few survivors pin most arenas
        del objs
    return len(KEEP)


def item(i, rnd):
    return {"x": i}


def ack(i, rnd):
    return True


run({"batch": batch, "item": item, "ack": ack})
