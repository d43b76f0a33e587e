"""Bounded holders still filling: memoisers and containers that declare how large they may grow.

A ``functools.lru_cache(maxsize=N)``, a ``collections.deque(maxlen=N)`` or a ``cachetools`` cache grows
exactly like a leak while it takes its first N entries (with a key space larger than N, three calls in
four may miss and insert: the fill is linear, not slowing), then stops. Its bound is written in the object:
growth that such a holder, still filling, explains is not a leak, however long the fill lasts.

:class:`BoundedFills` finds them among module globals and the attributes of module-level classes (where
memoisers live: decorated functions and methods), without running any of the application's code (types
are compared, never ``isinstance``-checked against user classes; attribute dicts are read with the base
``__getattribute__``), and compares their fill between two looks. :meth:`BoundedFills.explains` answers,
when a trend is about to be declared, whether holders that filled since the previous look account for at
least half of its pace, with the bytes an entry takes estimated from the entries themselves (shallow
sizes: an underestimate, so a doubtful case is declared, not vetoed).

What it cannot see: a bound enforced by code (a dict trimmed by hand, an ``OrderedDict`` LRU), caches held
only by instances, and caches of more than ``MAX_SIZED`` entries (sizing them would copy their entries).
"""

from __future__ import annotations

import collections
import functools
import sys
import time
import weakref

MAX_SIZED = 65_536  # entries of a cache whose bytes per entry are estimated (get_referents lists them all)
SAMPLE = 64  # newest entries sized
EXPLAINS = 0.5  # share of the trend's pace that filling holders must account for

_LRU = getattr(functools, "_lru_cache_wrapper", None)
_DEQUE = collections.deque
# Types are told apart by identity (``id``), never by ``==`` or hashing: a metaclass may define those.
_ATOMS = frozenset(map(id, (str, bytes, bytearray, int, float, complex, bool, type(None))))
_NUMBERS = frozenset(map(id, (int, float)))
_TYPE_DICT = type.__dict__["__dict__"].__get__  # a class's own namespace, whatever its metaclass does
_OBJ_DICT = object.__getattribute__
_MRO = type.__dict__["__mro__"].__get__


def _size(o) -> int:
    """Shallow bytes of one entry: an atom, or a container with the atoms it holds directly."""
    t = type(o)
    if id(t) in _ATOMS:
        return sys.getsizeof(o)
    n = object.__sizeof__(o)
    items = ()
    if t is tuple or t is list:
        items = o[:SAMPLE]
    elif t is dict:
        items = list(o.values())[:SAMPLE]
    for v in items:
        if id(type(v)) in _ATOMS:
            n += sys.getsizeof(v)
    return n


def _entry_bytes(values: list) -> float:
    if not values:
        return 0.0
    sample = values[-SAMPLE:]
    return sum(_size(v) for v in sample) / len(sample)


def _lru(f) -> tuple[int, int, float] | None:
    info = f.cache_info()
    if info.maxsize is None:
        return None
    if info.currsize == 0 or info.currsize > MAX_SIZED:
        return info.currsize, info.maxsize, 0.0
    import gc

    # the wrapper's referents: each entry's key and result (oldest first), then a few objects of its own
    # (the wrapped function, the cache dict, its __dict__, type objects)
    refs = [r for r in gc.get_referents(f) if type(r) is not type][:2 * info.currsize]
    return info.currsize, info.maxsize, 2 * _entry_bytes(refs)  # a key and a result per entry


def _cachetools(c) -> tuple[int, int, float] | None:
    d = _OBJ_DICT(c, "__dict__")
    maxsize, currsize, data = d.get("_Cache__maxsize"), d.get("_Cache__currsize"), d.get("_Cache__data")
    if id(type(maxsize)) not in _NUMBERS or id(type(currsize)) not in _NUMBERS or type(data) is not dict:
        return None
    n = len(data)
    per = _entry_bytes(list(data.values())[-SAMPLE:]) if n else 0.0
    # currsize counts the cache's own unit (1 an entry unless it was given a getsizeof): bytes per unit
    return int(currsize), int(maxsize), per * n / currsize if currsize else 0.0


def _holder(v, cache_base) -> tuple[int, int, float] | None:
    """(fill, bound, bytes per unit of fill) of a bounded holder, else None."""
    t = type(v)
    if t is _LRU:
        return _lru(v)
    if t is _DEQUE:
        return None if v.maxlen is None else (len(v), v.maxlen, _entry_bytes(list(v)[-SAMPLE:]))
    if cache_base is not None and _subclass(t, cache_base):
        return _cachetools(v)
    return None


