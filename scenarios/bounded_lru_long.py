"""Benign: an lru_cache(maxsize=300) of 64 KiB results, each call a fresh key: every call misses and
inserts, so the cache fills linearly (~0.8 MB/s at the default rate) for ~25 s, as steadily as a leak,
then evicts as much as it inserts. SCENARIO_LRU_MAXSIZE=none makes it unbounded: a leak."""
import functools
import os

from _worker import run

_MAX = os.environ.get("SCENARIO_LRU_MAXSIZE", "300")


@functools.lru_cache(maxsize=None if _MAX == "none" else int(_MAX))
def render_tile(key):
    return bytes(64 * 1024)  # leak-site (when unbounded)


def tile(i, rnd):
    return len(render_tile(i))


def route(i, rnd):
    return [i, i + 1]


def eta(i, rnd):
    return i / 3


run({"tile": tile, "route": route, "eta": eta})
