"""The glibc allocator: its in-use/free bytes read within a time budget, and the trend of those readings.

``mallinfo2`` walks the allocator's free lists: tens of microseconds usually, milliseconds right after
start-up (import garbage in the bins). A token bucket keeps the walks under 1/MALLINFO_DUTY of the time
with an allowance of MALLINFO_BURST seconds, so one expensive start-up reading does not stall the readings
for many seconds, and the long-run share stays bounded.
"""

from __future__ import annotations

import collections
import time
from typing import Callable

from otel_leak.detector import tier2 as T2
from otel_leak.detector.robust import theil_sen

MALLINFO_DUTY = 2000  # allocator walks take at most 1/MALLINFO_DUTY of the time (0.05 %)...
MALLINFO_BURST = 0.01  # ...plus this allowance in seconds
CHEAP_READING = 0.0005  # seconds: a reading this fast may also be taken outside the budget (bursts)
MIN_WINDOWS = 3  # allocator readings (one per tier-1 window) before a trend is given


class AllocatorReader:
    """Budgeted allocator readings plus the per-window readings the trend is fitted on."""

    def __init__(self) -> None:
        self.off = False  # no glibc allocator to read (or readings were switched off)
        self.cheap = False  # the last budgeted reading took at most CHEAP_READING
        self._allow = MALLINFO_BURST  # seconds of allocator walking the budget allows now
        self._t: float | None = None
        self._cost = 0.0  # smoothed cost of one reading
        self.windows: collections.deque[tuple[float, int, int]] = collections.deque(maxlen=64)

    def read(self, now: float, exempt: Callable[[float], object] | None = None) -> tuple[int, int] | None:
        """(in-use, free) bytes if the budget allows a walk at ``now`` (seconds, any monotonic clock).

        ``exempt`` is told the cost of a walk taken, so that the caller's own budget does not count it twice.
        """
        if self.off:
            return None
        if self._t is not None:
            self._allow = min(MALLINFO_BURST, self._allow + (now - self._t) / MALLINFO_DUTY)
        self._t = now
        if self._allow < self._cost:
            return None
        t0 = time.perf_counter()
        mi = T2.malloc_info()
        cost = time.perf_counter() - t0
        if mi is None:
            self.off = True
            return None
        self._allow -= cost
        self._cost = cost if not self._cost else 0.7 * self._cost + 0.3 * cost
        if exempt is not None:
            exempt(cost)
        self.cheap = cost <= CHEAP_READING
        return mi

    def read_outside_budget(self, cheap_only: bool = False) -> tuple[int, int] | None:
        """A reading whose cost the caller charges elsewhere; None when off, or when ``cheap_only`` and the
        last budgeted reading was not cheap."""
        if self.off or (cheap_only and not self.cheap):
            return None
        return T2.malloc_info()

    def freed_by(self, action: Callable[[], object]) -> int | None:
        """In-use bytes the allocator got back while ``action`` ran (two readings outside the budget; None
        without readings)."""
        before = self.read_outside_budget()
        action()
        after = None if before is None else self.read_outside_budget()
        return max(0, before[0] - after[0]) if before is not None and after is not None else None

    def record(self, t: float, reading: tuple[int, int]) -> None:
        """Keep the reading taken for the tier-1 window that closed at ``t``."""
        self.windows.append((t, reading[0], reading[1]))

    def trend(self, rss_slope: float) -> dict | None:
        """What the allocator says of a resident-memory growth of ``rss_slope`` bytes/s: whether its in-use
        bytes, its free bytes, or neither grow by at least half as much."""
        mw = list(self.windows)
        if len(mw) < MIN_WINDOWS:
            return None
        ts = [m[0] for m in mw]
        used = theil_sen(ts, [m[1] for m in mw])
        free = theil_sen(ts, [m[2] for m in mw])
        slope = rss_slope or 1.0
        if used > 0.5 * slope:
            detail = "native_in_use"
        elif free > 0.5 * slope:
            detail = "allocator_free_retained"
        else:
            detail = "outside_malloc"
        return {
            "allocator": "glibc",
            "in_use_slope_bytes_per_s": round(used, 1),
            "free_slope_bytes_per_s": round(free, 1),
            "explains": detail,
        }
