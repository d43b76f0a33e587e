"""The long history of tier 1: the whole run's floor, in a bounded number of points.

Tier 1 keeps its last MAX_WINDOWS windows, which on a busy worker span about a minute. A leak of a few
KiB a second retains less than the growth threshold over that minute and would never be declared, however
long the worker runs (3 KiB/s is 250 MiB a day). The long history covers every window since start-up:
each point merges ``k`` consecutive windows (its floor is their lowest level), and when it holds
``2 * LONG_POINTS`` points, neighbouring points merge pairwise and ``k`` doubles. Memory stays bounded
(under ``2 * LONG_POINTS`` points) whatever the run's length, and the trend tests of tier 1 run on these
points unchanged: the same monotone, spread, not-levelling, not-saturating climb, over minutes or hours.
"""

from __future__ import annotations

LONG_POINTS = 16  # points after a pairwise merge; the history holds between LONG_POINTS and 2x as many


def merge(ch: list) -> object:
    """Consecutive windows (or points) as one point: floors and levels are the lowest, counts add up."""
    used = [c.used_min for c in ch if c.used_min is not None]
    return type(ch[0])(
        t0=ch[0].t0, t1=ch[-1].t1, samples=sum(c.samples for c in ch), rss_min=min(c.rss_min for c in ch),
        tasks=sum(c.tasks for c in ch), level=min(c.level for c in ch),
        used_min=min(used) if used else None,
        heap_level=min(c.heap_level for c in ch), used_level=min(c.used_level for c in ch),
    )


class LongHistory:
    """Windows merged ``k`` to a point, ``k`` doubling as the run goes on (see the module docstring)."""

    def __init__(self) -> None:
        self.points: list = []
        self.k = 1  # windows per point
        self._cur: list = []
        self.windows = 0  # windows added so far

    def add(self, w) -> bool:
        """One closed window; True when it completed a point."""
        self.windows += 1
        self._cur.append(w)
        if len(self._cur) < self.k:
            return False
        self.points.append(merge(self._cur))
        self._cur = []
        if len(self.points) >= 2 * LONG_POINTS:
            ps = self.points
            self.points = [merge(ps[i:i + 2]) for i in range(0, len(ps), 2)]
            self.k *= 2
        return True
