"""The attribution burst: on suspicion, a few seconds of cheap ~20 Hz readings of (task counts, RSS,
heap blocks, malloc in-use), as rows for tier 1's attribution regression.

Many short intervals with few tasks each vary the task mix far more than 1 s samples do, which is what the
attribution regression needs. No tracemalloc: a statm read and a dict copy per tick.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

SECONDS = 2.5
TICK = 0.05


def collect(mem, heap, stats, read_malloc: Callable[[], tuple | None], stop, seconds: float = SECONDS,
            clock: Callable[[], float] = time.monotonic) -> list[tuple]:
    """Rows ``(dt, d_rss, d_heap_blocks, d_malloc_in_use | None, {task: calls}, False)`` between
    consecutive ticks, until ``seconds`` have passed or ``stop`` is set (``stop.wait`` paces the ticks)."""
    rows = []
    prev = None
    end = clock() + seconds
    while clock() < end and not stop.is_set():
        mi = read_malloc()
        pair = mem.read()
        cur = (clock(), pair[0] if pair else 0, heap.blocks() or 0, mi[0] if mi else None, dict(stats.counts))
        if prev is not None:
            d = {k: v - prev[4].get(k, 0) for k, v in cur[4].items() if v - prev[4].get(k, 0) > 0}
            du = cur[3] - prev[3] if cur[3] is not None and prev[3] is not None else None
            rows.append((cur[0] - prev[0], cur[1] - prev[1], cur[2] - prev[2], du, d, False))
        prev = cur
        stop.wait(TICK)
    return rows


def start(stop: threading.Event, sampler, stats, read_malloc: Callable[[], tuple | None],
          on_rows: Callable[[threading.Event, list[tuple]], None]) -> bool:
    """Run a burst on its own daemon thread, reading the sampler's memory and heap probes; ``on_rows(stop,
    rows)`` gets the rows on that thread. False (nothing started) when the sampler has no such probes.
    Nothing raised on the thread escapes it."""
    mem = getattr(sampler, "memory", None)
    heap = getattr(sampler, "heap", None)
    if mem is None or heap is None:
        return False

    def run():
        try:
            on_rows(stop, collect(mem, heap, stats, read_malloc, stop))
        except Exception:
            pass

    threading.Thread(target=run, name="otel-leak-burst", daemon=True).start()
    return True
