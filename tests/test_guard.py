"""The memory-budget guard's decision rule and safety rules, on synthetic detector states (no threads, no
sleeps): otel_leak.guard. The real Celery workers are in tests/test_guard_celery.py."""

from __future__ import annotations

import logging
import os
import time
from types import SimpleNamespace

import pytest

from otel_leak import config, names
from otel_leak import guard as G

MiB = 1024 * 1024
B = G.Budgets(budget=100 * MiB, hard=200 * MiB, min_time_to_limit=600.0)


def st(floor, first=50 * MiB, verdict="leak", slope=0.0, limit=None):
    return G.State(floor, first, verdict, slope, limit)


@pytest.mark.parametrize("state, pre, reason, blocked", [
    (st(150 * MiB), False, "budget", None),
    (st(150 * MiB, verdict="no_leak"), False, None, None),  # over the soft budget, no leak: nothing
    (st(150 * MiB, verdict="inconclusive"), False, None, None),
    (st(99 * MiB), False, None, None),
    (st(250 * MiB, verdict="no_leak"), False, "hard_budget", None),  # hard: whatever the verdict
    (st(250 * MiB, first=250 * MiB), False, "hard_budget", None),  # even when it started there
    (st(150 * MiB, first=120 * MiB), False, "budget", "started_over_budget"),  # the Celery restart loop
    (st(150 * MiB), True, None, None),  # before a task only the hard budget counts
    (st(250 * MiB), True, "hard_budget", None),
    # time to limit: (1000 - 50) MiB at 2 MiB/s = 475 s < 600 s, leak
    (st(50 * MiB, slope=2 * MiB, limit=1000 * MiB), False, "time_to_limit", None),
    (st(50 * MiB, slope=2 * MiB, limit=1000 * MiB, verdict="no_leak"), False, None, None),
    (st(50 * MiB, slope=1 * MiB, limit=1000 * MiB), False, None, None),  # 950 s
    (st(50 * MiB, slope=-1 * MiB, limit=1000 * MiB), False, None, None),  # shrinking
    (st(150 * MiB, first=120 * MiB, slope=2 * MiB, limit=1000 * MiB), False, "time_to_limit", None),
    (st(None), False, None, None),  # no reading yet
])
def test_decision_rule(state, pre, reason, blocked):
    d = G.decide(state, B, pre_task=pre)
    assert (d.reason if d else None) == reason
    assert (d.blocked if d else None) == blocked


def test_budgets_in_bytes_or_as_a_share_of_the_limit():
    assert G.resolve(0.8, 1000) == 800
    assert G.resolve(1.0, 1000) == 1000
    assert G.resolve(0.8, None) is None  # a share without a known limit: no budget
    assert G.resolve(5e8, None) == 500_000_000
    assert G.resolve(0, 1000) is None
    assert G.time_to_limit(400, 10.0, 1000) == 60.0
    assert G.time_to_limit(1200, 10.0, 1000) == 0.0
    assert G.time_to_limit(400, 0.0, 1000) is None and G.time_to_limit(400, 10.0, None) is None


class Counter:
    def __init__(self):
        self.adds = []

    def add(self, n, attrs):
        self.adds.append((n, dict(attrs)))


class Meter:
    def __init__(self):
        self.counter = Counter()
        self.made = []

    def create_counter(self, name, unit="", description=""):
        self.made.append((name, unit))
        return self.counter


class Span:
    def __init__(self):
        self.events = []

    def is_recording(self):
        return True

    def add_event(self, name, attributes):
        self.events.append((name, dict(attributes)))


class Clock:
    def __init__(self, t=1_000_000.0):
        self.t = t

    def __call__(self):
        return self.t


def make_guard(tmp_path, mode="on", clock=None, rng=lambda: 0.0, **env):
    environ = {"OTEL_PYTHON_LEAK_GUARD": mode, "OTEL_PYTHON_LEAK_GUARD_BUDGET": str(100 * MiB),
               "OTEL_PYTHON_LEAK_GUARD_HARD_BUDGET": str(200 * MiB), "OTEL_PYTHON_LEAK_GUARD_JITTER": "0"}
    environ.update({f"OTEL_PYTHON_LEAK_GUARD_{k.upper()}": str(v) for k, v in env.items()})
    meter = Meter()
    g = G.Guard(None, meter, environ, shared=G.Shared(str(tmp_path / "guard")), clock=clock or Clock(), rng=rng)
    return g, meter


