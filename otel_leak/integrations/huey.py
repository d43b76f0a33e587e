"""Huey: one task span per task a consumer worker executes.

A *task span* is one call of ``Huey._execute(task, timestamp)``, the call that runs a dequeued task in a
consumer worker (thread, process or greenlet; also every task of an ``immediate`` Huey): the task's
pre-execute hooks, the task itself, its result write and post-execute hooks. Scheduled, revoked and expired
tasks never get there and get no span. Identity: Huey's name for the task (its registry key,
``module.function`` or ``module.<name=...>``); ``messaging.destination.name``: the Huey instance's name (its
queue); ``messaging.message.id``: the task id.

Huey catches a task's exception itself (logs it, stores an error result, retries): ``Huey._emit`` is wrapped
to read the exception off ``SIGNAL_ERROR`` (and a ``TaskTimeout`` off ``SIGNAL_TIMEOUT``) for the span's
ERROR status; nothing else about emitting changes.

Processes: ``huey_consumer -k process`` forks its workers (and its scheduler); each measures itself and
writes its own report. They leave through ``os._exit`` (``multiprocessing``): no ``atexit``, so the wrapped
``huey.consumer.Worker.shutdown`` exports what the process has and writes its final report there.

The memory-budget guard (when on) recycles with Huey's own mechanisms, between tasks; a process already over
the hard budget when a task reaches it puts the task back in the queue (``Huey.enqueue``, for another
process) instead of running it, and recycles the same way. Worker processes
(``-k process``): the process over its budget leaves after its task the way ``--max-tasks`` makes it leave
(``WorkerRecycle``), and the consumer starts another at its next health check (``--health-check-interval``,
10 s by default; the check must stay on). Thread and greenlet workers share the consumer's process, so the
consumer recycles whole: SIGHUP to itself, Huey's graceful restart (the workers finish their tasks, the
consumer starts itself again with the same arguments).

Caveat: Huey messages carry no trace context, so task spans are roots (no producer parent).
"""

from __future__ import annotations

import multiprocessing
import os
import signal

from otel_leak.integrations._base import FrameworkInstrumentor, Job, leaving_process, runtime_part, warn_once

SYSTEM = "huey"
_jobs: dict[int, list] = {}  # id(task) -> [Job, exception from a signal]: only while the task executes
_recycle = [0]  # the pid of a worker process the guard recycles (its worker loop leaves after the task)
_guard_armed = [0]  # the pid the guard is armed in (each task there checks the hard budget before it runs)


def _start(huey, task) -> list | None:
    try:
        job = Job(huey._registry.task_to_string(type(task)), SYSTEM, huey.name, task.id).start()
        entry = _jobs[id(task)] = [job, None]
        return entry
    except Exception as exc:
        warn_once("huey:start", "otel-leak: no huey task span (%s: %s)", type(exc).__name__, exc)
        return None


def _finish(task, entry, exc) -> None:
    _jobs.pop(id(task), None)
    entry[0].end(exc if exc is not None else entry[1])


def _leaving_child() -> None:
    leaving_process(SYSTEM)


def _guard_on() -> bool:
    return getattr(runtime_part("guard"), "mode", "off") != "off"


def _refuse(huey, task) -> bool:
    """The guard's check before a task (the hard budget only, on a reading taken now). Never raises."""
    try:
        from otel_leak import guard_signal

        return guard_signal.refuse_task(huey._registry.task_to_string(type(task)))
    except Exception:
        return False


def _arm(where: str, **kw) -> None:
    try:
        from otel_leak import guard_signal

        if guard_signal.arm(where=where, **kw):
            _guard_armed[0] = os.getpid()
    except Exception as exc:
        warn_once("guard:huey", "otel-leak: the memory-budget guard cannot arm in a Huey consumer (%s: %s)",
                  type(exc).__name__, exc)


def _arm_consumer(consumer) -> None:
    """In the consumer, its signal handlers set: thread and greenlet workers recycle the consumer (SIGHUP)."""
    if _guard_on() and consumer.worker_type != "process":
        _arm("this Huey consumer", sig=getattr(signal, "SIGHUP", signal.SIGTERM),
             target=None if hasattr(signal, "SIGHUP") else 0)


