"""Draw a worker from a seed: a scenario family and its parameters.

``draw(seed)`` returns a plain JSON-able spec that ``bench/families/worker.py`` runs as a real process. The
same seed always gives the same spec (one ``random.Random(seed)``), so a run can be reproduced from its seed.

Seed ranges (see BENCHMARKS.md): ``TUNING`` seeds may be looked at while changing the detector; ``HELD_OUT``
seeds are only ever scored and reported. Nothing in ``otel_leak`` imports this module or sees a spec.

Labels the scorer needs come with the spec:

* ``expected``: ``leak`` or ``no_leak``;
* ``leakers``: the task types that retain memory (leaks);
* ``site``: the marker on the allocating line in worker.py (Python-heap leaks, numpy buffers included);
* ``holders``: texts one of which a retention path must contain to name what holds the memory (leaks held
  by a Python object graph; empty when nothing in Python holds it);
* ``retained_end``: bytes the leak retains by the end of the run (the scorer's 64 MiB rule uses it).
"""

from __future__ import annotations

import math
import random

TUNING = range(0, 100_000)
HELD_OUT = range(1_000_000, 1_100_000)

MiB = 1024 * 1024

LEAK_FAMILIES = (
    "dict_growth", "list_growth", "lru_method", "logging_handlers", "atexit_callbacks", "listener_registry",
    "kept_exceptions", "asyncio_tasks", "thread_registry", "gc_disabled_cycles", "native_malloc",
    "native_mmap", "numpy_buffers", "queue_backlog", "late_onset", "intermittent", "two_leakers",
    "rare_leaker",
)
BENIGN_FAMILIES = (
    "steady", "bounded_cache", "lru_bounded", "gc_sawtooth", "one_off_step", "bursts", "fragmentation",
    "periodic_flush", "pool_fill",
)
FAMILIES = LEAK_FAMILIES + BENIGN_FAMILIES

# What the retention path must name, per leak family (empty: no Python object graph holds the memory, or
# the holder lives in C where no referrer walk can see it; those are not counted in the holder figure).
HOLDERS = {
    "dict_growth": ["_CACHE"], "list_growth": ["_HISTORY"], "lru_method": ["_lru_cache_wrapper", "Enricher"],
    "logging_handlers": ["loggerDict", "Manager", "Logger"], "atexit_callbacks": [],
    "listener_registry": ["_LISTENERS"], "kept_exceptions": ["_ERRORS"], "asyncio_tasks": ["_BACKGROUND"],
    "thread_registry": ["_REGISTRY"], "gc_disabled_cycles": [], "native_malloc": [], "native_mmap": [],
    "numpy_buffers": ["_BUFFERS"], "queue_backlog": ["_BACKLOG"], "late_onset": ["_CACHE"],
    "intermittent": ["_CACHE"], "two_leakers": ["_CACHE", "_HISTORY"], "rare_leaker": ["_CACHE"],
}
NATIVE = {"native_malloc", "native_mmap"}
# The pattern (otel_leak.detector.patterns) each leak family is an instance of; None where the evidence a
# worker has cannot decide it (atexit's registry lives in C: no retention path, no allocator sign).
PATTERNS = {
    "dict_growth": "unbounded_container", "list_growth": "unbounded_container",
    "lru_method": "unbounded_memoisation", "logging_handlers": "handler_registration", "atexit_callbacks": None,
    "listener_registry": "handler_registration", "kept_exceptions": "kept_exceptions",
    "asyncio_tasks": "asyncio_tasks", "thread_registry": "unbounded_container",
    "gc_disabled_cycles": "uncollected_cycles", "native_malloc": "native_memory", "native_mmap": "outside_malloc",
    "numpy_buffers": "unbounded_container", "queue_backlog": "queue_backlog", "late_onset": "unbounded_container",
    "intermittent": "unbounded_container", "two_leakers": "unbounded_container", "rare_leaker": "unbounded_container",
}

TASK_NAMES = (
    "render", "ingest", "resolve", "export", "parse", "notify", "thumbnail", "index", "enrich", "publish",
    "sync", "score", "fetch", "archive", "bill", "audit",
)


def _loguniform(rnd: random.Random, lo: float, hi: float) -> float:
    return math.exp(rnd.uniform(math.log(lo), math.log(hi)))


def _duration(rnd: random.Random) -> float:
    """15 s to 3 min, most runs short (the held-out run must fit an hour on two cores)."""
    return rnd.uniform(15, 35) if rnd.random() < 0.8 else _loguniform(rnd, 35, 180)


