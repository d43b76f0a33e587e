"""The embedded detector: the coordinator of the parts, on the sampler's thread (a listener) plus one
short-lived thread per tier-2 window or attribution burst.

It feeds tier 1, declares the leak, starts bursts and tier-2 windows and keeps the state the outputs read;
the decisions are in ``cadence``, ``allocator``, ``suspects``, ``scheduling``, ``burst`` and ``outputs``.
Nothing here raises into the worker: every entry point catches, and an internal failure turns the verdict
into ``inconclusive`` (with the error in the report) instead.
"""

from __future__ import annotations

import atexit
import itertools
import collections
import gc
import logging
import os
import sys
import threading
import time

from otel_leak import config
from otel_leak.detector import burst, outputs, scheduling
from otel_leak.detector import settings as S
from otel_leak.detector import suspects as SU
from otel_leak.detector import tier2 as T2
from otel_leak.detector.allocator import AllocatorReader
from otel_leak.detector.bounded import BoundedFills
from otel_leak.detector.cadence import Cadence
from otel_leak.detector.fullgc import FullCollections
from otel_leak.detector.outputs import Series
from otel_leak.detector.tier1 import Tier1

# The parts' constants, also importable from this module (as `detector.FAST_INTERVAL` etc.).
from otel_leak.detector.allocator import MALLINFO_BURST, MALLINFO_DUTY  # noqa: F401
from otel_leak.detector.cadence import FAST_INTERVAL, PROBE_INTERVAL, RATE_HORIZON, TASKS_PER_SAMPLE  # noqa: F401
from otel_leak.detector.outputs import MAX_SERIES, Series as _Series  # noqa: F401
from otel_leak.detector.scheduling import TIER2_MIN_WINDOW, TIER2_TASKS  # noqa: F401
from otel_leak.detector.suspects import MAX_SUSPECTS, T1_MIN_T, T2_MIN_T, TIER2_WAIT  # noqa: F401

_log = logging.getLogger("otel_leak")
_DISPATCH_IDS = itertools.count(1)

