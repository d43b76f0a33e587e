"""Task spans for arq workers (``arq app.WorkerSettings``).

A task span is one run of one job's coroutine: arq runs each job as its own asyncio task
(``create_task(function.coroutine(ctx, *args, **kwargs))``), and the span is opened and made current inside
that task, so jobs that interleave on the event loop never see each other's span and none is the parent of
another. Identity: the name arq registers the function under (the key of ``Worker.functions``: the
coroutine's ``__qualname__`` or ``func(..., name=...)``; cron jobs as ``cron:<name>``); destination: the
worker's queue name (``arq:queue`` by default); message id: the job id.

How: when a :class:`arq.worker.Worker` is constructed, its ``functions`` entries are replaced by copies
whose coroutine runs the original inside the job's span (the user's ``Function``/``CronJob`` objects are not
touched). Uninstrumenting restores ``Worker.__init__`` and puts the original entries back into the workers
built meanwhile.

The memory-budget guard (when on) stops a worker over its budget the way arq stops on a signal when told to
wait for its jobs (``job_completion_wait``): after a job's span ends it stops taking jobs, lets the running
ones finish (up to the worker's job timeout, after which arq would cancel them anyway) and exits; its
supervisor starts it again, as for any arq worker that stops. A job that reaches a worker already over the
hard budget does not start: it raises arq's ``Retry`` (one of its tries; never on its last) and runs again
a second later on another worker.

Caveats: the span covers the job's coroutine only: arq's own Redis reads and result write, and the
``on_job_start``/``on_job_end`` hooks, run outside it (in arq's ``run_job`` task). A job cancelled by its
timeout or an abort ends its span with ERROR status (``CancelledError``). Workers constructed before
``instrument()`` get no spans. arq passes no trace context with a job: each span starts a trace.
"""

from __future__ import annotations

import copy
import functools
import os
import weakref
from typing import Any

from otel_leak.integrations._base import FrameworkInstrumentor, Job, run_job_async, runtime_part, warn_once

SYSTEM = "arq"
_ORIGINAL = "_otel_leak_original"  # on a wrapping coroutine: the Function/CronJob it was made from
_armed = [0]  # the pid the guard is armed in (its jobs check the hard budget before they start)


def _refuse(name: str) -> bool:
    """The guard's check before a job (the hard budget, on a reading taken now), in the armed process."""
    try:
        from otel_leak import guard_signal

        return _armed[0] == os.getpid() and guard_signal.refuse_task(name)
    except Exception:
        return False


def _wrap(function: Any, name: str, queue: str, max_tries: int = 5) -> Any:
    """A copy of arq's ``Function``/``CronJob`` whose coroutine runs the original inside the job's span."""
    coroutine = function.coroutine
    tries = getattr(function, "max_tries", None) or max_tries

    @functools.wraps(coroutine)
    async def run(ctx, *args, **kwargs):
        job_id = ctx.get("job_id") if isinstance(ctx, dict) else None
        if _armed[0] and isinstance(ctx, dict) and ctx.get("job_try", tries) < tries and _refuse(name):
            from arq.worker import Retry

            raise Retry(defer=1)  # over the hard budget before it starts: arq runs it again, elsewhere
        return await run_job_async(coroutine, (ctx, *args), kwargs, Job(name, SYSTEM, queue, job_id))

    setattr(run, _ORIGINAL, function)
    wrapped = copy.copy(function)
    wrapped.coroutine = run
    return wrapped


def _stop_when_done(worker: Any) -> None:
    """arq's wait-for-completion shutdown, as on SIGTERM with ``job_completion_wait``: no new job; the running
    ones get up to the job timeout (a worker configured to wait longer keeps its wait)."""
    import signal

    worker._job_completion_wait = max(worker._job_completion_wait or 0, worker.job_timeout_s)
    worker.handle_sig_wait_for_completion(signal.SIGTERM)


def _arm_guard(worker: Any) -> None:
    if getattr(runtime_part("guard"), "mode", "off") == "off":
        return
    try:
        from otel_leak import guard_signal

        can = hasattr(worker, "handle_sig_wait_for_completion") and hasattr(worker, "_job_completion_wait")
        if guard_signal.arm(where="this arq worker", target=None if can else 0,
                            action=lambda: _stop_when_done(worker)) and can:
            _armed[0] = os.getpid()
    except Exception as exc:
        warn_once("guard:arq", "otel-leak: the memory-budget guard cannot arm in an arq worker (%s: %s)",
                  type(exc).__name__, exc)


def _instrument_worker(worker: Any, workers: weakref.WeakSet) -> None:
    _arm_guard(worker)
    try:
        queue = str(worker.queue_name)
        functions = worker.functions
        new = {
            key: f if getattr(f.coroutine, _ORIGINAL, None) is not None
            else _wrap(f, key, queue, getattr(worker, "max_tries", 5) or 5)
            for key, f in functions.items()
        }
        functions.update(new)  # all built first: a failure above leaves the worker as arq made it
        workers.add(worker)
    except Exception as exc:
        warn_once("worker:arq", "otel-leak: no task spans for this arq worker (%s: %s)", type(exc).__name__, exc)


def _restore_worker(worker: Any) -> None:
    functions = worker.functions
    for key, f in list(functions.items()):
        original = getattr(getattr(f, "coroutine", None), _ORIGINAL, None)
        if original is not None:
            functions[key] = original


class ArqInstrumentor(FrameworkInstrumentor):
    """One CONSUMER span per arq job, current only in the job's own asyncio task."""

    system = SYSTEM
    _instruments = ("arq >= 0.25",)

    def _patch(self, **kwargs) -> None:
        from arq.worker import Worker

        original = Worker.__dict__["__init__"]
        workers: weakref.WeakSet = weakref.WeakSet()

        @functools.wraps(original)
        def __init__(worker, *args, **kw):
            original(worker, *args, **kw)
            _instrument_worker(worker, workers)

        self._original_init, self._workers = original, workers
        Worker.__init__ = __init__

    def _unpatch(self, **kwargs) -> None:
        from arq.worker import Worker

        Worker.__init__ = self._original_init
        for worker in list(self._workers):
            try:
                _restore_worker(worker)
            except Exception:
                pass
        self._workers = weakref.WeakSet()