def draw(seed: int, family: str | None = None) -> dict:
    """The spec of worker ``seed`` (of ``family`` when given, else a family drawn from the seed)."""
    rnd = random.Random(seed)
    fam = family or rnd.choice(FAMILIES)
    n_types = rnd.choice([1, 2, 3, 3, 4, 5, 6, 8, 12])
    names = rnd.sample(TASK_NAMES, n_types)
    conc = rnd.choice(["sequential", "sequential", "threads", "asyncio"])
    if fam == "asyncio_tasks":
        conc = "asyncio"
    if fam == "thread_registry":
        conc = "threads"
    workers = rnd.randint(2, 8) if conc == "threads" else rnd.randint(2, 32) if conc == "asyncio" else 1
    rate = _loguniform(rnd, 5, 1000)
    weights = [_loguniform(rnd, 0.2, 5) for _ in names]
    spec = {
        "seed": seed, "family": fam, "tasks": names, "weights": weights, "concurrency": conc,
        "workers": workers, "rate": round(rate, 1), "drift": rnd.random() < 0.4,
        "drift_period_s": round(rnd.uniform(5, 60), 1),
        # transient work per task (allocated, used, dropped); bounded in bytes per second of the worker
        "noise": [int(min(_loguniform(rnd, 1024, 16 * MiB), 150 * MiB / rate)) if rnd.random() < 0.85 else 0
                  for _ in names],
        "duration_s": round(_duration(rnd), 1),
        "expected": "leak" if fam in LEAK_FAMILIES else "no_leak",
        "leakers": [], "site": None, "holders": [], "native": fam in NATIVE, "retained_end": 0,
        "params": {},
    }
    if spec["expected"] == "leak":
        _leak(rnd, spec)
    else:
        _benign(rnd, spec)
    return spec


def _share(spec: dict, task: str) -> float:
    w = spec["weights"]
    return w[spec["tasks"].index(task)] / sum(w)


def _leak(rnd: random.Random, spec: dict) -> None:
    fam = spec["family"]
    names = spec["tasks"]
    if fam == "two_leakers" and len(names) < 2:
        names.append(next(n for n in TASK_NAMES if n not in names))
        spec["weights"].append(1.0)
        spec["noise"].append(spec["noise"][0])
    if fam == "queue_backlog" and len(names) < 2:
        names.append(next(n for n in TASK_NAMES if n not in names))
        spec["weights"].append(spec["weights"][0] * 0.5)
        spec["noise"].append(0)
    leakers = [rnd.choice(names)]
    if fam == "two_leakers":
        leakers = rnd.sample(names, 2)
    if fam == "rare_leaker" and len(names) > 1:
        # one type at 1-3 % of the mix, leaking a lot per call
        w = spec["weights"]
        i = names.index(leakers[0])
        others = sum(x for j, x in enumerate(w) if j != i)
        share = rnd.uniform(0.01, 0.03)
        w[i] = others * share / (1 - share)
    p = spec["params"]
    per_call = _loguniform(rnd, 16 * 1024, 256 * 1024) if fam == "rare_leaker" else _loguniform(rnd, 256, 256 * 1024)
    if fam == "gc_disabled_cycles":
        per_call = max(per_call, 1024)
    p["per_call"] = int(per_call)
    if fam == "intermittent":
        p["leak_probability"] = round(rnd.uniform(0.05, 0.5), 3)
    if fam == "queue_backlog":
        consumer = next(n for n in names if n != leakers[0])
        p["consumer"] = consumer
        # the consumer drains a fraction of what the producer adds
        p["drain"] = round(rnd.uniform(0.0, 0.7), 2)
    onset = rnd.uniform(3, 20) if fam == "late_onset" else 0.0
    p["onset_s"] = round(onset, 1)
    # share of the leaking calls' bytes that stays (an intermittent leak keeps some calls' bytes, a backlog
    # what the consumer does not drain)
    frac = p.get("leak_probability", 1.0)
    if fam == "queue_backlog":
        sp, sc = _share(spec, leakers[0]), _share(spec, p["consumer"])
        p["pop_probability"] = round(min(1.0, p["drain"] * sp / sc), 4)  # per consumer call
        frac = max(0.05, 1 - p["pop_probability"] * sc / sp)
    # The worker's rate is drawn as for every family; the leak's speed (0.4-24 MiB/s) is drawn next and
    # gives the per-call size at that rate and share (256 B-256 KiB, clipped: the leak is then slower or
    # faster than drawn). One leak in five keeps its own per-call size, whatever speed that gives. The
    # run lasts until the leak has retained 40-200 MiB (15 s to 3 min).
    share = sum(_share(spec, t) for t in leakers) * frac
    if fam != "rare_leaker" and rnd.random() < 0.8:
        want = _loguniform(rnd, 0.4 * MiB, 24 * MiB)
        per_call = min(256 * 1024, max(1024 if fam == "gc_disabled_cycles" else 256, want / (spec["rate"] * share)))
        p["per_call"] = int(per_call)
    if spec["rate"] * per_call * share > 24 * MiB:
        spec["rate"] = round(max(5.0, 24 * MiB / (per_call * share)), 1)
    bytes_per_s = spec["rate"] * per_call * share
    p["expected_bytes_per_s"] = round(bytes_per_s)
    p["retained_per_task"] = round(per_call * share, 1)  # per task of any type, once the leak has begun
    spec["noise"] = [int(min(n, 150 * MiB / spec["rate"])) for n in spec["noise"]]
    target = _loguniform(rnd, 40 * MiB, 200 * MiB)
    dur = onset + target / bytes_per_s
    spec["duration_s"] = round(min(180.0, max(15.0, dur)), 1)
    spec["retained_end"] = int(bytes_per_s * max(0.0, spec["duration_s"] - onset))
    spec["leakers"] = leakers
    spec["site"] = None if fam in NATIVE or fam == "atexit_callbacks" else f"# site:{fam}"
    spec["holders"] = list(HOLDERS[fam])


