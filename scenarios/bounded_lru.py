"""Benign: lru_cache(maxsize=100) on a function called with fresh arguments: fills, then evicts."""
import functools

from _worker import run


@functools.lru_cache(maxsize=100)
def geocode(key):
    return [key] * 1500


def locate(i, rnd):
    return len(geocode(i))


def route(i, rnd):
    return [i, i + 1]


def eta(i, rnd):
    return i / 3


run({"locate": locate, "route": route, "eta": eta})
