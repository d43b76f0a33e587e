"""Benign fast worker (about 300 tasks/s of tiny tasks): cyclic garbage freed by the collector in a sawtooth,
plus occasional 1-4 MiB buffers built and dropped. Nothing is kept."""
import gc

from _worker import run

gc.set_threshold(3000, 10, 10)


class Node:
    def __init__(self, size):
        self.data = bytearray(size)
        self.me = self  # a cycle: only the cyclic collector frees it


def convert(i, rnd):
    Node(16 * 1024)


def batch(i, rnd):
    if rnd.random() < 0.05:
        buf = bytearray(rnd.randint(1, 4) * 1024 * 1024)
        buf[::4096] = b"b" * len(buf[::4096])
    return [object() for _ in range(10)]


def ping(i, rnd):
    return "pong"


run({"convert": convert, "batch": batch, "ping": ping}, rate=300, transient_bytes=2_000)
