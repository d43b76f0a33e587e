"""A fast worker (about 300 tasks/s of tiny tasks, three interleaved types): 'resolve' keeps 16 KiB per call."""
from _worker import run

RESOLVED = {}


def resolve(i, rnd):
    RESOLVED[(i, rnd.random())] = bytes(16 * 1024) + str(i).encode()  # leak-site


def touch(i, rnd):
    return i + 1


def ping(i, rnd):
    return "pong"


run({"resolve": resolve, "touch": touch, "ping": ping}, rate=300, transient_bytes=2_000)
