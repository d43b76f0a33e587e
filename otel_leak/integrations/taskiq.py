"""Task spans for taskiq workers (``taskiq worker app:broker``).

A task span is one execution of one task message by taskiq's :class:`~taskiq.receiver.Receiver`:
``Receiver.run_task`` (dependency resolution, the task function, the ``on_error`` middlewares) runs inside
it. The receiver handles each message in an asyncio task of its own and the span is made current there
only, so the up to ``--max-async-tasks`` messages interleaving on one event loop never see each other's
span; a sync task runs in the thread pool under a copy of that context, so the span is current there too.
Identity: ``message.task_name`` (taskiq's ``module:function``, or ``@broker.task(task_name=...)``);
destination: the broker's ``queue_name`` (taskiq-redis brokers: ``taskiq`` by default; none for brokers
without one); message id: the task id; parent: the trace context in the message labels, if the sender put
one there.

taskiq ships its own OpenTelemetry instrumentation (its ``taskiq`` entry point, which
``opentelemetry-instrument`` and ``otel-leak run`` load too): its middleware makes a CONSUMER span before
``run_task``. That span is then the task span; no second one is made, and the identity and messaging
attributes above are added to it where it lacks them.

Process model: ``taskiq worker`` starts ``--workers`` processes (2 by default) with multiprocessing's
default start method (fork on Linux); each measures itself and writes its own report, the parent only
manages them. A worker process leaves through ``os._exit`` (multiprocessing), so when its
``Receiver.listen`` returns the detector writes its final report and spans and metrics are exported.

The memory-budget guard (when on) recycles a worker process of ``taskiq worker`` with taskiq's own graceful
stop: SIGTERM to itself after a task, so it stops fetching, lets the running tasks finish
(``--wait-tasks-timeout``; none by default: all of them) and leaves; the parent starts another, as for any
worker process that exits (keep ``--max-fails`` unset, or high enough). A worker process already over the
hard budget when a message reaches it sends the message back to the broker without running it, and stops.
A receiver run in a process of another making gets no recycle: the guard only records what it would do (``unsupported``).

Caveats: with ``--use-process-pool`` a sync task runs in a pool process, and its span measures the worker
process, not the pool's. A custom ``--receiver`` class whose ``run_task`` does not call taskiq's gets no
span. Under tracemalloc (the detector's tier 2) taskiq-redis workers run many times slower (a Redis client
object per operation): docs/frameworks/taskiq.md.
"""

from __future__ import annotations

import functools
import os
import signal
import threading
from typing import Any

from opentelemetry import trace
from opentelemetry.propagate import extract

from otel_leak.integrations._base import (
    FrameworkInstrumentor,
    Job,
    flush_providers,
    in_task_span,
    runtime_part,
    span_attributes,
    warn_once,
)

SYSTEM = "taskiq"
EXIT_FLUSH_MS = 2000  # per provider, before a worker process's os._exit
EXIT_WAIT_S = 7.0  # the final report (up to 2 s for a running tier-2 window) and both flushes


def _start(receiver: Any, message: Any) -> Job | None:
    """The message's job, started (or the current task span annotated: None). Never raises."""
    try:
        queue = getattr(receiver.broker, "queue_name", None)
        if in_task_span():
            _annotate(trace.get_current_span(), message.task_name, queue, message.task_id)
            return None
        labels = message.labels
        parent = extract(labels) if "traceparent" in labels else None  # a sender's trace context
        return Job(message.task_name, SYSTEM, queue, message.task_id, parent).start()
    except Exception as exc:
        warn_once("start:taskiq", "otel-leak: cannot start a taskiq task span (%s: %s)", type(exc).__name__, exc)
        return None


def _annotate(span: Any, task: str, queue: str | None, message_id: str) -> None:
    """Another instrumentation's task span: add the identity and messaging attributes it lacks."""
    have = getattr(span, "attributes", None) or {}
    missing = {k: v for k, v in span_attributes(task, SYSTEM, queue, message_id).items() if k not in have}
    if missing:
        span.set_attributes(missing)


def _failure(result: Any) -> BaseException | None:
    """The exception a task's result carries (taskiq's run_task catches it), except "no result"."""
    error = getattr(result, "error", None)
    if not getattr(result, "is_err", False) or not isinstance(error, BaseException):
        return None
    from taskiq.exceptions import NoResultError

    return None if isinstance(error, NoResultError) else error


