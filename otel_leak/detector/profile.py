"""The process's memory profile, for per-release baselines: what each task type costs in memory per call
(with its standard error), the floor's slope (with its), the GC pause distribution per generation, and the
workload it was measured under.

Computed from what tier 1 already keeps (its last ``MAX_INCREMENTS`` per-sample increments and its windows):
one robust regression of per-sample resident-memory growth on per-sample task counts, with every column free
to take either sign (a baseline needs an estimate and its noise for every task type, not only the ones to
blame). The regression costs tens of milliseconds of pure Python, so a report carries a profile at most
``EVERY_S`` old (the final report a fresh one), and its cost is exempted from the sampler's tick budget: it
has this budget of its own (charged to the tick budget, one 0.1 s regression put the sampler 30 s in debt,
blind just after a leak was declared). Never raises: a profile that cannot be computed is ``None``.
"""

from __future__ import annotations

import math
import time

from otel_leak.detector import robust
from otel_leak.detector.attribution import MAX_COLUMNS, POOLED

MIN_ROWS = 8
PAGE_ROUNDING = 4096 / math.sqrt(6)  # sd of the difference of two readings each rounded to a 4 KiB page
EVERY_S = 60.0


def _num(x: float, nd: int = 1) -> float | None:
    return round(x, nd) if isinstance(x, (int, float)) and math.isfinite(x) else None


def per_task(increments) -> dict[str, dict]:
    """``{task: {bytes_per_call, se, calls}}`` from tier-1 increments (rows tier 2 disturbed left out)."""
    rows = [inc for inc in increments if not inc[5] and inc[4]]
    if len(rows) < MIN_ROWS:
        return {}
    totals: dict[str, int] = {}
    for inc in rows:
        for k, v in inc[4].items():
            totals[k] = totals.get(k, 0) + v
    names = sorted(totals, key=lambda k: -totals[k])
    cols, pooled = names[:MAX_COLUMNS], names[MAX_COLUMNS:]
    colnames = cols + ([POOLED] if pooled else [])
    index = {k: i for i, k in enumerate(cols)}
    X = []
    for inc in rows:
        row = [0.0] * len(colnames)
        for k, v in inc[4].items():
            row[index.get(k, len(colnames) - 1)] += v
        X.append(row)
    beta, se, _ = robust.huber_nnls(X, [float(inc[1]) for inc in rows], free=frozenset(range(len(colnames))))
    out = {}
    for j, name in enumerate(colnames):
        calls = totals.get(name, 0) if name != POOLED else sum(totals[k] for k in pooled)
        # Resident memory is read in whole pages: an increment (two readings) carries at least that
        # rounding, whatever the residuals say. A run whose resident memory never moved (the allocator
        # reused free pages throughout) otherwise had a standard error of 0, which no comparison can use.
        ss = sum(row[j] * row[j] for row in X)
        floor = PAGE_ROUNDING / math.sqrt(ss) if ss > 0 else None
        err = se[j] if floor is None or not math.isfinite(se[j]) else max(se[j], floor)
        out[name] = {"bytes_per_call": _num(beta[j]), "se": _num(err), "calls": int(calls)}
    return out


def floor_slope(t1) -> tuple[float | None, float | None]:
    """Least-squares slope of the floor level over tier 1's windows (bytes/s) and its standard error."""
    ws = [w for w in t1.windows if w.t1 > w.t0]
    if len(ws) < 4:
        return None, None
    ts = [w.t1 for w in ws]
    ys = [w.level for w in ws]
    n = len(ts)
    mt, my = sum(ts) / n, sum(ys) / n
    sxx = sum((t - mt) ** 2 for t in ts)
    if sxx <= 0:
        return None, None
    b = sum((t - mt) * (y - my) for t, y in zip(ts, ys)) / sxx
    res = [y - my - b * (t - mt) for t, y in zip(ts, ys)]
    s2 = sum(r * r for r in res) / max(1, n - 2)
    return b, math.sqrt(s2 / sxx)


def build(det, duration_s: float) -> dict | None:
    try:
        t1 = det.tier1
        slope, slope_se = floor_slope(t1)
        last = det.last
        tasks = int(last.tasks_total) if last is not None else 0
        counts = dict(det.stats.counts) if det.stats is not None else {}
        total = sum(counts.values()) or 1
        rss = [w.rss_min for w in t1.windows]
        steady = sorted(rss[len(rss) * 2 // 3:]) if len(rss) >= 3 else []
        return {
            "per_task": per_task(t1.increments),
            "floor_slope_bytes_per_s": _num(slope) if slope is not None else None,
            "floor_slope_se": _num(slope_se) if slope_se is not None else None,
            "rss_steady_bytes": steady[len(steady) // 2] if steady else None,
            "tasks_per_s": _num(tasks / duration_s, 2) if duration_s > 0 else None,
            "mix": {k: round(v / total, 4) for k, v in counts.items()},
            "windows": len(t1.windows),
            "gc_pauses": gc_pauses(),
        }
    except Exception:
        return None


def gc_pauses() -> dict:
    """The process's GC pause distribution per generation (the runtime's GC probe), {} without one."""
    try:
        from otel_leak.probes import GcProbe

        probe = GcProbe.active
        return probe.pause_distribution() if probe is not None and not probe.disabled else {}
    except Exception:
        return {}


def for_report(det, duration_s: float, final: bool) -> dict | None:
    """The profile a report carries: the cached one unless it is older than EVERY_S or the report is final."""
    now = time.monotonic()
    cached = getattr(det, "_profile_cache", None)
    if cached is not None and not final and now - cached[0] < EVERY_S:
        return cached[1]
    t0 = time.thread_time()
    p = build(det, duration_s)
    exempt = getattr(getattr(det, "sampler", None), "exempt", None)
    if exempt is not None:
        try:
            exempt(time.thread_time() - t0)
        except Exception:
            pass
    det._profile_cache = (now, p)
    return p
