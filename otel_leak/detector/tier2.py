"""Tier 2 (on suspicion only): a bounded tracemalloc window; tier 3: a bounded retention path.

Tier 2 starts tracemalloc (unless the user already traces), samples traced bytes and per-task-type
completed counts at ~20 Hz for at most ``window`` seconds, takes a snapshot at 40 % and at the end of the
window, then stops tracing. What was allocated in the window and is still alive at its end, *and* grew
between the two snapshots, is what the leak is made of. Sites are grouped by the innermost frame of the
worker's own code (frames of otel_leak, opentelemetry, importlib, tracemalloc and the standard library are
skipped for the site, kept in the traceback except ours). Retained Python bytes per call of each task type
come from the same robust regression as tier 1, on traced-byte increments: much less noisy than RSS.

The allocator probe (glibc ``mallinfo2`` through ctypes) tells native memory in use from free memory the
allocator keeps (fragmentation / retention) when resident memory grows but the Python heap does not.
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import math
import os
import sysconfig
import threading
import time
import tracemalloc

from otel_leak.detector import robust, scheduling
from otel_leak.detector.attribution import regress

_SKIP_ALWAYS = (
    os.sep + "otel_leak" + os.sep,
    os.sep + "opentelemetry" + os.sep,
    "<frozen importlib",
    os.sep + "importlib" + os.sep,
    os.sep + "tracemalloc.py",
)


def _stdlib_prefixes() -> tuple[str, ...]:
    out = []
    for key in ("stdlib", "platstdlib"):
        try:
            p = sysconfig.get_paths().get(key)
        except Exception:
            p = None
        if p:
            out.append(os.path.realpath(p) + os.sep)
            out.append(p + os.sep)
    return tuple(out)


_STDLIB = _stdlib_prefixes()


_OWN = (os.sep + "otel_leak" + os.sep + "detector" + os.sep, os.sep + "otel_leak" + os.sep + "sampler.py")


# otel-leak's modules that run on the worker's threads around a task but never call the worker's code (the
# integrations, otel_leak.manual and the pytest plugin do: they are callers of what they measure)
_AROUND = tuple(os.sep + "otel_leak" + os.sep + m for m in ("processor.py", "probes.py", "metrics.py", "_sdk.py"))


def _ours(filenames) -> bool:
    """``filenames`` most recent first: allocated by otel-leak's own threads (sampler, detector), or by
    otel-leak's code on the worker's thread (the processor's readings and attributes around a task: an
    otel-leak frame more recent than the worker's innermost own frame), not by the worker."""
    inner = True
    for fn in filenames:
        if any(o in fn for o in _OWN):
            return True
        if inner:
            if any(o in fn for o in _AROUND):
                return True
            if not is_library(fn):
                inner = False  # the worker's own code made it (an integration's frames below are callers)
    return False


def ours(tb) -> bool:
    """``ours`` for a tracemalloc Traceback (frames oldest first)."""
    return _ours([fr.filename for fr in reversed(list(tb))])


def skipped(filename: str) -> bool:
    return any(s in filename for s in _SKIP_ALWAYS)


def is_library(filename: str) -> bool:
    return (
        skipped(filename)
        or filename.startswith("<")
        or "site-packages" + os.sep in filename
        or (bool(_STDLIB) and filename.startswith(_STDLIB) and "site-packages" not in filename)
    )


def site_frame(frames) -> tuple[str, int] | None:
    """Innermost frame of the worker's own code (tracemalloc frames are oldest first)."""
    fallback = None
    for fr in reversed(frames):
        fn = fr.filename
        if not is_library(fn):
            return fn, fr.lineno
        if fallback is None and not skipped(fn):
            fallback = (fn, fr.lineno)
    return fallback


# ----------------------------------------------------------------------------------------------------
# glibc allocator


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (n, ctypes.c_size_t)
        for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")
    ]


_mallinfo2 = None
try:  # pragma: no branch
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    _mallinfo2 = _libc.mallinfo2
    _mallinfo2.restype = _Mallinfo2
    _mallinfo2.argtypes = []
