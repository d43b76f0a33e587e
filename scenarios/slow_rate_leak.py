"""A slow worker (about 6 tasks/s): 'report' keeps 48 KiB per call."""
from _worker import run

ARCHIVE = []


def report(i, rnd):
    ARCHIVE.append(bytearray(48 * 1024))  # leak-site


def refresh(i, rnd):
    return sum(range(1000))


run({"refresh": refresh, "report": report}, rate=6)
