"""Which task types are named as leaking: the kind of memory that grows, and tier 1's and tier 2's
attributions merged into at most MAX_SUSPECTS suspects.

Resident-memory growth lands on whichever task first touches fresh pages: when the leaker's objects fill
heap space a neighbour freed (allocate-and-free), the neighbour's next call touches the fresh pages and
looks like a leaker in tier 1; tasks that strictly alternate cannot be told apart at all. Tier 2 regresses
traced Python bytes per task over short rows, which a neighbour's freed allocations do not move: when the
leak is in the Python heap, tier 2 confirms or vetoes tier 1's suspects, and until its first window
reports, no task is named from resident memory alone (the verdict is published at once; the per-task
suspects follow about a window later, or after TIER2_WAIT seconds from tier 1 alone if tier 2 never
answers).

Pure functions on attributions and counts; the detector keeps the state and publishes the result.
"""

from __future__ import annotations

from typing import Callable

from otel_leak import names

MAX_SUSPECTS = 5
TIER2_WAIT = 10.0  # seconds per-task suspects wait for tier 2's first window before tier 1 alone names them
# A suspect's coefficient must be this many standard errors above zero (and >= 20 % of the explained growth):
# tier 1 regresses resident/allocator bytes over rows of many tasks (noisier, and its Huber standard errors
# are optimistic), tier 2 traced Python bytes over rows of one or two tasks.
T1_MIN_T = 5.0
T2_MIN_T = 3.0
# Tier 2 contradicts a tier-1 suspect it saw at least CONTRADICT_CALLS calls of, retaining less than
# CONTRADICT_SHARE of tier 1's bytes per call (fewer calls, amid the transient allocations of a real
# worker's tasks, do not clear a suspect tier 1 found over hundreds).
CONTRADICT_CALLS = 20
CONTRADICT_SHARE = 0.25
PYTHON_KINDS = ("python_heap", "mixed")  # kinds where tier 2's traced Python bytes speak for the leak


# ---------------------------------------------------------------------------------------------- kind
def kind_from_tier1(trend) -> str:
    """From tier 1's trend alone: Python heap when the heap block count rises steadily with the floor."""
    if trend.heap_tau >= 0.6 and trend.heap_slope > 0:
        return "python_heap"
    return "native_or_fragmentation"


def kind_from_tier2(res, rss_slope: float, task_rate: float, current: str | None) -> str | None:
    """From a tier-2 window: the share of the resident growth (``rss_slope`` bytes/s at ``task_rate``
    tasks/s) that traced Python memory explains. Without resident growth, ``current`` stands."""
    if rss_slope <= 0:
        return current
    if res.python_growth_per_task is not None and task_rate > 0:
        ratio = res.python_growth_per_task / (rss_slope / task_rate)
    else:
        ratio = res.python_growth_per_s / rss_slope
    if ratio >= 0.5:
        return "python_heap"
    if ratio <= 0.2:
        return "native_or_fragmentation"
    return "mixed"


# ---------------------------------------------------------------------------------------------- hold
def tier2_pending(enabled: bool, reported: bool, failed: bool, declared_t: float | None, now: float | None) -> bool:
    """Tier 2 is on and its first window has not reported yet (it starts on the declaring sample, and
    reports within a window plus its analysis; past TIER2_WAIT seconds, tier 1 is not held any longer)."""
    if not enabled or reported or failed:
        return False
    return not (declared_t is not None and now is not None and now - declared_t > TIER2_WAIT)