except Exception:  # not glibc, or glibc < 2.33
    _mallinfo2 = None


def malloc_info() -> tuple[int, int] | None:
    """``(in_use_bytes, free_bytes_kept)`` from glibc, or None where the allocator does not tell."""
    if _mallinfo2 is None:
        return None
    try:
        mi = _mallinfo2()
        return int(mi.uordblks + mi.hblkhd), int(mi.fordblks)
    except Exception:
        return None


# ----------------------------------------------------------------------------------------------------
# Tier 2


class Tier2Result:
    def __init__(self) -> None:
        self.started_t = 0.0
        self.duration = 0.0  # wall seconds with tracemalloc on + snapshot/analysis time
        self.python_growth_per_s = 0.0
        self.python_growth_per_task = None
        self.tasks = 0
        self.traced_start = 0
        self.traced_end = 0
        self.sites: list[dict] = []
        self.attribution = []
        self.calls: dict[str, int] = {}  # completed tasks per type during the window
        self.method = "regression"  # how the attribution was made: "per_task" (tasks ran alone) or "regression"
        self.retention_paths: list[dict] = []
        self.error: str | None = None
        self.user_tracing = False
        self.phases: dict[str, float] = {}

    @property
    def informative(self) -> bool:
        """Saw enough tasks for its attribution to confirm or clear a suspect."""
        return self.error is None and self.tasks >= INFORMATIVE_TASKS


MEM_BUDGET = 32 * 1024 * 1024  # tracemalloc's own memory at which a window ends early (bounds analysis too)
MIN_WINDOW = 0.25  # a window that ends early on the memory budget still runs this long
# A window goes on past its length until it has seen MIN_TASKS tasks, up to STRETCH times its length or
# STRETCH_S seconds, whichever is longer: a worker that takes its tasks in batches (a producer waiting for
# results) may be idle for most of a short window, and its tasks' own transient allocations (a message
# decoded, a result stored) make the traced bytes of a few dozen tasks too noisy to confirm or clear one.
MIN_TASKS = 90
ROW_TASKS = 3  # consecutive rows are merged to about this many tasks each for the regression (at most 8)
STRETCH = 4.0
STRETCH_S = 4.0
INFORMATIVE_TASKS = scheduling.INFORMATIVE_TASKS  # a window that saw fewer tasks neither confirms nor clears a suspect
ALONE_SHARE_MAX_OVERLAP = 0.1  # per-task means only when at most this share of the window's tasks overlapped


