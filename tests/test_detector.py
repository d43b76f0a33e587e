"""Detector unit tests on synthetic sample streams (no threads, no OTel SDK needed)."""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from types import SimpleNamespace

import pytest

from otel_leak.detector import robust
from otel_leak.detector.report import validate_process_report, write_atomic
from otel_leak.detector.attribution import regress
from otel_leak.detector.tier1 import MAX_INCREMENTS, MAX_WINDOWS, Tier1

MiB = 1024 * 1024


def stream(
    seconds=90,
    rate=40,
    types=("a", "b", "c"),
    leak=None,  # (type, bytes per call)
    noise=200_000,
    shape=None,  # fn(t) -> extra bytes on the floor
    spikes=None,  # fn(t) -> extra transient bytes (not on the floor)
    seed=1,
    base=40 * MiB,
    dt=1.0,  # seconds between samples
):
    """Yield synthetic samples every ``dt`` s: interleaved random task types, page-rounded RSS."""
    rnd = random.Random(seed)
    counts = {k: 0 for k in types}
    total = 0
    retained = 0
    blocks = 100_000
    for step in range(int(round(seconds / dt))):
        t = step * dt
        r = rate * dt
        if r < 5:
            n = int(r) + (1 if rnd.random() < r - int(r) else 0)
        else:
            n = max(0, int(rnd.gauss(r, r * 0.2)))
        for _ in range(n):
            k = rnd.choice(types)
            counts[k] += 1
            total += 1
            if leak and k == leak[0]:
                retained += leak[1]
                blocks += 2
        rss = base + retained + rnd.randint(0, noise)
        if shape is not None:
            rss += int(shape(int(t) if dt == 1.0 else t))
        if spikes is not None:
            rss += int(spikes(int(t) if dt == 1.0 else t))
        rss -= rss % 4096
        yield SimpleNamespace(
            t=float(t), wall=1e9 + t, rss=rss, vms=rss * 2, heap_blocks=blocks + rnd.randint(0, 50),
            traced=None, floor=rss, task_counts=dict(counts), tasks_total=total,
        )


def first_declared(samples, **kw):
    t1 = Tier1(**kw)
    for s in samples:
        t1.add(s)
        if t1.declared:
            return t1, s
    return t1, None


# ---------------------------------------------------------------------------------------------- leak
def test_linear_leak_is_declared_within_1000_tasks():
    t1, s = first_declared(stream(leak=("b", 16 * 1024), rate=40))
    assert s is not None, t1.trend.as_dict()
    assert t1.declared_tasks <= 1000
    assert t1.confidence() >= 0.7


def test_slow_worker_uses_the_same_defaults():
    # One task every 5 s: windows stretch to the task count, the leak is still found.
    t1, s = first_declared(stream(seconds=1500, rate=0.2, leak=("a", 256 * 1024), noise=100_000, types=("a",)))
    assert s is not None
    assert all(w.tasks >= t1.min_tasks for w in list(t1.windows)[:-1])


