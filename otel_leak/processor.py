"""Task span processor: what each task did to memory, on its span and in per-task metrics.

A *task span* is, by default, the local root of a unit of work: no parent or a remote parent, of kind
CONSUMER or SERVER (configurable), or any span whose name matches a configured pattern.

At ``on_start`` the processor takes the start readings (resident memory, GC counters, optionally heap
blocks / traced bytes) and keeps them on the span itself. As the span ends, before any exporter sees it,
it measures again, writes the deltas into the span's attributes and counts the task; the per-task
histograms are recorded from the sampler thread with the span's context (so exemplars carry its trace
id). How the span is reached as it ends depends on the SDK version: see the comment above ``on_start``.
State lives only on the span: a span that never ends leaves nothing behind in the processor, a span ended
twice is measured once, a span ended in another thread is measured there.

Back-to-back tasks share a reading: a start reading reuses the process's latest one when it is at most
``OTEL_PYTHON_LEAK_START_READING_MAX_AGE_US`` old (default 50 µs), so a busy worker pays for one
``/proc/self/statm`` read per task instead of two. End readings are always fresh.

Those reads are most of what a task span pays (a /proc read costs 1-5 µs, several times the rest of the
processor's work), so they have a budget: ``OTEL_PYTHON_LEAK_TASK_READ_BUDGET``, a share of wall-clock
time (default 0.5 %). At every sampler tick the processor compares the time the reads took with the
budget and sets the share of task spans it measures; while the reads fit, that is every span, on a faster
worker a random sample of them (random, so no task type is favoured by the order tasks run in). A span not
measured is still counted (the detector regresses memory on the counts, never on per-span readings) and
still gets the suspect event; it carries no memory attributes and records no histogram point. While
tracemalloc traces (a tier-2 window) every task span is measured. ``otel_leak.task.measured`` counts the
measured spans, so per-call figures divide by it.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import time
from random import random as _random
from functools import partial
from tracemalloc import get_traced_memory as _traced
from tracemalloc import is_tracing as _is_tracing
from typing import Iterable

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.context import Context
from opentelemetry.metrics import Observation
from opentelemetry.sdk.trace import Event, SpanProcessor
from opentelemetry.trace import NonRecordingSpan, SpanKind
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
# Else, for an HTTP server span (opentelemetry-instrumentation-flask, -starlette, -django, ...): its method and
# route template, "GET /users/<user_id>", never the path (one identity per user id would fill the task-type
# cap); a request that matched no route (a 404: Flask then names the span after the raw path) is its method.
HTTP_ROUTE = "http.route"
HTTP_METHODS = ("http.request.method", "http.method")  # current semantic conventions, then the older ones

RECENT_TRACES = 8

# Bound once: module attribute lookups add up on the per-task path.
_A_TASK = names.SPAN_TASK_NAME
_A_RSS_DELTA = names.SPAN_RSS_DELTA
_A_RSS_END = names.SPAN_RSS_END
_A_GC_COLLECTIONS = names.SPAN_GC_COLLECTIONS
_A_GC_PAUSE = names.SPAN_GC_PAUSE
_A_BLOCKS_DELTA = names.SPAN_HEAP_BLOCKS_DELTA
_A_TRACED_DELTA = names.SPAN_HEAP_TRACED_DELTA

# The start "reading" of a task span whose memory is not measured (the read budget's sample left it out).
_UNMEASURED = ()
# The read budget's sample never measures fewer than this share of task spans.
MIN_MEASURED_SHARE = 0.01

# Resident memory moves in 4 KiB pages: buckets from one page to 1 GiB, x4 apart.
TASK_MEMORY_BUCKETS = tuple(4096 * 4**i for i in range(10))


def create_histogram(meter, metric: names.Metric, buckets):
    try:
        return meter.create_histogram(
            metric.name,
            unit=metric.unit,
            description=metric.description,
            explicit_bucket_boundaries_advisory=list(buckets),
        )
    except TypeError:  # API older than 1.23: no advisory buckets
        return meter.create_histogram(metric.name, unit=metric.unit, description=metric.description)


def add_span_event(span, name: str, attributes: dict) -> None:
    """An event on a task span, also while it ends (``_on_ending``, where ``add_event`` refuses it: the span's
    event list is what is exported)."""
    if getattr(span, "end_time", None) is not None:
        span._events.append(Event(name, BoundedAttributes(attributes=attributes)))
    elif span.is_recording():
        span.add_event(name, attributes)


def _suspect_event(span, event: dict | None) -> None:
    """The suspect event on a task span of a suspected task type (``event`` None: not suspected)."""
    if event is not None:
        add_span_event(span, names.EVENT_LEAK_SUSPECT, event)


def _http_identity(span, attrs) -> str | None:
    if span.kind is not SpanKind.SERVER:
        return None
    method = attrs.get(HTTP_METHODS[0]) or attrs.get(HTTP_METHODS[1])
    if not method:
        return None
    if method == "_OTHER":  # a method outside the known set, as the instrumentations name its span
        method = "HTTP"
    route = attrs.get(HTTP_ROUTE)
    return f"{method} {route}" if route else str(method)


class TaskStats:
    """Counters the detector reads. Bounded by the task-type cap, never by the number of tasks."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.measured: dict[str, int] = {}  # of those, the spans whose memory was measured
        self.recent_traces: dict[str, collections.deque[int]] = {}
        # While tracemalloc traces (a tier-2 window): per task type [calls, sum, sum of squares] of the
        # traced-bytes change of the tasks no other task overlapped (none running as it started, none
        # starting or ending during it: in a worker that runs one task at a time, every one), and how many
        # others there were.
        # ``events`` numbers the starts and ends seen while tracing, ``running`` the tasks started while
        # tracing that have not ended (set to 0 as a window starts tracing: a task that started in an
        # earlier window and ended after it stopped never took itself off).
        self.traced: dict[str, list[float]] = {}
        self.overlapped = 0
        self.events = 0
        self.running = 0
        # Set by the detector: task identity -> span event attributes for that task's spans.
        self.suspects: dict[str, dict] = {}

    @property
    def total(self) -> int:
        """Task spans counted (bounded work: one entry per task type)."""
        return sum(self.counts.values())

    def trace_ids(self, task: str) -> list[str]:
        return [format(t, "032x") for t in self.recent_traces.get(task, ())]

    def add_traced(self, name: str, delta: int, alone: bool) -> None:
        """One task's traced-bytes change while tracemalloc traces (``alone``: no other task overlapped it)."""
        if not alone:
            self.overlapped += 1
            return
        acc = self.traced.get(name)
        if acc is None:
            acc = self.traced[name] = [0, 0.0, 0.0]  # bounded like counts: one per task type
        acc[0] += 1
        acc[1] += delta
        acc[2] += delta * delta

    def reset(self) -> None:
        self.counts.clear()
        self.measured.clear()
        self.recent_traces.clear()
        self.traced.clear()
        self.overlapped = 0
        self.running = 0
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
        heap_blocks: bool = False,
        start_max_age_us: float = 50.0,
        read_budget: float = 0.005,
    ) -> None:
        self.heap_blocks = heap_blocks
        self.start_max_age = start_max_age_us / 1e6
        self.read_budget = read_budget
        self.measured_share = 1.0  # of task spans, set at each sampler tick (adapt_measured_share)
        self._budget_mark = (time.perf_counter(), memory.reads)
        # SDK >= 1.40 calls _on_ending before on_end; older ones never do (the end wrapper is used then).
        self.on_ending = hasattr(SpanProcessor, "_on_ending")
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
        # ``after_task(span, task)``: called as each task span ends (a framework's guard hook), or None
        self.after_task = None
        self._types: dict[str, _TaskType] = {}
        self._pid = os.getpid()
        # Task counts are kept in TaskStats on the hot path (a dict increment) and observed at collection.
        meter.create_observable_counter(
            names.TASK_COUNT.name,
            callbacks=[self._observe_counts],
            unit=names.TASK_COUNT.unit,
            description=names.TASK_COUNT.description,
        )
        meter.create_observable_counter(
            names.TASK_MEASURED.name,
            callbacks=[self._observe_measured],
            unit=names.TASK_MEASURED.unit,
            description=names.TASK_MEASURED.description,
        )
        # Bounded: at 1 s flushes this holds 65k tasks/s; beyond that the oldest measurements are dropped.
        self._pending: collections.deque = collections.deque(maxlen=65536)
        self._growth = create_histogram(meter, names.TASK_MEMORY_GROWTH, TASK_MEMORY_BUCKETS)
        self._release = create_histogram(meter, names.TASK_MEMORY_RELEASE, TASK_MEMORY_BUCKETS)
        self._failed = False
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._after_fork)

    # ------------------------------------------------------------------ recognition and identity
    def _identify(self, span, attrs) -> _TaskType:
        """The span's task type from its attributes (a plain dict or mapping), else its name."""
        raw = None
        if attrs:
            for key in IDENTITY_ATTRIBUTES:
                raw = attrs.get(key)
                if raw:
                    break
            else:
                raw = _http_identity(span, attrs)
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
    # The per-task path is written for speed (bench/bench_processor.py). Two ways to reach the span
    # before it is exported:
    #  * SDK >= 1.40: Span.end() calls _on_ending(span) before on_end (so before any exporter sees it).
    #    The start readings ride on the span as one attribute; _on_ending measures and writes the
    #    attributes into the span's BoundedAttributes store, which end() has marked immutable for the
    #    public setters but which the ReadableSpan handed to on_end shares. About 0.2 us of plumbing.
    #  * otherwise (SDK 1.39, or a span whose attributes are not a BoundedAttributes): ``end`` on the
    #    span instance is replaced by a partial that measures and sets the attributes before the real
    #    end. About 1 us: an instance attribute shadowing a method slows every later attribute access on
    #    that span.
    def on_start(self, span, parent_context=None) -> None:
        if not self.enabled:
            return
        try:
            parent = span.parent
            if not ((parent is None or parent.is_remote) and span.kind in self.kinds):
                # Also a task span: one named by a pattern, or one that says it is (otel_leak.task_span,
                # the framework integrations), whatever its parent.
                if self._name_re is None or self._name_re.search(span.name) is None:
                    attrs = getattr(span, "_attributes", None)  # .attributes would copy it into a proxy
                    if not attrs or _A_TASK not in attrs:
                        return
            share = self.measured_share
            if share < 1.0 and _random() >= share and not _is_tracing():
                # Not in the read budget's sample: counted as it ends, nothing read.
                if self.on_ending and type(getattr(span, "_attributes", None)) is BoundedAttributes:
                    span._otel_leak_start = _UNMEASURED
                else:
                    span.end = partial(self._end, span, span.end, _UNMEASURED)
                return
            start_rss = self.memory.recent_rss(self.start_max_age)
            if start_rss is None:
                return
            gcp = self.gc
            if _is_tracing():
                stats = self.stats
                traced = _traced()[0]
                stats.events = seq = stats.events + 1
                if stats.running > 0:
                    seq = 0  # another task is running: this one does not run alone
                stats.running += 1
            else:
                traced = seq = None
            start = (
                start_rss,
                gcp.collections,
                gcp.pause_total,
                self.heap.blocks() if self.heap_blocks else None,
                traced,
                seq,
            )
            if self.on_ending and type(getattr(span, "_attributes", None)) is BoundedAttributes:
                span._otel_leak_start = start
            else:
                span.end = partial(self._end, span, span.end, start)
        except Exception as exc:
            self._fail(exc)

    def _on_ending(self, span) -> None:
        """Measure a task span as it ends (SDK >= 1.40 calls this; the end wrapper calls it otherwise)."""
        start = getattr(span, "_otel_leak_start", None)
        if start is None or not self.enabled:
            return
        span._otel_leak_start = None  # measured once
        if start is _UNMEASURED:
            self._count_only(span)
            return
        try:
            rss = self.memory.rss()
            if rss is None:
                return
            start_rss, start_gc, start_pause, start_blocks, start_traced, start_seq = start
            delta = rss - start_rss
            gcp = self.gc
            bounded = getattr(span, "_attributes", None)
            if type(bounded) is BoundedAttributes:
                store = bounded._dict
            else:  # another SDK version: the public (slower) paths
                bounded, store = None, span.attributes
            # Without attributes the identity is the span name: a dict lookup once the type is known.
            tt = self._identify(span, store) if store else self._types.get(span.name) or self._identify(span, store)
            name = tt.name
            attributes = {
                _A_TASK: name,
                _A_RSS_DELTA: delta,
                _A_RSS_END: rss,
                _A_GC_COLLECTIONS: gcp.collections - start_gc,
                _A_GC_PAUSE: gcp.pause_total - start_pause,
            }
            if start_blocks is not None:
                attributes[_A_BLOCKS_DELTA] = (self.heap.blocks() or start_blocks) - start_blocks
            stats = self.stats
            if _is_tracing():
                if start_traced is not None:
                    traced_delta = attributes[_A_TRACED_DELTA] = _traced()[0] - start_traced
                    stats.add_traced(name, traced_delta, stats.events == start_seq)
                    if stats.running > 0:
                        stats.running -= 1
                stats.events += 1
            if bounded is not None and (bounded.maxlen is None or len(store) + len(attributes) <= bounded.maxlen):
                # span.set_attributes costs ~3 us (a lock, per-value validation); these values are
                # known-valid. The same store the exported span reads.
                store.update(attributes)
            else:
                span.set_attributes(attributes)
            counts = stats.counts
            counts[name] = counts.get(name, 0) + 1
            measured = stats.measured
            measured[name] = measured.get(name, 0) + 1
            ctx = span.get_span_context()
            tt.traces.append(ctx.trace_id)  # shared with stats.recent_traces
            if stats.suspects:
                _suspect_event(span, stats.suspects.get(name))
            if delta:
                # Recording into an SDK histogram costs 5-8 us: the sampler thread does it (flush_metrics).
                self._pending.append((tt, delta, ctx))
            if self.after_task is not None:
                self.after_task(span, name)
        except Exception as exc:
            self._fail(exc)

    def _count_only(self, span) -> None:
        """A task span outside the read budget's sample: its count and the suspect event, nothing read."""
        try:
            bounded = getattr(span, "_attributes", None)
            store = bounded._dict if type(bounded) is BoundedAttributes else span.attributes
            tt = self._identify(span, store) if store else self._types.get(span.name) or self._identify(span, store)
            name = tt.name
            stats = self.stats
            counts = stats.counts
            counts[name] = counts.get(name, 0) + 1
            if stats.suspects:
                _suspect_event(span, stats.suspects.get(name))
            if self.after_task is not None:
                self.after_task(span, name)
        except Exception as exc:
            self._fail(exc)

    def adapt_measured_share(self) -> float:
        """Set the share of task spans to measure from the reads made since the last call and their cost.

        Called at each sampler tick. The share falls at once to what fits the budget and rises at most
        twofold per tick (a burst of tasks is not followed by a burst of reads); never below
        ``MIN_MEASURED_SHARE``. Returns the share."""
        memory = self.memory
        now, reads = time.perf_counter(), memory.reads
        t0, reads0 = self._budget_mark
        elapsed = now - t0
        if elapsed < 0.01:
            return self.measured_share
        self._budget_mark = (now, reads)
        used = (reads - reads0) * memory.read_cost / elapsed
        share = self.measured_share
        wanted = share * self.read_budget / used if used > 0 else 1.0
        self.measured_share = min(1.0, max(MIN_MEASURED_SHARE, min(wanted, share * 2)))
        return self.measured_share

    def _end(self, span, real_end, start, end_time=None):
        """``span.end`` while the task runs (the fallback path): measure, then the real ``end``."""
        # Remove ourselves first: a second end() goes straight to the SDK (which ignores it), and the
        # span <-> partial cycle is broken.
        try:
            del span.end
        except AttributeError:
            pass
        try:
            span._otel_leak_start = start
        except Exception:  # a span type without instance attributes
            return real_end(end_time)
        self._on_ending(span)
        return real_end(end_time)

    def flush_metrics(self, _sample=None) -> None:
        """Record the buffered task measurements (sampler thread, force_flush, exit).

        Each carries its span's context, so exemplars link the histogram to the task's trace even though
        the span has ended (pass the context explicitly: the span is no longer current). At a sampler
        tick (``_sample`` given) the read budget's share is re-decided first.
        """
        if _sample is not None:
            self.adapt_measured_share()
        pop = self._pending.popleft
        growth, release = self._growth.record, self._release.record
        while True:
            try:
                tt, delta, span_ctx = pop()
            except IndexError:
                return
            context = Context({_SPAN_KEY: NonRecordingSpan(span_ctx)}) if span_ctx.trace_flags.sampled else None
            if delta > 0:
                growth(delta, tt.attrs, context=context)
            else:
                release(-delta, tt.attrs, context=context)

    def _observe_counts(self, options):
        types = self._types
        return [Observation(count, types[name].attrs) for name, count in list(self.stats.counts.items()) if name in types]

    def _observe_measured(self, options):
        types = self._types
        return [Observation(n, types[name].attrs) for name, n in list(self.stats.measured.items()) if name in types]

    def _fail(self, exc: BaseException) -> None:
        if not self._failed:
            self._failed = True
            _log.warning("otel-leak: task span processor error (%s: %s); skipping that span", type(exc).__name__, exc)

    def _after_fork(self) -> None:
        self._pid = os.getpid()
        self._types = {}
        self._pending.clear()
        self.stats.reset()
        self.measured_share = 1.0
        self._budget_mark = (time.perf_counter(), self.memory.reads)

    def on_end(self, span) -> None:
        pass

    def shutdown(self) -> None:
        self.enabled = False
        self.flush_metrics()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        self.flush_metrics()
        return True

