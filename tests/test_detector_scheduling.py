"""Tier-2 window scheduling on synthetic rates and run records: window length follows the task rate, the
first window always runs, later ones stay within the run-time share, spaced out, and bounded in number."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from otel_leak.detector import scheduling as SC


def windows(rate, n, span=1.0):
    return [SimpleNamespace(t0=k * span, t1=(k + 1) * span, tasks=int(rate * span)) for k in range(n)]


def test_task_rate_from_the_recent_tier1_windows():
    assert SC.windows_rate(windows(50, 20)) == pytest.approx(50)
    # only the recent windows count: a worker that sped up is measured at its new rate
    sped_up = windows(5, 30) + [SimpleNamespace(t0=30.0 + k, t1=31.0 + k, tasks=200) for k in range(10)]
    assert SC.windows_rate(sped_up) == pytest.approx(200)
    assert SC.windows_rate(windows(50, 1)) == 0.0 and SC.windows_rate([]) == 0.0


def test_a_fast_worker_gets_a_short_window_a_slow_one_the_longest():
    fast = SC.window_length(150.0, 1.0)
    assert SC.TIER2_MIN_WINDOW <= fast < 1.0 and 150.0 * fast == pytest.approx(SC.TIER2_TASKS)  # ~TIER2_TASKS tasks
    assert SC.window_length(300.0, 1.0) < fast  # faster still: shorter still (tracemalloc slows every task)
    assert SC.window_length(6.0, 1.0) == 1.0  # a slow worker: as long as allowed, to see enough calls
    assert SC.window_length(1e6, 1.0) == SC.TIER2_MIN_WINDOW  # never shorter than the floor
    assert SC.window_length(0.0, 2.5) == 2.5  # rate unknown: the configured window


def test_window_cost_adds_the_analysis_overhead_in_proportion():
    assert SC.window_cost(0.5, None) == 0.5
    last = {"duration_s": 1.5, "phases": {"traced_s": 1.0, "tier3_s": 0.25}}  # 0.25 s of snapshot analysis
    assert SC.window_cost(1.0, last) == pytest.approx(1.25)
    assert SC.window_cost(2.0, last) == pytest.approx(2.5)
    assert SC.window_cost(1.0, {"duration_s": 1.0}) == pytest.approx(1.0)  # no phases: all of it was tracing


def run(duration=1.0, tasks=90):
    return {"duration_s": duration, "phases": {"traced_s": duration}, "tasks": tasks}


def test_the_first_window_always_starts():
    assert SC.should_start(1.0, [], spent=0.0, share=0.0, age=0.0, since_end=0.0)


def test_later_windows_stay_within_the_share_of_run_time():
    runs = [run()]
    assert not SC.should_start(1.0, runs, spent=1.0, share=0.02, age=60.0, since_end=60.0)  # 2 s > 2 % of 60 s
    assert SC.should_start(1.0, runs, spent=1.0, share=0.02, age=200.0, since_end=60.0)


def test_later_windows_are_spaced_out():
    runs = [run()]
    assert not SC.should_start(1.0, runs, spent=1.0, share=0.5, age=1000.0, since_end=SC.SPACING * 1.0 - 0.1)
    assert SC.should_start(1.0, runs, spent=1.0, share=0.5, age=1000.0, since_end=SC.SPACING * 1.0)


def test_a_window_that_saw_too_few_tasks_is_retried_soon_a_few_times():
    # the load paused while the first window traced (3 tasks): no suspect, no site; retry outside the share
    idle = [run(4.0, tasks=3)]
    assert not SC.should_start(0.5, idle, spent=4.0, share=0.03, age=30.0, since_end=SC.RETRY_AFTER_S - 0.1)
    assert SC.should_start(0.5, idle, spent=4.0, share=0.03, age=30.0, since_end=SC.RETRY_AFTER_S)
    idle = [run(4.0, tasks=0) for _ in range(SC.RETRIES + 1)]  # at most RETRIES retries in a row
    assert not SC.should_start(0.5, idle, spent=16.0, share=0.03, age=60.0, since_end=10.0)
    # once a window was informative, the share and the spacing apply again
    assert not SC.should_start(0.5, [run(4.0, tasks=3), run(1.0)], spent=5.0, share=0.03, age=60.0,
                               since_end=10.0)


def test_no_window_after_max_runs():
    runs = [run() for _ in range(SC.MAX_RUNS)]
    assert not SC.should_start(1.0, runs, spent=8.0, share=1.0, age=1e6, since_end=1e6)
    assert SC.should_start(1.0, runs[:-1], spent=7.0, share=1.0, age=1e6, since_end=1e6)