def _subclass(t, base) -> bool:
    try:
        return any(k is base for k in _MRO(t))  # identities only: no metaclass hook runs
    except Exception:
        return False


def _cachetools_base():
    mod = sys.modules.get("cachetools")
    try:
        return _OBJ_DICT(mod, "__dict__").get("Cache") if mod is not None else None
    except Exception:
        return None


def _candidates(cache_base):
    """(name, object) of what may be a bounded holder: module globals and module-level classes' attributes."""
    kinds: dict[int, bool] = {}  # id(type) -> is a class (of any metaclass), this search
    caches: dict[int, bool] = {}  # id(type) -> is a cachetools cache
    for mname, mod in list(sys.modules.items()):
        try:
            g = _OBJ_DICT(mod, "__dict__")
        except Exception:
            continue
        if type(g) is not dict:
            continue
        for k, v in list(g.items()):
            t = type(v)
            if t is _LRU or t is _DEQUE:
                yield f"{mname}.{k}", v
                continue
            i = id(t)
            is_class = kinds.get(i)
            if is_class is None:
                is_class = kinds[i] = _subclass(t, type)
            if is_class:
                try:
                    ns = _TYPE_DICT(v)
                except Exception:
                    continue
                for a, m in list(ns.items()):
                    tm = type(m)
                    if tm is staticmethod or tm is classmethod:
                        m = m.__func__
                    if type(m) is _LRU:
                        yield f"{mname}.{k}.{a}", m
            elif cache_base is not None:
                is_cache = caches.get(i)
                if is_cache is None:
                    is_cache = caches[i] = _subclass(t, cache_base)
                if is_cache:
                    yield f"{mname}.{k}", v


class BoundedFills:
    """The bounded holders at the last look and what they held then.

    A look re-reads the holders found before (weakly referenced: a look keeps nothing alive); the modules
    are searched again when their number changed or ``REDISCOVER_S`` passed (a search over a worker's
    ~1,000 modules takes tens of milliseconds; a re-read, microseconds)."""

    REDISCOVER_S = 60.0

    def __init__(self, clock=time.monotonic) -> None:
        self.clock = clock
        self.last: dict[int, tuple[str, int, int, float]] = {}  # id -> (name, fill, bound, bytes per unit)
        self.last_t: float | None = None
        self.cost = 0.0  # seconds the last module search took
        self.looks = 0
        self._known: list[tuple[str, object]] = []  # (name, weak reference)
        self._searched: tuple[float, int] | None = None  # when, and over how many modules

    def _search(self, now: float) -> None:
        t0 = time.perf_counter()
        base = _cachetools_base()
        known = []
        for name, v in _candidates(base):
            try:
                known.append((name, weakref.ref(v)))
            except TypeError:
                continue
        self._known, self._searched = known, (now, len(sys.modules))
        self.cost = time.perf_counter() - t0

    def look(self) -> dict[int, tuple[str, int, int, float]] | None:
        """Read the bounded holders now; the previous look's readings (None before the first look)."""
        now = self.clock()
        if self._searched is None or now - self._searched[0] > self.REDISCOVER_S or len(sys.modules) != self._searched[1]:
            self._search(now)
        base = _cachetools_base()
        seen: dict[int, tuple[str, int, int, float]] = {}
        for name, ref in self._known:
            v = ref()
            if v is None:
                continue
            try:
                h = _holder(v, base)
            except Exception:
                continue
            if h is not None:
                seen[id(v)] = (name, *h)
        before = self.last if self.last_t is not None else None
        self.last, self.last_t = seen, now
        self.looks += 1
        return before

    def explains(self, slope: float) -> str | None:
        """Whether holders that filled since the previous look account for at least ``EXPLAINS`` of a trend
        growing at ``slope`` bytes/s: the reason to hold the verdict, or None. Also a look."""
        t_prev = self.last_t
        before = self.look()
        if before is None or t_prev is None or slope <= 0:
            return None
        dt = max(1e-3, self.last_t - t_prev)
        filling, rate = [], 0.0
        for i, (name, fill, bound, per) in self.last.items():
            b = before.get(i)
            if b is None or fill <= b[1] or per <= 0:
                continue
            rate += (fill - b[1]) * per / dt
            filling.append((name, fill, bound, per))
        if not filling or rate < EXPLAINS * slope:
            return None
        name, fill, bound, per = max(filling, key=lambda h: h[3] * h[2])  # the largest at its bound
        return (f"a bounded holder still filling explains the growth: {name} {fill}/{bound} entries, "
                f"~{per * bound / 2**20:.1f} MiB at its bound")