# ---------------------------------------------------------------------------------------------- benign shapes
BENIGN = {
    "warm-up that levels off": dict(shape=lambda t: 8 * MiB * (1 - math.exp(-t / 6.0))),
    "gc sawtooth": dict(spikes=lambda t: (t % 9) * 1.5 * MiB),
    "slow sawtooth on the floor": dict(shape=lambda t: (t % 11) * 0.3 * MiB),
    "bursts": dict(spikes=lambda t: 30 * MiB if (t // 10) % 3 == 0 else 0),
    "one-off step (lazy import)": dict(shape=lambda t: 12 * MiB if t > 30 else 0),
    "allocator retention plateau": dict(shape=lambda t: min(t, 20) * 0.6 * MiB if t > 12 else 0),
    "noise only": dict(noise=1_500_000),
}


@pytest.mark.parametrize("name", sorted(BENIGN))
def test_benign_shape_never_declared(name):
    for seed in range(4):
        t1, s = first_declared(stream(seconds=120, seed=seed, **BENIGN[name]))
        assert s is None, (name, seed, s and s.t, t1.trend.as_dict())


def _scaled(b: dict, k: float) -> dict:
    return {key: (lambda t, f=f: f(t * k)) if key in ("shape", "spikes") else f for key, f in b.items()}


@pytest.mark.parametrize("name", sorted(BENIGN))
@pytest.mark.parametrize("rate,dt", [(25, 0.6), (40, 0.375), (50, 0.3)])
def test_benign_shape_never_declared_at_the_adapted_interval(name, rate, dt):
    # The sampler interval the detector asks for at these rates (about 15 tasks a sample): windows of a
    # second or so, but a trend must still span 10 s and 500 tasks before it can be a leak.
    for seed in range(3):
        t1, s = first_declared(stream(seconds=120, rate=rate, dt=dt, seed=seed, **BENIGN[name]))
        assert s is None, (name, seed, s and s.t, t1.trend.as_dict())


@pytest.mark.parametrize("name", sorted(BENIGN))
def test_benign_task_driven_shape_never_declared_in_a_fast_worker(name):
    """300 tasks/s sampled every 0.05 s, with the benign shapes driven by work (GC cycles, caches filling,
    allocator retention all follow allocations, i.e. tasks): the shapes run 7.5x faster than at 40 tasks/s.

    Time-driven shapes at that rate are in test_a_steady_fill_that_stops_within_seconds_is_never_declared.
    """
    for seed in range(3):
        t1, s = first_declared(stream(seconds=60, rate=300, dt=0.05, seed=seed, **_scaled(BENIGN[name], 7.5)))
        assert s is None, (name, seed, s and s.t, t1.trend.as_dict())


def test_fast_worker_16k_leak_is_declared_within_15_s():
    # 300 tasks/s sampled every 0.05 s (what the detector asks of the sampler at that rate): declared as soon
    # as the trend spans the 10 s a leak must last (a start-up window, 10 s, one confirming window).
    t1, s = first_declared(stream(seconds=30, rate=300, dt=0.05, leak=("b", 16 * 1024), noise=100_000))
    assert s is not None, t1.trend.as_dict()
    assert s.t <= 15.0, (s.t, t1.declared_tasks)


@pytest.mark.parametrize("fill_s", [2.0, 5.0, 8.0])
def test_a_steady_fill_that_stops_within_seconds_is_never_declared(fill_s):
    """A cache or pool taking its first entries grows as steadily as a leak until it is full: at 300
    tasks/s, 3 MiB/s for up to 8 s (thousands of tasks), then flat. Growth that lasts only seconds is a fill."""
    for seed in range(3):
        t1, s = first_declared(stream(seconds=60, rate=300, dt=0.05, seed=seed, noise=100_000,
                                      shape=lambda t: 3 * MiB * min(t, fill_s)))
        assert s is None, (fill_s, seed, s and s.t, t1.trend.as_dict())


@pytest.mark.parametrize("tau", [5.0, 10.0, 20.0])
def test_a_cache_filling_with_random_keys_is_never_declared(tau):
    """Random keys into a bounded key space: the distinct keys, hence the bytes, grow as 1 - exp(-t/tau),
    ever slower; 24 MiB in all, watched for 60 s."""
    for seed in range(3):
        t1, s = first_declared(stream(seconds=60, rate=40, seed=seed, noise=100_000,
                                      shape=lambda t: 24 * MiB * (1 - math.exp(-t / tau))))
        assert s is None, (tau, seed, s and s.t, t1.trend.as_dict())


def test_slow_leak_with_short_windows_is_found_on_the_coarse_scale():
    # 5 KiB per call of one of three types at 50 tasks/s (~85 KB/s), sampled every 0.3 s: 16 windows of
    # ~1 s hold under 2 MiB of growth; the coarse scale (all kept windows) sees it.
    t1, s = first_declared(stream(seconds=90, rate=50, dt=0.3, leak=("c", 5 * 1024), noise=150_000))
    assert s is not None, t1.trend.as_dict()
    assert t1.trend.scale >= 2


def test_leak_under_sawtooth_and_bursts_is_declared():
    t1, s = first_declared(
        stream(seconds=120, leak=("c", 24 * 1024), spikes=lambda t: (t % 7) * 2 * MiB, noise=500_000)
    )
    assert s is not None


# ---------------------------------------------------------------------------------------------- attribution
def test_regression_attributes_the_leak_to_one_of_interleaved_noisy_tasks():
    rnd = random.Random(7)
    counts, growth = [], []
    for _ in range(120):
        c = {k: max(0, int(rnd.gauss(12, 4))) for k in ("alpha", "beta", "gamma", "delta")}
        # beta retains 16 KiB; every task has +-60 KiB of neighbours' transient noise; GC drops are outliers.
        g = c["beta"] * 16384 + sum(rnd.gauss(0, 60_000) for _ in range(3))
        if rnd.random() < 0.08:
            g -= rnd.uniform(2, 8) * MiB
        counts.append(c)
        growth.append(g)
    out = regress(counts, growth)
    assert out and out[0].task == "beta"
    assert 12_000 < out[0].bytes_per_call < 21_000
    assert out[0].share > 0.7


def test_regression_is_not_fooled_by_averaging_per_task_deltas():
    # 'big' tasks allocate a lot transiently (their deltas are large), 'small' retains: regression on
    # window growth names 'small'.
    rnd = random.Random(3)
    counts, growth = [], []
    for _ in range(80):
        c = {"big": rnd.randint(5, 20), "small": rnd.randint(5, 20)}
        counts.append(c)
        growth.append(c["small"] * 8192 + rnd.gauss(0, 20_000))
    assert regress(counts, growth)[0].task == "small"


def test_huber_nnls_recovers_coefficients():
    rnd = random.Random(1)
    X = [[rnd.uniform(0, 10), rnd.uniform(0, 10)] for _ in range(60)]
    y = [3 * a + 0 * b + rnd.gauss(0, 0.1) for a, b in X]
    y[5] += 500  # outlier
    beta, se, _ = robust.huber_nnls(X, y)
    assert abs(beta[0] - 3) < 0.1 and beta[1] < 0.1


def test_robust_basics():
    assert robust.theil_sen([0, 1, 2, 3, 4, 5], [0, 2, 4, 6, 8, 100]) == pytest.approx(2.0)
    tau, z = robust.mann_kendall([1, 2, 3, 4, 5, 6, 7])
    assert tau == 1.0 and z > 2
    assert robust.mann_kendall([1, 1, 1, 1])[0] == 0


# ---------------------------------------------------------------------------------------------- detector
class FakeSampler:
    interval = 1.0

    def __init__(self):
        self.listeners = []

    def add_listener(self, fn):
        self.listeners.append(fn)

    def remove_listener(self, fn):
        if fn in self.listeners:
            self.listeners.remove(fn)

    def sample(self):
        return None

    def feed(self, s):
        for fn in list(self.listeners):
            fn(s)


class FakeStats:
    def __init__(self):
        self.counts = {}
        self.total = 0
        self.suspects = {}

    def trace_ids(self, task):
        return ["ab" * 16]


def make_detector(tmp_path=None, **env):
    from otel_leak.detector.detector import Detector

    environ = {"OTEL_PYTHON_LEAK_DETECTOR_TIER2": "false"}
    if tmp_path is not None:
        environ["OTEL_PYTHON_LEAK_REPORT_DIR"] = str(tmp_path)
    environ.update(env)
    sampler, stats = FakeSampler(), FakeStats()
    det = Detector(stats=stats, sampler=sampler, meter=None, environ=environ)
    det._mi_off = True  # the synthetic samples are not this process: do not mix in its allocator
    return det, sampler, stats


def test_detector_declares_sets_suspects_and_writes_a_valid_report(tmp_path, caplog):
    det, sampler, stats = make_detector(tmp_path)
    with caplog.at_level("WARNING", logger="otel_leak.diagnosis"):
        for s in stream(leak=("b", 32 * 1024)):
            stats.counts, stats.total = dict(s.task_counts), s.tasks_total
            sampler.feed(s)
    assert det.verdict == "leak"
    assert det.suspects and det.suspects[0]["task"] == "b"
    assert "b" in stats.suspects  # the processor adds the span event from this
    assert any(r.name == "otel_leak.diagnosis" for r in caplog.records)
    rec = [r for r in caplog.records if r.name == "otel_leak.diagnosis"][0]
    assert json.loads(getattr(rec, "otel_leak.diagnosis"))["verdict"] == "leak"
    path = det.write_report(final=True)
    doc = json.load(open(path))
    assert validate_process_report(doc) == []
    assert doc["verdict"] == "leak" and doc["suspects"][0]["task"] == "b"
    assert doc["detected_at_s"] is not None and doc["pid"] == os.getpid()
    det.stop()


def test_no_periodic_write_replaces_the_final_report(tmp_path):
    # at exit the final report is written from the exiting thread while the sampler's thread may be in
    # the middle of a tick whose periodic write would land after it (gunicorn workers, REPORT_INTERVAL 0.5)
    det, sampler, stats = make_detector(tmp_path, OTEL_PYTHON_LEAK_REPORT_INTERVAL="0")
    samples = list(stream(seconds=20))
    for s in samples[:10]:
        sampler.feed(s)
    path = det.write_report(final=True)
    for s in samples[10:]:
        sampler.feed(s)  # each tick is due for a periodic write (interval 0)
    assert det.write_report() is None
    assert json.load(open(path))["final"] is True
    det.stop()


def test_benign_detector_run_reports_no_leak(tmp_path):
    det, sampler, stats = make_detector(tmp_path)
    for s in stream(**BENIGN["warm-up that levels off"]):
        sampler.feed(s)
        assert det.verdict != "leak"
    assert det.verdict == "no_leak"
    doc = det.report()
    assert validate_process_report(doc) == [] and doc["suspects"] == []
    det.stop()


def test_internal_failure_degrades_to_inconclusive(tmp_path):
    det, sampler, stats = make_detector(tmp_path)
    samples = list(stream(seconds=30, leak=("a", 64 * 1024)))
    for s in samples[:20]:
        sampler.feed(s)
    broken = SimpleNamespace(**{**vars(samples[20]), "task_counts": None})  # .items() raises inside tier 1
    sampler.feed(broken)  # must not raise
    for s in samples[21:]:
        sampler.feed(s)
    assert det.verdict == "inconclusive" and det.error
    doc = det.report()
    assert doc["verdict"] == "inconclusive" and doc["confidence"] == 0.0 and doc["suspects"] == []
    assert validate_process_report(doc) == []
    det.stop()


def test_memory_is_bounded_by_windows_not_tasks():
    det, sampler, stats = make_detector(None)
    counts = {f"t{k}": 0 for k in range(20)}
    total = 0
    rnd = random.Random(0)
    for sec in range(5000):  # 100k tasks over 5000 samples
        for _ in range(20):
            counts[f"t{rnd.randrange(20)}"] += 1
            total += 1
        sampler.feed(SimpleNamespace(t=float(sec), wall=0.0, rss=50 * MiB + rnd.randint(0, 99) * 4096,
                                     vms=0, heap_blocks=1000, traced=None, floor=0,
                                     task_counts=dict(counts), tasks_total=total))
    assert total == 100_000
    t1 = det.tier1
    assert len(t1.windows) <= MAX_WINDOWS and len(t1.increments) <= MAX_INCREMENTS
    assert len(det.series.cols["t_s"]) <= 600 and len(det.events) <= 64
    assert all(len(w.counts) <= 20 for w in t1.windows)
    assert len(json.dumps(det.report())) < 200_000
    det.stop()


def test_atomic_write_and_validator_rejects_garbage(tmp_path):
    p = tmp_path / "x" / "1.json"
    write_atomic(str(p), {"a": 1})
    assert json.load(open(p)) == {"a": 1}
    assert [f for f in os.listdir(p.parent) if f.startswith(".tmp")] == []
    assert validate_process_report({"schema": "nope"})
    assert validate_process_report([]) == ["expected a JSON object"]


def test_invalid_setting_warns_once_and_uses_default(caplog):
    from otel_leak import config
    from otel_leak.detector import settings

    with caplog.at_level("WARNING", logger="otel_leak"):
        assert config.get(settings.TIER2_WINDOW, {"OTEL_PYTHON_LEAK_DETECTOR_TIER2_WINDOW": "-3"}) == settings.TIER2_WINDOW.default


def test_tier2_window_finds_the_site_and_the_task():
    """A real (short) tracemalloc window on this process: allocations retained by 'leaky' are found."""
    import threading
    import time


    stats = FakeStats()
    keep = []
    stop = threading.Event()

    def worker():
        i = 0
        while not stop.is_set():
            name = ("leaky", "clean")[i % 2 if i % 7 else 1]
            if name == "leaky":
                keep.append(bytearray(20000))  # the site
            else:
                junk = [bytes(500) for _ in range(20)]
                del junk
            stats.counts[name] = stats.counts.get(name, 0) + 1
            stats.total += 1
            i += 1
            time.sleep(0.002 * random.random())

    res = _window_beside(worker, stats, stop, window=0.6, frames=10, tier3=True, tier3_budget=3.0)
    assert res.error is None
    assert res.sites and res.sites[0]["file"] == __file__
    assert res.attribution and res.attribution[0].task == "leaky"
    assert res.retention_paths and "list" in res.retention_paths[0]["text"]


def _window_beside(target, stats, stop, **kw):
    """One tier-2 window run while ``target`` works on its own thread (stopped and joined afterwards)."""
    import threading

    from otel_leak.detector import tier2

    th = threading.Thread(target=target)
    th.start()
    try:
        return tier2.run_window(stats, **kw)
    finally:
        stop.set()
        th.join()


def _keeping_worker(stats, keep, stop, size=20000, name="leaky"):
    import time

    def worker():
        while not stop.is_set():
            keep.append(bytearray(size))
            stats.counts[name] = stats.counts.get(name, 0) + 1
            stats.total += 1
            time.sleep(0.001)

    return worker


def test_tier2_window_ends_early_on_the_tracemalloc_memory_budget():
    """Many small retained objects: the window stops once tracemalloc's own memory passes the budget, so the
    snapshot analysis stays bounded; the site is still found."""
    import threading


    stats, keep, stop = FakeStats(), [], threading.Event()

    def worker():
        import time

        while not stop.is_set():
            keep.append([{"k": i} for i in range(200)])  # the site: many small blocks
            stats.counts["many"] = stats.counts.get("many", 0) + 1
            stats.total += 1
            time.sleep(0.001)

    res = _window_beside(worker, stats, stop, window=3.0, frames=10, tier3=False, tier3_budget=0.0, mem_budget=2 * 1024 * 1024)
    assert res.error is None
    assert res.phases["traced_s"] < 2.0, res.phases
    assert res.phases["tracemalloc_bytes"] >= 2 * 1024 * 1024
    assert res.sites and res.sites[0]["file"] == __file__


def test_tier2_analysis_runs_after_tracing_stopped_when_no_tier3(monkeypatch):
    import threading
    import tracemalloc

    from otel_leak.detector import tier2

    seen = []
    real = tier2._sites
    monkeypatch.setattr(tier2, "_sites", lambda mid, end, **kw: (seen.append(tracemalloc.is_tracing()), real(mid, end))[1])
    stats, keep, stop = FakeStats(), [], threading.Event()
    res = _window_beside(_keeping_worker(stats, keep, stop), stats, stop, window=0.4, frames=10, tier3=False, tier3_budget=0.0)
    assert res.error is None and seen == [False] and res.sites
    assert not tracemalloc.is_tracing()


def test_snapshot_grouping_matches_the_public_statistics():
    import tracemalloc

    from otel_leak.detector import tier2

    tracemalloc.start(8)
    try:
        keep = [bytearray(1000 + i % 7) for i in range(500)] + [str(i) * 50 for i in range(300)]
        snap = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    fast = tier2._group(snap)
    public = {tier2._raw_frames(st.traceback): [st.size, st.count] for st in snap.statistics("traceback")}
    assert fast == public
    assert len(keep) == 800


def test_tier2_window_follows_the_task_rate():
    from otel_leak.detector import detector as D

    det, sampler, stats = make_detector(None)
    det.tier2_window = 1.0
    det.task_rate = 300.0
    assert det._tier2_window() == pytest.approx(max(D.TIER2_MIN_WINDOW, D.TIER2_TASKS / 300.0))
    det.task_rate = 6.0
    assert det._tier2_window() == 1.0  # a slow worker keeps the longest window: enough calls to see the site
    det.tier2_runs = [{"duration_s": 1.5, "phases": {"traced_s": 1.0, "tier3_s": 0.25}}]
    assert det._tier2_cost(1.0) == pytest.approx(1.25)
    det.stop()


def test_sparse_allocator_readings_keep_the_growth_between_them():
    """The allocator is read only every so often (its cost is budgeted): windows without a reading carry the
    level and the next reading is compared with the last one, so no growth is lost."""
    t1 = Tier1()
    used = 10 * MiB
    for k, s in enumerate(stream(seconds=60, rate=40, leak=("a", 16 * 1024), noise=0)):
        t1.add(s, used if k % 7 == 0 else None)
        used += 40 * 1024
    ws = list(t1.windows)
    read = [w for w in ws if w.used_min is not None]
    assert len(read) >= 3
    # level differences between read windows equal the differences of their readings
    for a, b in zip(read, read[1:]):
        assert b.used_level - a.used_level == b.used_min - a.used_min


def test_tier1_cost_per_sample_at_20_hz_stays_small():
    """Tier 1 runs on the sampler thread, whose whole tick is budgeted: tens of microseconds per sample."""
    import time

    samples = list(stream(seconds=30, rate=300, dt=0.05, noise=100_000))
    t1 = Tier1()
    t0 = time.thread_time()
    for s in samples:
        t1.add(s, s.rss)
    per = (time.thread_time() - t0) / len(samples)
    assert per < 150e-6, per


def test_attribution_on_sparse_allocator_readings_sums_the_tasks_between_them():
    """Allocator rows span from one reading to the next: with a reading every third sample only, the
    regression still recovers the leaker and its bytes per call (resident memory here is pure noise)."""
    rnd = random.Random(4)
    t1 = Tier1()
    counts = {"a": 0, "b": 0, "c": 0}
    used = 30 * MiB
    for k in range(300):
        for _ in range(rnd.randint(5, 25)):
            name = rnd.choice("abc")
            counts[name] += 1
            if name == "b":
                used += 24 * 1024
        s = SimpleNamespace(t=k * 0.4, wall=0.0, rss=50 * MiB + rnd.randint(0, 3 * MiB), vms=0, heap_blocks=0,
                            traced=None, floor=0, task_counts=dict(counts), tasks_total=sum(counts.values()))
        t1.add(s, used + rnd.randint(-2000, 2000) if k % 3 == 0 else None)
    t1.declared_signal = "used"
    out = t1.attribute()
    assert out[0].task == "b" and out[0].significant(5.0)
    assert 0.9 * 24 * 1024 < out[0].bytes_per_call < 1.1 * 24 * 1024
    assert not [a for a in out[1:] if a.significant(5.0)]
    assert len(t1.used_rows) <= MAX_INCREMENTS


def test_leak_seen_only_in_sparse_allocator_readings_is_declared_on_them():
    """Native memory in use grows, resident memory is noise (e.g. reused pages): with an allocator reading
    only every third sample, the allocator trend is built on the windows that had one and confirmed over
    consecutive readings."""
    rnd = random.Random(2)
    t1 = Tier1()
    used = 20 * MiB
    declared_at = None
    for k, s in enumerate(stream(seconds=40, rate=300, dt=0.1, noise=3 * MiB)):
        used += 30 * 16 * 1024 // 3  # ~16 KiB per call of one of three types at 300 tasks/s
        t1.add(s, used + rnd.randint(-20_000, 20_000) if k % 3 == 0 else None)
        if t1.declared:
            declared_at = s.tasks_total
            break
    assert declared_at is not None and t1.declared_signal == "used", t1.trends
    assert declared_at <= 15 * 300  # within 15 s: the 10 s a leak must last, its windows and a confirmation


# ---------------------------------------------------------------------------------------------- garbage
def _collecting_run(freed_share: float, seconds: float = 15.0):
    """A fast worker whose resident memory climbs 1.2 MB/s (the high-water mark of cyclic garbage, or a
    leak). Whenever tier 1 has a candidate, the detector forces a young collection; here that collection
    hands back ``freed_share`` of what accumulated since the previous one."""
    t1 = Tier1()
    last_t = 0.0
    reasons: set[str] = set()
    for s in stream(seconds=seconds, rate=300, dt=0.05, noise=50_000, shape=lambda t: 1.2 * MiB * t):
        if t1.add(s):
            reasons.update(r for tr in list(t1.trends.values()) + list(t1.coarse.values()) for r in tr.reasons)
            if t1.trend.candidate and not t1.declared:
                t1.note_collect(int(freed_share * 1.2 * MiB * (s.t - last_t)))
                last_t = s.t
        if t1.declared:
            break
    return t1, reasons


def test_resident_growth_that_forced_collections_free_is_not_a_leak():
    """Resident memory keeps the pages of freed garbage, so only the allocator can tell: when the forced
    collections free most of the growth, it was cyclic garbage (a long GC period), not a leak."""
    t1, reasons = _collecting_run(freed_share=0.9)
    assert not t1.declared, t1.trend.as_dict()
    assert any("cyclic garbage" in r for r in reasons), reasons


def test_resident_growth_the_collections_do_not_free_is_still_a_leak():
    t1, _ = _collecting_run(freed_share=0.0, seconds=20.0)
    assert t1.declared and t1.declared_tasks <= 15 * 300, t1.trend.as_dict()  # within 15 s at 300 tasks/s


def test_allocator_walks_stay_within_their_budget_after_an_expensive_start(monkeypatch):
    """mallinfo2 can take milliseconds right after start-up: the token bucket repays it, then readings
    resume at the steady rate; over the run the walks stay under 1/MALLINFO_DUTY of the time plus the
    allowance."""
    from otel_leak.detector import detector as D

    from otel_leak.detector import allocator

    det, sampler, stats = make_detector()
    det._mi_off = False
    costs = iter([0.004] + [0.0002] * 10_000)
    spent = []
    clock = [0.0]  # the walks' cost as the reader measures it: a clock of its own, no real sleep to jitter

    def fake_malloc_info():
        c = next(costs)
        spent.append(c)
        clock[0] += c
        return (1000, 0)

    monkeypatch.setattr(D.T2, "malloc_info", fake_malloc_info)
    monkeypatch.setattr(allocator, "time", type("T", (), {"perf_counter": staticmethod(lambda: clock[0])}))
    readings_at = [now for now in (i * 0.05 for i in range(1200)) if det._malloc(now) is not None]  # 60 s
    assert readings_at[0] == 0.0
    assert len(readings_at) >= 40  # the allowance absorbed the expensive start: readings went on
    assert readings_at[1] < 1.0
    assert sum(spent) <= D.MALLINFO_BURST + 60 / D.MALLINFO_DUTY


def test_tier2_window_goes_on_until_it_has_seen_enough_tasks():
    """A worker idle between batches (40 quick tasks after 0.8 s idle): a 0.3 s window would often see none;
    it goes on (up to STRETCH_S seconds) until MIN_TASKS tasks were seen, and finds the site."""
    import threading
    import time

    from otel_leak.detector import tier2

    stats, keep, stop = FakeStats(), [], threading.Event()

    def batches():
        while not stop.is_set():
            if stop.wait(0.8):
                return
            for _ in range(40):
                keep.append(bytearray(20000))  # the site
                stats.counts["leaky"] = stats.counts.get("leaky", 0) + 1
                stats.total += 1
                time.sleep(0.002)

    res = _window_beside(batches, stats, stop, window=0.3, frames=10, tier3=False, tier3_budget=0.0)
    assert res.error is None and res.informative, (res.tasks, res.phases)
    assert res.tasks >= tier2.MIN_TASKS and res.phases["traced_s"] <= tier2.STRETCH_S + 0.3
    assert res.sites and res.sites[0]["file"] == __file__


def test_tier2_names_the_leaker_next_to_a_neighbour_with_large_transient_buffers():
    """A Celery-like child: 'remember' keeps 64 KiB a call, 'resize' holds a 256 KiB buffer for a few ms
    and frees it, 'email' allocates little; random order, one task at a time. Each task is measured as the
    task span processor measures it while tracemalloc traces (its own traced change, kept only when no
    other task and no snapshot overlapped it), so the window's attribution is per task, as in a prefork
    child. (Rows sampled at instants swing by 256 KiB whenever a 'resize' buffer is alive at the row's
    end: regressing them named 'email' in about one run in eight.)"""
    import random
    import threading
    import time
    import tracemalloc

    from otel_leak.detector import suspects
    from otel_leak.processor import TaskStats

    stats, keep, stop = TaskStats(), [], threading.Event()
    rnd = random.Random(11)

    def child():
        while not stop.is_set():
            name = rnd.choice(("remember", "resize", "email"))
            tracing = tracemalloc.is_tracing()
            if tracing:  # what TaskSpanProcessor.on_start does while tracing
                before = tracemalloc.get_traced_memory()[0]
                stats.events = seq = stats.events + 1
                if stats.running > 0:
                    seq = 0
                stats.running += 1
            if name == "remember":
                keep.append(bytes(64 * 1024))
            elif name == "resize":
                buf = bytearray(256 * 1024)
                time.sleep(0.004)
                del buf
            else:
                msg = [str(i) for i in range(50)]
                del msg
            time.sleep(0.004 * rnd.random())
            if tracing and tracemalloc.is_tracing():  # ... and _on_ending
                stats.add_traced(name, tracemalloc.get_traced_memory()[0] - before, stats.events == seq)
                stats.running = max(0, stats.running - 1)
                stats.events += 1
            stats.counts[name] = stats.counts.get(name, 0) + 1

    res = _window_beside(child, stats, stop, window=1.0, frames=10, tier3=False, tier3_budget=0.0)
    assert res.error is None and res.informative
    assert res.method == "per_task", res.method
    sig = [a.task for a in res.attribution if a.significant(suspects.T2_MIN_T)]
    assert sig == ["remember"], res.attribution
    assert 48 * 1024 < res.attribution[0].bytes_per_call < 80 * 1024, res.attribution


def test_tier2_rows_are_merged_so_a_lag_between_allocation_and_count_does_not_hide_the_leaker():
    """Each 'keep' call's 64 KiB lands one row before the call is counted (its span ends in the next row),
    one task or none per row. Row by row the regression sees bytes without calls; merged to a few tasks a
    row, only the calls at the edges are split."""
    import random

    from otel_leak.detector import suspects, tier2
    from otel_leak.detector.attribution import regress

    rnd = random.Random(2)
    rows_c, rows_y = [], []
    pending = None
    for _ in range(150):
        c = {pending: 1} if pending else {}
        y = rnd.gauss(0, 3000)
        pending = None
        if rnd.random() < 0.6:
            pending = rnd.choice(("keep", "resize", "email"))
            if pending == "keep":
                y += 64 * 1024
        rows_c.append(c)
        rows_y.append(y)
    tasks = sum(sum(c.values()) for c in rows_c)
    raw = [a.task for a in regress(rows_c, rows_y) if a.significant(suspects.T2_MIN_T)]
    merged = regress(*tier2.merge_rows(rows_c, rows_y, tasks))
    assert raw != ["keep"]  # what the rows alone say
    assert [a.task for a in merged if a.significant(suspects.T2_MIN_T)] == ["keep"], merged
    assert 48 * 1024 < merged[0].bytes_per_call < 80 * 1024
    assert tier2.merge_rows(rows_c, rows_y, 10 * len(rows_c)) == (rows_c, rows_y)  # rows of many tasks: as they are


def test_a_tier2_window_s_sites_reach_the_process_file_without_waiting_for_a_tick(tmp_path):
    """A costly tick makes the sampler wait seconds for its budget; a prefork child may leave through
    os._exit before its next periodic write. The end of a tier-2 window writes the file itself."""
    from otel_leak.detector import tier2 as T2

    det, sampler, stats = make_detector(tmp_path)
    for s in stream(leak=("b", 32 * 1024)):
        stats.counts, stats.total = dict(s.task_counts), s.tasks_total
        sampler.feed(s)
    assert det.verdict == "leak"
    res = T2.Tier2Result()
    res.tasks = 200
    res.sites = [{"file": "/app/tasks.py", "line": 7, "retained_bytes": 1 << 20, "count": 32,
                  "growth_bytes": 1 << 20, "traceback": [{"file": "/app/tasks.py", "line": 7}]}]
    det.tier2_thread = T2.Tier2Thread(stats, det._tier2_done)  # the window that is ending
    det._tier2_done(res)
    doc = json.loads((tmp_path / f"{os.getpid()}.json").read_text())
    assert [(s["file"], s["line"]) for s in doc["allocation_sites"]] == [("/app/tasks.py", 7)], doc["allocation_sites"]
    assert doc["tier2"]["runs"][-1]["tasks"] == 200


def test_its_work_while_its_own_tier2_window_traces_is_not_charged_to_the_tick_budget(tmp_path):
    """Under tracemalloc every float of the trend statistics takes a traceback: a tick evaluated while the
    detector's own window traces costs 100x more. That is tier 2's cost (it has its own budget); charged to
    the tick budget it stalled the sampler for 30-40 s. A user's own tracing is the user's."""
    from otel_leak.detector import tier2 as T2

    det, sampler, stats = make_detector()
    exempted = []
    sampler.exempt = exempted.append
    feed = list(stream(leak=("b", 32 * 1024)))
    for s in feed[:-12]:
        sampler.feed(s)
    assert det.verdict == "leak"
    before = len(exempted)  # (a forced full collection at suspicion is exempted too: fullgc budgets it)
    sampler.feed(feed[-12])
    assert len(exempted) == before  # no window: the tick pays for itself
    det.tier2_thread = th = T2.Tier2Thread(stats, det._tier2_done)
    th.user_tracing = False
    for s in feed[-11:-1]:
        sampler.feed(s)
    assert len(exempted) == before + 10 and all(x >= 0 for x in exempted)
    th.user_tracing = True
    sampler.feed(feed[-1])
    assert len(exempted) == before + 10
