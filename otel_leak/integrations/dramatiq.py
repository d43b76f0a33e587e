"""Dramatiq: one task span per message a worker thread processes.

A *task span* is the processing of one message by a ``dramatiq.Worker`` thread: it starts in the middleware
hook ``before_process_message`` and ends in ``after_process_message`` (ERROR status with the actor's
exception, which Dramatiq goes on handling as usual: retries, logging) or ``after_skip_message``. Identity:
the actor name (``message.actor_name``); ``messaging.destination.name``: the queue (``message.queue_name``);
``messaging.message.id``: the message id.

How it gets there without code changes: ``Worker.__init__`` is wrapped to append otel-leak's middleware to
the worker's broker (once per broker), so every broker that runs a worker has it, however and whenever it was
created (brokers are usually made at import of the user's module, after auto-instrumentation started).
Appended last, its ``before`` hook runs after the others': a span that another tracing middleware made
current is the task span, and no second one is made.

Processes: the ``dramatiq`` command forks its worker processes (``--processes N``; ``--use-spawn`` starts
fresh interpreters, auto-instrumented the same way through the inherited environment). Each one measures
itself and writes its own report. They leave through ``os._exit`` (``multiprocessing``): no ``atexit``, so
the middleware's ``after_worker_shutdown`` exports what the process has and writes its final report.

The memory-budget guard (when on) recycles the worker processes of a ``dramatiq`` command with the command's
own reload: SIGHUP to it, after a message, from the process over its budget. The command then stops every
worker process gracefully (each finishes the messages in hand; the broker keeps the others) and starts
itself again, same pid, same arguments (:mod:`otel_leak.guard_signal`). A message that reaches a process
already over the hard budget does not start: the same message goes back to its queue and this delivery
is skipped (``SkipMessage``), so another process runs it. Dramatiq cannot replace one worker
process alone: when one exits, the command stops them all. A ``Worker`` run in a process of its own making
has no such path: the guard only records what it would do there (``unsupported``).

Caveat: Dramatiq messages carry no trace context, so task spans are roots (no producer parent).
"""

from __future__ import annotations

import os
import signal
import sys
import weakref

from otel_leak.integrations._base import FrameworkInstrumentor, Job, leaving_process, warn_once
from otel_leak.integrations._base import runtime_part as _runtime

SYSTEM = "dramatiq"
_ATTR = "_otel_leak_job"  # on the MessageProxy (a plain object): the message's Job between the two hooks
_brokers: "weakref.WeakSet" = weakref.WeakSet()  # brokers given the middleware (removed on uninstrument)
_cls = None


def _middleware_class():
    global _cls
    if _cls is not None:
        return _cls
    from dramatiq.middleware import Middleware

    class OtelLeakMiddleware(Middleware):
        """otel-leak's task spans (added by :class:`DramatiqInstrumentor`; may also be added by hand)."""

        def before_process_message(self, broker, message):
            if _guard_armed[0] and _refuse(broker, message):
                from dramatiq.middleware import SkipMessage

                raise SkipMessage("otel-leak: this process is over its hard memory budget; the message is back "
                                  "in its queue")
            try:
                job = Job(message.actor_name, SYSTEM, message.queue_name, message.message_id)
                vars(message)[_ATTR] = job.start()
            except Exception as exc:
                warn_once("dramatiq:before", "otel-leak: no dramatiq task span (%s: %s)", type(exc).__name__, exc)

        def after_process_message(self, broker, message, *, result=None, exception=None):
            _end(message, exception)

        def after_skip_message(self, broker, message):
            _end(message, None)

        def after_worker_boot(self, broker, worker):
            _arm_guard()

        def after_worker_shutdown(self, broker, worker):
            _leaving_child()

    _cls = OtelLeakMiddleware
    return _cls


def _end(message, exception) -> None:
    try:
        job = vars(message).pop(_ATTR, None)
    except Exception:
        return
    if job is not None:
        job.end(exception)


_guard_armed = [0]  # the pid the guard is armed in (its messages check the hard budget before they start)


def _refuse(broker, message) -> bool:
    """Before a message, in the armed process: over the hard budget (a reading taken now), the message goes
    back to its queue unprocessed (the same message, id and options) and this one is skipped. Never raises."""
    try:
        from otel_leak import guard_signal

        if _guard_armed[0] != os.getpid() or not guard_signal.refuse_task(message.actor_name):
            return False
        broker.enqueue(getattr(message, "_message", message))
        return True
    except Exception as exc:
        warn_once("guard:dramatiq-requeue", "otel-leak: could not hand a message back (%s: %s)", type(exc).__name__, exc)
        return False


def _command_pid() -> int:
    """The ``dramatiq`` command's pid when this process is one of its worker processes, else 0."""
    import multiprocessing

    parent = multiprocessing.parent_process()
    cli = sys.modules.get("dramatiq.cli")
    if parent is None or cli is None or parent.pid != os.getppid() or not hasattr(signal, "SIGHUP"):
        return 0
    return parent.pid


def _arm_guard() -> None:
    if getattr(_runtime("guard"), "mode", "off") == "off":
        return
    try:
        from otel_leak import guard_signal

        target = _command_pid()
        if guard_signal.arm(getattr(signal, "SIGHUP", signal.SIGTERM), "this Dramatiq worker", target=target) and target:
            _guard_armed[0] = os.getpid()
    except Exception as exc:
        warn_once("guard:dramatiq", "otel-leak: the memory-budget guard cannot arm in a Dramatiq worker (%s: %s)",
                  type(exc).__name__, exc)


def _leaving_child() -> None:
    leaving_process(SYSTEM)


def add_middleware(broker) -> None:
    """Give ``broker`` otel-leak's middleware, once. Never raises."""
    try:
        cls = _middleware_class()
        if not any(isinstance(m, cls) for m in broker.middleware):
            broker.add_middleware(cls())
            _brokers.add(broker)
    except Exception as exc:
        warn_once("dramatiq:add", "otel-leak: no dramatiq task spans for %r (%s: %s)", broker, type(exc).__name__, exc)


class DramatiqInstrumentor(FrameworkInstrumentor):
    system = SYSTEM
    _instruments = ("dramatiq >= 1.17",)

    def _patch(self, **kwargs) -> None:
        from dramatiq.worker import Worker

        original = Worker.__dict__["__init__"]

        def __init__(self, broker, *args, **kw):
            add_middleware(broker)
            original(self, broker, *args, **kw)

        __init__.__wrapped__ = original
        __init__._otel_leak = True
        self._original = original
        Worker.__init__ = __init__

    def _unpatch(self, **kwargs) -> None:
        from dramatiq.worker import Worker

        if getattr(Worker.__dict__.get("__init__"), "_otel_leak", False):
            Worker.__init__ = self._original
        cls = _cls
        for broker in list(_brokers):
            broker.middleware[:] = [m for m in broker.middleware if not isinstance(m, cls)]
        _brokers.clear()
