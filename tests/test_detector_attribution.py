"""Attribution with neighbours: only the real leaker is ever a suspect.

'ingest' keeps 64 KiB per call; 'render' allocates and frees 2 MiB. When the two alternate strictly, their
per-interval counts are collinear and resident memory cannot tell them apart; when the leaked objects land
in heap space 'render' freed, fresh pages are first touched by 'render' calls. Tier 1 must not name a task
from resident memory alone while tier 2 (traced Python bytes per task) is coming, and tier 2 vetoes the
neighbour. The real-process version of this is the ``heap_neighbour`` scenario (test_detector_e2e.py).
"""

from __future__ import annotations

import random
from types import SimpleNamespace

from otel_leak.detector import tier2 as T2
from otel_leak.detector.attribution import regress
from tests.test_detector import MiB, make_detector

K64 = 64 * 1024


def neighbour_stream(seconds=90, rate=50, seed=3, alternate=True, rss_on_render=0.0):
    """1 Hz samples. ``alternate``: ingest/render strictly alternate (collinear counts); else the mix
    changes every second. ``rss_on_render``: share of the leaked bytes whose pages show up in resident
    memory only when a later 'render' call touches them."""
    rnd = random.Random(seed)
    counts = {"ingest": 0, "render": 0}
    total, leaked, debt, rss_leak = 0, 0, 0, 0
    k = 0
    for sec in range(seconds):
        share = 0.5 if alternate else rnd.uniform(0.2, 0.8)
        for _ in range(rate):
            name = ("ingest", "render")[k % 2] if alternate else ("ingest" if rnd.random() < share else "render")
            k += 1
            counts[name] += 1
            total += 1
            if name == "ingest":
                leaked += K64
                debt += rss_on_render * K64
                rss_leak += (1 - rss_on_render) * K64
            else:
                rss_leak += debt
                debt = 0
        rss = 40 * MiB + int(rss_leak) + rnd.randint(0, 300_000)
        rss -= rss % 4096
        yield SimpleNamespace(t=float(sec), wall=1e9 + sec, rss=rss, vms=2 * rss, heap_blocks=100_000 + leaked // 512,
                              traced=None, floor=rss, task_counts=dict(counts), tasks_total=total)


def tier2_result(seed=5):
    """What a tier-2 window sees: traced bytes per 0.033 s row (1-2 tasks each), ingest keeps 64 KiB."""
    rnd = random.Random(seed)
    rows_c, rows_y = [], []
    k = 0
    for _ in range(30):
        c = {}
        for _ in range(rnd.choice((1, 2))):
            name = ("ingest", "render")[k % 2]
            k += 1
            c[name] = c.get(name, 0) + 1
        rows_c.append(c)
        rows_y.append(K64 * c.get("ingest", 0) + rnd.gauss(0, 2000))
    res = T2.Tier2Result()
    res.attribution = regress(rows_c, rows_y)
    res.calls = {"ingest": 20, "render": 20}
    res.python_growth_per_s = K64 * 25.0
    res.python_growth_per_task = K64 / 2
    res.tasks = 40
    res.duration = 1.0
    res.started_t = 0.0
    return res


def run_detector(samples, tier2: bool, on_declare=None):
    env = {"OTEL_PYTHON_LEAK_DETECTOR_TIER2": "true" if tier2 else "false"}
    det, sampler, stats = make_detector(None, **env)
    det.tier2_enabled = tier2
    det._maybe_tier2 = lambda s: None  # the window is simulated below
    named = set()
    for s in samples:
        stats.counts, stats.total = dict(s.task_counts), s.tasks_total
        was = det.verdict
        sampler.feed(s)
        named.update(x["task"] for x in det.suspects)
        if det.verdict == "leak" and was != "leak" and on_declare is not None:
            on_declare(det)
            named.update(x["task"] for x in det.suspects)
    return det, named


