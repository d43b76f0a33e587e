"""When tier-2 windows run and how long they last.

Tier 2 windows last about TIER2_TASKS tasks (at least TIER2_MIN_WINDOW s, at most DETECTOR_TIER2_WINDOW):
a fast worker gets a short window (tracemalloc slows every allocation while it runs), a slow one the
longest, so a leak of a few calls a second still shows its allocation site. The first window runs as soon
as a leak is declared; later ones refine the diagnosis within the run-time share the settings allow.

Pure functions on rates, durations and past runs; the detector starts the windows.
"""

from __future__ import annotations

TIER2_TASKS = 90
TIER2_MIN_WINDOW = 0.3
MAX_RUNS = 8  # windows after which no further one is started
SPACING = 10  # later windows start at least this many window lengths after the previous one ended
RATE_WINDOWS = 8  # tier-1 windows the task rate is measured over
# A window that saw fewer than INFORMATIVE_TASKS tasks (the load paused while it traced) names no suspect
# and no site: the next one starts RETRY_AFTER_S later, outside the share, up to RETRIES times in a row.
INFORMATIVE_TASKS = 20
RETRIES = 3
RETRY_AFTER_S = 2.0


def windows_rate(windows) -> float:
    """Tasks per second over the last RATE_WINDOWS tier-1 windows (0 with fewer than two)."""
    ws = list(windows)[-RATE_WINDOWS:]
    if len(ws) < 2:
        return 0.0
    span = ws[-1].t1 - ws[0].t0
    return sum(w.tasks for w in ws) / span if span > 0 else 0.0


def window_length(rate: float, longest: float) -> float:
    """About TIER2_TASKS tasks at ``rate`` tasks/s, within [TIER2_MIN_WINDOW, ``longest``]; ``longest``
    when the rate is unknown."""
    if rate > 0:
        return min(longest, max(TIER2_MIN_WINDOW, TIER2_TASKS / rate))
    return longest


def window_cost(w: float, last_run: dict | None) -> float:
    """Predicted cost of a window of ``w`` seconds: tracing plus snapshot analysis, scaled from the last
    run's record (``duration_s`` and its ``phases``); just ``w`` before any run."""
    if not last_run:
        return w
    phases = last_run.get("phases", {})
    traced = max(1e-3, float(phases.get("traced_s") or last_run["duration_s"]))
    extra = max(0.0, last_run["duration_s"] - traced - float(phases.get("tier3_s") or 0.0))
    return w + extra * (w / traced)


def should_start(w: float, runs: list[dict], spent: float, share: float, age: float, since_end: float) -> bool:
    """Whether to start a window of ``w`` seconds now: always the first, and again (RETRIES times at most)
    while every window so far saw too few tasks to say anything; a later one only if the time spent
    in tier 2 (``spent`` seconds of ``age``) stays within ``share`` with it, the previous window ended
    ``since_end`` >= SPACING windows ago, and fewer than MAX_RUNS windows ran."""
    if not runs:
        return True
    if (len(runs) <= RETRIES and all((r.get("tasks") or 0) < INFORMATIVE_TASKS for r in runs)
            and since_end >= max(RETRY_AFTER_S, w)):
        return True
    if spent + window_cost(w, runs[-1]) > share * age or since_end < SPACING * w:
        return False
    return len(runs) < MAX_RUNS