def test_on_recycles_once_and_records_it_everywhere(tmp_path, caplog):
    g, meter = make_guard(tmp_path)
    span = Span()
    assert g.check("post_task", task="t", span=span, state=st(90 * MiB)) is None
    assert g.entries == collections_empty()
    with caplog.at_level(logging.WARNING, logger="otel_leak"):
        assert g.check("post_task", task="t", span=span, state=st(150 * MiB)) == "budget"
        assert g.check("post_task", task="t", span=span, state=st(150 * MiB)) == "budget"  # stays decided
    assert g.recycles == 1 and g.recycling == "budget"
    (entry,) = g.entries
    assert entry["outcome"] == "recycled" and entry["reason"] == "budget" and entry["floor_bytes"] == 150 * MiB
    assert entry["budget_bytes"] == 100 * MiB and entry["task"] == "t" and entry["when"] == "post_task"
    assert meter.made == [(names.GUARD_RECYCLES.name, names.GUARD_RECYCLES.unit)]
    ((n, attrs),) = meter.counter.adds
    assert n == 1 and attrs[names.ATTR_GUARD_REASON] == "budget" and attrs[names.ATTR_GUARD_MODE] == "on"
    assert attrs[names.ATTR_GUARD_OUTCOME] == "recycled" and attrs[names.SPAN_PID] == os.getpid()
    ((ev, ev_attrs),) = span.events
    assert ev == names.EVENT_GUARD and ev_attrs[names.ATTR_GUARD_FLOOR] == 150 * MiB
    (rec,) = [r for r in caplog.records if "otel-leak guard" in r.getMessage()]
    assert rec.name == "otel_leak" and "recycling the process" in rec.getMessage()
    # the shared log counts it; the marker holds other processes back until this one leaves
    assert g.shared.recycles_last_hour(g.clock()) == 1
    assert open(g.shared.marker).read().split()[0] == str(os.getpid())
    g.release()
    assert not os.path.exists(g.shared.marker)
    report = g.for_report()
    assert report["recycles"] == 1 and report["mode"] == "on" and report["entries"][0]["outcome"] == "recycled"


def test_a_task_name_given_as_a_callable_is_resolved_only_when_a_decision_is_recorded(tmp_path):
    g, _ = make_guard(tmp_path)
    calls = []

    def name():
        calls.append(1)
        return "parsed.task"

    assert g.check("pre_task", task=name, state=st(50 * MiB)) is None  # under every budget: nothing recorded
    assert calls == []
    assert g.check("pre_task", task=name, state=st(250 * MiB)) == "hard_budget"
    assert calls == [1] and g.entries[0]["task"] == "parsed.task"


def collections_empty():
    import collections

    return collections.deque(maxlen=G.MAX_ENTRIES)


def test_dry_run_recycles_nothing_and_records_what_it_would_have_done_once(tmp_path, caplog):
    g, meter = make_guard(tmp_path, mode="dry-run")
    span = Span()
    with caplog.at_level(logging.WARNING, logger="otel_leak"):
        for _ in range(5):
            assert g.check("post_task", task="t", span=span, state=st(150 * MiB)) is None
        assert g.check("post_task", task="t", span=span, state=st(250 * MiB)) is None
    assert g.recycles == 0 and g.recycling is None and g.dry_run_recycles == 2
    assert [(e["reason"], e["outcome"], e["repeats"]) for e in g.entries] == [
        ("budget", "dry_run", 4), ("hard_budget", "dry_run", 0)]
    assert [a[names.ATTR_GUARD_OUTCOME] for _, a in meter.counter.adds] == ["dry_run", "dry_run"]
    assert len(span.events) == 2
    assert len([r for r in caplog.records if "would recycle" in r.getMessage()]) == 2
    assert g.shared.recycles_last_hour(g.clock()) == 0  # nothing counted against the rate limit


