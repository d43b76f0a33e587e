"""A small leak (about 12 KiB/call in 'ingest') under large transient allocations (2-8 MiB per task, freed)."""
from _worker import run

SEEN = []


def ingest(i, rnd):
    SEEN.append(("k%d" % i) * 2000)  # leak-site


def crunch(i, rnd):
    big = bytearray(rnd.randint(2, 8) * 1024 * 1024)
    big[::4096] = b"x" * len(big[::4096])
    return len(big)


def resize(i, rnd):
    frames = [bytes(64 * 1024) for _ in range(rnd.randint(10, 60))]
    return len(frames)


run({"crunch": crunch, "ingest": ingest, "resize": resize}, rate=30)
