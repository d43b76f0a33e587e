"""Task spans for RQ workers (``rq worker``, ``rq worker-pool``), RQ 2.x and 3.x.

A task span is one run of ``Job.perform`` (the job's function inside RQ's timeout, not RQ's bookkeeping),
made where the job runs: identity ``job.func_name`` (the function's dotted path), destination the queue
(``job.origin``), message id the job id, ``process.pid`` the process (a horse shares its parent's resource).
Its parent is the trace context in ``job.meta``, put there when a job is created inside a span.

* ``SimpleWorker`` runs jobs in the worker process: what they retain accumulates there.
* ``Worker`` forks a work horse per job: the horse (without the sampler thread) measures and exports the
  span (bounded, before RQ's ``os._exit``), writes no report; what a job keeps dies with it.
* ``SpawnWorker``'s horse is a new, auto-instrumented interpreter: started with the detector off.
* ``rq worker-pool``: forked long-lived workers, each its own report, final report and export before exit.

The memory-budget guard (when on) recycles a process that runs jobs itself (``SimpleWorker``, a pool's
workers) by RQ's warm shutdown, SIGTERM to itself after a job (:mod:`otel_leak.guard_signal`); a work horse
needs none: it exits after its one job. A ``SimpleWorker`` already over the hard budget when it dequeues a
job puts the job back at the front of its queue and stops the same way, without running it.

Caveats: a horse waits (a bounded time: ``flush_providers``) for its export before it exits, the job's
result stored by then; a horse's metric points carry its own ``process.pid``.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from opentelemetry import propagate, trace

from otel_leak import names
from otel_leak.integrations._base import (
    FrameworkInstrumentor,
    Job,
    ephemeral_process,
    flush_providers,
    leaving_process,
    runtime_part as _runtime,
    warn_once,
)

SYSTEM = "rq"
_CARRIER_KEY = "traceparent"


def _job_span(rq_job: Any) -> Job | None:
    try:
        meta = rq_job.meta
        parent = propagate.extract(meta) if meta and _CARRIER_KEY in meta else None
        return Job(str(rq_job.func_name or "rq.job"), SYSTEM, rq_job.origin, rq_job.id, parent)
    except Exception as exc:
        warn_once("job:rq", "otel-leak: no task span for an RQ job (%s: %s)", type(exc).__name__, exc)
        return None


def _perform(original):
    """``Job.perform``: the job's function inside its task span."""

    @functools.wraps(original)
    def perform(self, *args, **kwargs):
        job = _job_span(self)
        if job is None:
            return original(self, *args, **kwargs)
        job.start()
        try:
            if job.span is not None:
                job.span.set_attribute(names.SPAN_PID, os.getpid())
        except Exception:
            pass
        try:
            result = original(self, *args, **kwargs)
        except BaseException as exc:
            job.end(exc)
            raise
        job.end()
        return result

    return perform


def _perform_job(original):
    """``BaseWorker.perform_job``: in a work horse, no report of its own, and export before ``os._exit``."""

    @functools.wraps(original)
    def perform_job(self, *args, **kwargs):
        if not getattr(self, "_is_horse", False):
            # the job runs in the worker process (SimpleWorker): the guard may recycle it with RQ's warm
            # shutdown (SIGTERM: the job in hand finishes, the worker exits 0, its supervisor restarts it)
            _arm_guard()
            return original(self, *args, **kwargs)
        ephemeral_process()
        try:
            return original(self, *args, **kwargs)
        finally:
            if not flush_providers():  # bounded
                warn_once("flush:rq", "otel-leak: the export before an RQ work horse's exit did not finish")

    return perform_job


def _execute_job(original):
    """``SimpleWorker.execute_job``: the guard's check before a job (the hard budget, on a reading taken
    now). Over it, the job goes back to the front of its queue for another worker, and the worker stops
    with RQ's warm shutdown; the job is put back first (RQ's SIGTERM handler raises between jobs)."""

    @functools.wraps(original)
    def execute_job(self, job, queue, *args, **kwargs):
        if _arm_guard():
            from otel_leak import guard_signal

            # RQ's StopRequested, from its SIGTERM handler once the job is back in the queue, goes through
            if guard_signal.refuse_task(_name(job), hand_back=lambda: _requeue(job, queue)):
                return None
        return original(self, job, queue, *args, **kwargs)

    return execute_job


def _name(job: Any) -> str:
    try:
        return str(job.func_name or "rq.job")
    except Exception:  # a job whose function cannot be resolved: RQ reports that when it runs
        return "rq.job"


def _requeue(job: Any, queue: Any) -> None:
    """The dequeued job back at the front of its queue, then out of RQ's intermediate list (RQ >= 2.1 keeps
    a dequeued job there until it starts): at worst twice in the queue, never lost."""
    queue.enqueue_job(job, at_front=True)
    key = getattr(queue, "intermediate_queue_key", None)
    if key:
        queue.connection.lrem(key, 1, job.id)


