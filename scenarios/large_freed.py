"""Benign: every task allocates large buffers (1-24 MiB), uses them and frees them."""
from _worker import run


def render(i, rnd):
    buf = bytearray(rnd.randint(1, 24) * 1024 * 1024)
    buf[::4096] = b"r" * len(buf[::4096])
    return len(buf)


def table(i, rnd):
    rows = [[k] * 50 for k in range(rnd.randint(1000, 20000))]
    return len(rows)


def light(i, rnd):
    return i


run({"render": render, "table": table, "light": light}, rate=25)
