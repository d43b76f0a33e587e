"""Benign: a cache over a finite key space warms up (fast at first, then slower) and plateaus."""
from _worker import run

CACHE = {}


def lookup(i, rnd):
    key = rnd.randrange(140)
    if key not in CACHE:
        CACHE[key] = bytes(16 * 1024) + bytes([key % 251])
    return len(CACHE[key])


def count(i, rnd):
    return len(CACHE)


def noop(i, rnd):
    return None


run({"lookup": lookup, "count": count, "noop": noop}, weights=[3, 1, 1])
