"""The memory-budget guard in a Celery worker, through Celery's signals (installed when Celery is imported,
never importing it).

``task_prerun`` and ``task_postrun`` ask :meth:`otel_leak.guard.Guard.check`; when the answer is recycle:

* **prefork child**: it exits after its current task exactly as with ``worker_max_memory_per_child``. After
  each task, once the task's result has gone to the pool, billiard's child loop compares ``mem_rss()`` with
  the pool's ``max_memory_per_child`` and, when above, leaves its loop with ``EX_RECYCLE``; the pool replaces
  the child. With the guard on, ``worker_init`` gives the pool that check (an unreachable 1 PiB limit unless
  the application set one) and ``billiard.pool.mem_rss`` reports above it once the guard has decided: the
  child finishes its task, hands its result over and exits before it reads another; jobs the pool had
  written to it unread are given to another child, as when Celery's own limit recycles a child.
* **solo, threads (any pool running tasks in the worker's main process)**: a warm shutdown, by SIGTERM to
  the worker itself: the running tasks finish, the worker stops taking new ones and exits 0; the supervisor
  (systemd, Kubernetes, supervisord) restarts it. Messages it had prefetched and not started go back to the
  broker unacknowledged.
* **before a task** (``task_prerun``, only the hard budget): Celery has already handed the task to this
  process and gives a ``task_prerun`` receiver no way to refuse it (receivers' exceptions are logged and
  swallowed; the child has acknowledged the job to the pool, and with early acknowledgement the broker has
  forgotten the message). Exiting there would lose the task (``WorkerLostError``) unless it is ``acks_late``
  with ``reject_on_worker_lost``. So the task runs and the process recycles right after it; the entry says
  so (``when: pre_task``). What keeps a task from starting in a process over the hard budget is the check
  after the previous task, which in a prefork child is also the last thing before it reads its next job.

Receivers: weak=False with a ``dispatch_uid`` of their own. Ours runs first among ``task_postrun``'s and
last among ``task_prerun``'s (reordered at connect and at ``worker_init``), so the task span another
instrumentation opens in prerun and ends in postrun is the current span when the guard records.
"""

from __future__ import annotations

import logging
import os
import signal

_log = logging.getLogger("otel_leak")
UID = "otel-leak-guard"
UNREACHABLE_KIB = 1 << 40  # the limit given to the pool's after-task check when the application set none


class _State:
    installed = False
    worker_pid = 0  # the worker's main process (worker_init's); its pool children inherit what is set there
    prefork = False  # whether the worker's pool is prefork
    memory_check_kib = 0  # the pool's max_memory_per_child, when the guard may use it
    exit_after_task = False
    sigterm_sent = False


_state = _State()


def _guard():
    from otel_leak.instrumentor import LeakInstrumentor

    g = getattr(LeakInstrumentor.runtime, "guard", None)
    return None if g is None or g.mode == "off" or g.disabled else g


def install() -> None:
    """Connect the receivers (once per process). Called when Celery is imported."""
    if _state.installed:
        return
    from celery import signals

    for sig, fn in ((signals.worker_init, _on_worker_init), (signals.worker_process_shutdown, _on_child_shutdown),
                    (signals.task_prerun, _on_prerun), (signals.task_postrun, _on_postrun)):
        sig.connect(fn, weak=False, dispatch_uid=f"{UID}-{fn.__name__}")
    _order_receivers()
    _state.installed = True
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_after_fork)


def _after_fork() -> None:
    _state.exit_after_task = _state.sigterm_sent = False


def _prefork_child() -> bool:
    return _state.prefork and _state.worker_pid not in (0, os.getpid())


def _main_process() -> bool:
    """Tasks run in the worker's main process (solo, threads, gevent, eventlet pools)."""
    return not _state.prefork and _state.worker_pid == os.getpid()


def _move(sig, uid: str, first: bool) -> None:
    with sig.lock:
        mine = [r for r in sig.receivers if r[0][0] == uid]
        rest = [r for r in sig.receivers if r[0][0] != uid]
        if mine:
            sig.receivers[:] = mine + rest if first else rest + mine
            sig.sender_receivers_cache.clear()


def _order_receivers() -> None:
    try:
        from celery import signals

        _move(signals.task_postrun, f"{UID}-_on_postrun", first=True)
        _move(signals.task_prerun, f"{UID}-_on_prerun", first=False)
    except Exception as exc:  # only the span events depend on it
        _log.debug("otel-leak: cannot order the guard's Celery receivers (%s)", exc)


def _patch_mem_rss() -> None:
    import billiard.pool as bp

    orig = bp.mem_rss
    if getattr(orig, "_otel_leak_guard", False):
        return

    def mem_rss():
        if _state.exit_after_task:
            return _state.memory_check_kib + 1
        return orig()

    mem_rss._otel_leak_guard = True
    bp.mem_rss = mem_rss


def _on_worker_init(sender=None, **_kw) -> None:
    g = _guard()
    if g is None:
        return
    try:
        from celery.concurrency import get_implementation

        _state.worker_pid = os.getpid()
        _state.prefork = get_implementation(sender.pool_cls).__module__ == "celery.concurrency.prefork"
        if _state.prefork and g.mode == "on":
            kib = int(sender.max_memory_per_child or 0)
            if kib <= 0:
                kib = sender.max_memory_per_child = UNREACHABLE_KIB
            _state.memory_check_kib = kib
            _patch_mem_rss()
        _order_receivers()
    except Exception as exc:
        g.fail(exc)


def _on_child_shutdown(**_kw) -> None:
    """In a pool child about to leave through ``os._exit``: a recycled child exports its last spans (the one
    with the guard's event ends just before) and metrics first, then gives up the recycling marker."""
    g = _guard()
    if g is None:
        return
    if g.recycling is not None:
        from otel_leak.integrations._base import flush_providers

        flush_providers()
    g.release()


def _task_span(task, task_id):
    from opentelemetry import trace

    span = trace.get_current_span()
    if span.is_recording():
        return span
    try:  # opentelemetry-instrumentation-celery keeps the task's span on the task
        from opentelemetry.instrumentation.celery import utils

        ctx = utils.retrieve_context(task, task_id)
        if ctx is not None and ctx[0].is_recording():
            return ctx[0]
    except Exception:
        pass
    return span


def _check(when: str, task, task_id) -> None:
    g = _guard()
    if g is None:
        return
    try:
        prefork_child = _prefork_child()
        can = (prefork_child and _state.memory_check_kib > 0) or _main_process()
        reason = g.check(when, task=getattr(task, "name", None), span=_task_span(task, task_id), can_recycle=can)
        if reason is None:
            return
        if prefork_child:
            _state.exit_after_task = True  # billiard's after-task check sees it
        elif not _state.sigterm_sent:
            _state.sigterm_sent = True
            os.kill(os.getpid(), signal.SIGTERM)  # Celery's warm shutdown: this task (and others running) finish
    except Exception as exc:
        g.fail(exc)


def _on_prerun(sender=None, task_id=None, task=None, **_kw) -> None:
    _check("pre_task", task if task is not None else sender, task_id)


def _on_postrun(sender=None, task_id=None, task=None, **_kw) -> None:
    _check("post_task", task if task is not None else sender, task_id)
