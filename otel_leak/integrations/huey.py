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

Caveat: Huey messages carry no trace context, so task spans are roots (no producer parent).
"""

from __future__ import annotations

from otel_leak.integrations._base import FrameworkInstrumentor, Job, leaving_process, warn_once

SYSTEM = "huey"
_jobs: dict[int, list] = {}  # id(task) -> [Job, exception from a signal]: only while the task executes


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


class HueyInstrumentor(FrameworkInstrumentor):
    system = SYSTEM
    _instruments = ("huey >= 2.5",)

    def _patch(self, **kwargs) -> None:
        from huey import signals as S
        from huey.api import Huey
        from huey.consumer import Worker
        from huey.exceptions import TaskTimeout

        execute, emit, shutdown = Huey.__dict__["_execute"], Huey.__dict__["_emit"], Worker.__dict__["shutdown"]

        def _execute(self, task, timestamp):
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

        self._originals = [(Huey, "_execute", execute), (Huey, "_emit", emit), (Worker, "shutdown", shutdown)]
        for owner, name, wrapper in ((Huey, "_execute", _execute), (Huey, "_emit", _emit), (Worker, "shutdown", _shutdown)):
            wrapper.__wrapped__ = owner.__dict__[name]
            wrapper._otel_leak = True
            setattr(owner, name, wrapper)

    def _unpatch(self, **kwargs) -> None:
        for owner, name, original in self._originals:
            if getattr(owner.__dict__.get(name), "_otel_leak", False):
                setattr(owner, name, original)
        self._originals = []
        _jobs.clear()
