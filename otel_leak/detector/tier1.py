"""Tier 1: the always-on trend check on the memory floor (attribution: :mod:`~otel_leak.detector.attribution`).

Pure computation on the sampler's :class:`~otel_leak.sampler.Sample` stream (duck-typed: ``t``, ``rss``,
``heap_blocks``, ``task_counts``, ``tasks_total``), so it is unit-tested on synthetic series.

Windows adapt to the task rate: a window closes once it has at least ``min_samples`` samples, lasted
MIN_WINDOW_S seconds *and* has ``min_tasks`` completed tasks (or ``idle_window`` seconds passed). The
detector also adapts the sampler's interval to the task rate (about 15 tasks a sample, between 0.05 s and
the configured interval): at 300 tasks/s a window is MIN_WINDOW_S (~225 tasks); at one task a minute the
sampler keeps its configured interval and a window stretches to ``min_tasks`` minutes. The same defaults
serve both, and TREND_WINDOWS windows always span at least TREND_WINDOWS * MIN_WINDOW_S seconds.

Per window the floor is the lowest resident memory seen in it (a GC sawtooth does not raise the lowest
point). Window-to-window floor increments build a *level* series (increments across a window that tier 2
contaminated with tracemalloc's own memory are dropped). A leak is declared when, over the recent windows,

* the trend covers at least 10 s *and* 400 tasks (or 12 s, for a slow worker): growth that lasts only
  seconds is a fill, not a leak (a cache or pool taking its first entries grows as steadily as a leak
  until it is full, and such fills last seconds: a fast worker's 400 tasks take half of one); a
  task-driven pattern such as a GC cycle shows itself within a few hundred tasks (from 40 tasks/s up,
  the 10 s govern),
* the level has a monotone trend (Mann–Kendall tau and z),
* its robust (Theil–Sen) slope times the span is above an absolute and relative growth threshold,
* the growth is spread over the windows (no single increment holds most of it, and at least four windows
  each carry a sizeable step of it: rejects one-off steps, staircases of a few bursts,
  lazy imports, tables loaded once, allocator retention that jumps then plateaus),
* it is not decaying (the recent slope keeps up with the earlier one: rejects warm-up caches that level off),
* it is not decelerating (a quadratic fit's curvature is not significantly negative with the slope at the
  end below DECEL_RATIO of the slope at the start: a cache filling with random keys slows as it fills; a
  leak keeps its pace), over the trend nor over the whole kept history once that is longer (where the
  slowing of a long fill shows first; a leak after a warm-up fill keeps its pace over the trend, and the
  history vetoes only a trend whose own pace falls too),
* it is not saturating (no bounded fill explains the level clearly better than a straight line: rejects
  caches still filling with random keys, whose growth slows as they fill),
* for resident memory: the collections the detector forces on suspicion (a full one when none ran since
  the growth began, see ``fullgc``) did not free (in the
  allocator's in-use bytes) half of the growth or more (resident memory keeps the pages of freed garbage,
  so a long GC period looks like a steady climb there; only the allocator can tell),

and all of that holds at two consecutive window closes (confirmation over more than one window). The trend
is evaluated on the last 16 windows and, once more windows are kept, also on all kept windows (up to 64)
merged a few to a point, so short windows (a fast worker) do not shorten the span a slow leak is seen over;
a coarse candidate must hold, on the same signal, until a whole new coarse point has come in. Once windows
have been dropped, the trend is also evaluated on the whole run (``horizon``: every window since start-up,
in a bounded number of points), so a leak too slow to retain the growth threshold within the kept windows
(a few KiB a second on a busy worker) is declared once it has retained it, however long that takes.

Attribution (which task types the growth belongs to) is :mod:`~otel_leak.detector.attribution`.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass, field

from otel_leak.detector import robust
from otel_leak.detector.attribution import Attribution, regress
from otel_leak.detector.horizon import LongHistory, merge

PAGE = 4096
MAX_WINDOWS = 64  # kept closed windows (bounded: memory does not grow with tasks or time)
TREND_WINDOWS = 16  # windows a trend is evaluated on
MIN_STEPS = 4  # windows that must each carry a sizeable part of the growth
SATURATION_RATIO = 0.5  # a bounded fill's residuals below this share of a line's: the growth saturates
LEVEL_OFF = 0.5  # recent half's slope below this share of the earlier slope: the growth is levelling off
DECEL_RATIO = 0.75  # the fitted slope at the trend's end below this share of that at its start...
DECEL_T = 2.0  # ...with the curvature this many standard errors below zero: the growth is decelerating
HISTORY_MIN_WINDOWS = 24  # the history vetoes a trend once it is half as long again as one...
RECENT_DECEL = 0.9  # ...and the trend's own pace falls below this share
MIN_WINDOW_S = 0.75  # a window lasts at least this long (a trend of TREND_WINDOWS windows spans >= 11 s)
MAX_INCREMENTS = 400  # per-sample increments kept for the regression


@dataclass
class Window:
    t0: float
    t1: float = 0.0
    samples: int = 0
    rss_min: int = 0
    heap_min: int = 0
    used_min: int | None = None  # malloc in-use bytes (glibc), when the allocator tells
    tasks: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    contaminated: bool = False
    # Levels: cumulative floor increments, dropping the increments tier 2 contaminated.
    level: float = 0.0
    heap_level: float = 0.0
    used_level: float = 0.0


@dataclass
class Trend:
    signal: str = "rss"
    windows: int = 0
    tau: float = 0.0
    z: float = 0.0
    slope: float = 0.0  # bytes/s of the floor level
    slope_recent: float = 0.0
    slope_early: float = 0.0
    growth: float = 0.0  # slope * span
    spread: float = 0.0  # largest increment / total positive increments
    heap_tau: float = 0.0
    heap_slope: float = 0.0  # blocks/s
    candidate: bool = False
    reasons: list[str] = field(default_factory=list)
    scale: int = 1  # windows merged per trend point (1: the fine scale)
    saturation: float = 1.0  # residuals of the best bounded fill / those of a straight line
    decel: float = 1.0  # fitted slope at the trend's end / at its start (robust.curvature)
    steps: int = 0  # increments of at least a quarter of the largest one
    long: bool = False  # evaluated on the long history (the whole run, see ``horizon``)
    t0: float = 0.0  # start of the first window the trend covers

    def as_dict(self) -> dict:
        return {
            "signal": self.signal,
            "windows": self.windows,
            "tau": round(self.tau, 3),
            "z": round(self.z, 2),
            "slope_bytes_per_s": round(self.slope, 1),
            "slope_recent_bytes_per_s": round(self.slope_recent, 1),
            "growth_bytes": round(self.growth),
            "spread": round(self.spread, 3),
            "heap_tau": round(self.heap_tau, 3),
            "heap_slope_blocks_per_s": round(self.heap_slope, 2),
            "candidate": self.candidate,
            "reasons": list(self.reasons),
            "scale": self.scale,
            "saturation": round(self.saturation, 3),
            "decel": round(self.decel, 3),
            "steps": self.steps,
            "long": self.long,
        }


class Tier1:
    def __init__(
        self,
        *,
        min_samples: int = 3,
        min_tasks: int = 12,
        idle_window: float = 120.0,
        min_windows: int = 5,
        min_growth: int = 2 * 1024 * 1024,
        rel_growth: float = 0.02,
        min_span_tasks: int = 400,
        min_span_s: float = 10.0,
        slow_span_s: float = 12.0,
        hold=None,
    ) -> None:
        # ``hold(trend, since)``: asked when a trend (its span starting at ``since``) is about to be declared;
        # a reason not to (the growth is explained by something that stops by itself, see ``bounded``), or None
        self.hold = hold
        self.held: str | None = None  # the last reason ``hold`` gave
        self.min_span_tasks = min_span_tasks
        self.min_span_s = min_span_s
        self.slow_span_s = slow_span_s
        self.min_samples = min_samples
        self.min_tasks = min_tasks
        self.idle_window = idle_window
        self.min_windows = min_windows
        self.min_growth = min_growth
        self.rel_growth = rel_growth
        self.windows: collections.deque[Window] = collections.deque(maxlen=MAX_WINDOWS)
        # (dt, d_rss, d_heap_blocks, d_used or None, task-count deltas, contaminated)
        self.increments: collections.deque[tuple] = collections.deque(maxlen=MAX_INCREMENTS)
        # (task-count deltas, allocator in-use delta, contaminated) between consecutive allocator readings
        self.used_rows: collections.deque[tuple] = collections.deque(maxlen=MAX_INCREMENTS)
        self._used_acc: dict[str, int] = {}
        self._used_dirty = False
        self._used_last: int | None = None
        self.cur: Window | None = None
        self.prev = None  # previous sample
        self.prev_used: int | None = None
        self.start_t: float | None = None
        self.closed = 0  # windows closed so far (including dropped ones)
        self.trend = Trend()  # the trend of the signal that matters most right now
        self.trends: dict[str, Trend] = {}
        self.candidate_streak = 0
        self.coarse: dict[str, Trend] = {}  # the last coarse-scale evaluation, per signal
        self.fine: dict[str, Trend] = {}  # the last fine-scale evaluation, per signal
        self.streaks: dict[str, int] = {}  # consecutive fine candidates, per signal
        self.used_ref: tuple[int, float] | None = None  # (used_min, used_level) of the last window with a reading
        self.coarse_streaks: dict[str, int] = {}  # consecutive coarse candidates, per signal
        self.long = LongHistory()  # the whole run's floor, bounded (a leak too slow for the kept windows)
        self.long_trends: dict[str, Trend] = {}  # the last evaluation on it, per signal
        self.long_streaks: dict[str, int] = {}  # consecutive candidates there, per signal
        self.declared = False
        self.declared_t: float | None = None
        self.declared_tasks: int | None = None
        self.declared_signal: str | None = None
        self.contaminate_until = -math.inf
        self.contaminating = False
        self.tasks_total = 0
        self.gc_check: dict[str, float] | None = None  # levels before a forced young collection
        self.collections: collections.deque[tuple[float, int]] = collections.deque(maxlen=64)  # (t, freed)

    # ------------------------------------------------------------------ feeding
    def contaminate(self, active: bool, until: float | None = None) -> None:
        """Tier 2 is (or stops being) active: its tracemalloc memory must not count as growth."""
        self.contaminating = active
        if until is not None:
            self.contaminate_until = max(self.contaminate_until, until)
        if active and self.cur is not None:
            self.cur.contaminated = True

    def note_collect(self, freed: int | None = None) -> None:
        """A young-generation collection was forced: the next window must keep the growth.

        ``freed``: the allocator's in-use bytes it gave back (read just before and after), when known.
        Resident memory does not fall when garbage is freed (the allocator keeps the pages), so a
        resident-memory trend over which forced collections freed at least half of its growth is the
        high-water mark of cyclic garbage, not memory held by live objects (see :meth:`evaluate`)."""
        if self.windows:
            w = self.windows[-1]
            self.gc_check = {"rss": w.level, "used": w.used_level}
        if freed is not None and self.prev is not None:
            self.collections.append((self.prev.t, freed))

    def add(self, s, used: int | None = None) -> bool:
        """Feed one sample (and the allocator's in-use bytes, if known); True when a window closed."""
        t = s.t
        if self.start_t is None:
            self.start_t = t
        prev = self.prev
        prev_used = self.prev_used
        self.prev = s
        self.prev_used = used
        self.tasks_total = s.tasks_total
        dirty = self.contaminating or t <= self.contaminate_until
        dcounts: dict[str, int] = {}
        if prev is not None:
            pc = prev.task_counts
            for k, v in s.task_counts.items():
                d = v - pc.get(k, 0)
                if d > 0:
                    dcounts[k] = d
            dirty_inc = dirty or (prev.t <= self.contaminate_until)
            du = (used - prev_used) if (used is not None and prev_used is not None) else None
            self.increments.append(
                (t - prev.t, s.rss - prev.rss, s.heap_blocks - prev.heap_blocks, du, dcounts, dirty_inc)
            )
            # Allocator rows run from one allocator reading to the next (readings are budgeted, so they may
            # skip samples): the task counts in between are summed, nothing is lost.
            acc = self._used_acc
            for k, d in dcounts.items():
                acc[k] = acc.get(k, 0) + d
            self._used_dirty = self._used_dirty or dirty_inc
        if used is not None:
            if self._used_last is not None and self._used_acc:
                self.used_rows.append((self._used_acc, used - self._used_last, self._used_dirty))
            self._used_acc, self._used_dirty, self._used_last = {}, False, used
        w = self.cur
        if w is None:
            w = self.cur = Window(t0=t, rss_min=s.rss, heap_min=s.heap_blocks, used_min=used)
        w.t1 = t
        w.samples += 1
        if s.rss < w.rss_min:
            w.rss_min = s.rss
        if s.heap_blocks < w.heap_min:
            w.heap_min = s.heap_blocks
        if used is not None and (w.used_min is None or used < w.used_min):
            w.used_min = used
        for k, d in dcounts.items():
            w.counts[k] = w.counts.get(k, 0) + d
            w.tasks += d
        if dirty:
            w.contaminated = True
        if w.samples >= self.min_samples and t - w.t0 >= MIN_WINDOW_S and (
                w.tasks >= self.min_tasks or t - w.t0 >= self.idle_window):
            self._close(w)
            return True
        return False

    def _close(self, w: Window) -> None:
        self.cur = None
        self.closed += 1
        if self.closed == 1:
            return  # the first window is start-up (imports, first-task allocations): never part of a trend
        last = self.windows[-1] if self.windows else None
        if last is None:
            pass
        elif w.contaminated or last.contaminated:
            w.level, w.heap_level, w.used_level = last.level, last.heap_level, last.used_level
            self.used_ref = None  # tracemalloc's memory is in the allocator's bytes: start a new reference
        else:
            w.level = last.level + (w.rss_min - last.rss_min)
            w.heap_level = last.heap_level + (w.heap_min - last.heap_min)
            # The allocator is read at most every so often (its cost is budgeted): a window without a reading
            # carries the level, and the next reading is compared with the last window that had one.
            ref = self.used_ref
            w.used_level = last.used_level
            if w.used_min is not None and ref is not None:
                w.used_level = ref[1] + (w.used_min - ref[0])
        if w.used_min is not None:
            self.used_ref = (w.used_min, w.used_level)
        self.windows.append(w)
        long_point = self.long.add(w)
        if self.declared and self.closed % 4:
            return  # declared for good: the trend is only shown from now on, refresh it every 4th window
        fine = {"rss": self.evaluate("rss")}
        fresh = {"rss"}  # signals evaluated at this close (a window without an allocator reading carries it)
        if w.used_min is not None:
            fine["used"] = self.evaluate("used")
            fresh.add("used")
        elif "used" in self.fine:
            fine["used"] = self.fine["used"]
        self.fine = fine
        # Coarse scale: once more than TREND_WINDOWS windows exist, also look at the whole kept history
        # (up to MAX_WINDOWS) merged k windows to a point, so a slow leak is seen over a long enough span
        # even when windows are short (a fast worker's sampler ticks every 0.05 s). Evaluated when a new
        # coarse point completes (every k closes); a coarse candidate is confirmed by the next evaluation.
        k = -(-len(self.windows) // TREND_WINDOWS)
        if k < 2:
            self.coarse, self.coarse_streaks = {}, {}
        elif self.closed % k == 0:
            pts = self._coarse(k)
            self.coarse = {name: self.evaluate(name, pts) for name in fine}
            for name, tr in self.coarse.items():
                tr.scale = k
                self.coarse_streaks[name] = self.coarse_streaks.get(name, 0) + 1 if tr.candidate else 0
        # Long scale: the whole run (see ``horizon``), once it covers more than the kept windows; evaluated when a
        # new point completes and confirmed by the next one, like the coarse scale.
        if long_point and self.long.windows > MAX_WINDOWS:
            self.long_trends = {name: self.evaluate(name, self.long.points) for name in fine}
            for name, tr in self.long_trends.items():
                tr.scale, tr.long = self.long.k, True
                self.long_streaks[name] = self.long_streaks.get(name, 0) + 1 if tr.candidate else 0

        def pick(name: str, tr: Trend) -> Trend:
            for other in (self.coarse.get(name), self.long_trends.get(name)):
                if not tr.candidate and other is not None and other.candidate:
                    return other
            return tr

        self.trends = {name: pick(name, tr) for name, tr in fine.items()}
        if not self.declared:
            for tr in self.trends.values():
                veto = self._history_decelerates(tr.decel) if tr.candidate and tr.scale == 1 else None
                if veto:
                    tr.candidate = False
                    tr.reasons.append(veto)
        check, self.gc_check = self.gc_check, None
        if check is not None and not w.contaminated:
            for name, tr in self.trends.items():
                lvl = w.level if name == "rss" else w.used_level
                tol = 0.5 * max(0.0, tr.slope) * max(1e-9, w.t1 - w.t0)
                if tr.candidate and lvl < check[name] - tol:
                    tr.candidate = False
                    tr.reasons.append("growth did not survive a garbage collection")
                    if tr.long:
                        self.long_streaks[name] = 0
                    elif tr.scale > 1:
                        self.coarse_streaks[name] = 0
        # Allocator in-use bytes first: exact accounting, charged to the task that holds the memory (resident
        # memory lands on whichever task first touches fresh pages, e.g. after another freed a chunk).
        cands = [tr for name, tr in sorted(self.trends.items(), key=lambda kv: kv[0] != "used") if tr.candidate]
        # The trend shown: a candidate if any, else resident memory.
        self.trend = cands[0] if cands else self.trends["rss"]
        # Per signal: consecutive evaluations with a fine candidate (a carried trend neither adds nor resets).
        for name in fresh:
            tr = self.trends[name]
            self.streaks[name] = self.streaks.get(name, 0) + 1 if tr.candidate and tr.scale == 1 else 0
        self.candidate_streak = max(self.streaks.values(), default=0)
        # Confirmation: a fine candidate holds at the next window close; a coarse one at the next coarse point
        # (the same signal both times).
        coarse_ok = any(tr.candidate and tr.scale > 1 and (self.long_streaks if tr.long else self.coarse_streaks).get(
            tr.signal, 0) >= 2 for tr in cands)
        if not self.declared and (self.candidate_streak >= 2 or coarse_ok):
            n = min(len(self.windows), max(1, self.trend.windows) * max(1, self.trend.scale))
            since = self.trend.t0 if self.trend.long else self.windows[-n].t0
            why = self.hold(self.trend, since) if self.hold is not None else None
            self.held = why
            if why:
                self.trend.candidate = False
                self.trend.reasons.append(why)
                return
            self.declared = True
            self.declared_t = w.t1
            self.declared_tasks = self.tasks_total
            self.declared_signal = self.trend.signal

    def _history_decelerates(self, trend_decel: float) -> str | None:
        """Whether the kept history, longer than a trend, decelerates where the trend alone could not tell:
        a cache filling with random keys looks steady over a trend's seconds long before its slowing shows
        over the history. A leak after a warm-up fill is not vetoed: its trend keeps its own pace (the
        veto needs the trend's pace to fall too, below RECENT_DECEL)."""
        ws = list(self.windows)
        if len(ws) < HISTORY_MIN_WINDOWS or trend_decel >= RECENT_DECEL:
            return None
        ts = [(w.t0 + w.t1) / 2 for w in ws]
        decel, t_c = robust.curvature(ts, [w.level for w in ws])
        if decel < DECEL_RATIO and t_c <= -DECEL_T:
            return (f"the growth decelerates over the last {ts[-1] - ts[0]:.0f} s (its pace fell to "
                    f"{max(0.0, decel):.0%}, curvature t={t_c:.1f})")
        return None

    def _coarse(self, k: int) -> list[Window]:
        """The kept windows merged ``k`` to a point (aligned on the newest): floors are the lowest levels."""
        ws = list(self.windows)
        ws = ws[len(ws) % k:]
        out = [merge(ws[i:i + k]) for i in range(0, len(ws), k)]
        return out[-TREND_WINDOWS:]

    # ------------------------------------------------------------------ trend
    def trend_len(self) -> int:
        """Windows the current trend covers (the coarse scale merges ``scale`` windows to a point)."""
        return TREND_WINDOWS * max(1, self.trend.scale)

    def evaluate(self, signal: str = "rss", ws: list[Window] | None = None) -> Trend:
        if ws is None:
            ws = list(self.windows)[-TREND_WINDOWS:]
        tr = Trend(signal=signal, windows=len(self.windows))
        tasks_before = 0
        if signal == "used":
            # Only the windows that had an allocator reading are points of this trend (readings are budgeted
            # and may skip windows); the tasks of the windows in between still count for the span.
            pts = []
            for w in ws:
                if w.used_min is not None:
                    pts.append(w)
                elif pts:
                    tasks_before += w.tasks
            if pts and ws[-1].used_min is None:
                tasks_before -= sum(w.tasks for w in ws[ws.index(pts[-1]) + 1:])
            ws = pts
        if len(ws) < 3:
            tr.reasons.append("too few windows")
            return tr
        tr.t0 = ws[0].t0
        ts = [(w.t0 + w.t1) / 2 for w in ws]
        ys = [w.level for w in ws] if signal == "rss" else [w.used_level for w in ws]
        reasons = tr.reasons
        # Cheap tests first; the costlier statistics (O(n^2) each) only for a trend that passed them. This
        # runs on the sampler thread at every window close, which at 300 tasks/s is every ~0.15 s.
        if len(self.windows) < self.min_windows:
            reasons.append("too few windows")
        # The trend must cover enough time *and* enough work: min_span_s seconds (a fill, however steady,
        # that lasts only seconds is not a leak), and min_span_tasks tasks (a task-driven pattern, such as a
        # GC cycle, repeats within a few hundred tasks whatever the rate), or slow_span_s seconds (a slow
        # worker does not wait minutes for 400 tasks: at 16 tasks/s and 256 KiB per call a leak keeps 4 MiB/s).
        span_tasks = sum(w.tasks for w in ws[1:]) + tasks_before
        span_s = ts[-1] - ts[0]
        if span_s < self.min_span_s:
            reasons.append("trend spans too little time")
        elif span_tasks < self.min_span_tasks and span_s < self.slow_span_s:
            reasons.append("trend spans too few tasks")
        if ys[-1] - ys[-2] <= 0 and ys[-2] - ys[-3] <= 0:
            reasons.append("no growth in the last windows")
        incs = [b - a for a, b in zip(ys, ys[1:])]
        pos = sum(i for i in incs if i > 0)
        tr.spread = max(incs) / pos if pos > 0 else 1.0
        if tr.spread > 0.5:
            reasons.append("growth concentrated in one step")
        # A steady climb rises in many windows; a staircase of a few big steps (bursts whose freed memory
        # the allocator keeps, tables loaded now and then) in a few. Steps below a quarter of the largest
        # do not count (page- and arena-sized steps of a slow leak are all about the same size).
        big_max = max(incs)
        tr.steps = sum(1 for i in incs if i > 0 and i >= 0.25 * big_max)
        if tr.steps < MIN_STEPS:
            reasons.append(f"growth in {tr.steps} steps (a staircase, not a steady climb)")
        tr.slope = robust.theil_sen(ts, ys)
        tr.growth = tr.slope * (ts[-1] - ts[0])
        if tr.growth < max(self.min_growth, self.rel_growth * ws[0].rss_min):
            reasons.append("growth below threshold")
        if reasons:
            return tr
        tr.tau, tr.z = robust.mann_kendall(ys, tol=PAGE)
        if tr.tau < 0.5 or tr.z < 2.0:
            reasons.append("no monotone trend")
            return tr
        half = (len(ws) + 1) // 2
        tr.slope_recent = robust.theil_sen(ts[-(half + 1):], ys[-(half + 1):]) if half >= 1 else tr.slope
        tr.slope_early = robust.theil_sen(ts[: half + 1], ys[: half + 1])
        if tr.slope_recent < LEVEL_OFF * max(tr.slope, tr.slope_early):
            reasons.append("growth is levelling off")
        tr.decel, t_c = robust.curvature(ts, ys)
        if tr.decel < DECEL_RATIO and t_c <= -DECEL_T:
            reasons.append(f"growth is decelerating (its pace fell to {max(0.0, tr.decel):.0%} over the trend, "
                           f"curvature t={t_c:.1f})")
        # A bounded fill (a cache taking random keys, a pool growing to its size) slows down as it fills:
        # while a saturating curve explains the level clearly better than a steady climb, it is not a leak.
        tr.saturation, tau = robust.saturation(ts, ys)
        if tr.saturation < SATURATION_RATIO and tau < 3 * (ts[-1] - ts[0]):
            reasons.append(f"growth is saturating (a bounded fill with a time constant of {tau:.1f} s fits "
                           f"{1 / max(tr.saturation, 1e-6):.1f}x better than a steady climb)")
        if signal == "rss" and self.collections:
            garbage = sum(f for t, f in self.collections if t >= ws[0].t0)
            if garbage >= 0.5 * tr.growth:
                reasons.append(f"forced collections freed {garbage} B of in-use memory over the trend: "
                               "the resident growth is the high-water mark of cyclic garbage")
        hs = [w.heap_level for w in ws]
        tr.heap_tau, _ = robust.mann_kendall(hs, tol=8)
        tr.heap_slope = robust.theil_sen(ts, hs)
        tr.candidate = not reasons
        return tr

    # ------------------------------------------------------------------ outputs
    def confidence(self) -> float:
        tr = self.trend
        if not self.declared and not tr.candidate:
            # Confidence in "no leak": grows with the evidence seen.
            n = len(self.windows)
            return round(min(0.95, 0.3 + 0.06 * n), 3)
        g = min(1.0, tr.growth / max(1.0, 4.0 * self.min_growth)) if tr.growth > 0 else 0.0
        c = 0.5 + 0.25 * max(0.0, min(1.0, (tr.tau - 0.5) / 0.5)) + 0.24 * g
        return round(max(0.5, min(0.99, c)), 3)

    def floor_series(self) -> tuple[list[float], list[float]]:
        ws = list(self.windows)
        return [w.t1 for w in ws], [w.rss_min for w in ws]

    def add_rows(self, rows: list[tuple]) -> None:
        """Extra increments from a sampling burst, same shape as ``increments`` (allocator delta or None)."""
        self.increments.extend(rows)
        for dt, d_rss, d_heap, du, counts, dirty in rows:
            if du is not None and counts:
                self.used_rows.append((counts, du, dirty))

    def attribute(self, use_heap: bool = False) -> list[Attribution]:
        """Robust regression of per-sample growth on per-sample task counts, most to blame first."""
        urows = [r for r in self.used_rows if not r[2] and r[0]]
        if self.declared_signal == "used" and len(urows) >= 8 and not use_heap:
            return regress([r[0] for r in urows], [float(r[1]) for r in urows])
        rows = [inc for inc in self.increments if not inc[5] and inc[4]]
        return regress([inc[4] for inc in rows], [float(inc[2] if use_heap else inc[1]) for inc in rows])
