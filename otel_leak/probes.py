"""Cheap, fork-safe memory and GC probes.

Each probe reads one thing and never raises: a probe that fails disables itself with one warning and from
then on returns ``None`` (or its neutral value). Readers that hold per-process state (the kept
``/proc/self/statm`` fd, a psutil ``Process``) are re-created in the child after ``fork`` — a reader
created in the parent keeps reading the *parent* (the bug of opentelemetry-instrumentation-system-metrics,
whose psutil ``Process`` outlives a fork).
"""

from __future__ import annotations

import collections
import gc
import logging
import math
import os
import resource
import sys
import threading
import time
import tracemalloc

_log = logging.getLogger("otel_leak")

_now = time.perf_counter
_pread = os.pread
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _warn_once(probe: str, exc: BaseException) -> None:
    _log.warning("otel-leak: the %s probe failed (%s: %s) and is disabled", probe, type(exc).__name__, exc)


class MemoryProbe:
    """Resident and virtual memory of *this* process.

    Reads ``/proc/self/statm`` with ``os.pread`` on a kept fd (about 1.2 µs, nearly all of it the kernel
    formatting the file), falls back to psutil where ``/proc`` is missing. Both readers are re-opened in a
    forked child. :attr:`last` is the latest ``(perf_counter, rss)`` reading, for :meth:`recent_rss`.
    """

    NEVER = (float("-inf"), 0)

    def __init__(self) -> None:
        self.last: tuple[float, int] = self.NEVER
        self.reads = 0  # rss() reads, all threads
        self.read_cost = 2e-6  # seconds, a running median of their duration
        self._fd = -1
        self._psutil_proc = None
        self.disabled = False
        self._open()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._reopen)

    def _open(self) -> None:
        try:
            self._fd = os.open("/proc/self/statm", os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            self._read = self._read_statm
            return
        except OSError:
            self._fd = -1
        try:
            import psutil

            self._psutil_proc = psutil.Process()
            self._read = self._read_psutil
        except Exception as exc:  # no /proc, no psutil
            self._disable(exc)

    def _reopen(self) -> None:
        if self._fd >= 0:
            try:
                os.close(self._fd)
            except OSError:
                pass
        self._fd = -1
        self._psutil_proc = None
        self.last = self.NEVER  # the parent's reading is not the child's
        if not self.disabled:
            self._open()

    def _disable(self, exc: BaseException) -> None:
        if not self.disabled:
            self.disabled = True
            _warn_once("memory", exc)
        self._read = _none_pair

    def _read_statm(self) -> tuple[int, int]:
        size, resident, _ = os.pread(self._fd, 64, 0).split(b" ", 2)
        return int(resident) * _PAGE, int(size) * _PAGE

    def _read_psutil(self) -> tuple[int, int]:
        info = self._psutil_proc.memory_info()  # type: ignore[union-attr]
        return info.rss, info.vms

    def read(self) -> tuple[int, int] | None:
        """``(rss_bytes, vms_bytes)`` or ``None`` once disabled."""
        try:
            return self._read()
        except Exception as exc:
            self._disable(exc)
            return None

    def rss(self) -> int | None:
        """Resident bytes, read now: the per-task hot path (one pread)."""
        fd = self._fd
        if fd >= 0:
            try:
                t0 = _now()
                value = int(_pread(fd, 64, 0).split(b" ", 2)[1]) * _PAGE
                t1 = _now()
                # A running median of the read's duration (the processor's read budget): a read is where
                # the thread lets go of the interpreter lock, so some last as long as another thread's
                # turn; the median is what the read itself costs.
                cost = self.read_cost
                self.read_cost = cost * 1.02 if t1 - t0 > cost else cost * 0.98
                self.reads += 1
                self.last = (t1, value)
                return value
            except Exception:
                pass
        pair = self.read()
        if pair is None:
            return None
        self.last = (_now(), pair[0])
        return pair[0]

    def recent_rss(self, max_age: float) -> int | None:
        """The latest reading if it is at most ``max_age`` seconds old (any thread's), else a new one."""
        t, value = self.last
        if _now() - t <= max_age:
            return value
        return self.rss()


def _none_pair() -> None:
    return None


class HeapProbe:
    """Python heap: allocated blocks always; traced bytes while tracemalloc is tracing."""

    def __init__(self) -> None:
        self.disabled = False

    def blocks(self) -> int | None:
        if self.disabled:
            return None
        try:
            return sys.getallocatedblocks()
        except Exception as exc:
            self.disabled = True
            _warn_once("python heap", exc)
            return None

    @staticmethod
    def traced() -> int | None:
        try:
            return tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else None
        except Exception:
            return None


class GcProbe:
    """GC activity per generation, with pause time from ``gc.callbacks``.

    The callback only updates counters and appends to a bounded buffer (no locks, no OTel calls: a
    collection can start while any lock is held). :meth:`drain_pauses` hands the buffered pauses to the
    sampler thread, which records them into the pause histogram.
    """

    MAX_BUFFERED = 4096
    # The pause distribution per generation, for baselines: counts in buckets whose upper bounds double
    # from 10 us (the last one open), the largest pause and the total (bounded: 3 x 21 ints).
    PAUSE_BOUNDS = tuple(1e-5 * 2**k for k in range(20))
    active: "GcProbe | None" = None  # the probe installed last (the runtime's): what reports read

    def __init__(self, timed: bool = True) -> None:
        self.disabled = False
        self.collections = 0  # all generations, counted by the callback
        self.pause_total = 0.0  # seconds, all generations
        self._pauses: collections.deque[tuple[int, float]] = collections.deque(maxlen=self.MAX_BUFFERED)
        self._started = 0.0
        self._installed = False
        self._reset_distribution()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._reset_distribution)  # a child's pauses are its own
        if timed:
            self.install()

    def _reset_distribution(self) -> None:
        n = len(self.PAUSE_BOUNDS) + 1
        self.pause_buckets = [[0] * n for _ in range(3)]
        self.pause_max = [0.0, 0.0, 0.0]
        self.pause_sum = [0.0, 0.0, 0.0]

    def install(self) -> None:
        if not self._installed:
            gc.callbacks.append(self._callback)
            self._installed = True
            GcProbe.active = self

    def uninstall(self) -> None:
        if self._installed:
            try:
                gc.callbacks.remove(self._callback)
            except ValueError:
                pass
            self._installed = False
            if GcProbe.active is self:
                GcProbe.active = None

    def _callback(self, phase: str, info: dict) -> None:
        try:
            if phase == "start":
                self._started = time.perf_counter()
            else:
                pause = time.perf_counter() - self._started
                self.collections += 1
                self.pause_total += pause
                gen = info["generation"]
                self._pauses.append((gen, pause))
                if 0 <= gen < 3:
                    i = 0 if pause <= 1e-5 else min(len(self.PAUSE_BOUNDS), math.ceil(math.log2(pause / 1e-5)))
                    self.pause_buckets[gen][i] += 1
                    self.pause_sum[gen] += pause
                    if pause > self.pause_max[gen]:
                        self.pause_max[gen] = pause
        except Exception as exc:  # pragma: no cover - defensive: never raise inside the GC
            self.disabled = True
            self.uninstall()
            _warn_once("gc pause", exc)

    def drain_pauses(self) -> list[tuple[int, float]]:
        out = []
        pop = self._pauses.popleft
        try:
            while True:
                out.append(pop())
        except IndexError:
            return out

    def pause_distribution(self) -> dict:
        """``{generation: {collections, total_s, max_s, p50_s, p99_s, buckets}}`` since start (or fork)."""
        return {str(g): summarize_pauses(self.pause_buckets[g], self.pause_sum[g], self.pause_max[g])
                for g in range(3) if sum(self.pause_buckets[g])}

    @staticmethod
    def stats() -> list[dict]:
        """``gc.get_stats()``: cumulative collections/collected/uncollectable per generation."""
        try:
            return gc.get_stats()
        except Exception:
            return []


