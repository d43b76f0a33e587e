"""Benign: every task leaves garbage in reference cycles (64 KiB each) that the cyclic GC frees later."""
import gc

from _worker import run

gc.set_threshold(2000, 10, 10)


class Buf:
    def __init__(self):
        self.data = bytearray(64 * 1024)
        self.me = self


def convert(i, rnd):
    for _ in range(2):
        Buf()
    return [object() for _ in range(40)]


def route(i, rnd):
    Buf()
    return [object() for _ in range(40)]


def log_it(i, rnd):
    return [object() for _ in range(40)]


run({"convert": convert, "route": route, "log": log_it})
