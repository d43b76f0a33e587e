"""Bounded holders still filling: memoisers and containers that declare how large they may grow.

A ``functools.lru_cache(maxsize=N)``, a ``collections.deque(maxlen=N)`` or a ``cachetools`` cache grows
exactly like a leak while it takes its first N entries (with a key space larger than N, three calls in
four may miss and insert: the fill is linear, not slowing), then stops. Its bound is written in the object:
growth that such a holder explains is not a leak, however long the fill lasts.

:class:`BoundedFills` finds them among module globals and the attributes of module-level classes (where
memoisers live: decorated functions and methods), without running any of the application's code (types
are compared by identity, never with ``==``, hashing or ``isinstance`` against user classes; namespaces
are read with the base getters), and keeps each one's fill over time: re-read at every window close (a
call or a length each, microseconds), searched for again every ``SEARCH_S`` or so (its cost kept under
``SEARCH_SHARE`` of the time; classes already searched are not searched again). When a trend is about to be
declared, :meth:`BoundedFills.explains` answers whether the entries bounded holders took over the trend's
span account for at least ``EXPLAINS`` of its growth, with the bytes an entry takes estimated from the
newest entries (shallow sizes: an underestimate, so a doubtful case is declared, not held back).

What it cannot see: a bound enforced by code (a dict trimmed by hand, an ``OrderedDict`` LRU), caches held
only by instances, caches of more than ``MAX_SIZED`` entries (sizing them would copy their entries), and a
holder's fill before it was first found (a cache created after the last search).
"""

from __future__ import annotations

import collections
import functools
import gc
import sys
import time
import weakref

MAX_SIZED = 65_536  # entries of a cache whose bytes per entry are estimated (get_referents lists them all)
SAMPLE = 64  # newest entries sized
EXPLAINS = 0.5  # share of a trend's growth that bounded holders' new entries must account for
SEARCH_S = 10.0  # seconds between two searches for holders, at least
SEARCH_SHARE = 0.002  # a search costs at most this share of the time until the next
HISTORY = 64  # fill changes kept per holder

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


def _mean_size(values: list) -> float:
    sample = values[-SAMPLE:]
    return sum(_size(v) for v in sample) / len(sample) if sample else 0.0


def _subclass(t, base) -> bool:
    try:
        return any(k is base for k in _MRO(t))
    except Exception:
        return False


def _cachetools_base():
    mod = sys.modules.get("cachetools")
    try:
        return _OBJ_DICT(mod, "__dict__").get("Cache") if mod is not None else None
    except Exception:
        return None


def fill(v) -> tuple[int, int] | None:
    """(fill, bound) of a bounded holder; None when it has no bound. Cheap: no entry is looked at."""
    t = type(v)
    if t is _LRU:
        info = v.cache_info()
        return None if info.maxsize is None else (info.currsize, info.maxsize)
    if t is _DEQUE:
        return None if v.maxlen is None else (len(v), v.maxlen)
    d = _OBJ_DICT(v, "__dict__")
    maxsize, currsize = d.get("_Cache__maxsize"), d.get("_Cache__currsize")  # a cachetools cache
    if id(type(maxsize)) not in _NUMBERS or id(type(currsize)) not in _NUMBERS:
        return None
    return int(currsize), int(maxsize)


def bytes_per_unit(v) -> float:
    """Estimated bytes one unit of ``fill(v)`` holds (0 when it cannot be told)."""
    t = type(v)
    if t is _LRU:
        n = v.cache_info().currsize
        if not 0 < n <= MAX_SIZED:
            return 0.0
        # the wrapper's referents: each entry's key and result (oldest first), then a few objects of its
        # own (the wrapped function, the cache dict, its __dict__, type objects)
        refs = [r for r in gc.get_referents(v) if type(r) is not type][:2 * n]
        return 2 * _mean_size(refs)  # a key and a result per entry
    if t is _DEQUE:
        return _mean_size(list(v)[-SAMPLE:])
    d = _OBJ_DICT(v, "__dict__")
    data, currsize = d.get("_Cache__data"), d.get("_Cache__currsize")
    if type(data) is not dict or not data or not currsize:
        return 0.0
    # cachetools counts in its own unit (1 an entry unless it was given a getsizeof): bytes per unit
    return _mean_size(list(data.values())[-SAMPLE:]) * len(data) / currsize