# ---------------------------------------------------------------------------------------------- merge
def merge(t1_attr, res, kind: str | None, counts: dict, pending: bool,
          trace_ids: Callable[[str], list[str]] = lambda task: []) -> tuple[list[dict], list[str], bool]:
    """(suspects, vetoed task names, held) from tier 1's attributions and tier 2's result (None before its
    first successful window). ``pending``: tier 2's first window is still coming. ``counts``: completed
    calls per task type (a suspect's call count, when known)."""
    sig1 = {a.task: a for a in t1_attr if a.significant(T1_MIN_T)}
    all2 = {a.task: a for a in (res.attribution if res is not None else [])}
    sig2 = {k: a for k, a in all2.items() if a.significant(T2_MIN_T)}
    vetoed: list[str] = []
    held = False
    if res is None:
        # Tier 1's rows hold many tasks each and their memory readings trail the task counts by up to a
        # thread switch: wait for tier 2's answer when it is coming.
        if pending:
            sig1 = {}
            held = True
        chosen = dict.fromkeys(sig1)
    elif kind == "python_heap":
        chosen = dict.fromkeys(sig2)
        seen_calls = getattr(res, "calls", {})
        # Tier 2 can clear a suspect when its figures are exact (per-task means of tasks that ran alone) or
        # its regression named some task significantly. A regression that named no one (overlapping tasks of
        # an event loop, rows of a few tasks each) leaves tier 1's suspects standing.
        decisive = bool(sig2) or getattr(res, "method", "regression") == "per_task"
        for k in sig1:
            if k in sig2:
                continue
            a2 = all2.get(k)
            contradicted = decisive and seen_calls.get(k, 0) >= CONTRADICT_CALLS and (
                a2 is None or a2.bytes_per_call < CONTRADICT_SHARE * sig1[k].bytes_per_call)
            # Tier 2 speaks only for the types it saw: a rare type (a few calls in a 90-task window, none
            # of them leaking when only some inputs leak) is not cleared because tier 2 named others.
            if contradicted or (sig2 and seen_calls.get(k, 0) >= CONTRADICT_CALLS):
                vetoed.append(k)
            else:
                chosen[k] = None  # tier 2 saw too few of its calls to say either way
    elif kind == "mixed":
        chosen = dict.fromkeys(list(sig2) + [k for k in sig1 if k not in sig2])
    else:  # native or fragmentation: tier 2's Python bytes say nothing about it
        chosen = dict.fromkeys(sig1)
    w2 = 1.5 if kind in PYTHON_KINDS else 0.3
    scores = {}
    for k in chosen:
        a1, a2 = sig1.get(k), sig2.get(k)
        scores[k] = (a1.share * a1.confidence if a1 else 0.0) + (w2 * a2.share * a2.confidence if a2 else 0.0)
    total = sum(scores.values())
    out = []
    for k, sc in sorted(scores.items(), key=lambda kv: -kv[1])[:MAX_SUSPECTS]:
        a1, a2 = sig1.get(k), sig2.get(k)
        if a2 is not None and kind in PYTHON_KINDS:
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
            "trace_ids": trace_ids(k),
            "source": "tier2" if a2 is not None else "tier1",
        })
    return out, vetoed, held


# ---------------------------------------------------------------------------------------------- publish
def trace_ids_of(stats, task: str) -> list[str]:
    """The last few trace ids the task statistics hold for ``task`` (none if they cannot say)."""
    try:
        if stats is not None and hasattr(stats, "trace_ids"):
            return [t for t in stats.trace_ids(task) if isinstance(t, str) and len(t) == 32][-5:]
    except Exception:
        pass
    return []


def span_attributes(suspects: list[dict], kind: str | None, sites: list[dict],
                    pattern: str | None = None) -> dict[str, dict]:
    """Per suspected task, the attributes of the span event the processor adds to its spans."""
    ev = {}
    for s in suspects:
        ev[s["task"]] = {
            names.ATTR_TASK_NAME: s["task"],
            names.ATTR_DETECTOR_VERDICT: "leak",
            "otel_leak.leak.retained_bytes_per_call": float(s["retained_bytes_per_call"]),
            "otel_leak.leak.confidence": float(s["confidence"]),
            "otel_leak.leak.kind": kind or "unknown",
        }
        if sites:
            ev[s["task"]]["otel_leak.leak.site"] = f"{sites[0]['file']}:{sites[0]['line']}"
        if pattern:
            ev[s["task"]][names.ATTR_LEAK_PATTERN] = pattern
    return ev