def _arm_worker_process(can_leave: bool) -> None:
    """In a worker process of ``-k process``: it leaves after its task, as at its max tasks (a Huey without
    that exit: the guard only records)."""
    if _guard_on() and multiprocessing.parent_process() is not None:
        _arm("this Huey worker process", target=None if can_leave else 0,
             action=lambda: _recycle.__setitem__(0, os.getpid()))


class HueyInstrumentor(FrameworkInstrumentor):
    system = SYSTEM
    _instruments = ("huey >= 2.5",)

    def _patch(self, **kwargs) -> None:
        from huey import signals as S
        from huey.api import Huey
        from huey import consumer as C
        from huey.consumer import Consumer, Worker
        from huey.exceptions import TaskTimeout

        recycle_exc = getattr(C, "WorkerRecycle", None)  # Huey >= 2.5.1 (--max-tasks)

        execute, emit, shutdown = Huey.__dict__["_execute"], Huey.__dict__["_emit"], Worker.__dict__["shutdown"]

        def _execute(self, task, timestamp):
            if _guard_armed[0] and _guard_armed[0] == os.getpid() and _refuse(self, task):
                self.enqueue(task)  # over the hard budget before it starts: back to the queue, for another process
                return None
            entry = _start(self, task)
            if entry is None:
                return execute(self, task, timestamp)
            try:
                result = execute(self, task, timestamp)
            except BaseException as exc:  # SystemExit and the like: Huey lets them through
                _finish(task, entry, exc)
                raise
            _finish(task, entry, None)
            return result

        def _emit(self, signal, task, *args, **kw):
            if signal == S.SIGNAL_ERROR or signal == S.SIGNAL_TIMEOUT:
                try:
                    entry = _jobs.get(id(task))
                    if entry is not None:
                        if signal == S.SIGNAL_ERROR and args:
                            entry[1] = args[0]
                        else:
                            entry[1] = TaskTimeout(f"timeout ({getattr(task, 'timeout', None)}s)")
                except Exception:
                    pass
            return emit(self, signal, task, *args, **kw)

        def _shutdown(self, *args, **kw):
            try:
                return shutdown(self, *args, **kw)
            finally:
                _leaving_child()

        def _initialize(self, *args, **kw):
            _arm_worker_process(recycle_exc is not None)
            return initialize(self, *args, **kw)

        def _loop(self, *args, **kw):
            result = loop(self, *args, **kw)
            if _recycle[0] and _recycle[0] == os.getpid() and recycle_exc is not None:
                raise recycle_exc()  # the task is done and its result stored: leave as at max tasks
            return result

        def _consumer_start(self, *args, **kw):
            result = start(self, *args, **kw)
            _arm_consumer(self)
            return result

        def _consumer_stop(self, *args, **kw):
            result = stop(self, *args, **kw)
            if getattr(self, "_restart", False):  # a graceful restart: the consumer execs itself next
                leaving_process(SYSTEM, exec_next=True)
            return result

        initialize, loop = Worker.__dict__["initialize"], Worker.__dict__["loop"]
        start, stop = Consumer.__dict__["start"], Consumer.__dict__["stop"]
        wrapped = ((Huey, "_execute", _execute), (Huey, "_emit", _emit), (Worker, "shutdown", _shutdown),
                   (Worker, "initialize", _initialize), (Worker, "loop", _loop), (Consumer, "start", _consumer_start),
                   (Consumer, "stop", _consumer_stop))
        self._originals = [(owner, name, owner.__dict__[name]) for owner, name, _ in wrapped]
        for owner, name, wrapper in wrapped:
            wrapper.__wrapped__ = owner.__dict__[name]
            wrapper._otel_leak = True
            setattr(owner, name, wrapper)

    def _unpatch(self, **kwargs) -> None:
        for owner, name, original in self._originals:
            if getattr(owner.__dict__.get(name), "_otel_leak", False):
                setattr(owner, name, original)
        self._originals = []
        _jobs.clear()
