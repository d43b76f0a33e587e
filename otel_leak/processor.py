"""Task span processor: what each task did to memory, on its span and in per-task metrics.

A *task span* is, by default, the local root of a unit of work: no parent or a remote parent, of kind
CONSUMER or SERVER (configurable), or any span whose name matches a configured pattern.

At ``on_start`` the processor reads resident memory, Python heap blocks and the GC counters, and replaces
``end`` on the span instance with a wrapper (a span cannot be changed at ``_on_ending``/``on_end``:
FACTS.md). The wrapper sets the deltas on the span, records the per-task metrics with the span's context
(so exemplars carry its trace id), deletes itself from the instance (breaking the span↔closure cycle) and
calls the real ``end``. State lives only in that closure: a span that never ends leaves nothing behind in
the processor, a span ended twice is measured once, a span ended in another thread is measured there.
"""

from __future__ import annotations

import collections
import logging
import os
import re
from typing import Iterable

from opentelemetry.context import Context
from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation import _SPAN_KEY

from otel_leak import names
from otel_leak.probes import GcProbe, HeapProbe, MemoryProbe

_log = logging.getLogger("otel_leak")

_KINDS = {
    "consumer": SpanKind.CONSUMER,
    "server": SpanKind.SERVER,
    "internal": SpanKind.INTERNAL,
    "producer": SpanKind.PRODUCER,
    "client": SpanKind.CLIENT,
}

# Where a task's identity is found, most specific first; else the span name.
IDENTITY_ATTRIBUTES = (
    names.ATTR_TASK_NAME,  # set by otel_leak.task_span / @otel_leak.task
    "celery.task_name",  # opentelemetry-instrumentation-celery
    "messaging.operation.name",
    "code.function.name",
    "code.function",
)

RECENT_TRACES = 8


