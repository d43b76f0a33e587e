"""Run one drawn worker (``bench/families/draw.py``) as a real process.

    FAMILY_SPEC='{...}' otel-leak run -- python bench/families/worker.py

Written only against the OpenTelemetry API, as a user's worker would be: every task is a CONSUMER span named
after its task type, started with the global tracer (``otel-leak run`` installs the SDK). The family's
behaviour runs inside the span of its task type; every task also does its transient work (allocate, touch,
drop). Sequential, thread-pool (2-8 threads) or asyncio (2-32 coroutines interleaving at ``await``).

The lines that allocate what a leak retains carry a ``# site:<family>`` marker, which the scorer turns into
file:line. The detector sees none of this file's labels.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import ctypes
import ctypes.util
import functools
import gc
import json
import logging
import math
import mmap
import os
import random
import sys
import threading
import time

from opentelemetry import trace
from opentelemetry.trace import SpanKind

SPEC = json.loads(os.environ["FAMILY_SPEC"])
P = SPEC["params"]
FAM = SPEC["family"]
START = time.monotonic()

_CACHE: dict = {}
_HISTORY: list = []
_LISTENERS: list = []
_ERRORS: list = []
_BACKGROUND: set = set()
_REGISTRY: dict = {}
_BUFFERS: list = []
_NATIVE: list = []
_BACKLOG: collections.deque = collections.deque()
_counter = iter(range(1 << 62))


def payload(n: int) -> bytes:
    return b"x" * n


# ---------------------------------------------------------------- leak behaviours (one per family)
class Enricher:
    @functools.lru_cache(maxsize=None)
    def enrich(self, key):
        return b"e" * P["per_call"]  # site:lru_method


_ENRICHER = Enricher()
_libc = None


def _malloc(n: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c"))
        _libc.malloc.restype = ctypes.c_void_p
        _libc.malloc.argtypes = [ctypes.c_size_t]
    ptr = _libc.malloc(n)
    ctypes.memset(ptr, 1, n)
    _NATIVE.append(ptr)


async def _never(data, ev):
    await ev.wait()  # keeps ``data`` alive as long as the task is pending


def leak_once(fam: str, i: int, rnd: random.Random, task: str) -> None:
    n = P["per_call"]
    k = next(_counter)
    if fam in ("dict_growth", "late_onset", "intermittent", "rare_leaker"):
        _CACHE[(task, k)] = b"d" * n  # site:dict_growth site:late_onset site:intermittent site:rare_leaker
    elif fam == "two_leakers":
        if task == SPEC["leakers"][0]:
            _CACHE[k] = b"d" * n  # site:two_leakers
        else:
            _HISTORY.append(b"h" * n)  # site:two_leakers_second
    elif fam == "list_growth":
        _HISTORY.append(b"h" * n)  # site:list_growth
    elif fam == "lru_method":
        _ENRICHER.enrich(k)
    elif fam == "logging_handlers":
        h = logging.NullHandler()
        h.buffer = b"l" * n  # site:logging_handlers
        logging.getLogger(f"worker.tenant.{k}").addHandler(h)
    elif fam == "atexit_callbacks":
        atexit.register(functools.partial(len, b"a" * n))
    elif fam == "listener_registry":
        data = b"r" * n  # site:listener_registry
        _LISTENERS.append(lambda event, data=data: len(data) + len(event))
    elif fam == "kept_exceptions":
        try:
            blob = b"k" * n  # site:kept_exceptions
            raise ValueError(f"bad input {k} ({len(blob)} bytes)")
        except ValueError as exc:
            _ERRORS.append(exc)  # the traceback keeps the frame, and the frame keeps ``blob``
    elif fam == "thread_registry":
        _REGISTRY.setdefault(threading.get_ident(), []).append(b"t" * n)  # site:thread_registry
    elif fam == "gc_disabled_cycles":
        a = {"payload": b"c" * n}  # site:gc_disabled_cycles
        b = {"a": a}
        a["b"] = b
    elif fam == "native_malloc":
        _malloc(n)
    elif fam == "native_mmap":
        m = mmap.mmap(-1, n)
        m.write(b"m" * n)
        _NATIVE.append(m)
    elif fam == "numpy_buffers":
        import numpy

        _BUFFERS.append(numpy.ones(max(1, n // 8)))  # site:numpy_buffers
    elif fam == "queue_backlog":
        _BACKLOG.append(b"q" * n)  # site:queue_backlog


def leak_async(loop_ev, i: int, rnd: random.Random) -> None:
    data = b"f" * P["per_call"]  # site:asyncio_tasks
    t = asyncio.get_running_loop().create_task(_never(data, loop_ev))
    _BACKGROUND.add(t)  # fire-and-forget kept in a set, never discarded: the task never ends


def leaking(task: str, rnd: random.Random) -> bool:
    if task not in SPEC["leakers"]:
        return False
    if time.monotonic() - START < P.get("onset_s", 0.0):
        return False
    if FAM == "intermittent":
        return rnd.random() < P["leak_probability"]
    return True


# ---------------------------------------------------------------- benign behaviours
_flush_at = [0.0]
_bursts_at = [0.0]
_step_done = [False]
_lru = None
_SLOTS: list = []
_POOL: list = []


def benign_once(fam: str, i: int, rnd: random.Random, task: str) -> None:
    global _lru
    now = time.monotonic() - START
    if fam == "one_off_step":  # any task may be the one that loads the table
        if not _step_done[0] and now >= P["at_s"]:
            _step_done[0] = True
            if P["lazy_import"]:
                import decimal, email.mime.multipart, http.client, xml.dom.minidom  # noqa: F401,E401
            _CACHE["table"] = [b"t" * 4096 for _ in range(P["bytes"] // 4096)]
        return
    if fam == "bursts":
        if now - _bursts_at[0] >= P["every_s"]:
            _bursts_at[0] = now
            big = [b"b" * 65536 for _ in range(P["bytes"] // 65536)]
            del big
        return
    if task != P.get("task"):
        return
    if fam == "bounded_cache":
        _CACHE[rnd.randrange(P["keys"])] = b"v" * P["value"]
    elif fam == "lru_bounded":
        if _lru is None:
            _lru = functools.lru_cache(maxsize=P["maxsize"])(lambda key: b"v" * P["value"])
        _lru(rnd.randrange(P["keys"]))
    elif fam == "gc_sawtooth":
        a = {"payload": b"g" * P["cycle_bytes"]}
        a["self"] = a
    elif fam == "fragmentation":
        # a fixed set of slots (filled before the first task) whose objects are replaced by others of
        # random sizes: the allocator's pools fragment, then plateau
        _SLOTS[rnd.randrange(P["slots"])] = b"f" * rnd.randint(16, P["max_size"])
    elif fam == "periodic_flush":
        _HISTORY.append(b"p" * P["per_call"])
        if now - _flush_at[0] >= P["every_s"]:
            _flush_at[0] = now
            _HISTORY.clear()
    elif fam == "pool_fill":
        if len(_POOL) < P["size"]:
            _POOL.append(b"c" * P["per_item"])
        else:
            _POOL[rnd.randrange(len(_POOL))]  # reuse a pooled connection


# ---------------------------------------------------------------- the loop
def transient(n: int) -> int:
    if n <= 0:
        return 0
    if n >= 1 << 20:
        junk = [bytearray(1 << 16) for _ in range(n >> 16)]
    else:
        junk = [b"n" * 200 for _ in range(max(1, n // 200))]
    return len(junk)


def weights_at(t: float) -> list[float]:
    w = SPEC["weights"]
    if not SPEC["drift"]:
        return w
    per = SPEC["drift_period_s"]
    return [x * (1.0 + 0.9 * math.sin(2 * math.pi * t / per + 1.7 * j)) for j, x in enumerate(w)]


def body(task: str, i: int, rnd: random.Random, noise: int) -> None:
    if SPEC["expected"] == "leak":
        if FAM == "queue_backlog" and task == P["consumer"]:
            if _BACKLOG and rnd.random() < P["pop_probability"]:
                _BACKLOG.popleft()
        elif FAM != "asyncio_tasks" and leaking(task, rnd):
            leak_once(FAM, i, rnd, task)
    else:
        benign_once(FAM, i, rnd, task)
    transient(noise)


def pick(rnd: random.Random, now: float) -> tuple[str, int]:
    names = SPEC["tasks"]
    j = rnd.choices(range(len(names)), weights=weights_at(now - START))[0]
    return names[j], SPEC["noise"][j]


def threaded(k: int, per_worker: float, stop_at: float, tracer) -> None:
    rnd = random.Random(SPEC["seed"] * 100 + k)
    i, next_t = 0, time.monotonic()
    while (now := time.monotonic()) < stop_at:
        task, noise = pick(rnd, now)
        with tracer.start_as_current_span(task, kind=SpanKind.CONSUMER):
            body(task, i, rnd, noise)
        i += 1
        next_t += rnd.expovariate(per_worker)
        delay = next_t - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        elif delay < -1.0:
            next_t = time.monotonic()


async def coroutine(k: int, per_worker: float, stop_at: float, tracer, ev: asyncio.Event) -> None:
    rnd = random.Random(SPEC["seed"] * 100 + k)
    i, next_t = 0, time.monotonic()
    while (now := time.monotonic()) < stop_at:
        task, noise = pick(rnd, now)
        with tracer.start_as_current_span(task, kind=SpanKind.CONSUMER):
            if FAM == "asyncio_tasks" and leaking(task, rnd):
                leak_async(ev, i, rnd)
            await asyncio.sleep(0)  # other tasks run in the middle of this one
            body(task, i, rnd, noise)
        i += 1
        next_t += rnd.expovariate(per_worker)
        await asyncio.sleep(max(0.0, next_t - time.monotonic()))
        if next_t - time.monotonic() < -1.0:
            next_t = time.monotonic()


async def run_asyncio(n: int, per_worker: float, stop_at: float, tracer) -> None:
    ev = asyncio.Event()
    await asyncio.gather(*(coroutine(k, per_worker, stop_at, tracer, ev) for k in range(n)))
    for t in _BACKGROUND:
        t.cancel()


def main() -> None:
    if FAM == "gc_disabled_cycles":
        gc.disable()
    if FAM == "gc_sawtooth":
        gc.set_threshold(*P["thresholds"])
    if FAM == "fragmentation":
        rnd = random.Random(SPEC["seed"])
        _SLOTS.extend(b"f" * rnd.randint(16, P["max_size"]) for _ in range(P["slots"]))
    tracer = trace.get_tracer("bench.families.worker")
    stop_at = START + SPEC["duration_s"]
    n = SPEC["workers"]
    per_worker = SPEC["rate"] / n
    if SPEC["concurrency"] == "asyncio":
        asyncio.run(run_asyncio(n, per_worker, stop_at, tracer))
    elif n == 1:
        threaded(0, per_worker, stop_at, tracer)
    else:
        ts = [threading.Thread(target=threaded, args=(k, per_worker, stop_at, tracer)) for k in range(n)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    sys.stdout.flush()


if __name__ == "__main__":
    main()