def _benign(rnd: random.Random, spec: dict) -> None:
    fam = spec["family"]
    p = spec["params"]
    t = rnd.choice(spec["tasks"])
    p["task"] = t
    calls_per_s = _share(spec, t) * spec["rate"]
    if fam in ("bounded_cache", "lru_bounded"):
        fill_s = _loguniform(rnd, 1, 120)  # ~95 % full after fill_s seconds
        keys = max(16, int(calls_per_s * fill_s / 3))
        total = _loguniform(rnd, 8 * MiB, 96 * MiB)
        p.update(keys=keys, value=max(64, int(total / keys)), fill_s=round(fill_s, 1))
        if fam == "lru_bounded":
            p["maxsize"] = max(8, keys // 4)  # random keys from 4x the cache size: fills, then evicts
    elif fam == "gc_sawtooth":
        p.update(cycle_bytes=int(_loguniform(rnd, 512, 64 * 1024)),
                 thresholds=[rnd.choice([700, 2000, 5000]), rnd.randint(10, 40), rnd.randint(10, 100)])
    elif fam == "one_off_step":
        p.update(at_s=round(rnd.uniform(1, spec["duration_s"] * 0.7), 1), bytes=int(_loguniform(rnd, 8 * MiB, 128 * MiB)),
                 lazy_import=rnd.random() < 0.5)
    elif fam == "bursts":
        p.update(every_s=round(rnd.uniform(1, 10), 1), bytes=int(_loguniform(rnd, 16 * MiB, 256 * MiB)))
    elif fam == "fragmentation":
        p.update(slots=rnd.randint(2_000, 60_000), max_size=rnd.choice([256, 1024, 4096, 16384]))
    elif fam == "periodic_flush":
        p.update(every_s=round(rnd.uniform(1, max(1.5, spec["duration_s"] / 5)), 1), per_call=int(_loguniform(rnd, 256, 64 * 1024)))
    elif fam == "pool_fill":
        # a pool grows to its maximum within 300 tasks or 5 s (the concurrency it serves), then stays
        fill_tasks = min(rnd.randint(20, 300), 5 * spec["rate"])
        size = max(4, int(fill_tasks * _share(spec, t)))
        p.update(size=size, per_item=int(min(_loguniform(rnd, 64 * 1024, 2 * MiB), 128 * MiB / size)))


def family_seeds(seeds: range, per_family: int, families=FAMILIES) -> list[tuple[str, int]]:
    """``per_family`` draws of every family from ``seeds`` (the k-th draw of family f uses one fixed seed)."""
    out = []
    for fi, fam in enumerate(families):
        for k in range(per_family):
            out.append((fam, seeds.start + (fi * 997 + k * 7919) % len(seeds)))
    return out