class TaskStats:
    """Counters the detector reads. Bounded by the task-type cap, never by the number of tasks."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.total = 0
        self.recent_traces: dict[str, collections.deque[int]] = {}
        # Set by the detector: task identity -> span event attributes for that task's spans.
        self.suspects: dict[str, dict] = {}

    def trace_ids(self, task: str) -> list[str]:
        return [format(t, "032x") for t in self.recent_traces.get(task, ())]

    def reset(self) -> None:
        self.counts.clear()
        self.total = 0
        self.recent_traces.clear()
        self.suspects = {}


class _TaskType:
    __slots__ = ("name", "attrs", "traces")

    def __init__(self, name: str, pid: int) -> None:
        self.name = name
        self.attrs = {names.ATTR_TASK_NAME: name, names.SPAN_PID: pid}
        self.traces: collections.deque[int] = collections.deque(maxlen=RECENT_TRACES)


class TaskSpanProcessor(SpanProcessor):
    def __init__(
        self,
        meter,
        *,
        memory: MemoryProbe,
        heap: HeapProbe,
        gc_probe: GcProbe,
        kinds: Iterable[str] = ("consumer", "server"),
        name_patterns: Iterable[str] = (),
        max_task_types: int = 100,
    ) -> None:
        self.memory = memory
        self.heap = heap
        self.gc = gc_probe
        self.kinds = frozenset(_KINDS[k.lower()] for k in kinds if k.lower() in _KINDS)
        unknown = [k for k in kinds if k.lower() not in _KINDS]
        if unknown:
            _log.warning(
                "otel-leak: unknown span kind(s) %s in %s ignored", unknown, "OTEL_PYTHON_LEAK_TASK_SPAN_KINDS"
            )
        patterns = tuple(name_patterns)
        self._name_re = re.compile("|".join(f"(?:{p})" for p in patterns)) if patterns else None
        self.max_task_types = max_task_types
        self.stats = TaskStats()
        self.enabled = True
        self._types: dict[str, _TaskType] = {}
        self._pid = os.getpid()
        self._count = meter.create_counter(
            names.TASK_COUNT.name, unit=names.TASK_COUNT.unit, description=names.TASK_COUNT.description
        )
        self._growth = meter.create_histogram(
            names.TASK_MEMORY_GROWTH.name,
            unit=names.TASK_MEMORY_GROWTH.unit,
            description=names.TASK_MEMORY_GROWTH.description,
        )
        self._release = meter.create_histogram(
            names.TASK_MEMORY_RELEASE.name,
            unit=names.TASK_MEMORY_RELEASE.unit,
            description=names.TASK_MEMORY_RELEASE.description,
        )
        self._failed = False
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._after_fork)

    # ------------------------------------------------------------------ recognition and identity
    def is_task_span(self, span) -> bool:
        parent = span.parent
        if (parent is None or parent.is_remote) and span.kind in self.kinds:
            return True
        return self._name_re is not None and self._name_re.search(span.name) is not None

    def _task_type(self, span) -> _TaskType:
        attrs = span.attributes
        raw = None
        if attrs:
            for key in IDENTITY_ATTRIBUTES:
                raw = attrs.get(key)
                if raw:
                    break
        name = str(raw) if raw else span.name
        tt = self._types.get(name)
        if tt is None:
            if len(self._types) >= self.max_task_types:
                name = names.TASK_OVERFLOW
                tt = self._types.get(name)
            if tt is None:
                tt = self._types[name] = _TaskType(name, self._pid)
                self.stats.recent_traces[name] = tt.traces
        return tt

    # ------------------------------------------------------------------ SpanProcessor
    def on_start(self, span, parent_context=None) -> None:
        if not self.enabled:
            return
        try:
            if not self.is_task_span(span):
                return
            start_rss = self.memory.rss()
            if start_rss is None:
                return
            start_blocks = self.heap.blocks()
            gcp = self.gc
            start_gc = gcp.collections
            start_pause = gcp.pause_total
            real_end = span.end
            measure = self._measure

            def end(end_time=None):
                # Remove ourselves first: a second end() goes straight to the SDK (which ignores it),
                # and the span <-> closure cycle is broken.
                try:
                    del span.end
                except AttributeError:
                    pass
                measure(span, start_rss, start_blocks, start_gc, start_pause)
                return real_end(end_time)

            span.end = end
        except Exception as exc:
            self._fail(exc)

    def _measure(self, span, start_rss, start_blocks, start_gc, start_pause) -> None:
        if not self.enabled:
            return
        try:
            rss = self.memory.rss()
            if rss is None:
                return
            delta = rss - start_rss
            gcp = self.gc
            tt = self._task_type(span)
            attributes = {
                names.SPAN_TASK_NAME: tt.name,
                names.SPAN_RSS_DELTA: delta,
                names.SPAN_RSS_END: rss,
                names.SPAN_GC_COLLECTIONS: gcp.collections - start_gc,
                names.SPAN_GC_PAUSE: gcp.pause_total - start_pause,
            }
            if start_blocks is not None:
                attributes[names.SPAN_HEAP_BLOCKS_DELTA] = self.heap.blocks() - start_blocks
            span.set_attributes(attributes)
            stats = self.stats
            name = tt.name
            stats.counts[name] = stats.counts.get(name, 0) + 1
            stats.total += 1
            ctx = span.get_span_context()
            tt.traces.append(ctx.trace_id)  # shared with stats.recent_traces
            if stats.suspects:
                event = stats.suspects.get(name)
                if event is not None:
                    span.add_event(names.EVENT_LEAK_SUSPECT, event)
            # Exemplars: inside end() the span is no longer current; hand its context over explicitly.
            context = Context({_SPAN_KEY: span}) if ctx.trace_flags.sampled else None
            self._count.add(1, tt.attrs, context=context)
            if delta > 0:
                self._growth.record(delta, tt.attrs, context=context)
            elif delta < 0:
                self._release.record(-delta, tt.attrs, context=context)
        except Exception as exc:
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        if not self._failed:
            self._failed = True
            _log.warning("otel-leak: task span processor error (%s: %s); skipping that span", type(exc).__name__, exc)

    def _after_fork(self) -> None:
        self._pid = os.getpid()
        self._types = {}
        self.stats.reset()

    def on_end(self, span) -> None:
        pass

    def shutdown(self) -> None:
        self.enabled = False

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True
