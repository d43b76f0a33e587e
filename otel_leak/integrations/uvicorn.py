"""uvicorn: no task span of its own to make, one way out to mend.

The task spans of an ASGI app under uvicorn are the SERVER spans of the app framework's OpenTelemetry
instrumentation (opentelemetry-instrumentation-starlette, -fastapi, or the ASGI middleware): one per
request, named by the route template. otel-leak measures them like any task span; nothing is added per
request here.

What this module mends is the end of the process. Since uvicorn 0.29, ``Server.capture_signals`` handles
SIGTERM/SIGINT with a graceful shutdown, then restores the signal's previous handler and raises the signal
again, so that the process ends as killed by it. For SIGTERM that handler is the default action: the
interpreter ends without running ``atexit``, and with it go the batch span processor's queue (up to
``OTEL_BSP_SCHEDULE_DELAY`` of spans: the last requests), the last metric export and otel-leak's final
report. That is every single-process uvicorn stopped by SIGTERM (``docker stop``, Kubernetes, systemd) and
every ``--workers N`` child (the supervisor stops them with SIGTERM). :class:`UvicornInstrumentor` wraps
``Server.capture_signals``: after the shutdown, when a captured signal is about to be raised again with the
default action in place, the detector writes its final report and the providers flush, as ``atexit`` would
have done. Nothing else changes: the signal is raised again and ends the process, as before.

The memory-budget guard (when on) recycles a serving process with uvicorn's own graceful shutdown: SIGTERM
to itself after a request's span ends, once ``capture_signals`` has put uvicorn's handler in place (the
requests in flight finish, up to ``--timeout-graceful-shutdown``). Under ``--workers N`` the supervisor
starts another process; a single process needs its own supervisor to restart it. A server run outside the
main thread captures no signal: the guard only records what it would do there (``unsupported``).

Caveat: a ``Server`` subclass that overrides ``capture_signals`` keeps its own (then it does not raise the
signal again either).
"""

from __future__ import annotations

import contextlib
import signal
import threading

from otel_leak.integrations._base import FrameworkInstrumentor, flush_providers, warn_once


FLUSH_MS = 5000  # per provider, as at exit


def _export() -> None:
    try:
        flush_providers(FLUSH_MS)  # the tracer provider first: its force_flush records the pending task points
        from opentelemetry._logs import get_logger_provider

        flush = getattr(get_logger_provider(), "force_flush", None)
        if flush is not None:
            flush(FLUSH_MS)
    except Exception as exc:
        warn_once("flush:uvicorn", "otel-leak: could not flush before uvicorn's exit (%s: %s)", type(exc).__name__, exc)


def final_flush() -> None:
    """What ``atexit`` would have done for otel-leak and the SDK, for a process about to die by a signal:
    the detector's final report, then spans, metrics and logs exported. Never raises; the export runs on a
    daemon thread waited for a bounded time (an exporter that hangs must not keep the process from ending:
    a --workers supervisor waits for its children without a timeout)."""
    try:
        from otel_leak.instrumentor import LeakInstrumentor

        detector = getattr(LeakInstrumentor.runtime, "detector", None)
        if detector is not None:
            detector.stop()  # a final sample and the final report
        t = threading.Thread(target=_export, name="otel-leak-flush", daemon=True)
        t.start()
        t.join(3 * FLUSH_MS / 1000 + 1)
        if t.is_alive():
            warn_once("flush-wait:uvicorn", "otel-leak: the export before uvicorn's exit did not finish; left behind")
    except Exception as exc:
        warn_once("flush:uvicorn", "otel-leak: could not flush before uvicorn's exit (%s: %s)", type(exc).__name__, exc)


def _arm_guard() -> None:
    try:
        from otel_leak import guard_signal
        from otel_leak.integrations._base import runtime_part

        if getattr(runtime_part("guard"), "mode", "off") == "off":
            return
        graceful = threading.current_thread() is threading.main_thread() and signal.getsignal(
            signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN, None)
        guard_signal.arm(signal.SIGTERM, "this uvicorn server", target=None if graceful else 0)
    except Exception as exc:
        warn_once("guard:uvicorn", "otel-leak: the memory-budget guard cannot arm in uvicorn (%s: %s)",
                  type(exc).__name__, exc)


def _wrap(original):
    @contextlib.contextmanager
    def capture_signals(server):
        try:  # the handlers uvicorn will restore before raising a captured signal again
            before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
        except Exception:
            before = {}
        with original(server):
            _arm_guard()
            yield
            try:
                deadly = [s for s in getattr(server, "_captured_signals", ()) if before.get(s) == signal.SIG_DFL]
            except Exception:
                deadly = []
            if deadly:
                final_flush()

    capture_signals.__wrapped__ = original
    return capture_signals


class UvicornInstrumentor(FrameworkInstrumentor):
    system = "uvicorn"
    _instruments = ("uvicorn >= 0.29",)

    def _patch(self, **kwargs) -> None:
        from uvicorn.server import Server

        original = Server.__dict__["capture_signals"]  # KeyError: a uvicorn without it, nothing patched
        self._original = original
        Server.capture_signals = _wrap(original)

    def _unpatch(self, **kwargs) -> None:
        from uvicorn.server import Server

        Server.capture_signals = self._original
