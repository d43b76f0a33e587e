"""What every framework integration shares: the instrumentor shape and one task span per job.

* :class:`FrameworkInstrumentor`: a ``BaseInstrumentor`` whose ``_instrument`` does nothing unless the
  framework is installed in a supported version (checked here: ``opentelemetry-instrument`` loads entry points
  with the dependency check skipped), patches it when the application imports it (at once if it already
  did; otel-leak never imports a framework itself), and never lets an exception out (it would abort the rest
  of auto-instrumentation). Subclasses write a symmetric ``_patch``/``_unpatch``.
* :class:`Job`: ``start()`` opens the job's CONSUMER span and makes it current, ``end(exc)`` closes it; for
  frameworks whose hooks come in pairs (middleware, signals). :func:`run_job` wraps one call.
* :func:`ephemeral_process` for a process that runs one job and exits (RQ's work horse): the detector stays
  with the long-lived parent; :func:`flush_providers` before such a process leaves through ``os._exit``.

Nothing here raises into the job: a failure to make or end a span is logged once and the job runs as it
would without otel-leak.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from typing import Any, Callable, Collection, Mapping

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor
from opentelemetry.trace import SpanKind, Status, StatusCode
from wrapt import register_post_import_hook

try:
    from opentelemetry.attributes import BoundedAttributes as _BoundedAttributes
except ImportError:  # pragma: no cover - an API without it: always the public path
    _BoundedAttributes = None

from otel_leak import names
from otel_leak.version import __version__

_log = logging.getLogger("otel_leak")
_TASK_KINDS = (SpanKind.CONSUMER, SpanKind.SERVER)
_warned: set[str] = set()


def warn_once(key: str, msg: str, *args: Any) -> None:
    if key not in _warned:
        _warned.add(key)
        _log.warning(msg, *args)


class FrameworkInstrumentor(BaseInstrumentor):
    """Base of the per-framework instrumentors. Subclasses set ``system`` and ``_instruments``."""

    system = ""  # messaging.system value and the name used in messages
    _instruments: tuple[str, ...] = ()  # requirement strings, e.g. ("rq >= 2.0",)

    def instrumentation_dependencies(self) -> Collection[str]:
        return self._instruments

    def _supported(self) -> bool:
        try:
            from opentelemetry.instrumentation.dependencies import get_dependency_conflicts

            conflict = get_dependency_conflicts(list(self._instruments))
        except Exception:
            return False
        if conflict is None:
            return True
        if getattr(conflict, "found", None):  # installed, but a version otel-leak does not support
            warn_once(
                f"version:{self.system}",
                "otel-leak: %s found, no task spans for it (%s)",
                self.system,
                conflict,
            )
        return False

    @property
    def module(self) -> str:
        """The framework's top-level module: patched once it is imported, never imported by otel-leak."""
        return re.split(r"[\s<>=!~;\[]", self._instruments[0].strip(), maxsplit=1)[0]

    def instrument(self, **kwargs):
        kwargs.setdefault("skip_dep_check", True)  # _instrument checks, quietly when not installed
        result = super().instrument(**kwargs)
        if not (getattr(self, "_patched", False) or getattr(self, "_pending", None) is not None):
            self._is_instrumented_by_opentelemetry = False  # nothing done: a later call may still patch
        return result

    def _instrument(self, **kwargs) -> None:
        try:
            if not self._supported():
                return
            if self.module in sys.modules:
                self._apply(kwargs)
            else:
                # Not imported (yet): patch when the application imports it. Importing every installed
                # framework into every process would cost each one its start-up and memory (~700 modules
                # for the six), and every bounded walk over the process's modules (tier 3) its time.
                self._pending = kwargs
                register_post_import_hook(self._on_import, self.module)
        except Exception as exc:
            warn_once(f"patch:{self.system}", "otel-leak: no task spans for %s (%s: %s)", self.system, type(exc).__name__, exc)

    def _on_import(self, _module) -> None:
        kwargs, self._pending = getattr(self, "_pending", None), None
        if kwargs is not None:  # (None: uninstrumented meanwhile, or patched by an earlier hook)
            self._apply(kwargs)

    def _apply(self, kwargs: dict) -> None:
        try:
            self._patch(**kwargs)
            self._patched = True
        except Exception as exc:
            warn_once(f"patch:{self.system}", "otel-leak: no task spans for %s (%s: %s)", self.system, type(exc).__name__, exc)

    def _uninstrument(self, **kwargs) -> None:
        self._pending = None
        if getattr(self, "_patched", False):
            self._patched = False
            try:
                self._unpatch(**kwargs)
            except Exception as exc:
                _log.warning("otel-leak: could not remove the %s integration (%s)", self.system, exc)

    def _patch(self, **kwargs) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _unpatch(self, **kwargs) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


