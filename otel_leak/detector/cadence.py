"""Adaptive sampling cadence: from the task counts the samples carry, the sampler interval to ask for.

The detector sets the sampler's interval between FAST_INTERVAL and the configured interval so that a sample
sees about TASKS_PER_SAMPLE tasks. A fast worker (300 tasks/s) is then sampled every 0.05 s and its windows
close within ~50 tasks; a slow one keeps the configured interval (its windows stretch to
DETECTOR_WINDOW_TASKS tasks instead). Before the rate is known (start-up), PROBE_INTERVAL.

Pure: no clock, no thread, no sampler; the caller passes each sample's time and task total and applies the
interval returned.
"""

from __future__ import annotations

import collections

FAST_INTERVAL = 0.05
PROBE_INTERVAL = 0.25
TASKS_PER_SAMPLE = 15
RATE_HORIZON = 1.0  # seconds of samples the task rate is measured over
HYSTERESIS = 0.2  # relative change below which the interval is left alone (except to reach a bound)


class Cadence:
    """Task rate over the last RATE_HORIZON seconds of samples, and the interval it calls for.

    ``base`` is the configured interval (the slowest allowed); ``t``/``tasks_total`` the first rate
    reference (the detector's start: the first sample can then give the rate at once).
    """

    def __init__(self, base: float, t: float, tasks_total: int) -> None:
        self.base = base
        self.rate = 0.0  # tasks per second, as last measured
        self._q: collections.deque[tuple[float, int]] = collections.deque(maxlen=256)
        self._q.append((t, tasks_total))

    def bounded(self, value: float) -> float:
        """``value`` within [FAST_INTERVAL, base] (a base below FAST_INTERVAL is kept as it is)."""
        return max(min(FAST_INTERVAL, self.base), min(self.base, value))

    def observe(self, t: float, tasks_total: int, current: float) -> float | None:
        """Record a sample; the interval to set now, or None to keep ``current``."""
        base = self.base
        q = self._q
        if q and t < q[-1][0]:
            q.clear()  # a clock that went back (synthetic samples): no earlier reference holds
        q.append((t, tasks_total))
        while len(q) > 2 and t - q[1][0] >= RATE_HORIZON:
            q.popleft()
        while len(q) > 2 and q[1][1] == 0:
            q.popleft()  # the rate is measured from the last sample before the first tasks, not over start-up
        t0, n0 = q[0]
        dt = t - t0
        if dt <= 0:
            want = min(base, PROBE_INTERVAL)  # first sample: find the rate quickly
        else:
            self.rate = rate = max(0, tasks_total - n0) / dt
            want = base if rate <= 0 else TASKS_PER_SAMPLE / rate
            if rate <= 0 and dt < RATE_HORIZON and tasks_total == 0:
                want = min(base, PROBE_INTERVAL)  # nothing ran yet: keep probing for the first tasks
        lo = min(FAST_INTERVAL, base)
        want = max(lo, min(base, want))
        # hysteresis (no flapping on a noisy rate), except to reach either bound
        if want != current and (want in (lo, base) or abs(want - current) > HYSTERESIS * current):
            return want
        return None