def _arm_guard() -> bool:
    """In a worker that runs jobs itself: recycle with RQ's warm shutdown. Whether the guard is armed."""
    if getattr(_runtime("guard"), "mode", "off") == "off":
        return False
    try:
        import signal

        from otel_leak import guard_signal

        return guard_signal.arm(signal.SIGTERM, "this RQ worker")
    except Exception as exc:
        warn_once("guard:rq", "otel-leak: the memory-budget guard cannot arm in an RQ worker (%s: %s)",
                  type(exc).__name__, exc)
        return False


def _quiet_fork(original):
    """``Worker.fork_work_horse``, ``WorkerPool.start_worker``: the forked child does not restart the sampler
    thread in its at-fork hook. Restarted there, it ticks at once: in a horse, before the horse can stop its
    detector, which then writes a ``<horse pid>.json``; in any child, possibly while the detector's own
    after-fork reset is half done (a TypeError that leaves that detector failed). A pool worker starts it in
    ``run_worker``; a horse runs without it (spans are still measured)."""

    @functools.wraps(original)
    def fork(self, *args, **kwargs):
        sampler = _runtime("sampler")
        thread = getattr(sampler, "_thread", None)
        if thread is not None:
            sampler._thread = None  # what the sampler's at-fork hook reads; the parent's thread runs on
        try:
            return original(self, *args, **kwargs)
        finally:  # in the parent (a horse leaves through os._exit inside the call)
            if thread is not None:
                sampler._thread = thread

    return fork


def _spawn_work_horse(original):
    """``SpawnWorker.fork_work_horse``: the new interpreter starts with the detector off."""

    @functools.wraps(original)
    def fork_work_horse(self, *args, **kwargs):
        from otel_leak.detector import settings

        key = settings.DETECTOR.env
        saved = os.environ.get(key)
        os.environ[key] = "false"
        try:
            return original(self, *args, **kwargs)
        finally:
            if saved is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = saved

    return fork_work_horse


def _run_worker(original):
    """``rq.worker_pool.run_worker``: a pool's worker process leaves through ``os._exit`` (multiprocessing, no
    atexit): its final report and what it still holds to export, first."""

    @functools.wraps(original)
    def run_worker(*args, **kwargs):
        sampler = _runtime("sampler")
        if sampler is not None:
            sampler.start()  # not restarted at the fork (_quiet_fork); a no-op when running
        try:
            return original(*args, **kwargs)
        finally:
            leaving_process(SYSTEM)  # the final report and the export

    return run_worker


def _create_job(original):
    """``Queue.create_job``: the current trace context into the new job's ``meta``."""

    @functools.wraps(original)
    def create_job(self, *args, **kwargs):
        job = original(self, *args, **kwargs)
        try:
            if trace.get_current_span().get_span_context().is_valid:
                carrier = dict(job.meta or {})  # a copy: the caller's meta dict may be shared
                propagate.inject(carrier)
                job.meta = carrier
        except Exception as exc:
            warn_once("inject:rq", "otel-leak: no trace context in an RQ job (%s: %s)", type(exc).__name__, exc)
        return job

    return create_job


def _owner(cls: type, name: str) -> type:
    return next(c for c in cls.__mro__ if name in vars(c))  # patched, and restored, where it is defined


class RQInstrumentor(FrameworkInstrumentor):
    """One CONSUMER span per RQ job (``Job.perform``), in whichever process runs it."""

    system = SYSTEM
    _instruments = ("rq >= 2.0",)

    def _targets(self) -> list[tuple[Any, str, Any]]:
        import rq.worker
        import rq.worker_pool
        from rq.job import Job as RQJob
        from rq.queue import Queue

        worker = rq.worker.Worker
        targets = [
            (_owner(RQJob, "perform"), "perform", _perform),
            (_owner(worker, "perform_job"), "perform_job", _perform_job),  # BaseWorker; Worker in 2.0
            (_owner(worker, "fork_work_horse"), "fork_work_horse", _quiet_fork),
            (_owner(Queue, "create_job"), "create_job", _create_job),
            (rq.worker_pool, "run_worker", _run_worker),
            (_owner(rq.worker_pool.WorkerPool, "start_worker"), "start_worker", _quiet_fork),
        ]
        simple = getattr(rq.worker, "SimpleWorker", None)
        if simple is not None and "execute_job" in vars(simple):
            targets.append((simple, "execute_job", _execute_job))
        spawn = getattr(rq.worker, "SpawnWorker", None)  # when this version has one
        if spawn is not None and "fork_work_horse" in vars(spawn):
            targets.append((spawn, "fork_work_horse", _spawn_work_horse))
        return targets

    def _patch(self, **kwargs) -> None:
        targets = self._targets()
        originals = [(cls, name, vars(cls)[name]) for cls, name, _ in targets]  # all found before any change
        self._originals = originals
        for (cls, name, wrap), (_, _, original) in zip(targets, originals):
            setattr(cls, name, wrap(original))

    def _unpatch(self, **kwargs) -> None:
        for cls, name, original in getattr(self, "_originals", ()):
            setattr(cls, name, original)
        self._originals = []
