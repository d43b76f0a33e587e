"""Full (oldest-generation) collections: which ones happened, and forcing one within a pause budget.

A leak is memory that survives a full collection. Cyclic garbage that reached the oldest generation stays
until the next full collection, which with long thresholds comes minutes apart; until then it looks exactly
like a leak. So before a trend is confirmed, at least one full collection must have run since the trend
began: the one the worker ran anyway (seen through ``gc.callbacks``), or one the detector forces.

Forcing one stops the worker for as long as the collection takes (milliseconds on a small heap, a second
on a heap of millions of objects), so it is budgeted: never sooner than ``min_interval`` seconds after the
last forced one, and never more than ``share`` of the time (the pause of the last full collection, forced
or not, sets how long the next one must wait). The callback itself costs well under a microsecond per
collection and does nothing for the young generations.
"""

from __future__ import annotations

import gc
import time

SHARE = 0.001  # forced full collections may stop the worker at most 0.1 % of the time


class FullCollections:
    def __init__(self, min_interval: float = 60.0, share: float = SHARE, clock=time.monotonic) -> None:
        self.min_interval = min_interval
        self.share = share
        self.clock = clock
        self.last_t: float | None = None  # end of the last full collection seen (any cause)
        self.last_forced_t: float | None = None
        self.pause_s = 0.0  # duration of the last full collection
        self.forced = 0
        self.seen = 0
        self._started: float | None = None
        self._installed = False

    # ------------------------------------------------------------------ watching
    def _callback(self, phase: str, info: dict) -> None:
        try:
            if info.get("generation") != 2:
                return
            if phase == "start":
                self._started = time.perf_counter()
            else:
                if self._started is not None:
                    self.pause_s = time.perf_counter() - self._started
                self._started = None
                self.last_t = self.clock()
                self.seen += 1
        except Exception:
            pass

    def install(self) -> None:
        if not self._installed:
            gc.callbacks.append(self._callback)
            self._installed = True

    def uninstall(self) -> None:
        if self._installed:
            try:
                gc.callbacks.remove(self._callback)
            except ValueError:
                pass
            self._installed = False

    # ------------------------------------------------------------------ forcing
    def since(self, t: float) -> bool:
        """A full collection ended at or after ``t``."""
        return self.last_t is not None and self.last_t >= t

    def may_force(self, now: float | None = None) -> bool:
        """Forcing one now stays within the interval and the pause budget (and the collector is on)."""
        if not gc.isenabled():
            return False
        if self.last_forced_t is None:
            return True
        now = self.clock() if now is None else now
        wait = max(self.min_interval, self.pause_s / self.share if self.share > 0 else float("inf"))
        return now - self.last_forced_t >= wait

    def force(self) -> float:
        """Run a full collection now; returns its pause in seconds."""
        t0 = time.perf_counter()
        gc.collect()
        pause = time.perf_counter() - t0
        self.pause_s = pause
        self.last_forced_t = self.last_t = self.clock()
        self.forced += 1
        return pause