def test_rate_limit_per_directory_then_only_records(tmp_path):
    clock = Clock()
    shared = G.Shared(str(tmp_path / "guard"))
    # two recycles of other processes of the directory in the last hour, one older
    os.makedirs(shared.dir)
    with open(shared.log, "w") as f:
        f.write(f"{clock.t - 4000:.3f} 11 budget\n{clock.t - 100:.3f} 12 budget\n{clock.t - 10:.3f} 13 budget\n")
    g, meter = make_guard(tmp_path, clock=clock, max_recycles_per_hour=2)
    for _ in range(3):
        assert g.check("post_task", state=st(150 * MiB)) is None
    assert g.recycles == 0
    ((entry),) = g.entries
    assert entry["outcome"] == "rate_limited" and entry["repeats"] == 2
    assert [a[names.ATTR_GUARD_OUTCOME] for _, a in meter.counter.adds] == ["rate_limited"]
    # an hour on, the window has room again
    clock.t += 3600
    assert g.check("post_task", state=st(150 * MiB)) == "budget"
    # 0 recycles per hour: never recycles, records only
    g0, _ = make_guard(tmp_path / "zero", max_recycles_per_hour=0)
    assert g0.check("post_task", state=st(250 * MiB)) is None and g0.entries[0]["outcome"] == "rate_limited"


def test_one_process_of_the_directory_recycles_at_a_time(tmp_path):
    clock = Clock()
    g, _ = make_guard(tmp_path, clock=clock)
    shared = g.shared
    os.makedirs(shared.dir, exist_ok=True)
    with open(shared.marker, "w") as f:  # a live process (the test's parent) is recycling
        f.write(f"{os.getppid()} {clock.t - 1:.3f}\n")
    assert g.check("post_task", state=st(150 * MiB)) is None
    assert g.entries[-1]["outcome"] == "other_recycling"
    with open(shared.marker, "w") as f:  # stale: too old
        f.write(f"{os.getppid()} {clock.t - G.LOCK_STALE_S - 1:.3f}\n")
    assert g.check("post_task", state=st(150 * MiB)) == "budget"


def test_dead_holder_does_not_block(tmp_path):
    import subprocess

    p = subprocess.Popen(["true"])
    p.wait()
    g, _ = make_guard(tmp_path)
    os.makedirs(g.shared.dir, exist_ok=True)
    with open(g.shared.marker, "w") as f:
        f.write(f"{p.pid} {g.clock():.3f}\n")
    assert g.check("post_task", state=st(250 * MiB)) == "hard_budget"


def test_jitter_delays_a_soft_recycle_not_a_hard_one(tmp_path):
    clock = Clock()
    g, _ = make_guard(tmp_path, clock=clock, rng=lambda: 0.5, jitter=10)
    assert g.check("post_task", state=st(150 * MiB)) is None  # due in 5 s
    clock.t += 4.9
    assert g.check("post_task", state=st(150 * MiB)) is None
    clock.t += 0.2
    assert g.check("post_task", state=st(150 * MiB)) == "budget"
    g2, _ = make_guard(tmp_path / "2", clock=clock, rng=lambda: 0.5, jitter=10)
    assert g2.check("pre_task", state=st(250 * MiB)) == "hard_budget"
    # the floor going back under the budget cancels a pending recycle (and its jitter)
    g3, _ = make_guard(tmp_path / "3", clock=clock, rng=lambda: 0.5, jitter=10)
    assert g3.check("post_task", state=st(150 * MiB)) is None
    assert g3.check("post_task", state=st(90 * MiB)) is None and g3._due is None


def test_started_over_budget_and_unsupported_are_recorded_not_recycled(tmp_path):
    g, meter = make_guard(tmp_path)
    assert g.check("post_task", state=st(150 * MiB, first=110 * MiB)) is None
    assert g.entries[-1]["outcome"] == "started_over_budget" and g.entries[-1]["first_bytes"] == 110 * MiB
    assert g.check("post_task", state=st(150 * MiB), can_recycle=False) is None
    assert g.entries[-1]["outcome"] == "unsupported"
    assert g.recycles == 0


def test_a_share_of_the_limit_without_a_limit_warns_once_and_is_off(tmp_path, caplog):
    g, _ = make_guard(tmp_path, budget="0.5", hard_budget="0.9")
    with caplog.at_level(logging.WARNING, logger="otel_leak"):
        for _ in range(3):
            assert g.check("post_task", state=st(10_000 * MiB, limit=None)) is None
    assert len([r for r in caplog.records if "knows no memory limit" in r.getMessage()]) == 1
    assert g.check("post_task", state=st(600 * MiB, limit=1000 * MiB)) == "budget"