_tracer = None


def tracer() -> trace.Tracer:
    """otel-leak's tracer (a proxy until the application sets its provider, then the real one)."""
    global _tracer
    if _tracer is None:
        _tracer = trace.get_tracer(names.INSTRUMENTATION_SCOPE, __version__)
    return _tracer


def in_task_span() -> bool:
    """Whether a recording CONSUMER/SERVER span is current: another instrumentation made this job's span."""
    span = trace.get_current_span()
    return span.is_recording() and getattr(span, "kind", None) in _TASK_KINDS


def span_attributes(task: str, system: str, queue: str | None = None, message_id: str | None = None) -> dict:
    attrs = {
        names.ATTR_TASK_NAME: task,
        names.ATTR_MESSAGING_SYSTEM: system,
        names.ATTR_MESSAGING_OPERATION_TYPE: "process",
        names.ATTR_MESSAGING_OPERATION_NAME: "process",
    }
    if queue:
        attrs[names.ATTR_MESSAGING_DESTINATION] = str(queue)
    if message_id:
        attrs[names.ATTR_MESSAGING_MESSAGE_ID] = str(message_id)
    return attrs


def _add_known_valid(span, attrs: dict) -> None:
    """``span.set_attributes(attrs)`` for values known to be valid (strings): the SDK span's bounded store
    is written directly while it has room (the span has not ended), the public path otherwise."""
    store = getattr(span, "_attributes", None)
    if type(store) is _BoundedAttributes and (store.maxlen is None or len(store) + len(attrs) <= store.maxlen):
        store._dict.update(attrs)
    elif span.is_recording():
        span.set_attributes(attrs)


class Job:
    """One job's task span, for hooks that come in pairs: ``start()`` in the first, ``end()`` in the second
    (same thread or same asyncio task). Both never raise; ``end`` is safe without ``start`` and twice."""

    __slots__ = ("task", "system", "queue", "message_id", "parent", "span", "_token")

    def __init__(
        self,
        task: str,
        system: str,
        queue: str | None = None,
        message_id: str | None = None,
        parent: otel_context.Context | None = None,
    ) -> None:
        self.task, self.system, self.queue, self.message_id, self.parent = task, system, queue, message_id, parent
        self.span = None
        self._token = None

    def start(self) -> "Job":
        try:
            if in_task_span():
                return self
            # The attributes, strings made here, go straight into the span's attribute store: the SDK validates
            # every value passed to start_span (~4 us for the first on this machine kind). otel-leak's
            # processor knows a CONSUMER span without a local parent for a task span as it starts; under a
            # local parent it looks for the task name, which is then passed at the start.
            sc = trace.get_current_span(self.parent).get_span_context()
            span = tracer().start_span(
                f"process {self.task}", context=self.parent, kind=SpanKind.CONSUMER,
                attributes={names.ATTR_TASK_NAME: self.task} if sc.is_valid and not sc.is_remote else None,
            )
            _add_known_valid(span, span_attributes(self.task, self.system, self.queue, self.message_id))
            self.span = span
            self._token = otel_context.attach(trace.set_span_in_context(span, self.parent))
        except Exception as exc:
            warn_once(f"start:{self.system}", "otel-leak: cannot start a %s task span (%s: %s)", self.system, type(exc).__name__, exc)
        return self

    def end(self, exc: BaseException | None = None) -> None:
        span, token = self.span, self._token
        self.span = self._token = None
        try:
            if token is not None:
                otel_context.detach(token)
        except Exception:
            pass
        if span is None:
            return
        try:
            if exc is not None:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            span.end()
        except Exception as e:
            warn_once(f"end:{self.system}", "otel-leak: cannot end a %s task span (%s: %s)", self.system, type(e).__name__, e)