def run_window(
    stats,
    *,
    window: float,
    frames: int,
    tier3: bool,
    tier3_budget: float,
    stop_event=None,
    mem_budget: int = MEM_BUDGET,
    min_tasks: int = MIN_TASKS,
) -> Tier2Result:
    """Run one tracemalloc window synchronously (call it from a background thread).

    The window lasts ``window`` seconds (longer, up to STRETCH times or STRETCH_S seconds, until
    ``min_tasks`` tasks were seen), or less once tracemalloc's own memory (which grows with the traces
    kept, and so does the cost of the snapshot analysis) passes ``mem_budget``. Tracing stops right after
    the end snapshot unless tier 3 needs object tracebacks; the analysis runs on the snapshots.
    ``duration`` counts everything: tracing, snapshots, analysis and tier 3.
    """
    res = Tier2Result()
    t0 = time.monotonic()
    res.started_t = t0
    res.user_tracing = tracemalloc.is_tracing()
    started = False
    tracing = False
    try:
        if not res.user_tracing and stats is not None and hasattr(stats, "running"):
            stats.running = 0  # (before tracing starts: no task counts itself in yet)
        if not res.user_tracing:
            tracemalloc.start(frames)
            started = tracing = True
        counts0 = dict(stats.counts) if stats is not None else {}
        traced0 = {k: list(v) for k, v in list(getattr(stats, "traced", {}).items())}
        overlapped0 = getattr(stats, "overlapped", 0)
        total0 = stats.total if stats is not None else 0
        bytes0 = tracemalloc.get_traced_memory()[0]
        own0 = tracemalloc.get_tracemalloc_memory()
        res.traced_start = bytes0
        rows_c: list[dict] = []
        rows_y: list[float] = []
        ts, ys = [0.0], [0.0]
        prev_c, prev_y = counts0, bytes0
        mid = None
        step = max(0.02, min(0.1, window / 30))
        longest = max(STRETCH * window, STRETCH_S, window)
        own = own0
        while True:
            if stop_event is not None and stop_event.wait(step):
                break
            elif stop_event is None:
                time.sleep(step)
            now = time.monotonic() - t0
            c = dict(stats.counts) if stats is not None else {}
            y = tracemalloc.get_traced_memory()[0]
            own = tracemalloc.get_tracemalloc_memory() - own0
            d = {k: v - prev_c.get(k, 0) for k, v in c.items() if v - prev_c.get(k, 0) > 0}
            rows_c.append(d)
            rows_y.append(float(y - prev_y))
            ts.append(now)
            ys.append(float(y - bytes0))
            prev_c, prev_y = c, y
            seen = (stats.total if stats is not None else 0) - total0
            longer = seen < min_tasks and now < longest  # still too few tasks to tell anything
            # the middle snapshot at 40 % of the window's length and of its tasks
            if mid is None and ((now >= 0.4 * window and (seen >= 0.4 * min_tasks or now >= 0.4 * longest))
                                or own >= 0.4 * mem_budget):
                _disturb(stats)
                mid = _snapshot()
                _disturb(stats)
            if (now >= window and not longer and mid is not None) or (
                    own >= mem_budget and now >= min(window, MIN_WINDOW) and mid is not None):
                break
        # The tasks' own readings end here: the end snapshot (and tier 3, which keeps tracing) allocate in
        # this thread while tasks run, and would land in whichever task is running.
        traced1 = {k: list(v) for k, v in list(getattr(stats, "traced", {}).items())}
        overlapped1 = getattr(stats, "overlapped", 0)
        total1 = stats.total if stats is not None else 0
        _disturb(stats)
        t_snap = time.monotonic()
        end = _snapshot()
        res.traced_end = tracemalloc.get_traced_memory()[0]
        res.phases["tracemalloc_bytes"] = int(own)
        if started and not tier3:
            tracemalloc.stop()  # the analysis below needs the snapshots only: stop slowing the worker now
            tracing = False
        res.phases["traced_s"] = round(time.monotonic() - t0, 3)
        res.tasks = total1 - total0
        span = ts[-1] if ts[-1] > 0 else 1.0
        res.python_growth_per_s = robust.theil_sen(ts, ys) if len(ts) > 2 else 0.0
        if res.tasks > 0:
            res.python_growth_per_task = res.python_growth_per_s * span / res.tasks
        direct = per_task(traced0, traced1, overlapped1 - overlapped0, res.traced_end - bytes0)
        res.attribution = direct if direct is not None else regress(*merge_rows(rows_c, rows_y, res.tasks))
        res.method = "per_task" if direct is not None else "regression"
        calls: dict[str, int] = collections.Counter()
        for c in rows_c:
            calls.update(c)
        res.calls = dict(calls)
        res.sites = _sites(mid, end)
        t_an = time.monotonic()
        res.phases["snapshot_analysis_s"] = round(t_an - t_snap, 3)
        del mid, end
        if tier3 and res.sites and tier3_budget > 0 and tracemalloc.is_tracing():
            try:
                from otel_leak.detector.tier3 import retention_paths

                res.retention_paths = retention_paths(res.sites[0], tier3_budget)
                res.phases["tier3_s"] = round(time.monotonic() - t_an, 3)
            except Exception as exc:  # tier 3 is best effort
                res.retention_paths = [{"error": f"{type(exc).__name__}: {exc}"}]
    except Exception as exc:
        res.error = f"{type(exc).__name__}: {exc}"
    finally:
        if started and tracing:
            try:
                tracemalloc.stop()
            except Exception:
                pass
        res.duration = time.monotonic() - t0
    return res


