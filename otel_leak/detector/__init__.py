"""The embedded leak detector.

``attach(stats=..., sampler=..., meter=..., logger_provider=...)`` is called by the instrumentor when
``OTEL_PYTHON_LEAK_DETECTOR`` is true. Tier 1 (trend on the memory floor, attribution by robust regression)
runs on every sample; tier 2 (bounded tracemalloc window) and tier 3 (bounded retention path) only once a
leak is suspected. See ``otel_leak.detector.detector`` for the outputs.
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
