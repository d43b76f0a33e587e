"""Recycle a worker process with a graceful signal, after a task span ends: for the frameworks whose own
signal already means "finish the task in hand, then exit" (gunicorn workers and RQ's in-process
``SimpleWorker``: SIGTERM to themselves; a ``dramatiq`` command's worker processes: SIGHUP to the command,
which stops them all gracefully and starts itself again; a Huey consumer with thread workers: SIGHUP to
itself, its graceful restart), or with a framework's own recycle (a Huey worker process: its max-tasks
exit). Used by :mod:`otel_leak.guard_gunicorn` and the RQ, Dramatiq and Huey integrations.

:func:`arm` sets, in the process that serves tasks, the span processor's ``after_task`` hook: as each task
span ends the guard is asked (:meth:`otel_leak.guard.Guard.check`, ``post_task``), and on recycle the signal
is sent once. The framework's handler does the rest. Where no graceful path exists (``target=0``), the
guard still records what it would do (``unsupported``). Never raises into the worker.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

_log = logging.getLogger("otel_leak")


class _State:
    pid = 0  # the process the hook is armed in
    sig = signal.SIGTERM
    target: int | None = None  # the process to signal (None: this one; 0: none, only record)
    action = None  # instead of a signal: a callable that starts the framework's own recycle
    sent = False
    lock = threading.Lock()


_state = _State()


def _runtime():
    from otel_leak.instrumentor import LeakInstrumentor

    return LeakInstrumentor.runtime


def _guard():
    g = getattr(_runtime(), "guard", None)
    return None if g is None or g.mode == "off" or g.disabled else g


def arm(sig: int = signal.SIGTERM, where: str = "this worker", target: int | None = None, action=None) -> bool:
    """In the process that serves tasks, before it serves: recycle with ``sig`` to ``target`` (None: this
    process; 0: no graceful path, decisions are only recorded), or by calling ``action()``, when the guard
    says so. Once per process (a forked child arms anew); whether the hook is in place."""
    try:
        if _state.pid == os.getpid():
            return True
        g = _guard()
        processor = getattr(_runtime(), "processor", None)
        if g is None or processor is None:
            return False
        _state.pid, _state.sig, _state.sent, _state.lock = os.getpid(), sig, False, threading.Lock()
        _state.target, _state.action = target, action
        processor.after_task = _after_task
        return True
    except Exception as exc:  # the worker serves on without the guard
        _log.warning("otel-leak: the memory-budget guard cannot arm in %s (%s: %s)", where, type(exc).__name__, exc)
        return False


def refuse_task(task=None, hand_back=None) -> bool:
    """Before a worker takes its next task, in a process armed here: whether the hard budget is already
    crossed (the guard then recycles as after a task, once) and the task must be left for another process.
    For frameworks that can hand a task back (Huey re-enqueues it, arq retries it, Dramatiq re-enqueues the
    message). ``task``: its name, or a callable returning it, called only if a decision is recorded.
    ``hand_back()``, when given, puts the task back *before* the recycle signal is sent (where
    the framework's signal handler raises, as RQ's does between jobs); if it fails, the task runs here
    after all (False), the recycle still starts. Raises only what the framework's own signal handler raises
    on a signal to this process (its way to stop), never an error of otel-leak's."""
    if os.getpid() != _state.pid:
        return False
    g = _guard()
    decided = False
    if not _state.sent:
        if g is None:
            return False
        try:
            with _state.lock:
                if not _state.sent:
                    decided = g.check("pre_task", task=task, can_recycle=_state.target != 0) is not None
                    _state.sent = decided
        except Exception as exc:
            g.fail(exc)
            return False
        if not _state.sent:
            return False
    handed = _hand_back(hand_back)
    if decided:
        if _state.action is not None:
            try:
                _state.action()
            except Exception as exc:
                g.fail(exc)
        else:
            try:  # what the framework's own handler raises here (RQ between jobs: StopRequested) is its stop
                os.kill(os.getpid() if _state.target is None else _state.target, _state.sig)
            except OSError as exc:
                g.fail(exc)
    return handed


def _hand_back(hand_back) -> bool:
    if hand_back is None:
        return True
    try:
        hand_back()
        return True
    except Exception as exc:  # the task runs here rather than be lost
        _log.warning("otel-leak: the guard could not hand a task back, it runs here (%s: %s)", type(exc).__name__, exc)
        return False


def _after_task(span, task: str) -> None:
    """A task span ends: recycle this process if the guard says so. Never raises."""
    if _state.sent or os.getpid() != _state.pid:
        return
    g = _guard()
    if g is None:
        return
    try:
        with _state.lock:  # threads: task spans end on several
            if _state.sent:
                return
            reason = g.check("post_task", task=task, span=span, can_recycle=_state.target != 0)
            if reason is None:
                return
            _state.sent = True
        if _state.action is not None:
            _state.action()
        else:
            os.kill(os.getpid() if _state.target is None else _state.target, _state.sig)
    except Exception as exc:
        g.fail(exc)