def _disturb(stats) -> None:
    """This thread is about to allocate (or has allocated) a burst while tasks may run: a task running
    across it is not one that ran alone (the processor compares its start's event number at its end)."""
    if stats is not None and hasattr(stats, "events"):
        stats.events += 1


def per_task(before: dict, after: dict, overlapped: int, growth: float) -> list | None:
    """Each task type's mean traced-bytes change per call over the window, from the processor's per-task
    readings (TaskStats.add_traced), when nearly every task of the window ran alone: then a task's
    change is its own, exactly, and the mean needs no regression (rows of a short window hold too few
    batches to tell task types apart that tend to run together). None when tasks overlapped (threads,
    an event loop), or when the tasks' own changes explain less than half of the window's ``growth``
    (memory kept between tasks, by the framework after a span ends): the rows' regression then."""
    from otel_leak.detector.attribution import Attribution

    rows = {}
    for k, acc in list(after.items()):
        b = before.get(k, (0, 0.0, 0.0))
        n, s1, s2 = acc[0] - b[0], acc[1] - b[1], acc[2] - b[2]
        if n > 0:
            rows[k] = (n, s1, s2)
    alone = sum(r[0] for r in rows.values())
    if alone < INFORMATIVE_TASKS or overlapped > ALONE_SHARE_MAX_OVERLAP * (alone + overlapped):
        return None
    explained = {k: s1 for k, (n, s1, s2) in rows.items() if s1 > 0}
    total = sum(explained.values())
    if growth > 0 and total < 0.5 * growth:
        return None
    out = []
    for k, (n, s1, s2) in rows.items():
        mean = s1 / n
        if mean <= 0 or n < 2:
            continue
        var = max(0.0, (s2 - n * mean * mean) / (n - 1))
        se = math.sqrt(var / n)
        t = mean / se if se > 0 else 1e6
        share = explained.get(k, 0.0) / total if total > 0 else 0.0
        conf = (t * t / (t * t + 4.0)) * min(1.0, 0.5 + share)
        out.append(Attribution(k, mean, n, round(max(0.0, min(0.99, conf)), 3), round(share, 3), round(min(t, 1e6), 2)))
    out.sort(key=lambda a: -a.share)
    return out


def merge_rows(rows_c: list[dict], rows_y: list[float], tasks: int) -> tuple[list[dict], list[float]]:
    """Consecutive rows merged to about ROW_TASKS tasks each (at most 8 rows to one).

    A task's memory is allocated before its span ends and is counted: when that lag passes a row boundary
    (a worker slowed by tracing, a result stored before the span ends), the bytes land in one row and the
    call in the next, and on rows of one task or none the regression sees nothing at all. On rows of a few
    tasks only the calls at a row's edge are split."""
    m = max(1, min(8, math.ceil(ROW_TASKS * len(rows_c) / tasks))) if tasks > 0 else 1
    if m == 1:
        return rows_c, rows_y
    out_c, out_y = [], []
    for i in range(0, len(rows_c), m):
        c: dict[str, int] = {}
        for d in rows_c[i:i + m]:
            for k, v in d.items():
                c[k] = c.get(k, 0) + v
        out_c.append(c)
        out_y.append(sum(rows_y[i:i + m]))
    return out_c, out_y


def _snapshot():
    # No filter_traces() here: it runs fnmatch on every trace (~15 us each, half a second for 30k traces).
    # Allocations of tracemalloc.py itself only happen in our own thread, and ours() drops those.
    return tracemalloc.take_snapshot()


def _raw_frames(frames) -> tuple:
    """Frames as ``((filename, lineno), ...)``, most recent first."""
    if isinstance(frames, tuple):
        return frames
    return tuple((fr.filename, fr.lineno) for fr in reversed(frames))


