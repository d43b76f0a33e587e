"""threading.local leftovers in a 4-thread pool: a per-thread history that only ever grows."""
import threading

from _worker import run

_local = threading.local()


def session(i, rnd):
    hist = getattr(_local, "history", None)
    if hist is None:
        hist = _local.history = []
    hist.append(b"s" * 10000 + bytes([i % 251]))  # leak-site


def query(i, rnd):
    return [i] * 50


def health(i, rnd):
    return True


run({"query": query, "session": session, "health": health}, threads=4)
