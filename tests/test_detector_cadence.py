"""The adaptive sampling cadence on synthetic task streams: a fast worker is sampled often enough that its
windows close within a few dozen tasks, a slow one keeps the configured interval, and a noisy rate does not
make the interval flap."""

from __future__ import annotations

import random

import pytest

from otel_leak.detector.cadence import FAST_INTERVAL, PROBE_INTERVAL, TASKS_PER_SAMPLE, Cadence


def drive(cadence: Cadence, rate_at, seconds: float, start: float = 0.0, tasks: int = 0, current: float | None = None):
    """Feed samples at the interval the cadence asks for; ``rate_at(t)`` is the task rate at time ``t``.
    Returns the (t, interval) pairs, the final time, task total and interval."""
    cur = cadence.base if current is None else current
    t, done = start, float(tasks)
    seen = []
    while t < start + seconds:
        want = cadence.observe(t, int(done), cur)
        if want is not None:
            cur = want
        seen.append((t, cur))
        done += max(0.0, rate_at(t) * cur)
        t += cur
    return seen, t, int(done), cur


def test_a_fast_worker_is_sampled_every_few_tasks_down_to_the_floor():
    c = Cadence(1.0, 0.0, 0)
    seen, *_ = drive(c, lambda t: 300.0, 30.0)
    late = [iv for t, iv in seen if t > 5.0]
    assert late and all(iv == pytest.approx(FAST_INTERVAL) for iv in late)
    assert c.rate == pytest.approx(300.0, rel=0.1)


def test_a_medium_rate_gets_about_tasks_per_sample_tasks_a_sample():
    c = Cadence(1.0, 0.0, 0)
    seen, *_ = drive(c, lambda t: 100.0, 30.0)
    late = [iv for t, iv in seen if t > 5.0]
    # each sample sees about TASKS_PER_SAMPLE tasks (within the 20 % the interval is allowed to lag)
    assert all(0.8 * TASKS_PER_SAMPLE <= 100.0 * iv <= 1.25 * TASKS_PER_SAMPLE for iv in late), set(late)


def test_a_task_a_minute_keeps_the_configured_interval():
    c = Cadence(1.0, 0.0, 0)
    seen, *_ = drive(c, lambda t: 1 / 60, 600.0)
    after_first = [iv for t, iv in seen if t > 61.0]  # the first task ends at t=60 s
    assert after_first and all(iv == 1.0 for iv in after_first), sorted(set(after_first))


def test_before_the_first_task_the_cadence_probes_then_settles_on_the_rate():
    c = Cadence(1.0, 0.0, 0)
    assert c.observe(0.0, 0, 1.0) == PROBE_INTERVAL  # no rate yet: look again soon
    seen, t, total, cur = drive(c, lambda t: 0.0, 30.0, current=PROBE_INTERVAL)
    assert {iv for _, iv in seen} == {PROBE_INTERVAL}  # an idle start-up keeps looking for the first tasks
    _, t, total, cur = drive(c, lambda t: 2.0, 10.0, start=t, current=cur)
    assert cur == 1.0  # a slow worker, once seen: the configured interval


def test_the_start_reference_gives_the_rate_on_the_first_sample():
    c = Cadence(1.0, 10.0, 0)  # the detector attached at t=10 s with no task run yet
    assert c.observe(11.0, 300, 1.0) == FAST_INTERVAL
    assert c.rate == pytest.approx(300.0)


def test_a_noisy_rate_does_not_make_the_interval_flap():
    rnd = random.Random(1)
    c = Cadence(1.0, 0.0, 0)
    seen, *_ = drive(c, lambda t: 100.0 * rnd.uniform(0.7, 1.3), 300.0)
    late = [iv for t, iv in seen if t > 10.0]
    changes = sum(a != b for a, b in zip(late, late[1:]))
    assert len(late) > 1000 and changes < 0.02 * len(late), changes


def test_the_rate_falling_returns_to_the_configured_interval_and_rising_speeds_up_again():
    c = Cadence(1.0, 0.0, 0)
    _, t, total, cur = drive(c, lambda t: 300.0, 20.0)
    assert cur == pytest.approx(FAST_INTERVAL)
    _, t, total, cur = drive(c, lambda t: 2.0, 10.0, start=t, tasks=total, current=cur)
    assert cur == 1.0
    _, t, total, cur = drive(c, lambda t: 300.0, 10.0, start=t, tasks=total, current=cur)
    assert cur == pytest.approx(FAST_INTERVAL)


@pytest.mark.parametrize("base", [0.2, 0.02])
def test_the_interval_stays_within_the_floor_and_the_configured_interval(base):
    c = Cadence(base, 0.0, 0)
    for rate in (0.0, 1.0, 5.0, 300.0, 10_000.0):
        seen, *_ = drive(c, lambda t, r=rate: r, 5.0)
        assert all(min(FAST_INTERVAL, base) <= iv <= base for _, iv in seen), (rate, sorted({iv for _, iv in seen}))
    assert c.bounded(10.0) == base and c.bounded(0.0) == min(FAST_INTERVAL, base)


def test_a_clock_that_goes_back_starts_a_new_reference_instead_of_a_negative_rate():
    c = Cadence(1.0, 0.0, 0)
    drive(c, lambda t: 300.0, 5.0, start=100.0)
    assert c.observe(0.0, 2000, FAST_INTERVAL) == PROBE_INTERVAL
    assert c.rate >= 0.0