MAX_EVENTS = 64
KEPT_RUNS = 16  # tier-2 run records kept (the first and the latest)


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
        self._full_interval = config.get(S.FULL_GC_INTERVAL, env)
        self._celery_hooked = False
        self.celery_dispatch_uid: str | None = None
        base = getattr(sampler, "interval", None)
        self.base_interval: float | None = float(base) if isinstance(base, (int, float)) and base > 0 else None
        self._reset()
        self._stopped = False
        self._gauges = outputs.make_gauges(meter, self) if meter is not None else []
        outputs.add_log_handler(logger_provider)
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
            # first detector of the process connected, and alive, forever). A dispatch_uid of its own: Celery
            # 5.6 keys a receiver without one by the id of the bound-method object, a temporary whose id the
            # next detector's bound method can reuse, and then drops that second connection.
            self.celery_dispatch_uid = f"otel-leak-detector-{next(_DISPATCH_IDS)}"
            sig.connect(self._on_worker_process_shutdown, weak=True, dispatch_uid=self.celery_dispatch_uid)
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
        self._profile_cache = None  # (monotonic time, profile) of the last report (detector.profile)
        self.first_rss: int | None = None
        self._bounded = BoundedFills()
        self.tier1 = Tier1(**self._t1_kwargs, hold=self._hold)
        self.series = Series()
        self.recent_rss: collections.deque[int] = collections.deque(maxlen=5)
        self.events: collections.deque[dict] = collections.deque(maxlen=MAX_EVENTS)
        self.error: str | None = None
        self._final_written = False
        self.verdict = "inconclusive"
        self.detected_at_s: float | None = None
        self.detected_at_tasks: int | None = None
        self.suspects: list[dict] = []
        self.sites: list[dict] = []
        self.retention: list[dict] = []
        self.kind: str | None = None
        self.allocator: dict | None = None  # the allocator trend, as reported
        self.tier2_runs: list[dict] = []
        self.tier2_time = 0.0
        self.tier2_thread: T2.Tier2Thread | None = None
        self.last_tier2_end = -1e18
        self._burst: threading.Event | None = None
        self._alloc = AllocatorReader()
        if getattr(self, "_full", None) is None:  # kept across a fork: the child's callback is already in place
            self._full = FullCollections(min_interval=self._full_interval)
            self._full.install()
        self.last_write = -1e18
        self.write_error_logged = False
        self._t1_attr = []
        self._vetoed: list[str] = []
        self._held = False
        self._tier2_res = None  # the latest informative tier-2 result
        self._tier2_seen = False
        # The start (attach or fork) is the first rate reference: the sampler was usually started before the
        # detector attached and is already waiting out its first interval, so the first sample the detector
        # sees can give the task rate at once instead of a probe interval later.
        self._cadence = Cadence(self.base_interval, time.monotonic(), int(getattr(self.stats, "total", 0) or 0))

    # Tasks per second over the last second of samples; allocator readings off (no glibc, or switched off,
    # e.g. for synthetic samples). Both settable.
    task_rate = property(lambda self: self._cadence.rate, lambda self, v: setattr(self._cadence, "rate", v))
    _mi_off = property(lambda self: self._alloc.off, lambda self, v: setattr(self._alloc, "off", v))

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
        th = self.tier2_thread
        ours = th is not None and not getattr(th, "user_tracing", True)
        c0 = time.thread_time() if ours else 0.0
        try:
            with self._lock:
                if self.error is None and not self._stopped:
                    self._on_sample(s)
        except Exception as exc:
            self._fail("tier 1", exc)
        if ours:
            # While our own tier-2 window traces, every allocation of this thread takes a traceback (each float
            # of the trend statistics: a 0.2 ms evaluation takes 30 ms). That cost is tier 2's, which has its
            # own budget (its duration); charged to the tick budget, it stalled the sampler for 30-40 s.
            exempt = getattr(self.sampler, "exempt", None)
            if exempt is not None:
                exempt(time.thread_time() - c0)
        try:
            if self.report_dir and s.t - self.last_write >= self.report_interval:
                self.last_write = s.t
                self.write_report()
        except Exception:
            pass

    def _set_interval(self, value: float | None) -> None:
        if self.sampler is not None and value is not None and self.base_interval is not None:
            self.sampler.interval = self._cadence.bounded(value)

    def _on_sample(self, s) -> None:
        if self.start_t is None:
            self.start_t = s.t
            self.first_rss = s.rss
        if self.base_interval is not None and self.sampler is not None:
            self._set_interval(self._cadence.observe(s.t, s.tasks_total, self.sampler.interval))
        self.last = s
        self.recent_rss.append(s.rss)
        self.series.add(s.t - self.start_t, s.rss, min(self.recent_rss), s.heap_blocks)
        t1 = self.tier1
        was = t1.declared
        mi = self._malloc(s.t)
        closed = t1.add(s, mi[0] if mi is not None else None)
        if closed:
            if mi is not None:
                self._alloc.record(s.t, mi)
            if not t1.declared:
                self._bounded_call(self._bounded.look)  # bounded holders' fill at each window close
            if t1.trend.candidate and not was and not t1.declared:
                self._event("suspicion", trend=t1.trend.as_dict())
                self._young_collect()
                self._start_burst()
        if t1.declared and not was:
            self._declare(s)
        elif closed and self.verdict == "leak" and not self.suspects and not self._held and not t1.contaminating:
            self._reattribute()
        if self.verdict != "leak":
            self.verdict = "no_leak" if len(t1.windows) >= t1.min_windows else "inconclusive"
        elif self._held and not self._tier2_pending():
            self._update_suspects()  # tier 2 never answered: tier 1's significant suspects stand
        if t1.declared and self.tier2_enabled and self.tier2_thread is None:
            self._maybe_tier2(s)

    def _bounded_call(self, fn, *args):
        """``fn(*args)`` of the bounded holders. A search for new holders it makes is budgeted by ``bounded``
        itself (a share of the time) and exempted from the sampler's tick budget, which would otherwise hold
        the next samples back for a hundred times its cost."""
        searches = self._bounded.searches
        try:
            return fn(*args)
        finally:
            exempt = getattr(self.sampler, "exempt", None)
            if exempt is not None and self._bounded.searches != searches:
                exempt(self._bounded.cost)

    def _hold(self, trend, since: float) -> str | None:
        """Tier 1's last question before it declares: do bounded holders' new entries explain the growth?"""
        try:
            why = self._bounded_call(self._bounded.explains, trend.growth, since)
        except Exception as exc:  # a look that fails never holds a verdict back
            self._event("error", detail=f"bounded holders: {type(exc).__name__}: {exc}")
            return None
        if why and not self.tier1.held:  # once per hold, not at every window it lasts
            self._event("bounded_fill", reason=why)
        return why

    def _malloc(self, now: float):
        """glibc in-use/free bytes, read as often as the allocator-walk budget allows (the walk's cost is
        exempted from the sampler's tick budget: it is budgeted there)."""
        return self._alloc.read(now, getattr(self.sampler, "exempt", None))

    def _young_collect(self) -> None:
        """On suspicion, make sure the growth has been through a full collection before it is confirmed.

        When no full collection ran since the trend's first window (cyclic garbage that reached the oldest
        generation waits for one), one is forced, within :mod:`~otel_leak.detector.fullgc`'s pause budget;
        otherwise (or when the budget does not allow it) the young generations are collected, which is
        always cheap. The next window must show the growth survived. Skipped when the application disabled
        the collector (then cyclic garbage is never freed: it is a leak)."""
        if not gc.isenabled():
            return
        t0 = time.perf_counter()
        ws = self.tier1.windows
        tr = self.tier1.trend
        since = tr.t0 if tr.long else ws[max(0, len(ws) - self.tier1.trend_len())].t0 if ws else None
        full = since is not None and not self._full.since(since) and self._full.may_force()
        # How much of the growth the collection handed back to the allocator. Its two readings are charged
        # to the sampler's tick budget, not to the walk budget: a debt there would delay the next window's
        # reading, which confirms or vetoes. A forced full collection is budgeted by ``fullgc`` (its interval
        # and pause share) and exempted here: charged to the tick budget, a 30 ms collection would stall the
        # sampler for seconds, just when the next windows must confirm or veto the suspicion.
        freed = self._alloc.freed_by(self._force_full if full else lambda: gc.collect(1))
        self.tier1.note_collect(freed)
        self._event("full_gc" if full else "young_gc", duration_s=round(time.perf_counter() - t0, 4),
                    freed_bytes=freed)

    def _force_full(self) -> None:
        pause = self._full.force()
        exempt = getattr(self.sampler, "exempt", None)
        if exempt is not None:
            exempt(pause)

    def _start_burst(self) -> None:
        """On suspicion: a few seconds of cheap ~20 Hz rows for the attribution regression (see ``burst``)."""
        if self._burst is not None or self.stats is None or self.sampler is None:
            return
        self._burst = stop = threading.Event()
        alloc = self._alloc
        if not burst.start(stop, self.sampler, self.stats, lambda: alloc.read_outside_budget(cheap_only=True),
                           self._burst_rows):
            self._burst = None

    def _burst_rows(self, stop: threading.Event, rows: list[tuple]) -> None:
        """On the burst's thread: its rows go to tier 1 unless a tier-2 window or a fork came in between."""
        with self._lock:
            tier1 = self.tier1
            if self._burst is stop and not tier1.contaminating:
                tier1.add_rows(rows)
                self._event("attribution_burst", rows=len(rows))
                if tier1.declared:
                    self._t1_attr = tier1.attribute()
                    self._update_suspects()

    def _declare(self, s) -> None:
        t1 = self.tier1
        self.verdict = "leak"
        self.detected_at_s = round(t1.declared_t - self.start_t, 3)
        self.detected_at_tasks = t1.declared_tasks
        self._t1_attr = t1.attribute()
        self._classify()
        self._event("leak_declared", trend=t1.trend.as_dict(), tasks=t1.declared_tasks,
                    attribution=outputs.attribution_brief(self._t1_attr))
        self._update_suspects()
        outputs.emit_log(self)

    def _reattribute(self) -> None:
        """A declared leak that names no task yet: tier 1's regression again, over the rows gathered since
        (at the declaration it had the few hundred tasks the trend needed; the rows keep coming, and a leaker
        amid large transient allocations or interleaved coroutines needs more of them to stand out). Runs at
        a window close, over at most MAX_INCREMENTS rows, only while no suspect is named."""
        self._t1_attr = self.tier1.attribute()
        self._update_suspects()
        if self.suspects:
            self._event("reattributed", tasks=[x["task"] for x in self.suspects],
                        attribution=outputs.attribution_brief(self._t1_attr))

    def _classify(self, res: T2.Tier2Result | None = None) -> None:
        """The allocator trend and the kind of memory that grows, from tier 1 or from a tier-2 window."""
        trend = self.tier1.trend
        self.allocator = self._alloc.trend(trend.slope)
        if res is None:
            self.kind = SU.kind_from_tier1(trend)
        else:
            self.kind = SU.kind_from_tier2(res, trend.slope, scheduling.windows_rate(self.tier1.windows), self.kind)

    # ------------------------------------------------------------------ tier 2
    def _tier2_window(self) -> float:
        rate = max(self.task_rate, scheduling.windows_rate(self.tier1.windows))
        return scheduling.window_length(rate, self.tier2_window)

    def _tier2_cost(self, w: float) -> float:
        return scheduling.window_cost(w, self.tier2_runs[-1] if self.tier2_runs else None)

    def _maybe_tier2(self, s) -> None:
        w = self._tier2_window()
        first = not self.tier2_runs
        if not scheduling.should_start(w, self.tier2_runs, self.tier2_time, self.tier2_share,
                                       age=s.t - self.start_t, since_end=s.t - self.last_tier2_end):
            return
        self.tier1.contaminate(True)
        self._event("tier2_start", window_s=w)
        th = T2.Tier2Thread(self.stats, self._tier2_done, window=w, frames=self.tier2_frames,
                            tier3=self.tier3_enabled and first, tier3_budget=self.tier3_budget)
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
                run = outputs.tier2_run(res, self.start_t)
                self.tier2_runs.append(run)
                if len(self.tier2_runs) > KEPT_RUNS:
                    del self.tier2_runs[1:2]
                self._event("tier2_end", **{k: v for k, v in run.items() if k != "t_s"})
                if res.error is None:
                    if res.informative:  # a window of too few tasks leaves the kind and the suspects as they were
                        self._tier2_res = res
                        self._tier2_seen = True
                        self._classify(res)
                    if res.sites:
                        self.sites = res.sites
                    if res.retention_paths:
                        self.retention = res.retention_paths
                    self._update_suspects()
                    outputs.emit_log(self)
                elif self.verdict == "leak":
                    self._update_suspects()  # no confirmation coming from this window: tier 1 stands
        except Exception as exc:
            self._fail("tier 2", exc)
        # The window's suspects, sites and paths go to the process file now: the sampler's next tick may be
        # many seconds away (a costly tick waits for its CPU budget), and a prefork child leaves through
        # os._exit with its last write.
        if self.report_dir and not self._stopped:
            self.write_report()

    # ------------------------------------------------------------------ suspects
    def _tier2_pending(self) -> bool:
        now = self.last.t if self.last is not None else None
        # A window of too few tasks is no answer: tier 1 waits for an informative one, up to TIER2_WAIT
        # seconds after the declaration; a failing window ends the wait.
        failed = self.error is not None or any(r.get("error") for r in self.tier2_runs)
        return SU.tier2_pending(self.tier2_enabled, self._tier2_seen, failed,
                                self.tier1.declared_t, now)

    def _update_suspects(self) -> None:
        """Suspects from the attributions so far (see ``suspects.merge``), as an event when they change and
        as span-event attributes for the processor."""
        res = getattr(self, "_tier2_res", None)
        counts = dict(self.stats.counts) if self.stats is not None else {}
        out, vetoed, self._held = SU.merge(self._t1_attr, res, self.kind, counts,
                                           pending=res is None and self._tier2_pending(),
                                           trace_ids=lambda task: SU.trace_ids_of(self.stats, task))
        names_now = [s["task"] for s in out]
        if names_now != [s["task"] for s in self.suspects] or (vetoed and vetoed != self._vetoed):
            self._event("suspects", tasks=names_now, vetoed=vetoed)
        self._vetoed = vetoed
        self.suspects = out
        if self.stats is not None:
            pat = outputs.pattern(self)
            self.stats.suspects = SU.span_attributes(out, self.kind, self.sites, pat and pat["pattern"])

    # ------------------------------------------------------------------ outputs
    def confidence(self) -> float:
        return outputs.confidence(self)

    def diagnosis(self) -> dict:
        return outputs.diagnosis(self)

    def report(self, final: bool = False) -> dict:
        with self._lock:
            return outputs.build_report(self, final)

    def write_report(self, final: bool = False) -> str | None:
        """The process file; once the final one is written, no periodic write (the sampler's or tier 2's
        thread, mid-write as the process exits) may replace it."""
        with self._lock:
            if self._final_written and not final:
                return None
            path = outputs.write_report(self, final)
            if final and path is not None:
                self._final_written = True
            return path

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
            self._full.uninstall()
            self._set_interval(self.base_interval)
        except Exception:
            pass
