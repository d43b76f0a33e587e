"""Benign: a recent-messages buffer, deque(maxlen=100) of 8 KiB messages: fills once, then rotates."""
import collections

from _worker import run

RECENT = collections.deque(maxlen=100)


def receive(i, rnd):
    RECENT.append(b"m" * 8000 + bytes([i % 251]))


def peek(i, rnd):
    return len(RECENT)


def other(i, rnd):
    return {"i": i}


run({"receive": receive, "peek": peek, "other": other})
