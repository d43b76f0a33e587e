"""Benign: a 4-thread pool with three interleaved task types and no leak."""
from _worker import run


def fetch(i, rnd):
    return bytes(rnd.randint(1000, 50000))


def compute(i, rnd):
    return sum(k * k for k in range(rnd.randint(100, 3000)))


def store(i, rnd):
    d = {k: str(k) for k in range(200)}
    return len(d)


run({"fetch": fetch, "compute": compute, "store": store}, threads=4, rate=60)
