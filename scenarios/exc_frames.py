"""Exceptions kept in a list with their tracebacks: each keeps the failing frame and its locals alive."""
from _worker import run

ERRORS = []


def parse(i, rnd):
    payload = [rnd.random() for _ in range(1000)]  # leak-site
    try:
        raise ValueError(f"bad record {i} of {len(payload)}")
    except ValueError as exc:
        ERRORS.append(exc)


def store(i, rnd):
    return {i: i}


def fetch(i, rnd):
    return bytes(2000)


run({"fetch": fetch, "parse": parse, "store": store})