def test_an_internal_error_disables_the_guard_with_one_warning(tmp_path, caplog):
    g, _ = make_guard(tmp_path)
    g.runtime = SimpleNamespace(detector=SimpleNamespace())  # no state to read
    with caplog.at_level(logging.WARNING, logger="otel_leak"):
        assert g.check("post_task") is None
        assert g.check("post_task") is None
    assert g.disabled
    assert len([r for r in caplog.records if "guard stopped" in r.getMessage()]) == 1
    assert g.for_report()["disabled"] is True


def test_reads_the_detector_floor_verdict_and_slope(tmp_path):
    g, _ = make_guard(tmp_path, min_time_to_limit=0)
    det = SimpleNamespace(recent_rss=[160 * MiB, 150 * MiB, 170 * MiB], first_rss=60 * MiB, verdict="leak",
                          error=None, tier1=SimpleNamespace(windows=[1], trend=SimpleNamespace(slope=1234.5)))
    g.runtime = SimpleNamespace(detector=det)
    s = g.read_state()
    assert (s.floor, s.first, s.verdict, s.slope) == (150 * MiB, 60 * MiB, "leak", 1234.5)
    assert g.check("post_task") == "budget"


def test_the_process_report_carries_the_guard_and_validates(tmp_path):
    from otel_leak.detector.detector import Detector
    from otel_leak.detector.report import validate_process_report

    det = Detector(stats=None, sampler=None, meter=None, environ={})
    assert det.report()["guard"] is None and validate_process_report(det.report()) == []
    g, _ = make_guard(tmp_path, mode="dry-run")
    det.guard = g
    g.check("post_task", state=st(150 * MiB))
    doc = det.report()
    assert validate_process_report(doc) == []
    assert doc["guard"]["dry_run_recycles"] == 1 and doc["guard"]["entries"][0]["outcome"] == "dry_run"
    doc["guard"] = {"mode": "sometimes", "recycles": -1, "dry_run_recycles": 0, "entries": [{}]}
    assert len(validate_process_report(doc)) == 3


def test_off_by_default_and_start_returns_none():
    assert config.get(config.GUARD, {}) == "off"
    assert G.start(SimpleNamespace(detector=None), None, environ={}) is None


def test_bad_guard_settings_warn_once_naming_the_variable_and_the_default(caplog):
    bad = {"OTEL_PYTHON_LEAK_GUARD": "yes", "OTEL_PYTHON_LEAK_GUARD_BUDGET": "-3",
           "OTEL_PYTHON_LEAK_GUARD_HARD_BUDGET": "lots", "OTEL_PYTHON_LEAK_GUARD_MIN_TIME_TO_LIMIT": "soon",
           "OTEL_PYTHON_LEAK_GUARD_MAX_RECYCLES_PER_HOUR": "2.5", "OTEL_PYTHON_LEAK_GUARD_JITTER": "-1"}
    for env in bad:
        config._warned.discard(env)
    with caplog.at_level(logging.WARNING, logger="otel_leak"):
        for _ in range(3):
            g = G.Guard(None, None, bad, shared=G.Shared("/nonexistent"))
    assert g.mode == "off" and g._budget == 0.8 and g._hard == 0.95 and g.min_time_to_limit == 600.0
    assert g.max_per_hour == 6 and g.jitter == 10.0
    messages = [r.getMessage() for r in caplog.records]
    for env, default in [("OTEL_PYTHON_LEAK_GUARD", "'off'"), ("OTEL_PYTHON_LEAK_GUARD_BUDGET", "0.8"),
                         ("OTEL_PYTHON_LEAK_GUARD_HARD_BUDGET", "0.95"),
                         ("OTEL_PYTHON_LEAK_GUARD_MIN_TIME_TO_LIMIT", "600.0"),
                         ("OTEL_PYTHON_LEAK_GUARD_MAX_RECYCLES_PER_HOUR", "6"),
                         ("OTEL_PYTHON_LEAK_GUARD_JITTER", "10.0")]:
        (msg,) = [m for m in messages if f"invalid {env}=" in m]
        assert f"default {default}" in msg


def test_a_forked_child_starts_with_a_fresh_guard(tmp_path):
    g, _ = make_guard(tmp_path)
    assert g.check("post_task", state=st(150 * MiB)) == "budget"
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(w, f"{len(g.entries)} {g.recycling} {g._holds}".encode())
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(r, 100).decode() == "0 None False"
    assert time.time() > 0