def test_collinear_counts_do_not_make_significant_suspects():
    rows = list(neighbour_stream(seconds=60))
    counts, growth = [], []
    for a, b in zip(rows, rows[1:]):
        counts.append({k: b.task_counts[k] - a.task_counts[k] for k in b.task_counts})
        growth.append(float(b.rss - a.rss))
    out = regress(counts, growth)
    assert not [a.task for a in out if a.task == "render" and a.significant()], out


def test_tier2_confirms_the_leaker_and_vetoes_the_neighbour():
    """Resident memory charged partly to 'render' (pages first touched by it), strictly alternating tasks."""
    def declare(det):
        # tier 1 named nobody yet: resident-memory attributions wait for tier 2
        assert det.suspects == []
        det.tier2_thread = object()
        det._tier2_done(tier2_result())

    det, named = run_detector(neighbour_stream(alternate=True, rss_on_render=0.7), tier2=True, on_declare=declare)
    assert det.verdict == "leak"
    assert [s["task"] for s in det.suspects] == ["ingest"], det.suspects
    assert named == {"ingest"}
    assert 0.8 * K64 < det.suspects[0]["retained_bytes_per_call"] < 1.2 * K64
    evs = [e for e in det.events if e["kind"] == "suspects"]
    assert evs and all("render" not in e["tasks"] for e in evs)
    det.stop()


def test_without_tier2_only_significant_tier1_suspects_are_named():
    det, named = run_detector(neighbour_stream(alternate=False, rss_on_render=0.0), tier2=False)
    assert det.verdict == "leak"
    assert named == {"ingest"}, named
    det.stop()


def test_tier2_error_falls_back_to_significant_tier1_suspects():
    def declare(det):
        assert det.suspects == []
        bad = T2.Tier2Result()
        bad.error = "RuntimeError: boom"
        det.tier2_thread = object()
        det._tier2_done(bad)

    det, named = run_detector(neighbour_stream(alternate=False), tier2=True, on_declare=declare)
    assert det.verdict == "leak" and named == {"ingest"}, named
    det.stop()


def test_tier1_suspects_wait_for_tier2_then_stand_if_it_never_answers():
    from otel_leak.detector import detector as D

    held = {}

    def declare(det):
        held["at_declare"] = list(det.suspects)
        det.tier2_thread = object()  # a window that never reports

    det, named = run_detector(neighbour_stream(seconds=120, alternate=False), tier2=True, on_declare=declare)
    assert det.verdict == "leak" and held["at_declare"] == []
    assert named == {"ingest"}
    changes = [e for e in det.events if e["kind"] == "suspects"]
    declared_t = next(e["t_s"] for e in det.events if e["kind"] == "leak_declared")
    assert changes and changes[0]["t_s"] - declared_t > D.TIER2_WAIT
    det.stop()


def test_a_tier2_window_of_a_handful_of_tasks_neither_clears_nor_names():
    """A window that saw 6 tasks (a worker idle between batches) whose regression clears the leaker and
    names its neighbour: no answer. The suspects wait for an informative window, and tier 1 names the
    leaker once the wait is over; the neighbour is never named and the leaker never vetoed."""
    from otel_leak.detector import detector as D

    def declare(det):
        few = tier2_result()
        few.tasks, few.calls = 6, {"ingest": 3, "render": 3}
        rows_c = [{"render": 1}, {"ingest": 1}, {"render": 1}, {"ingest": 1}, {"render": 1}, {"ingest": 1}]
        few.attribution = regress(rows_c, [K64, 10.0, K64 + 500, 30.0, K64 - 300, 20.0])
        assert few.attribution and few.attribution[0].task == "render"  # what the handful says
        det.tier2_thread = object()
        det._tier2_done(few)
        assert det.suspects == []
        det.tier2_thread = object()  # the next window never reports

    det, named = run_detector(neighbour_stream(seconds=120, alternate=False), tier2=True, on_declare=declare)
    assert det.verdict == "leak" and named == {"ingest"}, named
    assert not any(e.get("vetoed") for e in det.events if e["kind"] == "suspects")
    changes = [e for e in det.events if e["kind"] == "suspects"]
    declared_t = next(e["t_s"] for e in det.events if e["kind"] == "leak_declared")
    assert changes and changes[0]["t_s"] - declared_t > D.TIER2_WAIT
    det.stop()


