"""Background sampler: one daemon thread that reads the probes every ``SAMPLE_INTERVAL`` seconds.

It keeps the resident-memory floor, and hands each :class:`Sample` to its listeners (the process metrics
drain GC pauses there; the detector runs its tiers there). Nothing here is on the per-task path.
The thread is restarted in a forked child, where the floor and the counts start afresh.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Callable

from otel_leak.probes import FloorTracker, HeapProbe, MemoryProbe

_log = logging.getLogger("otel_leak")


@dataclass(frozen=True)
class Sample:
    t: float  # time.monotonic()
    wall: float  # time.time()
    rss: int
    vms: int
    heap_blocks: int
    traced: int | None
    floor: int
    task_counts: dict[str, int]  # copy of cumulative completed tasks per task identity
    tasks_total: int


Listener = Callable[[Sample], None]

# Sampling and detection may use at most this share of one core: whoever sets `interval` (the detector
# samples faster for fast workers), the wait after a tick is stretched to stay within it (next_wait).
# Not counted: drains (add_listener(..., budgeted=False)), which run after the timed part because their
# work is proportional to the tasks run, not to the ticks (the processor's queued histogram points: a
# longer wait would not make it cheaper; the processor benchmark's throughput figures include it), and
# work a listener reports with exempt() because it keeps a budget of its own (the detector's allocator
# walks, at most 0.05 % of the time).
TICK_BUDGET = 0.003
# Credit the budget may bank, in CPU seconds: the first ticks of a process are the expensive ones (cold
# caches, first-time code paths, a heap full of start-up garbage), and a fast worker's first seconds are
# when a leak must be seen soonest. Over a run of T seconds the ticks use at most TICK_BUDGET * T plus this.
TICK_ALLOWANCE = 0.02
DRAIN_EVERY = 0.25  # seconds: the drains run at least this often, however long the ticks must wait


class Sampler:
    def __init__(
        self,
        memory: MemoryProbe,
        heap: HeapProbe,
        stats,  # otel_leak.processor.TaskStats
        interval: float = 1.0,
        floor_window: float = 300.0,
        restart_on_fork: bool = True,
    ) -> None:
        # False: after a fork the thread waits for resume_after_fork(), which the runtime calls from a fork
        # hook registered after every part's own (the detector's reset must be done before the first tick).
        self.restart_on_fork = restart_on_fork
        self._resume = False
        self.memory = memory
        self.heap = heap
        self.stats = stats
        self.interval = interval
        self.floor = FloorTracker(floor_window)
        self.last: Sample | None = None
        self.tick_cost = 0.0  # smoothed CPU seconds per budgeted tick (diagnostics; the budget is _credit)
        self._credit = TICK_ALLOWANCE  # CPU seconds the ticks may still spend beyond the budget's pace
        self._exempt = 0.0
        self._listeners: list[Listener] = []
        self._drains: list[Listener] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._after_fork)

    def add_listener(self, fn: Listener, budgeted: bool = True) -> None:
        with self._lock:
            (self._listeners if budgeted else self._drains).append(fn)

    def remove_listener(self, fn: Listener) -> None:
        with self._lock:
            for group in (self._listeners, self._drains):
                if fn in group:
                    group.remove(fn)

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="otel-leak-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout=max(2.0, self.interval * 2))
        self._thread = None

    def _after_fork(self) -> None:
        # The parent's thread does not exist here; locks may be held by threads that vanished.
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.floor.reset()
        self.last = None
        self._credit = TICK_ALLOWANCE
        was_running = self._thread is not None
        self._thread = None
        self._resume = was_running and not self.restart_on_fork
        if was_running and self.restart_on_fork:
            self.start()

    def resume_after_fork(self) -> None:
        """In a forked child: start the thread the parent had running (see ``restart_on_fork``)."""
        if self._resume:
            self._resume = False
            self.start()

    def sample(self) -> Sample | None:
        """Take one sample now (also used by tests and the detector's final report)."""
        pair = self.memory.read()
        if pair is None:
            return None
        rss, vms = pair
        t = time.monotonic()
        stats = self.stats
        s = Sample(
            t=t,
            wall=time.time(),
            rss=rss,
            vms=vms,
            heap_blocks=self.heap.blocks() or 0,
            traced=self.heap.traced(),
            floor=self.floor.add(t, rss),
            task_counts=dict(stats.counts) if stats is not None else {},
            tasks_total=stats.total if stats is not None else 0,
        )
        self.last = s
        return s

    def tick(self) -> None:
        """One sample to the budgeted listeners (sampling and detection)."""
        s = self.sample()
        if s is None:
            return
        with self._lock:
            listeners = list(self._listeners)
        self._call(listeners, s)

    def exempt(self, seconds: float) -> None:
        """A listener spent ``seconds`` of this tick on work budgeted elsewhere: not counted here."""
        self._exempt += seconds

    def drain(self) -> None:
        """The unbudgeted listeners, with the latest sample."""
        with self._lock:
            drains = list(self._drains)
        if drains and self.last is not None:
            self._call(drains, self.last)

    def _call(self, listeners: list[Listener], s: Sample) -> None:
        for fn in listeners:
            try:
                fn(s)
            except Exception as exc:
                _log.warning("otel-leak: sampler listener %r failed (%s) and was removed", fn, exc)
                self.remove_listener(fn)

    def next_wait(self, tick_seconds: float) -> float:
        """Seconds until the next tick: the interval, stretched so ticks stay within TICK_BUDGET.

        A token bucket: each tick spends its CPU time, waiting earns TICK_BUDGET per second, and up to
        TICK_ALLOWANCE may be banked. In debt, the wait is as long as it takes to repay it.
        """
        self.tick_cost = 0.8 * self.tick_cost + 0.2 * tick_seconds if self.tick_cost else tick_seconds
        self._credit -= tick_seconds
        wait = self.interval if self._credit >= 0 else max(self.interval, -self._credit / TICK_BUDGET)
        self._credit = min(TICK_ALLOWANCE, self._credit + wait * TICK_BUDGET)
        return wait

    def _run(self) -> None:
        stop = self._stop
        clock = time.thread_time  # CPU time of this thread: what the worker's own threads lose
        while not stop.is_set():
            started = clock()
            self._exempt = 0.0
            try:
                self.tick()
                cost = max(0.0, clock() - started - self._exempt)
                self.drain()
                wait = self.next_wait(cost)
                # The drains keep their own pace while a tick waits for its budget: the processor's queued
                # histogram points would otherwise be recorded seconds late, in bursts (a task's growth in
                # one export, its count in an earlier one) and pile up in a fast worker.
                deadline = time.monotonic() + wait
                while wait > DRAIN_EVERY and self._drains:
                    if stop.wait(DRAIN_EVERY):
                        return
                    self.drain()
                    wait = deadline - time.monotonic()
            except Exception as exc:  # pragma: no cover - defensive
                _log.warning("otel-leak: sampler stopped after an error: %s", exc)
                return
            stop.wait(max(0.0, wait))
