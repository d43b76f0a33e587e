"""``LeakInstrumentor``: what ``opentelemetry-instrument`` loads through the ``opentelemetry_instrumentor``
entry point (disable it with ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=otel_leak``), and what
``otel_leak.instrument(...)`` calls by hand.

Nothing escapes ``_instrument``: an exception here would abort the rest of auto-instrumentation. Without
an SDK tracer provider (no SDK, or the API's proxy/no-op provider) it does nothing, quietly, except where it
is asked to set the SDK up itself (:func:`set_up_sdk`): by ``otel_leak.instrument()``, and under
``opentelemetry-instrument`` with ``OTEL_PYTHON_LEAK_SETUP_SDK=true`` (what ``otel-leak run`` sets) when no
SDK configurator is installed.
"""

from __future__ import annotations

import atexit
import importlib.metadata
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
            read_budget=config.get(config.TASK_READ_BUDGET),
        )
        self.sampler = Sampler(
            self.memory,
            self.heap,
            self.processor.stats,
            interval=config.get(config.SAMPLE_INTERVAL),
            floor_window=config.get(config.FLOOR_WINDOW),
            restart_on_fork=False,  # _after_fork_last starts it, once every part has reset
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
        from otel_leak.guard import start as start_guard  # None unless OTEL_PYTHON_LEAK_GUARD is set; never raises

        self.guard = start_guard(self, meter)
        self._meter_provider = meter_provider
        try:
            from otel_leak import _sdk

            _sdk.CollectForkGuard(meter_provider).register()
        except Exception:
            pass
        if hasattr(os, "register_at_fork"):
            # Registered last, so it runs after every part's own reset (hooks run in registration order).
            os.register_at_fork(after_in_child=self._after_fork_last)
        self.sampler.start()

    def _after_fork_last(self) -> None:
        """In a forked child, after the parts have reset: renew the SDK locks a parent thread may have held at
        the fork, then start the sampler (its first tick must not meet the detector half reset)."""
        try:
            from otel_leak import _sdk

            _sdk.renew_locks_after_fork(self._meter_provider)
        except Exception:
            pass
        try:
            self.sampler.resume_after_fork()
        except Exception:
            pass

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


def _meter_provider_unset() -> bool:
    try:
        from opentelemetry.metrics import _internal
    except ImportError:  # pragma: no cover - an API without the proxy: treat it as set
        return False
    return metrics.get_meter_provider() is getattr(_internal, "_PROXY_METER_PROVIDER", None)


def configurator_installed() -> bool:
    """Whether an ``opentelemetry_configurator`` entry point (opentelemetry-distro's, a vendor's) exists:
    under ``opentelemetry-instrument`` it has run before any instrumentor and owns the providers."""
    try:
        return bool(importlib.metadata.entry_points(group="opentelemetry_configurator"))
    except Exception:
        return True  # unknown: assume it did its job and change nothing


def set_up_sdk() -> None:
    """Give the process the SDK's tracer, meter and logger providers when nothing set a tracer provider.

    They are configured from the ``OTEL_*`` variables exactly as a distro's configurator does (resource,
    sampler, exporters named by ``OTEL_<SIGNAL>_EXPORTER``, none otherwise), without the defaults a distro
    adds. When that fails (an exporter named but not installed, say) the providers come without exporters,
    with one warning. Never raises.
    """
    try:
        if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
            return
        try:
            from opentelemetry.sdk.metrics import MeterProvider
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
        except ImportError:
            return  # no SDK: nothing to set up (and nothing to attach to)
        if _meter_provider_unset():
            try:
                from opentelemetry.sdk._configuration import _OTelSDKConfigurator

                _OTelSDKConfigurator().configure()
                return
            except Exception as exc:
                _log.warning(
                    "otel-leak: the OpenTelemetry SDK could not be configured from OTEL_* (%s: %s); "
                    "its providers are set up without exporters",
                    type(exc).__name__,
                    exc,
                )
        # Only what is still unset (the configurator may have stopped half-way).
        resource = Resource.create()
        if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
            trace.set_tracer_provider(TracerProvider(resource=resource))
        if _meter_provider_unset():
            metrics.set_meter_provider(MeterProvider(resource=resource))
    except Exception as exc:
        _log.warning("otel-leak: could not set up the OpenTelemetry SDK (%s: %s)", type(exc).__name__, exc)


class LeakInstrumentor(BaseInstrumentor):
    """Attach otel-leak's probes, task span processor, process metrics and detector."""

    runtime: Runtime | None = None

    def instrumentation_dependencies(self) -> Collection[str]:
        return ()

    def instrument(self, **kwargs):
        result = super().instrument(**kwargs)
        if LeakInstrumentor.runtime is None:
            # Nothing attached (turned off, or no SDK provider yet): a later call, by hand with providers
            # or after the application set them up, may still attach.
            self._is_instrumented_by_opentelemetry = False
        return result

    def _instrument(self, **kwargs) -> None:
        try:
            if not config.get(config.ENABLED):
                return
            tracer_provider = kwargs.get("tracer_provider")
            if tracer_provider is None:
                if kwargs.get("set_up_sdk") or (config.get(config.SETUP_SDK) and not configurator_installed()):
                    set_up_sdk()
                tracer_provider = trace.get_tracer_provider()
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
