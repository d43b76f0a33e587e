"""The memory-budget guard in gunicorn workers (installed when ``gunicorn.workers.base`` is imported).

Each request's task span (the SERVER span of the web framework's instrumentation) asks
:meth:`otel_leak.guard.Guard.check` as it ends (the span processor's ``after_task`` hook, set in each worker
process by ``Worker.init_process``). When the answer is recycle, the worker sends itself SIGTERM: gunicorn's
graceful worker stop, the one the arbiter sends on a reload. The sync worker finishes the request it is
sending and leaves its loop; gthread and the ASGI workers (uvicorn's) finish the requests in flight; the
worker exits 0 and the arbiter starts a new one, as after ``max_requests``. Nothing is killed mid-request.

Only after a request: a request that has reached the worker has been accepted, and gunicorn gives a hook no
way to hand it back. The arbiter serves no request and is never recycled.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import threading

_log = logging.getLogger("otel_leak")


class _State:
    installed = False
    worker_pid = 0  # the gunicorn worker process this hook was armed in
    sigterm_sent = False
    lock = threading.Lock()


_state = _State()


def _runtime():
    from otel_leak.instrumentor import LeakInstrumentor

    return LeakInstrumentor.runtime


def _guard():
    g = getattr(_runtime(), "guard", None)
    return None if g is None or g.mode == "off" or g.disabled else g


def install(base_module) -> None:
    """Wrap ``Worker.init_process`` (once) so that each worker arms the after-request check."""
    if _state.installed:
        return
    worker = base_module.Worker
    orig = worker.init_process
    if getattr(orig, "_otel_leak_guard", False):
        _state.installed = True
        return

    @functools.wraps(orig)
    def init_process(self, *args, **kwargs):
        _arm()
        return orig(self, *args, **kwargs)

    init_process._otel_leak_guard = True
    worker.init_process = init_process
    _state.installed = True


def _arm() -> None:
    """In a worker process, before it serves: requests' task spans call the guard as they end."""
    try:
        g = _guard()
        processor = getattr(_runtime(), "processor", None)
        if g is None or processor is None:
            return
        _state.worker_pid = os.getpid()
        _state.sigterm_sent = False
        _state.lock = threading.Lock()
        processor.after_task = _after_request
    except Exception as exc:  # the worker serves on without the guard
        _log.warning("otel-leak: the memory-budget guard cannot arm in this gunicorn worker (%s: %s)",
                     type(exc).__name__, exc)


def _after_request(span, task: str) -> None:
    """A request's span ends: recycle this worker if the guard says so. Never raises."""
    if _state.sigterm_sent or os.getpid() != _state.worker_pid:
        return
    g = _guard()
    if g is None:
        return
    try:
        with _state.lock:  # gthread: requests end on several threads
            if _state.sigterm_sent:
                return
            reason = g.check("post_task", task=task, span=span, can_recycle=True)
            if reason is None:
                return
            _state.sigterm_sent = True
        os.kill(os.getpid(), signal.SIGTERM)  # gunicorn's graceful stop of this worker
    except Exception as exc:
        g.fail(exc)
