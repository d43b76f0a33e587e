"""Unbounded module-level cache keyed by a fresh id: 16 KiB retained per 'render' call."""
from _worker import run

_CACHE = {}


def render(i, rnd):
    key = ("page", i, rnd.random())
    _CACHE[key] = bytes(16 * 1024) + str(i).encode()  # leak-site


def lookup(i, rnd):
    return sum(len(k) for k in list(_CACHE)[:10])


def ping(i, rnd):
    return "pong"


run({"render": render, "lookup": lookup, "ping": ping})