class TaskiqInstrumentor(FrameworkInstrumentor):
    """One CONSUMER span per taskiq task execution, current only in that message's asyncio task."""

    system = SYSTEM
    _instruments = ("taskiq >= 0.11",)

    def _patch(self, **kwargs) -> None:
        from taskiq.receiver import Receiver

        run_task, listen = Receiver.__dict__["run_task"], Receiver.__dict__["listen"]
        callback = Receiver.__dict__["callback"]

        @functools.wraps(callback)
        async def guarded_callback(receiver, message, *args, **kw):
            if _guard_armed[0] == os.getpid() and await _handed_back(receiver, message):
                return None
            return await callback(receiver, message, *args, **kw)

        @functools.wraps(run_task)
        async def traced_run_task(receiver, target, message, *args, **kw):
            job = _start(receiver, message)
            if job is None:
                return await run_task(receiver, target, message, *args, **kw)
            try:
                result = await run_task(receiver, target, message, *args, **kw)
            except BaseException as exc:
                job.end(exc)
                raise
            try:
                failure = _failure(result)
            except Exception:
                failure = None
            job.end(failure)
            return result

        @functools.wraps(listen)
        async def flushing_listen(receiver, *args, **kw):
            _arm_guard()
            try:
                return await listen(receiver, *args, **kw)
            finally:
                _flush_if_child()

        self._originals = {"run_task": run_task, "listen": listen, "callback": callback}
        Receiver.run_task = traced_run_task
        Receiver.listen = flushing_listen
        Receiver.callback = guarded_callback

    def _unpatch(self, **kwargs) -> None:
        from taskiq.receiver import Receiver

        for name, original in self._originals.items():
            setattr(Receiver, name, original)


_guard_armed = [0]  # the pid the guard recycles in (each message there checks the hard budget first)


async def _handed_back(receiver: Any, message: Any) -> bool:
    """The guard's check before a message runs (the hard budget, on a reading taken now). Over it, the
    message goes back to the broker (a new copy kicked, then this one acknowledged) and the process stops
    with taskiq's graceful stop, like after a task; if the copy cannot be sent, the message runs here.
    Never raises."""
    try:
        from taskiq import AckableMessage, BrokerMessage
        from taskiq.utils import maybe_awaitable

        from otel_leak import guard_signal

        data = message.data if isinstance(message, AckableMessage) else message
        parsed = []  # the message is parsed (its name, for the guard's record) only when it goes back

        def name() -> str:
            parsed.append(receiver.broker.formatter.loads(message=data))
            return parsed[-1].task_name

        if not guard_signal.refuse_task(name):
            return False
        msg = parsed[-1] if parsed else receiver.broker.formatter.loads(message=data)
        await receiver.broker.kick(BrokerMessage(task_id=msg.task_id, task_name=msg.task_name, message=data,
                                                 labels=msg.labels))
    except Exception as exc:
        warn_once("guard:taskiq-requeue", "otel-leak: could not hand a taskiq message back, it runs here (%s: %s)",
                  type(exc).__name__, exc)
        return False
    try:
        if isinstance(message, AckableMessage):
            await maybe_awaitable(message.ack())
    except Exception as exc:  # the copy is queued: at worst the message runs twice, never not at all
        warn_once("guard:taskiq-ack", "otel-leak: a handed-back taskiq message was not acknowledged (%s: %s)",
                  type(exc).__name__, exc)
    return True


def _arm_guard() -> None:
    """In a ``taskiq worker`` process, whose SIGTERM handler is taskiq's graceful stop: recycle with it."""
    if getattr(runtime_part("guard"), "mode", "off") == "off":
        return
    try:
        from otel_leak import guard_signal

        graceful = getattr(signal.getsignal(signal.SIGTERM), "__module__", None) == "taskiq.cli.worker.run"
        if guard_signal.arm(signal.SIGTERM, "this taskiq worker", target=None if graceful else 0) and graceful:
            _guard_armed[0] = os.getpid()
    except Exception as exc:
        warn_once("guard:taskiq", "otel-leak: the memory-budget guard cannot arm in a taskiq worker (%s: %s)",
                  type(exc).__name__, exc)


def _flush_if_child() -> None:
    """A multiprocessing child (``taskiq worker``'s processes) leaves through ``os._exit``, where no atexit
    handler runs: write the detector's final report and export, as they would have. On a daemon thread with
    a bounded wait: a process forked while a parent thread held an SDK lock (the metric reader's export lock
    is not renewed after a fork) would wait on it forever, and must still exit."""
    try:
        import multiprocessing

        if multiprocessing.parent_process() is None:
            return
        t = threading.Thread(target=_final_report_and_export, name="otel-leak-exit", daemon=True)
        t.start()
        t.join(EXIT_WAIT_S)
        if t.is_alive():
            warn_once("exit:taskiq", "otel-leak: the export before a taskiq worker process's exit did not finish")
    except Exception:
        pass


def _final_report_and_export() -> None:
    try:
        from otel_leak.instrumentor import LeakInstrumentor

        runtime = getattr(LeakInstrumentor, "runtime", None)
        detector = getattr(runtime, "detector", None)
        if detector is not None:
            detector.stop()  # its final report
        processor = getattr(runtime, "processor", None)
        if processor is not None:
            processor.flush_metrics()  # the task histograms' pending points
        guard = getattr(runtime, "guard", None)
        if guard is not None:
            guard.release()  # its recycling marker, which atexit would have removed
    except Exception:
        pass
    flush_providers(EXIT_FLUSH_MS)