def _group(snapshot) -> dict[tuple, list[int]]:
    """``{frames (most recent first): [bytes, count]}`` in one pass over the raw traces.

    ``Snapshot.statistics``/``compare_to`` build a Traceback and a Statistic object per trace (a few us
    each, twice for a diff); grouping the raw tuples costs a dict update per trace. Falls back to the public
    API where the raw list is not there.
    """
    raw = getattr(getattr(snapshot, "traces", None), "_traces", None)
    out: dict[tuple, list[int]] = {}
    if isinstance(raw, list) and (not raw or (isinstance(raw[0], tuple) and len(raw[0]) >= 3)):
        # Traces with the same traceback share one tuple object (tracemalloc converts each traceback once):
        # group by identity first (an int hash instead of hashing up to 32 nested frames), then by value.
        by_id: dict[int, list] = {}
        get = by_id.get
        for tr in raw:
            tb = tr[2]
            e = get(id(tb))
            if e is None:
                by_id[id(tb)] = [tr[1], 1, tb]
            else:
                e[0] += tr[1]
                e[1] += 1
        for size, count, tb in by_id.values():
            e = out.get(tb)
            if e is None:
                out[tb] = [size, count]
            else:
                e[0] += size
                e[1] += count
        return out
    for st in snapshot.statistics("traceback"):
        out[_raw_frames(st.traceback)] = [st.size, st.count]
    return out


def _ours_raw(frames: tuple) -> bool:
    return _ours([fn for fn, _ in frames])  # (raw frames are most recent first)


def _site_raw(frames: tuple) -> tuple[str, int] | None:
    """Innermost frame of the worker's own code (frames most recent first)."""
    fallback = None
    for fn, line in frames:
        if not is_library(fn):
            return fn, line
        if fallback is None and not skipped(fn):
            fallback = (fn, line)
    return fallback


def _sites(mid, end, top: int = 10) -> list[dict]:
    """Sites of what is alive at the end of the window *and* grew since the middle snapshot."""
    if end is None:
        return []
    g_end = _group(end)
    g_mid = _group(mid) if mid is not None else {}
    groups: dict[tuple[str, int], dict] = {}
    site_of: dict[tuple, tuple[str, int] | None] = {}
    for tb, (size, count) in g_end.items():
        m = g_mid.get(tb)
        if m is not None or mid is not None:
            size_diff = size - (m[0] if m else 0)
            count_diff = count - (m[1] if m else 0)
            if not (size_diff > 0 and count_diff > 0):
                continue
        else:
            size_diff = size
        if tb in site_of:
            site = site_of[tb]
        else:
            site = site_of[tb] = None if _ours_raw(tb) else _site_raw(tb)
        if site is None:
            continue
        g = groups.get(site)
        if g is None:
            g = groups[site] = {"file": site[0], "line": site[1], "retained_bytes": 0, "count": 0, "growth_bytes": 0,
                                "_best": (0, tb)}
        g["retained_bytes"] += size
        g["count"] += count
        g["growth_bytes"] += size_diff
        if size > g["_best"][0]:
            g["_best"] = (size, tb)
    out = sorted(groups.values(), key=lambda g: -g["growth_bytes"])
    if out:
        floor = max(1024, 0.02 * out[0]["growth_bytes"])
        out = [g for g in out if g["growth_bytes"] >= floor][:top]
    for g in out:
        tb = g.pop("_best")[1]
        g["traceback"] = [{"file": fn, "line": line} for fn, line in tb if not skipped(fn)][:16]
    return out


class Tier2Thread(threading.Thread):
    """Runs one window in the background and hands the result to ``done``."""

    def __init__(self, stats, done, **kw) -> None:
        super().__init__(name="otel-leak-tier2", daemon=True)
        self.stats = stats
        self.done = done
        self.kw = kw
        self.stop_event = threading.Event()

    def run(self) -> None:
        try:
            res = run_window(self.stats, stop_event=self.stop_event, **self.kw)
        except Exception as exc:  # pragma: no cover - run_window catches
            res = Tier2Result()
            res.error = str(exc)
        try:
            self.done(res)
        except Exception:
            pass
