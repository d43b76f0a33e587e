"""Benign: bursty load; each burst holds a lot of memory while it runs and releases it after."""
import time

from _worker import run

INFLIGHT = []


def work(i, rnd):
    INFLIGHT.append(bytes(100 * 1024))
    if len(INFLIGHT) > 60:
        INFLIGHT.clear()  # a burst's batch completes


def small(i, rnd):
    return i


def between(i, rnd):
    if i % 150 == 0:
        INFLIGHT.clear()
        time.sleep(rnd.uniform(2.0, 5.0))  # idle between bursts


run({"work": work, "small": small}, rate=120, between=between)