def _traced_rows(means: dict, calls: int, noise: float, rnd) -> dict:
    out = {}
    for k, m in means.items():
        xs = [m + rnd.gauss(0, noise) for _ in range(calls)]
        out[k] = [calls, sum(xs), sum(x * x for x in xs)]
    return out


def test_tasks_that_ran_alone_are_attributed_their_own_mean_bytes():
    """A short window of a one-task-at-a-time worker, where task types run in batches: the per-task means
    name the leaker with its bytes per call and nobody else (the rows' regression split it in two)."""
    rnd = random.Random(7)
    after = _traced_rows({"render": 32_800, "notify": 480, "resize": 500}, 35, 300, rnd)
    growth = sum(v[1] for v in after.values())
    attr = T2.per_task({}, after, overlapped=0, growth=growth)
    named = [a for a in attr if a.significant(3.0)]
    assert [a.task for a in named] == ["render"], attr
    assert abs(named[0].bytes_per_call - 32_800) < 500 and named[0].calls == 35


def test_per_task_means_only_for_tasks_that_did_not_overlap_and_explain_the_growth():
    rnd = random.Random(8)
    after = _traced_rows({"a": 10_000, "b": 0}, 30, 100, rnd)
    growth = sum(v[1] for v in after.values())
    before = {"a": [10, 10 * 10_000, 10 * 10_000 ** 2], "b": [10, 0.0, 0.0]}
    # the window's own calls (20 of each) are what counts, not the totals before it
    assert T2.per_task(before, after, overlapped=0, growth=growth)[0].calls == 20
    # threads or an event loop: most tasks overlapped, the regression decides
    assert T2.per_task({}, after, overlapped=30, growth=growth) is None
    # memory kept outside the tasks (after a span ends) explains most of the growth
    assert T2.per_task({}, after, overlapped=0, growth=10 * growth) is None
    # too few tasks to say anything
    assert T2.per_task({}, _traced_rows({"a": 10_000}, 10, 100, rnd), overlapped=0, growth=1e5) is None


def test_what_the_processor_allocates_around_a_task_is_not_a_site_of_the_worker():
    """The processor's readings and attributes are allocated on the worker's thread with the task's line
    below them: otel-leak's own, not the worker's (its retention path went through otel-leak's probe)."""
    import json.decoder
    import os

    import opentelemetry.sdk.trace

    import otel_leak

    pkg = os.path.dirname(otel_leak.__file__)
    user, lib = "/srv/app/tasks.py", opentelemetry.sdk.trace.__file__
    probe, integ = os.path.join(pkg, "probes.py"), os.path.join(pkg, "integrations", "_base.py")
    assert T2._ours([probe, os.path.join(pkg, "processor.py"), lib, user, integ])  # made by the processor
    assert not T2._ours([user, integ, user])  # the worker's code, called by an integration
    assert T2.is_library(json.decoder.__file__)
    assert not T2._ours([json.decoder.__file__, user, integ])  # the worker's, through the stdlib
    assert T2._ours([lib, os.path.join(pkg, "detector", "tier2.py")])  # the detector's own thread


def test_a_leak_declared_before_its_task_stands_out_names_it_later():
    """Noisy resident memory (2 MiB per sample) and six task types: the trend is clear before the regression
    over the few hundred tasks at the declaration can single out 'a' (64 KiB per call). As rows accumulate
    tier 1 attributes again at each window close, names 'a' (and only 'a') and says so in an event."""
    from tests.test_detector import stream

    samples = stream(seconds=120, rate=40, types=tuple("abcdef"), leak=("a", K64), noise=2 * MiB, seed=7)
    first = []
    det, named = run_detector(samples, tier2=False, on_declare=lambda d: first.extend(d.suspects))
    assert det.verdict == "leak" and first == [], first
    assert named == {"a"}, named
    (ev,) = [e for e in det.events if e["kind"] == "reattributed"]
    assert ev["tasks"] == ["a"]
    det.stop()
