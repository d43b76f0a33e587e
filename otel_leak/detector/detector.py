"""The embedded detector: tier 1 on every sample, tier 2/3 on suspicion, outputs through OpenTelemetry.

Runs on the sampler's thread (a listener) plus one short-lived thread per tier-2 window. Nothing here raises
into the worker: every entry point catches, and an internal failure turns the verdict into
``inconclusive`` (with the error in the report) instead.
"""

from __future__ import annotations

import atexit
import collections
import gc
import json
import logging
import os
import sys
import threading
import time

from otel_leak import config, names
from otel_leak.detector import settings as S
from otel_leak.detector import tier2 as T2
from otel_leak.detector.report import SCHEMA, write_atomic
from otel_leak.detector.tier1 import Tier1

_log = logging.getLogger("otel_leak")
_diag_log = logging.getLogger(names.LOG_DIAGNOSIS)

MAX_SERIES = 600
MAX_EVENTS = 64
MAX_SUSPECTS = 5

# Adaptive sampling: the detector sets ``sampler.interval`` between FAST_INTERVAL and the configured
# interval so that a sample sees about TASKS_PER_SAMPLE tasks. A fast worker (300 tasks/s) is then sampled
# every 0.05 s and its windows close within ~50 tasks; a slow one keeps the configured interval (its windows
# stretch to DETECTOR_WINDOW_TASKS tasks instead). Before the rate is known (start-up), PROBE_INTERVAL.
FAST_INTERVAL = 0.05
PROBE_INTERVAL = 0.25
TASKS_PER_SAMPLE = 15
RATE_HORIZON = 1.0  # seconds of samples the task rate is measured over
# Tier 2 windows last about TIER2_TASKS tasks (at least TIER2_MIN_WINDOW s, at most DETECTOR_TIER2_WINDOW):
# a fast worker gets a short window (tracemalloc slows every allocation while it runs), a slow one the
# longest, so a leak of a few calls a second still shows its allocation site.
TIER2_TASKS = 90
TIER2_MIN_WINDOW = 0.3
MALLINFO_DUTY = 2000  # allocator walks take at most 1/MALLINFO_DUTY of the time (0.05 %)...
MALLINFO_BURST = 0.01  # ...plus this allowance in seconds (see Detector._malloc)
TIER2_WAIT = 10.0  # seconds per-task suspects wait for tier 2's first window before tier 1 alone names them
# A suspect's coefficient must be this many standard errors above zero (and >= 20 % of the explained growth):
# tier 1 regresses resident/allocator bytes over rows of many tasks (noisier, and its Huber standard errors
# are optimistic), tier 2 traced Python bytes over rows of one or two tasks.
T1_MIN_T = 5.0
T2_MIN_T = 3.0


class _Series:
    """Downsampled bounded series: when full, every other point goes and the stride doubles."""

    def __init__(self, cap: int = MAX_SERIES) -> None:
        self.cap = cap
        self.cols = {"t_s": [], "rss": [], "floor": [], "heap_blocks": []}
        self.stride = 1
        self.n = 0

    def add(self, t_s: float, rss: int, floor: int, heap: int) -> None:
        self.n += 1
        if (self.n - 1) % self.stride:
            return
        c = self.cols
        c["t_s"].append(round(t_s, 3))
        c["rss"].append(rss)
        c["floor"].append(floor)
        c["heap_blocks"].append(heap)
        if len(c["t_s"]) >= self.cap:
            for k in c:
                c[k] = c[k][::2]
            self.stride *= 2

    def as_dict(self) -> dict:
        return {k: list(v) for k, v in self.cols.items()}


