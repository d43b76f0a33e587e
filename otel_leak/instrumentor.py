"""``LeakInstrumentor``: what ``opentelemetry-instrument`` loads through the ``opentelemetry_instrumentor``
entry point (disable it with ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=otel_leak``), and what
``otel_leak.instrument(...)`` calls by hand.

Nothing escapes ``_instrument``: an exception here would abort the rest of auto-instrumentation. Without
an SDK tracer provider (no SDK, or the API's proxy/no-op provider) it does nothing, quietly.
"""

from __future__ import annotations

import atexit
import logging
import os
from typing import Collection

from opentelemetry import metrics, trace
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor

from otel_leak import config, names
from otel_leak.version import __version__

_log = logging.getLogger("otel_leak")


class Runtime:
    """Everything one instrumentation owns: probes → sampler → processor/metrics → detector."""

    def __init__(self, tracer_provider, meter_provider, logger_provider=None) -> None:
        from otel_leak.metrics import ProcessMetrics
        from otel_leak.probes import GcProbe, HeapProbe, MemoryProbe
        from otel_leak.processor import TaskSpanProcessor
        from otel_leak.sampler import Sampler

        meter = meter_provider.get_meter(names.INSTRUMENTATION_SCOPE, __version__)
        self.memory = MemoryProbe()
        self.heap = HeapProbe()
        self.gc = GcProbe(timed=config.get(config.GC_PAUSE))
        self.processor = TaskSpanProcessor(
            meter,
            memory=self.memory,
            heap=self.heap,
            gc_probe=self.gc,
            kinds=config.get(config.TASK_SPAN_KINDS),
            name_patterns=config.get(config.TASK_SPAN_NAMES),
            max_task_types=config.get(config.MAX_TASK_TYPES),
            heap_blocks=config.get(config.TASK_HEAP_BLOCKS),
            start_max_age_us=config.get(config.START_READING_MAX_AGE_US),
        )
        self.sampler = Sampler(
            self.memory,
            self.heap,
            self.processor.stats,
            interval=config.get(config.SAMPLE_INTERVAL),
            floor_window=config.get(config.FLOOR_WINDOW),
        )
        self.metrics = ProcessMetrics(
            meter,
            memory=self.memory,
            heap=self.heap,
            gc_probe=self.gc,
            sampler=self.sampler,
            configured_limit=config.get(config.MEMORY_LIMIT),
        )
        self.sampler.add_listener(self.processor.flush_metrics, budgeted=False)
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._forget_parent_points)
        tracer_provider.add_span_processor(self.processor)
        # Registered after the SDK providers, so it runs before their shutdown: the last second of task
        # measurements reaches the exporters.
        atexit.register(self.processor.flush_metrics)
        # The detector listens before the sampler's first tick: that tick is its baseline, and the
        # tasks that run meanwhile are counted from it (attached after, it would wait a whole interval).
        self.detector = None
        self._attach_detector(meter, logger_provider)
        self.sampler.start()

    def _attach_detector(self, meter, logger_provider) -> None:
        try:
            from otel_leak.detector import attach
            from otel_leak.detector import settings as detector_settings
        except ImportError:
            return
        try:
            if not config.get(detector_settings.DETECTOR):
                return
            self.detector = attach(
                stats=self.processor.stats, sampler=self.sampler, meter=meter, logger_provider=logger_provider
            )
        except Exception as exc:
            _log.warning("otel-leak: the leak detector could not start (%s: %s); signals still flow", type(exc).__name__, exc)

    def _forget_parent_points(self) -> None:
        """In a forked child: the parent's task and GC-pause points are not this process's to export."""
        try:
            from otel_leak.metrics import forget_other_processes

            forget_other_processes([self.processor._growth, self.processor._release, self.metrics._pause])
        except Exception:  # never into the child's start-up
            pass

    def shutdown(self) -> None:
        self.processor.shutdown()
        self.sampler.stop()
        self.gc.uninstall()
        stop = getattr(self.detector, "stop", None)
        if stop is not None:
            try:
                stop()
            except Exception:
                pass


class LeakInstrumentor(BaseInstrumentor):
    """Attach otel-leak's probes, task span processor, process metrics and detector."""

    runtime: Runtime | None = None

    def instrumentation_dependencies(self) -> Collection[str]:
        return ()

    def _instrument(self, **kwargs) -> None:
        try:
            if not config.get(config.ENABLED):
                return
            tracer_provider = kwargs.get("tracer_provider") or trace.get_tracer_provider()
            if not hasattr(tracer_provider, "add_span_processor"):
                _log.debug("otel-leak: no SDK tracer provider; nothing to attach to")
                return
            meter_provider = kwargs.get("meter_provider") or metrics.get_meter_provider()
            logger_provider = kwargs.get("logger_provider")
            if logger_provider is None:
                try:
                    from opentelemetry._logs import get_logger_provider

                    logger_provider = get_logger_provider()
                except Exception:
                    logger_provider = None
            LeakInstrumentor.runtime = Runtime(tracer_provider, meter_provider, logger_provider)
        except Exception as exc:
            _log.warning("otel-leak: could not attach (%s: %s); the worker runs without it", type(exc).__name__, exc)

    def _uninstrument(self, **kwargs) -> None:
        runtime = LeakInstrumentor.runtime
        LeakInstrumentor.runtime = None
        if runtime is not None:
            runtime.shutdown()