def thread_count() -> int:
    """Native threads of this process (from /proc), else Python threads."""
    try:
        with open("/proc/self/stat", "rb") as f:
            stat = f.read()
        return int(stat.rsplit(b")", 1)[1].split()[17])
    except Exception:
        return threading.active_count()


def memory_limit(configured: int = 0) -> int | None:
    """The memory limit in bytes: configured, else cgroup v2/v1, else RLIMIT_AS; ``None`` if unlimited."""
    if configured > 0:
        return configured
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                raw = f.read().strip()
        except OSError:
            continue
        if raw.isdigit() and int(raw) < (1 << 60):
            return int(raw)
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft not in (resource.RLIM_INFINITY, -1):
            return soft
    except Exception:
        pass
    return None


def pause_quantile(buckets: list[int], q: float, top: float) -> float | None:
    """The ``q`` quantile of a pause histogram in :attr:`GcProbe.PAUSE_BOUNDS` buckets, linear within a
    bucket; ``top`` (the largest pause) bounds the open last bucket."""
    n = sum(buckets)
    if n <= 0:
        return None
    want, seen, lo = q * n, 0, 0.0
    bounds = GcProbe.PAUSE_BOUNDS
    for i, c in enumerate(buckets):
        hi = bounds[i] if i < len(bounds) else max(top, lo)
        if c and seen + c >= want:
            return min(top, lo + (hi - lo) * (want - seen) / c) if top > 0 else lo + (hi - lo) * (want - seen) / c
        seen += c
        lo = hi
    return top


def summarize_pauses(buckets: list[int], total: float, top: float) -> dict:
    return {
        "collections": int(sum(buckets)),
        "total_s": round(total, 6),
        "max_s": round(top, 6),
        "p50_s": round(pause_quantile(buckets, 0.5, top) or 0.0, 6),
        "p99_s": round(pause_quantile(buckets, 0.99, top) or 0.0, 6),
        "buckets": list(buckets),
    }


class FloorTracker:
    """Sliding-window minimum (monotonic deque): the lowest resident memory over the last ``window`` s.

    Memory is O(samples in window) at most, and in practice O(1) for a rising series.
    """

    def __init__(self, window_s: float) -> None:
        self.window = window_s
        self._q: collections.deque[tuple[float, int]] = collections.deque()

    def add(self, t: float, value: int) -> int:
        q = self._q
        while q and q[-1][1] >= value:
            q.pop()
        q.append((t, value))
        cutoff = t - self.window
        while q[0][0] < cutoff:
            q.popleft()
        return q[0][1]

    def value(self) -> int | None:
        return self._q[0][1] if self._q else None

    def reset(self) -> None:
        self._q.clear()

