"""The embedded leak detector.

``attach(stats=..., sampler=..., meter=..., logger_provider=...)`` is called by the instrumentor when
``OTEL_PYTHON_LEAK_DETECTOR`` is true. Tier 1 (trend on the memory floor, attribution by robust regression)
runs on every sample; tier 2 (bounded tracemalloc window) and tier 3 (bounded retention path) only once a
leak is suspected. See ``otel_leak.detector.detector`` for the outputs.

What a leak is, for every part of the detector:

1. **Memory that survives a full collection.** Cyclic garbage that reached the oldest generation stays until
   the next full collection and looks exactly like a leak until then. On suspicion the detector makes
   sure a full collection has run since the growth began: the worker's own (seen through ``gc.callbacks``)
   or one it forces within an interval and a pause budget (``fullgc``; when the budget does not allow one,
   the young generations only). The growth must still be there afterwards, in the allocator's in-use bytes
   and on the floor of resident memory, for the trend to be confirmed.
2. **That keeps growing with tasks or with time, at a steady pace, for longer than a fill lasts.** The
   floor (the lowest reading of each window, so a sawtooth does not count) must rise monotonically over at
   least 10 s *and* 400 tasks (12 s on a slow worker), spread over the windows (not one step: a lazy import,
   a table loaded once, allocator retention that jumps then plateaus), above an absolute and a relative
   amount, without levelling off or slowing down. A cache or a pool taking its first entries grows as
   steadily as a leak until it is full; those fills last seconds, hence the 10 s. A bounded fill with
   random keys slows as it fills: while a saturating curve explains the level clearly better than a
   straight line, or a quadratic fit's curvature is significantly negative (two standard errors, allowing
   for autocorrelation) with the pace falling by a quarter, over the trend or over the whole kept history
   (up to 64 windows, when the trend's own pace falls too), it is not declared. A fill with a time constant
   of tens of seconds still looks like a leak for that long, unless its holder declares a bound: an
   ``lru_cache(maxsize=N)``, a ``deque(maxlen=N)`` or a ``cachetools`` cache still filling that accounts
   for at least half of the pace holds the verdict back (``bounded``). Nothing is declared sooner, however
   large the growth: the page waits 10 s.
3. **Judged on the worker's own scale.** Windows close after a number of samples, 0.75 s *and* a number
   of tasks, the sampler's interval follows the task rate, and the trend is seen at a fine and a coarse scale
   and over the whole run (``horizon``, bounded points): the same defaults serve 5 and 1,000 tasks a second,
   and a leak of a few KiB a second is declared once it has retained the growth threshold, minutes or
   hours in.
4. **Charged to the task whose calls retain it.** Per-task retention is a robust nonnegative regression of
   the growth on the task counts of short intervals (neighbours' transient allocations are noise, a GC drop
   is an outlier), confirmed or vetoed by tier 2's traced Python bytes, which pages a neighbour touched
   do not move. A tier-2 window lasts until it has seen about 90 tasks (within a few seconds). Where the
   window's tasks ran one at a time (a prefork child, a sequential worker), each task's own traced change
   is exact and a type's bytes per call is their mean; where they overlapped (threads, an event loop), the
   window's rows are regressed, merged to a few tasks each (a task's bytes may land a row before its span
   ends). A window of a handful of tasks neither confirms nor clears anyone.
5. **Held by something the worker can reach.** Tier 3 walks references from module globals and the other
   threads' stacks (data before functions) to the first container of the site's objects; the path it
   reports is the way there, through finished frames kept by tracebacks up to the global that keeps them.
"""

from __future__ import annotations

import logging

_log = logging.getLogger("otel_leak")

_active = None


def attach(stats=None, sampler=None, meter=None, logger_provider=None, environ=None):
    """Start a :class:`Detector` listening to ``sampler``; returns it (None if it could not start).

    Without a sampler (a worker instrumented by hand without the runtime), the detector makes its own from
    the foundation's probes. Never raises.
    """
    global _active
    try:
        from otel_leak.detector.detector import Detector

        own = None
        if sampler is None:
            from otel_leak import config
            from otel_leak.probes import HeapProbe, MemoryProbe
            from otel_leak.sampler import Sampler

            own = Sampler(MemoryProbe(), HeapProbe(), stats, interval=config.get(config.SAMPLE_INTERVAL, environ))
            sampler = own
        det = Detector(stats=stats, sampler=sampler, meter=meter, logger_provider=logger_provider, environ=environ)
        if own is not None:
            own.start()
        _active = det
        return det
    except Exception as exc:
        _log.warning("otel-leak: the leak detector could not start (%s: %s)", type(exc).__name__, exc)
        return None


def active():
    """The detector attached in this process, if any."""
    return _active


__all__ = ["attach", "active"]
