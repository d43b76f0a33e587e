"""Naming suspects from tier 1's and tier 2's attributions, on hand-made attributions: tier 2 vetoes a
neighbour tier 1 blamed for a Python-heap leak, per-task suspects wait for tier 2 (up to TIER2_WAIT), and
only significant attributions are ever named."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from otel_leak import names
from otel_leak.detector import suspects as SU
from otel_leak.detector import tier2 as T2
from otel_leak.detector.attribution import Attribution

K64 = 64 * 1024


def strong(task, per_call=K64, share=0.9, calls=500, t=12.0, confidence=0.9):
    """An attribution clearly significant for either tier."""
    return Attribution(task=task, bytes_per_call=per_call, calls=calls, confidence=confidence, share=share, t=t)


def weak(task, per_call=K64, share=0.9, calls=500):
    return Attribution(task=task, bytes_per_call=per_call, calls=calls, confidence=0.3, share=share, t=1.0)


def tier2(*attrs, calls=None):
    res = T2.Tier2Result()
    res.attribution = list(attrs)
    res.calls = calls if calls is not None else {a.task: 20 for a in attrs}
    return res


def named(suspects):
    return [s["task"] for s in suspects]


# ---------------------------------------------------------------------------------------------- merge
def test_a_neighbour_tier2_contradicts_is_vetoed_on_a_python_heap_leak():
    # tier 1 blames both (resident pages first touched by 'render'); tier 2 sees 20 calls of each and only
    # 'ingest' retaining traced bytes
    t1 = [strong("ingest", share=0.5), strong("render", share=0.5)]
    res = tier2(strong("ingest", per_call=K64), weak("render", per_call=100.0, share=0.01),
                calls={"ingest": 20, "render": 20})
    out, vetoed, held = SU.merge(t1, res, "python_heap", {}, pending=False)
    assert named(out) == ["ingest"] and vetoed == ["render"] and not held
    assert out[0]["source"] == "tier2"


def test_a_tier1_suspect_tier2_saw_too_little_of_stands_when_tier2_names_nobody():
    t1 = [strong("ingest")]
    res = tier2(calls={"ingest": 1})  # one call in the window: no evidence either way
    out, vetoed, _ = SU.merge(t1, res, "python_heap", {}, pending=False)
    assert named(out) == ["ingest"] and vetoed == []
    assert out[0]["source"] == "tier1"


def test_a_rare_tier1_suspect_tier2_hardly_saw_is_not_cleared_by_others_tier2_names():
    # a rare task type (one call in tier 2's 90-task window, and only some of its calls leak) retains most of
    # the growth in tier 1; tier 2 finds small significant retention in frequent types it saw 30 times each
    t1 = [strong("parse", per_call=96 * 1024, share=0.9)]
    res = tier2(strong("audit", per_call=640.0, share=0.2, confidence=0.7),
                strong("index", per_call=470.0, share=0.17, confidence=0.66),
                calls={"audit": 30, "index": 30, "parse": 1})
    out, vetoed, _ = SU.merge(t1, res, "python_heap", {}, pending=False)
    assert named(out)[0] == "parse" and vetoed == [], (out, vetoed)
    assert out[0]["source"] == "tier1"


def test_a_regression_that_names_nobody_does_not_clear_a_strong_tier1_suspect():
    # an event loop's overlapping requests: tier 2's regression over a 4 s window put an insignificant
    # coefficient on the wrong route and none on the leaking one (uvicorn, two workers, CI)
    t1 = [strong("GET /users", t=100.0)]
    res = tier2(weak("GET /hello"), calls={"GET /users": 36, "GET /hello": 36})
    res.method = "regression"
    out, vetoed, _ = SU.merge(t1, res, "python_heap", {}, pending=False)
    assert named(out) == ["GET /users"] and vetoed == []
    assert out[0]["source"] == "tier1"


def test_exact_per_task_means_clear_a_suspect_that_kept_nothing():
    # tasks that ran alone: 'render' ran 30 times and kept nothing traced (its mean was not positive)
    t1 = [strong("render")]
    res = tier2(calls={"render": 30})
    res.method = "per_task"
    out, vetoed, _ = SU.merge(t1, res, "python_heap", {}, pending=False)
    assert out == [] and vetoed == ["render"]


def test_on_a_python_heap_leak_the_bytes_per_call_are_tier2s():
    out, _, _ = SU.merge([strong("ingest", per_call=3 * K64)], tier2(strong("ingest", per_call=K64)),
                         "python_heap", {}, pending=False)
    assert out[0]["retained_bytes_per_call"] == pytest.approx(K64)


def test_on_a_native_leak_tier2s_python_bytes_neither_name_nor_veto():
    t1 = [strong("decode")]
    res = tier2(strong("parse"), calls={"decode": 50, "parse": 50})  # tier 2 sees no Python growth in decode
    out, vetoed, _ = SU.merge(t1, res, "native_or_fragmentation", {}, pending=False)
    assert named(out) == ["decode"] and vetoed == []
    assert out[0]["retained_bytes_per_call"] == pytest.approx(K64) and out[0]["source"] == "tier1"


def test_on_a_mixed_leak_both_tiers_name_their_suspects():
    out, _, _ = SU.merge([strong("decode")], tier2(strong("parse")), "mixed", {}, pending=False)
    assert set(named(out)) == {"decode", "parse"}


def test_insignificant_attributions_are_never_named():
    t1 = [weak("a"), strong("b", share=0.05), strong("c", per_call=8.0)]  # low t, small share, few bytes
    assert SU.merge(t1, None, None, {}, pending=False)[0] == []
    assert SU.merge([], tier2(weak("a")), "python_heap", {}, pending=False)[0] == []


def test_at_most_max_suspects_strongest_first():
    t1 = [strong(f"t{k}", share=0.2 + 0.01 * k, confidence=0.5 + 0.04 * k) for k in range(SU.MAX_SUSPECTS + 3)]
    out, _, _ = SU.merge(t1, None, "native_or_fragmentation", {}, pending=False)
    assert len(out) == SU.MAX_SUSPECTS
    assert named(out) == [f"t{k}" for k in range(SU.MAX_SUSPECTS + 2, 2, -1)]
    confs = [s["confidence"] for s in out]
    assert confs == sorted(confs, reverse=True) and all(0 < c <= 0.99 for c in confs)


def test_calls_come_from_the_task_counts_and_trace_ids_from_the_callback():
    out, _, _ = SU.merge([strong("a", calls=7)], None, None, {"a": 1234}, pending=False,
                         trace_ids=lambda task: [task * 32])
    assert out[0]["calls"] == 1234 and out[0]["trace_ids"] == ["a" * 32]
    out, _, _ = SU.merge([strong("a", calls=7)], None, None, {}, pending=False)
    assert out[0]["calls"] == 7 and out[0]["trace_ids"] == []


# ---------------------------------------------------------------------------------------------- hold
def test_tier1_suspects_are_held_while_tier2_is_pending_and_named_once_it_is_not():
    t1 = [strong("ingest")]
    out, vetoed, held = SU.merge(t1, None, "python_heap", {}, pending=True)
    assert out == [] and held
    out, vetoed, held = SU.merge(t1, None, "python_heap", {}, pending=False)
    assert named(out) == ["ingest"] and not held


def test_tier2_is_pending_until_its_first_report_or_tier2_wait():
    declared = 100.0
    assert SU.tier2_pending(True, False, False, declared, declared + 1.0)
    assert SU.tier2_pending(True, False, False, declared, declared + SU.TIER2_WAIT - 0.01)
    assert not SU.tier2_pending(True, False, False, declared, declared + SU.TIER2_WAIT + 0.01)  # released
    assert not SU.tier2_pending(True, True, False, declared, declared + 1.0)  # it reported
    assert not SU.tier2_pending(False, False, False, declared, declared + 1.0)  # tier 2 off
    assert not SU.tier2_pending(True, False, True, declared, declared + 1.0)  # the detector failed


# ---------------------------------------------------------------------------------------------- kind
def test_kind_from_tier1_is_python_heap_only_when_heap_blocks_rise_steadily():
    assert SU.kind_from_tier1(SimpleNamespace(heap_tau=0.9, heap_slope=50.0)) == "python_heap"
    assert SU.kind_from_tier1(SimpleNamespace(heap_tau=0.9, heap_slope=0.0)) == "native_or_fragmentation"
    assert SU.kind_from_tier1(SimpleNamespace(heap_tau=0.2, heap_slope=50.0)) == "native_or_fragmentation"


@pytest.mark.parametrize("traced_share, kind",
                         [(1.0, "python_heap"), (0.05, "native_or_fragmentation"), (0.35, "mixed")])
def test_kind_from_tier2_is_the_share_of_resident_growth_traced_python_memory_explains(traced_share, kind):
    rss_slope, rate = 1_000_000.0, 100.0  # 10 kB resident growth per task
    per_task = SimpleNamespace(python_growth_per_task=traced_share * rss_slope / rate, python_growth_per_s=0.0)
    assert SU.kind_from_tier2(per_task, rss_slope, rate, None) == kind
    per_s = SimpleNamespace(python_growth_per_task=None, python_growth_per_s=traced_share * rss_slope)
    assert SU.kind_from_tier2(per_s, rss_slope, 0.0, None) == kind


def test_kind_from_tier2_keeps_the_current_kind_without_resident_growth():
    res = SimpleNamespace(python_growth_per_task=1e6, python_growth_per_s=1e6)
    assert SU.kind_from_tier2(res, 0.0, 10.0, "native_or_fragmentation") == "native_or_fragmentation"


# ---------------------------------------------------------------------------------------------- publish
def test_span_attributes_per_suspect_with_the_top_site():
    out, _, _ = SU.merge([strong("a")], None, None, {}, pending=False)
    ev = SU.span_attributes(out, "python_heap", [{"file": "app.py", "line": 12}, {"file": "b.py", "line": 1}])
    assert set(ev) == {"a"}
    attrs = ev["a"]
    assert attrs[names.ATTR_TASK_NAME] == "a" and attrs[names.ATTR_DETECTOR_VERDICT] == "leak"
    assert attrs["otel_leak.leak.site"] == "app.py:12" and attrs["otel_leak.leak.kind"] == "python_heap"
    assert SU.span_attributes(out, None, [])["a"]["otel_leak.leak.kind"] == "unknown"
    assert "otel_leak.leak.site" not in SU.span_attributes(out, None, [])["a"]


def test_trace_ids_are_valid_ids_the_last_five_and_never_raise():
    ids = [f"{k:032x}" for k in range(8)]
    stats = SimpleNamespace(trace_ids=lambda task: ids + ["short", None])
    assert SU.trace_ids_of(stats, "a") == ids[-5:]

    def boom(task):
        raise RuntimeError("stats gone")

    assert SU.trace_ids_of(SimpleNamespace(trace_ids=boom), "a") == []
    assert SU.trace_ids_of(None, "a") == [] and SU.trace_ids_of(object(), "a") == []
