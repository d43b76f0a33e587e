"""Heap reuse by a neighbour: 'ingest' keeps 64 KiB per call; 'render' allocates 32 x 64 KiB and frees it.

The leaked buffers land in the heap space 'render' freed, so fresh pages are often first touched by a
'render' call: resident-memory deltas blame the wrong task. The mix of the two changes every second.
"""
import os
import random

from _worker import run

KEPT = []
_mix = random.Random(11)
_share = {}


def ingest(i, rnd):
    KEPT.append(os.urandom(64 * 1024))  # leak-site


def render(i, rnd):
    scratch = [bytearray(64 * 1024) for _ in range(32)]
    return len(scratch)


def mix(t):
    sec = int(t)
    if sec not in _share:
        _share.clear()
        _share[sec] = _mix.uniform(0.2, 0.8)
    s = _share[sec]
    return [s, 1.0 - s]


run({"ingest": ingest, "render": render}, rate=50, weights=mix)