def run_job(fn: Callable, args: tuple, kwargs: Mapping, job: Job) -> Any:
    """``fn(*args, **kwargs)`` inside ``job``'s span; its result or its exception, unchanged."""
    job.start()
    try:
        result = fn(*args, **kwargs)
    except BaseException as exc:
        job.end(exc)
        raise
    job.end()
    return result


async def run_job_async(fn: Callable, args: tuple, kwargs: Mapping, job: Job) -> Any:
    """``await fn(*args, **kwargs)`` inside ``job``'s span (the current asyncio task's context only)."""
    job.start()
    try:
        result = await fn(*args, **kwargs)
    except BaseException as exc:
        job.end(exc)
        raise
    job.end()
    return result


def ephemeral_process() -> None:
    """This process runs one job and exits (a fork-per-job work horse): its task span is still measured,
    but the detector (and its report file) belongs to the long-lived parent, whose memory is what can leak."""
    try:
        from otel_leak.instrumentor import LeakInstrumentor

        runtime = LeakInstrumentor.runtime
        detector = getattr(runtime, "detector", None)
        if detector is not None:
            detector.report_dir = ""  # before stop(): stop writes a final report
            detector.stop()
            runtime.detector = None
    except Exception:
        pass


EXIT_FLUSH_MS = 3000


def _flush_all(timeout_millis: int) -> None:
    from opentelemetry import metrics

    for provider in (trace.get_tracer_provider(), metrics.get_meter_provider()):
        flush = getattr(provider, "force_flush", None)
        if flush is None:
            continue
        try:
            flush(timeout_millis)
        except Exception:
            pass


def flush_providers(timeout_millis: int = EXIT_FLUSH_MS) -> bool:
    """Export what this process has (spans, task metrics) before it leaves through ``os._exit``; whether it
    finished. The flush runs on a daemon thread waited for a bounded time: a forked process can inherit an
    SDK lock held by a parent thread that does not exist in it (the metric reader does not renew its export
    lock after a fork), and a flush waiting on it forever must not keep the process from exiting."""
    try:
        t = threading.Thread(target=_flush_all, args=(timeout_millis,), name="otel-leak-flush", daemon=True)
        t.start()
        t.join(2 * timeout_millis / 1000 + 1)
        return not t.is_alive()
    except Exception:
        return False


def runtime_part(part: str):
    """A part (``detector``, ``sampler``, ``guard``) of this process's otel-leak runtime, if any."""
    try:
        from otel_leak.instrumentor import LeakInstrumentor

        return getattr(LeakInstrumentor.runtime, part, None)
    except Exception:
        return None


def leaving_process(system: str, exec_next: bool = False) -> None:
    """In a ``multiprocessing`` child about to leave through ``os._exit`` (Dramatiq's and Huey's worker
    processes), or in a process about to exec itself (``exec_next``: a Huey consumer's graceful restart):
    the last task measurements, the exporters' queues, the detector's final report and the guard's marker,
    now. Elsewhere (the main process) ``atexit`` does it. Never raises."""
    try:
        import multiprocessing

        if multiprocessing.parent_process() is None and not exec_next:
            return
        from otel_leak.instrumentor import LeakInstrumentor

        runtime = LeakInstrumentor.runtime
        if runtime is not None:
            runtime.processor.flush_metrics()
        if not flush_providers():
            warn_once(f"flush:{system}", "otel-leak: the export before a %s process's exit did not finish", system)
        at_exit = getattr(getattr(runtime, "detector", None), "_at_exit", None)
        if at_exit is not None:
            at_exit()  # the final sample and report, as at a normal exit
        guard = getattr(runtime, "guard", None)
        if guard is not None:
            guard.release()  # its recycling marker, which atexit would have removed
    except Exception:
        pass
