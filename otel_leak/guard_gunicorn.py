"""The memory-budget guard in gunicorn workers (installed when ``gunicorn.workers.base`` is imported).

``Worker.init_process`` arms :mod:`otel_leak.guard_signal` in each worker process: each request's task span
(the SERVER span of the web framework's instrumentation) asks the guard as it ends, and when the answer is
recycle the worker sends itself SIGTERM, gunicorn's graceful worker stop, the one the arbiter sends on a
reload. The sync worker finishes the request it is sending and leaves its loop; gthread and the ASGI workers
(uvicorn's) finish the requests in flight; the worker exits 0 and the arbiter starts a new one, as after
``max_requests``. Nothing is killed mid-request.

Only after a request: a request that has reached the worker has been accepted, and gunicorn gives a hook no
way to hand it back. The arbiter serves no request and is never recycled.
"""

from __future__ import annotations

import functools
import signal

from otel_leak import guard_signal


class _State:
    installed = False


_state = _State()


def install(base_module) -> None:
    """Wrap ``Worker.init_process`` (once) so that each worker arms the after-request check."""
    if _state.installed:
        return
    worker = base_module.Worker
    orig = worker.init_process
    if not getattr(orig, "_otel_leak_guard", False):

        @functools.wraps(orig)
        def init_process(self, *args, **kwargs):
            guard_signal.arm(signal.SIGTERM, "this gunicorn worker")
            return orig(self, *args, **kwargs)

        init_process._otel_leak_guard = True
        worker.init_process = init_process
    _state.installed = True