class Detector:
    def __init__(self, stats=None, sampler=None, meter=None, logger_provider=None, environ=None) -> None:
        env = environ
        self.stats = stats
        self.sampler = sampler
        self.report_dir = config.get(S.REPORT_DIR, env) or ""
        self.report_interval = config.get(S.REPORT_INTERVAL, env)
        self.tier2_enabled = config.get(S.TIER2, env)
        self.tier2_window = config.get(S.TIER2_WINDOW, env)
        self.tier2_share = config.get(S.TIER2_SHARE, env)
        self.tier2_frames = int(config.get(S.TIER2_FRAMES, env))
        self.tier3_enabled = config.get(S.TIER3, env)
        self.tier3_budget = config.get(S.TIER3_BUDGET, env)
        self._t1_kwargs = dict(
            min_samples=int(config.get(S.MIN_WINDOW_SAMPLES, env)),
            min_tasks=int(config.get(S.MIN_WINDOW_TASKS, env)),
            idle_window=config.get(S.IDLE_WINDOW, env),
            min_windows=int(config.get(S.MIN_WINDOWS, env)),
            min_growth=int(config.get(S.MIN_GROWTH, env)),
        )
        self._lock = threading.RLock()
        self._celery_hooked = False
        base = getattr(sampler, "interval", None)
        self.base_interval: float | None = float(base) if isinstance(base, (int, float)) and base > 0 else None
        self._reset()
        self._stopped = False
        self._gauges = []
        if meter is not None:
            self._make_gauges(meter)
        self._add_log_handler(logger_provider)
        if sampler is not None:
            sampler.add_listener(self.on_sample)
        atexit.register(self._at_exit)
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._after_fork)
        self._hook_celery()

    def _hook_celery(self) -> None:
        """Celery prefork children leave through ``os._exit`` (no atexit): write the final report from
        ``celery.signals.worker_process_shutdown``, sent in each child just before it exits.

        Only when Celery is already imported (checked at start, on every sample and after a fork): the
        detector never imports it.
        """
        if self._celery_hooked:
            return
        mod = sys.modules.get("celery.signals")
        sig = getattr(mod, "worker_process_shutdown", None) if mod is not None else None
        if sig is None:
            return
        self._celery_hooked = True
        try:
            # Weak: the receiver goes with this detector (a fixed dispatch_uid or weak=False would keep the
            # first detector of the process connected, and alive, forever).
            sig.connect(self._on_worker_process_shutdown, weak=True)
        except Exception as exc:
            _log.debug("otel-leak: cannot connect to Celery's worker_process_shutdown (%s)", exc)

    def _on_worker_process_shutdown(self, *args, **kwargs) -> None:
        """Celery signal receiver (in the exiting pool child): final sample and final report."""
        try:
            self._at_exit()
        except Exception:
            pass

    # ------------------------------------------------------------------ state
    def _reset(self) -> None:
        self.pid = os.getpid()
        self.start_unix = time.time()
        self.start_t: float | None = None
        self.last = None
        self.first_rss: int | None = None
        self.tier1 = Tier1(**self._t1_kwargs)
        self.series = _Series()
        self.recent_rss: collections.deque[int] = collections.deque(maxlen=5)
        self.events: collections.deque[dict] = collections.deque(maxlen=MAX_EVENTS)
        self.error: str | None = None
        self.verdict = "inconclusive"
        self.detected_at_s: float | None = None
        self.detected_at_tasks: int | None = None
        self.suspects: list[dict] = []
        self.sites: list[dict] = []
        self.retention: list[dict] = []
        self.kind: str | None = None
        self.allocator: dict | None = None
        self.tier2_runs: list[dict] = []
        self.tier2_time = 0.0
        self.tier2_thread: T2.Tier2Thread | None = None
        self.tier2_started_by_us = False
        self.last_tier2_end = -1e18
        self._burst = None
        self._mi_cheap = False
        self._mi_off = False
        self._mi_allow = MALLINFO_BURST  # seconds of allocator walking the budget allows now
        self._mi_t: float | None = None
        self._mi_cost = 0.0  # smoothed cost of one reading
        self.malloc_windows: collections.deque[tuple[float, int, int]] = collections.deque(maxlen=64)
        self.last_write = -1e18
        self.write_error_logged = False
        self._t1_attr = []
        self._vetoed: list[str] = []
        self._held = False
        self._tier2_res = None
        self._rate_q: collections.deque[tuple[float, int]] = collections.deque(maxlen=256)
        # The start (attach or fork) is the first rate reference: the sampler was usually started before the
        # detector attached and is already waiting out its first interval, so the first sample the detector
        # sees can give the task rate at once instead of a probe interval later.
        self._rate_q.append((time.monotonic(), int(getattr(self.stats, "total", 0) or 0)))
        self.task_rate = 0.0

    def _after_fork(self) -> None:
        try:
            self._lock = threading.RLock()
            th = self.tier2_thread
            if th is not None and not getattr(th, "user_tracing", True):
                import tracemalloc

                if tracemalloc.is_tracing():
                    tracemalloc.stop()
            self._reset()
            self._set_interval(self.base_interval)
            self._hook_celery()
        except Exception as exc:  # pragma: no cover
            self.error = f"after fork: {exc}"

    def _fail(self, where: str, exc: BaseException) -> None:
        if self.error is None:
            self.error = f"{where}: {type(exc).__name__}: {exc}"
            _log.warning("otel-leak: detector error in %s (%s); verdict is inconclusive", where, self.error)
            self._event("error", detail=self.error)
        self.verdict = "inconclusive"

    def _event(self, kind: str, **detail) -> None:
        t = (self.last.t - self.start_t) if (self.last is not None and self.start_t is not None) else 0.0
        ev = {"t_s": round(t, 3), "kind": kind}
        ev.update(detail)
        self.events.append(ev)

    # ------------------------------------------------------------------ sampling
    def on_sample(self, s) -> None:
        """Sampler listener: never raises."""
        if not self._celery_hooked:
            try:
                self._hook_celery()
            except Exception:
                pass
        try:
            with self._lock:
                if self.error is None and not self._stopped:
                    self._on_sample(s)
        except Exception as exc:
            self._fail("tier 1", exc)
        try:
            if self.report_dir and s.t - self.last_write >= self.report_interval:
                self.last_write = s.t
                self.write_report()
        except Exception:
            pass

    def _set_interval(self, value: float | None) -> None:
        sp = self.sampler
        if sp is not None and value is not None and self.base_interval is not None:
            sp.interval = max(min(FAST_INTERVAL, self.base_interval), min(self.base_interval, value))

    def _adapt_interval(self, s) -> None:
        """Sample about every TASKS_PER_SAMPLE tasks, within [FAST_INTERVAL, configured interval]."""
        base = self.base_interval
        if base is None or self.sampler is None:
            return
        q = self._rate_q
        if q and s.t < q[-1][0]:
            q.clear()  # a clock that is not time.monotonic() (synthetic samples): no start reference
        q.append((s.t, s.tasks_total))
        while len(q) > 2 and s.t - q[1][0] >= RATE_HORIZON:
            q.popleft()
        while len(q) > 2 and q[1][1] == 0:
            q.popleft()  # the rate is measured from the last sample before the first tasks, not over start-up
        t0, n0 = q[0]
        dt = s.t - t0
        if dt <= 0:
            want = min(base, PROBE_INTERVAL)  # first sample: find the rate quickly
        else:
            self.task_rate = rate = max(0, s.tasks_total - n0) / dt
            want = base if rate <= 0 else TASKS_PER_SAMPLE / rate
            if rate <= 0 and dt < RATE_HORIZON and s.tasks_total == 0:
                want = min(base, PROBE_INTERVAL)  # nothing ran yet: keep probing for the first tasks
        cur = self.sampler.interval
        lo = min(FAST_INTERVAL, base)
        want = max(lo, min(base, want))
        # hysteresis (no flapping on a noisy rate), except to reach either bound
        if want != cur and (want in (lo, base) or abs(want - cur) > 0.2 * cur):
            self._set_interval(want)

    def _on_sample(self, s) -> None:
        if self.start_t is None:
            self.start_t = s.t
            self.first_rss = s.rss
        self._adapt_interval(s)
        self.last = s
        self.recent_rss.append(s.rss)
        self.series.add(s.t - self.start_t, s.rss, min(self.recent_rss), s.heap_blocks)
        t1 = self.tier1
        was = t1.declared
        mi = self._malloc(s.t)
        if t1.add(s, mi[0] if mi is not None else None):
            if mi is not None:
                self.malloc_windows.append((s.t, mi[0], mi[1]))
            if t1.trend.candidate and not was and not t1.declared:
                self._event("suspicion", trend=t1.trend.as_dict())
                self._young_collect()
                self._start_burst()
        if t1.declared and not was:
            self._declare(s)
        if self.verdict != "leak":
            self.verdict = "no_leak" if len(t1.windows) >= t1.min_windows else "inconclusive"
        elif self._held and not self._tier2_pending():
            self._update_suspects()  # tier 2 never answered: tier 1's significant suspects stand
        if t1.declared and self.tier2_enabled and self.tier2_thread is None:
            self._maybe_tier2(s)

    def _young_collect(self) -> None:
        """On suspicion, collect the young generations once (bounded work: they hold at most a few
        thousand objects), so cyclic garbage waiting for the collector is not mistaken for a leak. The next
        window must show the growth survived. Skipped when the application disabled the collector."""
        if not gc.isenabled():
            return
        t0 = time.perf_counter()
        # The allocator's in-use bytes around it: how much of the growth the collection handed back. Two
        # readings per suspicion, charged with the collection itself to the sampler's tick budget (not to
        # the walk budget: a debt there would delay the next window's reading, which confirms or vetoes).
        before = None if self._mi_off else T2.malloc_info()
        gc.collect(1)
        after = None if before is None else T2.malloc_info()
        freed = max(0, before[0] - after[0]) if before is not None and after is not None else None
        self.tier1.note_collect(freed)
        self._event("young_gc", duration_s=round(time.perf_counter() - t0, 4), freed_bytes=freed)

    def _start_burst(self) -> None:
        """On suspicion: a cheap ~20 Hz sampling burst of (task counts, RSS, malloc in-use) for a few seconds.

        Many short intervals with few tasks each vary the task mix far more than 1 s samples do, which is
        what the attribution regression needs. No tracemalloc: a statm read and a dict copy per tick.
        """
        if self._burst is not None or self.stats is None or self.sampler is None:
            return
        mem = getattr(self.sampler, "memory", None)
        heap = getattr(self.sampler, "heap", None)
        if mem is None or heap is None:
            return
        stats, tier1 = self.stats, self.tier1
        stop = threading.Event()
        self._burst = stop

        def run():
            try:
                rows = []
                prev = None
                end = time.monotonic() + 2.5
                while time.monotonic() < end and not stop.is_set():
                    mi = T2.malloc_info() if not self._mi_off and self._mi_cheap else None
                    pair = mem.read()
                    cur = (time.monotonic(), pair[0] if pair else 0, heap.blocks() or 0,
                           mi[0] if mi else None, dict(stats.counts))
                    if prev is not None:
                        d = {k: v - prev[4].get(k, 0) for k, v in cur[4].items() if v - prev[4].get(k, 0) > 0}
                        du = cur[3] - prev[3] if cur[3] is not None and prev[3] is not None else None
                        rows.append((cur[0] - prev[0], cur[1] - prev[1], cur[2] - prev[2], du, d, False))
                    prev = cur
                    stop.wait(0.05)
                with self._lock:
                    if self._burst is stop and not tier1.contaminating:
                        tier1.add_rows(rows)
                        self._event("attribution_burst", rows=len(rows))
                        if tier1.declared:
                            self._t1_attr = tier1.attribute()
                            self._update_suspects()
            except Exception:
                pass

        threading.Thread(target=run, name="otel-leak-burst", daemon=True).start()

    def _malloc(self, now: float):
        """glibc in-use/free bytes, read as often as the allocator-walk budget allows.

        ``mallinfo2`` walks the allocator's free lists: tens of microseconds usually, milliseconds right
        after start-up (import garbage in the bins). A token bucket keeps the walks under 1/MALLINFO_DUTY
        of the time with an allowance of MALLINFO_BURST seconds, so one expensive start-up reading does not
        stall the readings for many seconds, and the long-run share stays bounded.
        """
        if self._mi_off:
            return None
        if self._mi_t is not None:
            self._mi_allow = min(MALLINFO_BURST, self._mi_allow + (now - self._mi_t) / MALLINFO_DUTY)
        self._mi_t = now
        if self._mi_allow < self._mi_cost:
            return None
        t0 = time.perf_counter()
        mi = T2.malloc_info()
        cost = time.perf_counter() - t0
        if mi is None:
            self._mi_off = True
            return None
        self._mi_allow -= cost
        self._mi_cost = cost if not self._mi_cost else 0.7 * self._mi_cost + 0.3 * cost
        exempt = getattr(self.sampler, "exempt", None)
        if exempt is not None:
            exempt(cost)  # budgeted here, not in the sampler's tick budget
        self._mi_cheap = cost <= 0.0005
        return mi

    def _declare(self, s) -> None:
        t1 = self.tier1
        self.verdict = "leak"
        self.detected_at_s = round(t1.declared_t - self.start_t, 3)
        self.detected_at_tasks = t1.declared_tasks
        self._t1_attr = t1.attribute()
        self.kind = self._kind_tier1()
        self._event(
            "leak_declared", trend=t1.trend.as_dict(), tasks=t1.declared_tasks,
            attribution=[
                {"task": a.task, "bytes_per_call": round(a.bytes_per_call, 1), "confidence": a.confidence,
                 "share": a.share, "t": a.t}
                for a in self._t1_attr[:5]
            ],
        )
        self._update_suspects()
        self._emit_log()

    # ------------------------------------------------------------------ tier 2
    def _tier2_window(self) -> float:
        """Window length from the task rate: about TIER2_TASKS tasks, within [TIER2_MIN_WINDOW, setting]."""
        rate = max(self.task_rate, self._task_rate())
        w = self.tier2_window
        if rate > 0:
            w = min(w, max(TIER2_MIN_WINDOW, TIER2_TASKS / rate))
        return w

    def _tier2_cost(self, w: float) -> float:
        """Predicted cost of a window of ``w`` seconds: tracing plus snapshot analysis, scaled from the last."""
        last = self.tier2_runs[-1] if self.tier2_runs else None
        if not last:
            return w
        traced = max(1e-3, float(last.get("phases", {}).get("traced_s") or last["duration_s"]))
        extra = max(0.0, last["duration_s"] - traced - float(last.get("phases", {}).get("tier3_s") or 0.0))
        return w + extra * (w / traced)

    def _maybe_tier2(self, s) -> None:
        age = s.t - self.start_t
        w = self._tier2_window()
        first = not self.tier2_runs
        if not first:
            # Later windows refine the diagnosis, within the run-time share and not too close together.
            if self.tier2_time + self._tier2_cost(w) > self.tier2_share * age or s.t - self.last_tier2_end < 10 * w:
                return
            if len(self.tier2_runs) >= 8:
                return
        self.tier1.contaminate(True)
        self._event("tier2_start", window_s=w)
        th = T2.Tier2Thread(
            self.stats,
            self._tier2_done,
            window=w,
            frames=self.tier2_frames,
            tier3=self.tier3_enabled and first,
            tier3_budget=self.tier3_budget,
        )
        import tracemalloc

        th.user_tracing = tracemalloc.is_tracing()
        self.tier2_thread = th
        th.start()

    def _tier2_done(self, res: T2.Tier2Result) -> None:
        try:
            with self._lock:
                if self.tier2_thread is None:
                    return  # forked or stopped meanwhile
                self.tier2_thread = None
                now = time.monotonic()
                self.last_tier2_end = now
                # tracemalloc's own memory and the allocator's reaction to it: keep it out of the trend.
                self.tier1.contaminate(False, until=now + 2 * max(1.0, self.sampler.interval if self.sampler else 1.0))
                self.tier2_time += res.duration
                run = {
                    "t_s": round(res.started_t - self.start_t, 3) if self.start_t else 0.0,
                    "duration_s": round(res.duration, 3),
                    "tasks": res.tasks,
                    "python_growth_bytes_per_s": round(res.python_growth_per_s, 1),
                    "python_growth_bytes_per_task": None if res.python_growth_per_task is None else round(res.python_growth_per_task, 1),
                    "error": res.error,
                    "phases": res.phases,
                    "attribution": [
                        {"task": a.task, "bytes_per_call": round(a.bytes_per_call, 1), "confidence": a.confidence,
                         "share": a.share, "t": a.t}
                        for a in res.attribution[:5]
                    ],
                }
                self.tier2_runs.append(run)
                if len(self.tier2_runs) > 16:
                    del self.tier2_runs[1:2]
                self._event("tier2_end", **{k: v for k, v in run.items() if k != "t_s"})
                if res.error is None:
                    self._tier2_res = res
                    self.kind = self._kind_tier2(res)
                    if res.sites:
                        self.sites = res.sites
                    if res.retention_paths:
                        self.retention = res.retention_paths
                    self._update_suspects()
                    self._emit_log()
                elif self.verdict == "leak":
                    self._update_suspects()  # no confirmation coming from this window: tier 1 stands
        except Exception as exc:
            self._fail("tier 2", exc)

    # ------------------------------------------------------------------ diagnosis
    def _task_rate(self) -> float:
        ws = list(self.tier1.windows)[-8:]
        if len(ws) < 2:
            return 0.0
        span = ws[-1].t1 - ws[0].t0
        return sum(w.tasks for w in ws) / span if span > 0 else 0.0

    def _kind_tier1(self) -> str | None:
        tr = self.tier1.trend
        self.allocator = self._allocator_trend()
        if tr.heap_tau >= 0.6 and tr.heap_slope > 0:
            return "python_heap"
        return "native_or_fragmentation"

    def _allocator_trend(self) -> dict | None:
        mw = list(self.malloc_windows)
        if len(mw) < 3:
            return None
        from otel_leak.detector.robust import theil_sen

        ts = [m[0] for m in mw]
        used = theil_sen(ts, [m[1] for m in mw])
        free = theil_sen(ts, [m[2] for m in mw])
        slope = self.tier1.trend.slope or 1.0
        if used > 0.5 * slope:
            detail = "native_in_use"
        elif free > 0.5 * slope:
            detail = "allocator_free_retained"
        else:
            detail = "outside_malloc"
        return {
            "allocator": "glibc",
            "in_use_slope_bytes_per_s": round(used, 1),
            "free_slope_bytes_per_s": round(free, 1),
            "explains": detail,
        }

    def _kind_tier2(self, res: T2.Tier2Result) -> str | None:
        self.allocator = self._allocator_trend()
        rate = self._task_rate()
        rss_slope = self.tier1.trend.slope
        if rss_slope <= 0:
            return self.kind
        if res.python_growth_per_task is not None and rate > 0:
            ratio = res.python_growth_per_task / (rss_slope / rate)
        else:
            ratio = res.python_growth_per_s / rss_slope
        if ratio >= 0.5:
            return "python_heap"
        if ratio <= 0.2:
            return "native_or_fragmentation"
        return "mixed"

    def _tier2_pending(self) -> bool:
        """Tier 2 is on and its first window has not reported yet (it starts on the declaring sample, and
        reports within a window plus its analysis; past TIER2_WAIT seconds, tier 1 is not held any longer)."""
        if not self.tier2_enabled or self.tier2_runs or self.error is not None:
            return False
        t1 = self.tier1
        now = self.last.t if self.last is not None else None
        return not (t1.declared_t is not None and now is not None and now - t1.declared_t > TIER2_WAIT)

    def _update_suspects(self) -> None:
        """Suspects: task types with a significant coefficient *and* a meaningful share of the growth.

        Resident-memory growth lands on whichever task first touches fresh pages: when the leaker's objects
        fill heap space a neighbour freed (allocate-and-free), the neighbour's next call touches the fresh
        pages and looks like a leaker in tier 1; tasks that strictly alternate cannot be told apart at all.
        Tier 2 regresses traced Python bytes per task over short rows, which a neighbour's freed allocations
        do not move: when the leak is in the Python heap, tier 2 confirms or vetoes tier 1's suspects, and
        until its first window reports, no task is named from resident memory alone (the verdict is
        published at once; the per-task suspects follow about a window later, or after TIER2_WAIT seconds
        from tier 1 alone if tier 2 never answers).
        """
        res = getattr(self, "_tier2_res", None)
        sig1 = {a.task: a for a in self._t1_attr if a.significant(T1_MIN_T)}
        all2 = {a.task: a for a in (res.attribution if res is not None else [])}
        sig2 = {k: a for k, a in all2.items() if a.significant(T2_MIN_T)}
        vetoed: list[str] = []
        self._held = False
        if res is None:
            # Tier 1's rows hold many tasks each and their memory readings trail the task counts by up to a
            # thread switch: wait for tier 2's answer when it is coming.
            if self._tier2_pending():
                sig1 = {}
                self._held = True
            chosen = dict.fromkeys(sig1)
        elif self.kind == "python_heap":
            chosen = dict.fromkeys(sig2)
            for k in sig1:
                if k in sig2:
                    continue
                a2 = all2.get(k)
                seen = res.calls.get(k, 0) if hasattr(res, "calls") else 0
                contradicted = seen >= 3 and (a2 is None or a2.bytes_per_call < 0.25 * sig1[k].bytes_per_call)
                if contradicted or sig2:
                    vetoed.append(k)
                else:
                    chosen[k] = None  # tier 2 saw too few of its calls to say either way
        elif self.kind == "mixed":
            chosen = dict.fromkeys(list(sig2) + [k for k in sig1 if k not in sig2])
        else:  # native or fragmentation: tier 2's Python bytes say nothing about it
            chosen = dict.fromkeys(sig1)
        w2 = 1.5 if self.kind in ("python_heap", "mixed") else 0.3
        scores = {}
        for k in chosen:
            a1, a2 = sig1.get(k), sig2.get(k)
            scores[k] = (a1.share * a1.confidence if a1 else 0.0) + (w2 * a2.share * a2.confidence if a2 else 0.0)
        total = sum(scores.values())
        out = []
        counts = dict(self.stats.counts) if self.stats is not None else {}
        for k, sc in sorted(scores.items(), key=lambda kv: -kv[1]):
            if len(out) >= MAX_SUSPECTS:
                break
            a1, a2 = sig1.get(k), sig2.get(k)
            if a2 is not None and self.kind in ("python_heap", "mixed"):
                per_call = a2.bytes_per_call
            else:
                per_call = a1.bytes_per_call if a1 else a2.bytes_per_call
            conf = max(a.confidence for a in (a1, a2) if a is not None)
            conf = min(0.99, conf * 0.5 + 0.5 * (sc / total if total > 0 else 0.0))
            out.append({
                "task": k,
                "retained_bytes_per_call": round(per_call, 1),
                "calls": int(counts.get(k, a1.calls if a1 else a2.calls)),
                "confidence": round(conf, 3),
                "trace_ids": self._trace_ids(k),
                "source": "tier2" if a2 is not None else "tier1",
            })
        names_now = [s["task"] for s in out]
        if names_now != [s["task"] for s in self.suspects] or (vetoed and vetoed != self._vetoed):
            self._event("suspects", tasks=names_now, vetoed=vetoed)
        self._vetoed = vetoed
        self.suspects = out
        if self.stats is not None:
            ev = {}
            for s in out:
                ev[s["task"]] = {
                    names.ATTR_TASK_NAME: s["task"],
                    names.ATTR_DETECTOR_VERDICT: "leak",
                    "otel_leak.leak.retained_bytes_per_call": float(s["retained_bytes_per_call"]),
                    "otel_leak.leak.confidence": float(s["confidence"]),
                    "otel_leak.leak.kind": self.kind or "unknown",
                }
                if self.sites:
                    ev[s["task"]]["otel_leak.leak.site"] = f"{self.sites[0]['file']}:{self.sites[0]['line']}"
            self.stats.suspects = ev

    def _trace_ids(self, task: str) -> list[str]:
        st = self.stats
        try:
            if st is not None and hasattr(st, "trace_ids"):
                return [t for t in st.trace_ids(task) if isinstance(t, str) and len(t) == 32][-5:]
        except Exception:
            pass
        return []

    def diagnosis(self) -> dict:
        tr = self.tier1.trend
        return {
            "verdict": self.verdict,
            "confidence": self.confidence(),
            "kind": self.kind,
            "floor_slope_bytes_per_s": round(tr.slope, 1),
            "detected_at_s": self.detected_at_s,
            "suspects": self.suspects,
            "allocation_sites": [{k: v for k, v in s.items() if k != "traceback"} for s in self.sites[:3]],
            "retention_paths": [p.get("text") for p in self.retention],
            "allocator": self.allocator,
            "pid": self.pid,
        }

    def _emit_log(self) -> None:
        try:
            d = self.diagnosis()
            top = self.suspects[0] if self.suspects else None
            site = self.sites[0] if self.sites else None
            msg = "otel-leak: memory leak (%s, confidence %.2f, floor +%.0f B/s)" % (
                d["kind"], d["confidence"], d["floor_slope_bytes_per_s"])
            if top:
                msg += "; task %r retains ~%.0f B/call" % (top["task"], top["retained_bytes_per_call"])
            if site:
                msg += "; top site %s:%s" % (site["file"], site["line"])
            extra = {
                names.LOG_DIAGNOSIS: json.dumps(d, default=str),
                names.ATTR_DETECTOR_VERDICT: self.verdict,
            }
            if top:
                extra[names.ATTR_TASK_NAME] = top["task"]
            _diag_log.warning(msg, extra=extra)
        except Exception:
            pass

    def _add_log_handler(self, logger_provider) -> None:
        if logger_provider is None or not hasattr(logger_provider, "add_log_record_processor"):
            return
        try:
            from opentelemetry.sdk._logs import LoggingHandler

            def has(lg):
                return any(isinstance(h, LoggingHandler) for h in lg.handlers)

            if has(logging.getLogger()) or has(_diag_log) or has(logging.getLogger("otel_leak")):
                return
            _diag_log.addHandler(LoggingHandler(logger_provider=logger_provider))
        except Exception:
            pass

    # ------------------------------------------------------------------ outputs
    def confidence(self) -> float:
        if self.error is not None:
            return 0.0
        c = self.tier1.confidence()
        if self.verdict == "leak" and self.sites and self.kind == "python_heap":
            c = min(0.99, c + 0.05)
        if self.verdict == "inconclusive":
            c = min(c, 0.5)
        return float(c)

    def _make_gauges(self, meter) -> None:
        """Observable gauges, per process and per suspected task type.

        Every data point carries ``process.pid`` (read at callback time, so a forked prefork child reports
        its own pid: children share their parent's resource and would otherwise collide, as in
        ``otel_leak.metrics``); per-task points also carry the task identity.
        """
        from opentelemetry.metrics import Observation

        def pid_attrs(**extra) -> dict:
            a = {names.SPAN_PID: os.getpid()}
            a.update(extra)
            return a

        def task_attrs(task: str) -> dict:
            return pid_attrs(**{names.ATTR_TASK_NAME: task})

        def verdict_cb(options):
            out = [Observation(1 if self.verdict == "leak" else 0, pid_attrs())]
            out += [Observation(1, task_attrs(s["task"])) for s in self.suspects]
            return out

        def conf_cb(options):
            out = [Observation(self.confidence(), pid_attrs(**{names.ATTR_DETECTOR_VERDICT: self.verdict}))]
            out += [Observation(s["confidence"], task_attrs(s["task"])) for s in self.suspects]
            return out

        def retained_cb(options):
            return [Observation(s["retained_bytes_per_call"], task_attrs(s["task"])) for s in self.suspects]

        def slope_cb(options):
            return [Observation(self.tier1.trend.slope, pid_attrs())] if self.tier1.windows else []

        for metric, cb in (
            (names.DETECTOR_VERDICT, verdict_cb),
            (names.DETECTOR_CONFIDENCE, conf_cb),
            (names.DETECTOR_RETAINED_PER_CALL, retained_cb),
            (names.DETECTOR_FLOOR_SLOPE, slope_cb),
        ):
            def safe(options, cb=cb):
                try:
                    return cb(options)
                except Exception:
                    return []

            self._gauges.append(
                meter.create_observable_gauge(metric.name, callbacks=[safe], unit=metric.unit, description=metric.description)
            )

    def report(self, final: bool = False) -> dict:
        with self._lock:
            last = self.last
            t1 = self.tier1
            dur = (last.t - self.start_t) if last is not None and self.start_t is not None else 0.0
            verdict = self.verdict if self.error is None else "inconclusive"
            tier2_share = self.tier2_time / dur if dur > 0 else 0.0
            counts = dict(self.stats.counts) if self.stats is not None else (dict(last.task_counts) if last else {})
            return {
                "schema": SCHEMA,
                "verdict": verdict,
                "confidence": self.confidence(),
                "detected_at_s": self.detected_at_s,
                "detected_at_tasks": self.detected_at_tasks,
                "duration_s": round(max(0.0, dur), 3),
                "tasks_observed": int(last.tasks_total) if last is not None else 0,
                "memory": {
                    "kind": self.kind if verdict == "leak" else None,
                    "rss_start_bytes": self.first_rss,
                    "rss_end_bytes": last.rss if last is not None else None,
                    "floor_slope_bytes_per_s": round(t1.trend.slope, 1) if t1.windows else None,
                    "allocator": self.allocator,
                },
                "suspects": list(self.suspects) if verdict == "leak" else [],
                "allocation_sites": list(self.sites),
                "retention_paths": list(self.retention),
                "pid": self.pid,
                "ppid": os.getppid(),
                "argv": [str(a) for a in sys.argv],
                "start_unix": self.start_unix,
                "updated_unix": time.time(),
                "final": final,
                "error": self.error,
                "task_counts": {str(k): int(v) for k, v in counts.items()},
                "trend": t1.trend.as_dict(),
                "trends": {k: v.as_dict() for k, v in t1.trends.items()},
                "tier2": {
                    "seconds": round(self.tier2_time, 3),
                    "share": round(tier2_share, 4),
                    "runs": list(self.tier2_runs),
                },
                "series": self.series.as_dict(),
                "events": list(self.events),
            }

    def write_report(self, final: bool = False) -> str | None:
        if not self.report_dir:
            return None
        path = os.path.join(self.report_dir, f"{os.getpid()}.json")
        try:
            write_atomic(path, self.report(final=final))
            return path
        except Exception as exc:
            if not self.write_error_logged:
                self.write_error_logged = True
                _log.warning("otel-leak: cannot write the report %s (%s)", path, exc)
            return None

    def _at_exit(self) -> None:
        try:
            if os.getpid() != self.pid:
                return
            th = self.tier2_thread
            if th is not None:
                th.stop_event.set()
                th.join(timeout=2.0)
            if self.sampler is not None and not self._stopped:
                s = self.sampler.sample()
                if s is not None:
                    with self._lock:
                        if self.error is None:
                            self._on_sample(s)
            self.write_report(final=True)
        except Exception:
            pass

    def stop(self) -> None:
        """Detach: stop listening, end a running tier-2 window, write the final report."""
        try:
            if self.sampler is not None:
                self.sampler.remove_listener(self.on_sample)
            self._at_exit()
            self._stopped = True
            self._set_interval(self.base_interval)
        except Exception:
            pass
