"""Process-level instruments: memory, floor, limit, Python heap, GC, threads.

Observable instruments read the probes when the SDK's reader collects (off the task path). The GC pause
histogram is fed from the sampler thread, which drains the pauses the ``gc.callbacks`` probe buffered.
Every data point carries ``process.pid``: prefork children share their parent's resource, and without
the pid their cumulative series would collide. A forked child also drops the points its parent recorded
into the synchronous instruments (:func:`forget_other_processes`).
"""

from __future__ import annotations

import os

from opentelemetry.metrics import CallbackOptions, Observation

from otel_leak import names
from otel_leak.probes import GcProbe, HeapProbe, MemoryProbe, memory_limit, thread_count
from otel_leak.processor import create_histogram
from otel_leak.sampler import Sample, Sampler

# Buckets for GC pauses: 10 µs .. 5 s
GC_PAUSE_BUCKETS = (1e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


def _pid() -> dict:
    return {names.SPAN_PID: os.getpid()}


class ProcessMetrics:
    def __init__(
        self,
        meter,
        *,
        memory: MemoryProbe,
        heap: HeapProbe,
        gc_probe: GcProbe,
        sampler: Sampler,
        configured_limit: int = 0,
    ) -> None:
        self.memory = memory
        self.heap = heap
        self.gc = gc_probe
        self.sampler = sampler
        self.configured_limit = configured_limit

        def gauge(metric: names.Metric, callback) -> None:
            meter.create_observable_gauge(
                metric.name, callbacks=[callback], unit=metric.unit, description=metric.description
            )

        def counter(metric: names.Metric, callback) -> None:
            meter.create_observable_counter(
                metric.name, callbacks=[callback], unit=metric.unit, description=metric.description
            )

        gauge(names.PROCESS_MEMORY_USAGE, self._rss)
        gauge(names.PROCESS_MEMORY_VIRTUAL, self._vms)
        gauge(names.MEMORY_FLOOR, self._floor)
        gauge(names.MEMORY_LIMIT, self._limit)
        gauge(names.HEAP_BLOCKS, self._blocks)
        gauge(names.HEAP_TRACED, self._traced)
        gauge(names.PROCESS_THREAD_COUNT, self._threads)
        counter(names.GC_COLLECTIONS, self._gc_field("collections"))
        counter(names.GC_COLLECTED, self._gc_field("collected"))
        counter(names.GC_UNCOLLECTABLE, self._gc_field("uncollectable"))
        self._pause = create_histogram(meter, names.GC_PAUSE, GC_PAUSE_BUCKETS)
        self._gen_attrs: dict[tuple[int, int], dict] = {}
        sampler.add_listener(self.on_sample)

    # -- sampler listener: record buffered GC pauses
    def on_sample(self, sample: Sample) -> None:
        pid = os.getpid()
        for gen, pause in self.gc.drain_pauses():
            attrs = self._gen_attrs.get((pid, gen))
            if attrs is None:
                attrs = self._gen_attrs[(pid, gen)] = {names.ATTR_GC_GENERATION: gen, names.SPAN_PID: pid}
            self._pause.record(pause, attrs)

    # -- observable callbacks
    def _rss(self, options: CallbackOptions):
        pair = self.memory.read()
        return [] if pair is None else [Observation(pair[0], _pid())]

    def _vms(self, options: CallbackOptions):
        pair = self.memory.read()
        return [] if pair is None else [Observation(pair[1], _pid())]

    def _floor(self, options: CallbackOptions):
        floor = self.sampler.floor.value()
        if floor is None:  # no sample yet in this process: the current RSS is the floor so far
            pair = self.memory.read()
            floor = None if pair is None else pair[0]
        return [] if floor is None else [Observation(floor, _pid())]

    def _limit(self, options: CallbackOptions):
        limit = memory_limit(self.configured_limit)
        return [] if limit is None else [Observation(limit, _pid())]

    def _blocks(self, options: CallbackOptions):
        blocks = self.heap.blocks()
        return [] if blocks is None else [Observation(blocks, _pid())]

    def _traced(self, options: CallbackOptions):
        traced = self.heap.traced()
        return [] if traced is None else [Observation(traced, _pid())]

    def _threads(self, options: CallbackOptions):
        return [Observation(thread_count(), _pid())]

    def _gc_field(self, field: str):
        def callback(options: CallbackOptions):
            pid = os.getpid()
            return [
                Observation(gen_stats.get(field, 0), {names.ATTR_GC_GENERATION: gen, names.SPAN_PID: pid})
                for gen, gen_stats in enumerate(self.gc.stats())
            ]

        return callback


def forget_other_processes(instruments) -> int:
    """Drop, in a forked child, the data points the parent recorded into these synchronous instruments.

    The child inherits the SDK's metric state: without this it would export the parent's cumulative
    series (``process.pid`` = the parent's) from its own resource for ever, and they would collide with
    the series the parent keeps updating. Observable instruments need nothing: they are observed afresh.
    This reaches into the SDK's storage (``_measurement_consumer`` → reader storages → view matches,
    checked against SDK 1.39–1.45); on any other layout it does nothing. Returns the points dropped.
    """
    pid = os.getpid()
    dropped = 0
    for instrument in instruments:
        try:
            storages = instrument._measurement_consumer._reader_storages.values()
        except AttributeError:
            continue
        for storage in list(storages):
            matches = getattr(storage, "_instrument_view_instrument_matches", {}).get(instrument, ())
            for match in matches:
                aggregations = getattr(match, "_attributes_aggregation", None)
                lock = getattr(match, "_lock", None)
                if not isinstance(aggregations, dict) or lock is None:
                    continue
                # A lock held at fork time by a thread that does not exist here is never released.
                if not lock.acquire(timeout=0.1):
                    continue
                try:
                    for key, aggregation in list(aggregations.items()):
                        attrs = getattr(aggregation, "_attributes", None) or {}
                        owner = attrs.get(names.SPAN_PID)
                        if owner is not None and owner != pid:
                            del aggregations[key]
                            dropped += 1
                finally:
                    lock.release()
    return dropped