class BoundedFills:
    """Bounded holders found so far, each with its recent fill changes."""

    def __init__(self, clock=time.monotonic) -> None:
        self.clock = clock
        self.holders: dict[int, tuple[str, weakref.ref, int]] = {}  # id -> (name, reference, bound)
        self.history: dict[int, collections.deque] = {}  # id -> (t, fill) at each change
        self.cost = 0.0  # seconds the last search took
        self.searches = 0
        self._searched: tuple[float, int] | None = None  # when, over how many modules
        self._classes: dict[int, tuple[weakref.ref, tuple]] = {}  # id(class) -> (ref, its bounded memoisers)

    # ------------------------------------------------------------------ finding
    def _class_memoisers(self, cls) -> tuple:
        known = self._classes.get(id(cls))
        if known is not None and known[0]() is cls:
            return known[1]
        found = []
        for a, m in list(_TYPE_DICT(cls).items()):
            tm = type(m)
            if tm is staticmethod or tm is classmethod:
                m = m.__func__
            if type(m) is _LRU:
                found.append((a, m))
        try:
            self._classes[id(cls)] = (weakref.ref(cls), tuple(found))
        except TypeError:
            pass
        return tuple(found)

    def _candidates(self, cache_base):
        is_class: dict[int, bool] = {}  # id(type) -> whether its instances are classes, this search
        is_cache: dict[int, bool] = {}
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
                c = is_class.get(i)
                if c is None:
                    c = is_class[i] = _subclass(t, type)
                if c:
                    try:
                        for a, m in self._class_memoisers(v):
                            yield f"{mname}.{k}.{a}", m
                    except Exception:
                        continue
                elif cache_base is not None:
                    c = is_cache.get(i)
                    if c is None:
                        c = is_cache[i] = _subclass(t, cache_base)
                    if c:
                        yield f"{mname}.{k}", v

    def search(self, now: float) -> None:
        t0 = time.perf_counter()
        for name, v in self._candidates(_cachetools_base()):
            if id(v) in self.holders:
                continue
            try:
                f = fill(v)
                if f is not None:
                    self.holders[id(v)] = (name, weakref.ref(v), f[1])
                    self.history[id(v)] = collections.deque([(now, f[0])], maxlen=HISTORY)
            except Exception:
                continue
        self._classes = {i: c for i, c in self._classes.items() if c[0]() is not None}
        self._searched = (now, len(sys.modules))
        self.cost = time.perf_counter() - t0
        self.searches += 1

    def search_wait(self) -> float:
        """Seconds from one search to the next."""
        return max(SEARCH_S, self.cost / SEARCH_SHARE)

    def _search_due(self, now: float) -> bool:
        return self._searched is None or now - self._searched[0] >= self.search_wait()

    # ------------------------------------------------------------------ reading
    def look(self) -> None:
        """Re-read every known holder's fill (searching for new ones when due). Never raises."""
        now = self.clock()
        try:
            if self._search_due(now):
                self.search(now)
        except Exception:
            self._searched = (now, len(sys.modules))
        for i, (name, ref, bound) in list(self.holders.items()):
            v = ref()
            try:
                f = None if v is None else fill(v)
            except Exception:
                f = None
            if f is None:
                del self.holders[i], self.history[i]
                continue
            h = self.history[i]
            if f[0] != h[-1][1]:
                h.append((now, f[0]))

    def explains(self, growth: float, since: float) -> str | None:
        """Whether the entries bounded holders took since ``since`` (a monotonic time: the trend's start)
        account for at least ``EXPLAINS`` of ``growth`` bytes: the reason to hold the verdict, or None.
        A holder found after ``since`` counts from when it was found."""
        self.look()
        if growth <= 0:
            return None
        added, best = 0.0, None
        for i, (name, ref, bound) in self.holders.items():
            h = self.history[i]
            before = next((f for t, f in reversed(h) if t <= since), h[0][1])
            grew = h[-1][1] - before
            v = ref()
            if grew <= 0 or v is None:
                continue
            per = bytes_per_unit(v)
            added += grew * per
            if best is None or per * bound > best[3] * best[2]:
                best = (name, h[-1][1], bound, per)
        if best is None or added < EXPLAINS * growth:
            return None
        name, n, bound, per = best
        return (f"bounded holders took {added / 2**20:.1f} MiB of the trend's {growth / 2**20:.1f} MiB: "
                f"{name} {n}/{bound} entries, ~{per * bound / 2**20:.1f} MiB at its bound")
