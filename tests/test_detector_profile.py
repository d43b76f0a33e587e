"""The per-process memory profile in the report (what baselines are made of), on synthetic series."""

from __future__ import annotations

from otel_leak.detector import profile
from tests.test_detector import MiB, make_detector, stream


def _feed(samples, **env):
    det, sampler, stats = make_detector(**env)
    for s in samples:
        stats.counts = dict(s.task_counts)
        sampler.feed(s)
    return det


def test_profile_gives_every_task_its_bytes_per_call_and_error():
    det = _feed(stream(seconds=60, rate=40, leak=("b", 32 * 1024), noise=50_000))
    p = det.report()["profile"]
    per = p["per_task"]
    assert set(per) == {"a", "b", "c"}
    b = per["b"]
    assert abs(b["bytes_per_call"] - 32 * 1024) < 4 * b["se"] + 2048, b  # the leak, within its error
    for k in ("a", "c"):
        assert abs(per[k]["bytes_per_call"]) < 4 * per[k]["se"] + 2048, per[k]  # nothing retained
        assert per[k]["se"] > 0 and per[k]["calls"] > 100
    assert p["floor_slope_bytes_per_s"] > 0 and p["floor_slope_se"] > 0
    assert 30 < p["tasks_per_s"] < 50
    assert abs(sum(p["mix"].values()) - 1) < 1e-3


def test_flat_worker_profile_and_too_little_data():
    det = _feed(stream(seconds=60, rate=40, noise=50_000))
    p = det.report()["profile"]
    assert abs(p["floor_slope_bytes_per_s"]) < 3 * p["floor_slope_se"] + 4096
    assert p["rss_steady_bytes"] >= 40 * MiB
    assert profile.per_task([]) == {}
    det = _feed(stream(seconds=2, rate=40))
    assert det.report()["profile"]["per_task"] == {}


def test_a_worker_whose_resident_memory_never_moved_still_has_an_error_to_compare_with():
    """The allocator reused free pages for the whole run: every increment is 0. The estimate is 0 with at
    least the pages' rounding as its error (it was 0 ± 0, and compare called the release inconclusive)."""
    det = _feed(stream(seconds=60, rate=40, noise=0))
    per = det.report()["profile"]["per_task"]
    assert set(per) == {"a", "b", "c"}
    for e in per.values():
        assert e["bytes_per_call"] == 0 and 0 < e["se"] < 4096, e


def test_the_regression_is_cached_between_reports_and_exempted_from_the_tick_budget(monkeypatch):
    det = _feed(stream(seconds=30, rate=40, leak=("b", 32 * 1024)))
    calls = []
    real = profile.build
    monkeypatch.setattr(profile, "build", lambda d, dur: calls.append(dur) or real(d, dur))
    exempted = []
    det.sampler.exempt = exempted.append
    det._profile_cache = None
    first = det.report()["profile"]
    assert det.report()["profile"] == first and len(calls) == 1  # periodic writes reuse it
    det.report(final=True)
    assert len(calls) == 2  # the final report computes afresh
    assert len(exempted) == 2 and all(x >= 0 for x in exempted)
