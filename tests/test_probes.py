"""Probes: correct, fork-safe, and self-disabling with one warning."""

from __future__ import annotations

import gc
import logging
import mmap
import os
import time

from otel_leak.probes import FloorTracker, GcProbe, MemoryProbe, thread_count


def _vmrss(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_rss_matches_the_kernel():
    probe = MemoryProbe()
    rss, vms = probe.read()
    assert abs(rss - _vmrss()) < 2 * 1024 * 1024
    assert vms > rss
    assert abs(probe.rss() - rss) < 2 * 1024 * 1024


def test_forked_child_reads_its_own_memory_not_the_parents():
    probe = MemoryProbe()  # fd opened in the parent, as auto-instrumentation does
    parent_rss = probe.rss()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: grow by 128 MiB, report what the probe reads and what the kernel says
        try:
            # a fresh mapping, every page touched: new resident pages whatever free heap the parent held
            ballast = mmap.mmap(-1, 128 * 1024 * 1024)
            for off in range(0, len(ballast), mmap.PAGESIZE):
                ballast[off] = 1
            # recent_rss first: the parent's latest reading must not count as the child's
            os.write(w, f"{probe.recent_rss(3600.0)} {_vmrss()} {len(ballast)}".encode())
        finally:
            os._exit(0)
    os.close(w)
    probe_rss, kernel_rss, _ = map(int, os.read(r, 100).split())
    os.waitpid(pid, 0)
    assert kernel_rss > parent_rss + 100 * 1024 * 1024
    assert abs(probe_rss - kernel_rss) < 4 * 1024 * 1024  # the child's own memory


def test_memory_probe_failure_disables_with_one_warning(caplog):
    probe = MemoryProbe()
    os.close(probe._fd)  # the kept fd goes bad under the probe
    probe._fd = 10_000
    with caplog.at_level(logging.WARNING, logger="otel_leak"):
        results = [probe.rss() for _ in range(5)] + [probe.read()]
    assert results == [None] * 6
    assert probe.disabled
    assert len([r for r in caplog.records if "memory probe failed" in r.getMessage()]) == 1


def test_gc_probe_times_pauses_per_generation():
    probe = GcProbe()
    try:
        before = probe.collections
        gc.collect(0)
        gc.collect(2)
        pauses = probe.drain_pauses()
        assert probe.collections >= before + 2
        gens = [g for g, _ in pauses]
        assert 0 in gens and 2 in gens
        assert all(p >= 0 for _, p in pauses)
        assert probe.drain_pauses() == []
    finally:
        probe.uninstall()
    assert probe._callback not in gc.callbacks


def test_gc_pause_buffer_is_bounded():
    probe = GcProbe()
    try:
        for _ in range(GcProbe.MAX_BUFFERED + 500):
            gc.collect(0)
        assert len(probe.drain_pauses()) <= GcProbe.MAX_BUFFERED
    finally:
        probe.uninstall()


def test_gc_pause_distribution_per_generation_for_baselines():
    """Every timed collection lands in its generation's histogram; quantiles come out ordered and within
    the largest pause; a forked child starts its own."""
    import os

    from otel_leak.probes import pause_quantile

    probe = GcProbe()
    try:
        assert GcProbe.active is probe
        junk = [[i] for i in range(200_000)]  # a heap that makes full collections take a while
        for _ in range(30):
            gc.collect(2)
        gc.collect(0)
        d = probe.pause_distribution()
        full = d["2"]
        assert full["collections"] >= 30 and sum(full["buckets"]) == full["collections"]
        assert 0 < full["p50_s"] <= full["p99_s"] <= full["max_s"] and full["total_s"] >= 30 * full["p50_s"] * 0.5
        assert d["0"]["collections"] >= 1
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.write(w, str(probe.pause_distribution().get("2", {}).get("collections", 0)).encode())
            os._exit(0)
        os.waitpid(pid, 0)
        assert os.read(r, 32) == b"0"
        del junk
    finally:
        probe.uninstall()
    assert GcProbe.active is None
    # 10 pauses of 10-20 us and one of 3 ms: the median in the second bucket, the 99th near the top
    buckets = [0] * (len(GcProbe.PAUSE_BOUNDS) + 1)
    buckets[1], buckets[9] = 10, 1
    assert 1e-5 < pause_quantile(buckets, 0.5, 0.003) <= 2e-5
    assert 2.56e-3 < pause_quantile(buckets, 0.99, 0.003) <= 0.003
    assert pause_quantile([0] * len(buckets), 0.5, 0.0) is None


def test_floor_is_the_window_minimum_and_ignores_sawtooth():
    floor = FloorTracker(window_s=10)
    values = []
    for t in range(100):
        saw = 100 + (t % 5) * 20  # GC sawtooth: 100..180, floor stays 100
        values.append(floor.add(float(t), saw))
    assert set(values[5:]) == {100}
    assert floor.add(200.0, 500) == 500  # the old minimum left the window


def test_thread_count_counts_native_threads():
    import threading

    before = thread_count()
    ev = threading.Event()
    t = threading.Thread(target=ev.wait)
    t.start()
    try:
        assert thread_count() == before + 1
    finally:
        ev.set()
        t.join()


def test_sampler_keeps_its_thread_within_the_cpu_budget():
    from otel_leak.probes import HeapProbe
    from otel_leak.sampler import TICK_ALLOWANCE, TICK_BUDGET, Sampler

    sampler = Sampler(MemoryProbe(), HeapProbe(), None, interval=0.01)
    assert sampler.next_wait(0.00001) == 0.01  # cheap ticks: the interval asked for
    waits = [sampler.next_wait(0.001) for _ in range(500)]  # 1 ms ticks
    assert waits[0] == 0.01  # the first expensive ticks are paid from the allowance...
    assert abs(waits[-1] - 0.001 / TICK_BUDGET) < 0.05  # ...then ticks are stretched to the budget
    cpu, wall = 0.00001 + 500 * 0.001, 0.01 + sum(waits)
    assert cpu <= TICK_BUDGET * wall + TICK_ALLOWANCE + 0.001


def test_sampler_drains_run_every_tick_without_stretching_the_interval():
    """The processor's queued histogram points are drained after the budgeted part of a tick: their cost
    grows with the tasks run, and waiting longer would not make it smaller."""
    from otel_leak.probes import HeapProbe
    from otel_leak.sampler import Sampler

    sampler = Sampler(MemoryProbe(), HeapProbe(), None, interval=0.02)
    drained, seen = [], []

    def slow_drain(sample):
        end = time.thread_time() + 0.003  # 3 ms of CPU: would stretch the wait to >= 0.75 s if budgeted
        while time.thread_time() < end:
            pass
        drained.append(sample.t)

    sampler.add_listener(lambda s: seen.append(s.t))
    sampler.add_listener(slow_drain, budgeted=False)
    sampler.start()
    try:
        time.sleep(0.6)
    finally:
        sampler.stop()
    assert len(seen) >= 8, seen  # ~0.02 s + 3 ms per tick, not one tick per 0.75 s
    assert drained and abs(len(drained) - len(seen)) <= 1  # the drain ran with every tick
    assert sampler.tick_cost < 0.002


def test_drains_keep_their_pace_while_expensive_ticks_wait_for_their_budget():
    """A tick that costs 20 ms of CPU waits seconds for its budget; the queued histogram points are still
    recorded every DRAIN_EVERY seconds (a task's growth in the same export as its count)."""
    from otel_leak.probes import HeapProbe
    from otel_leak.sampler import DRAIN_EVERY, TICK_ALLOWANCE, TICK_BUDGET, Sampler

    sampler = Sampler(MemoryProbe(), HeapProbe(), None, interval=0.05)
    sampler._credit = -TICK_ALLOWANCE  # no allowance left: every tick waits for its budget
    ticks, drained = [], []

    def expensive(sample):
        end = time.thread_time() + 0.02
        while time.thread_time() < end:
            pass
        ticks.append(time.monotonic())

    sampler.add_listener(expensive)
    sampler.add_listener(lambda s: drained.append(time.monotonic()), budgeted=False)
    sampler.start()
    try:
        time.sleep(1.6)
    finally:
        sampler.stop()
    assert len(ticks) == 1, ticks  # 20 ms at 0.3 % of a core: the next tick is > 6 s away
    assert 0.02 / TICK_BUDGET > 6
    gaps = [b - a for a, b in zip(drained, drained[1:])]
    assert len(drained) >= 5 and max(gaps) < DRAIN_EVERY + 0.15, gaps


def test_work_a_listener_budgets_itself_is_not_charged_to_the_tick():
    from otel_leak.probes import HeapProbe
    from otel_leak.sampler import Sampler

    sampler = Sampler(MemoryProbe(), HeapProbe(), None, interval=0.02)
    seen = []

    def walker(sample):  # like the detector's allocator walks: 3 ms, under a budget of its own
        t0 = time.thread_time()
        while time.thread_time() < t0 + 0.003:
            pass
        sampler.exempt(time.thread_time() - t0)
        seen.append(sample.t)

    sampler.add_listener(walker)
    sampler.start()
    try:
        time.sleep(0.6)
    finally:
        sampler.stop()
    assert len(seen) >= 8, seen
    assert sampler.tick_cost < 0.002
