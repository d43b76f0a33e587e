"""Tier 3: what keeps a leaking site's objects alive, as a path from a module global, in bounded time.

Runs right after a tier-2 window, with tracemalloc still tracing (the allocation site of an object is how
its objects are recognised). The holder is looked for first among module globals and their attributes
(a dict of atomic values, the commonest cache, is not even tracked by the collector, so only its holder
leads to it), then among every large container, then among every object; the path up from the holder
ends at the first module global. Nothing here runs an object's own code: attribute dicts are read with
the base ``__getattribute__`` (no ``__getattr__``, no property).
"""

from __future__ import annotations

import collections
import functools
import gc
import itertools
import sys
import time
import tracemalloc
import types

from otel_leak.detector.tier2 import _OWN, site_frame

def _describe(obj, child) -> dict:
    d = {"type": type(obj).__name__}
    try:
        if isinstance(obj, dict):
            for k, v in obj.items():
                if v is child:
                    d["key"] = repr(k)[:80]
                    break
            mod = _module_of_dict(obj)
            if mod:
                d["module"] = mod
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                if v is child:
                    d["index"] = i
                    break
            d["len"] = len(obj)
        elif type(obj) is _FRAME:
            d["function"] = obj.f_code.co_name
            d["file"] = obj.f_code.co_filename
            d["line"] = obj.f_lineno
            for k, v in obj.f_locals.items():
                if v is child:
                    d["key"] = k
                    break
        elif _own_dict(obj) is not None or hasattr(type(obj), "__qualname__"):
            d["type"] = getattr(type(obj), "__qualname__", d["type"])
    except Exception:
        pass
    return d


_FRAME = type(sys._getframe())


def _our_frame(o) -> bool:
    return type(o) is _FRAME and any(x in o.f_code.co_filename for x in _OWN)


def _module_of_dict(dct) -> str | None:
    for name, m in list(sys.modules.items()):
        if getattr(m, "__dict__", None) is dct:
            return name
    return None


def _tail_referents(o):
    """Referents to check for a leaked non-container: leaking containers grow at their end."""
    t = type(o)
    if t is list or t is collections.deque:
        return o[-8:] if t is list else list(itertools.islice(reversed(o), 8))
    if t is dict:
        return list(itertools.islice(reversed(o.values()), 8))
    if t is set:
        return list(itertools.islice(o, 64))  # no order: a bounded look at some members
    return gc.get_referents(o)


_LRU = type(functools.lru_cache(maxsize=None)(len))


def _own_dict(v):
    """``v``'s attribute dict, read without running any of its code (no ``__getattr__``, no property)."""
    try:
        if isinstance(v, type):
            return type.__getattribute__(v, "__dict__")
        return object.__getattribute__(v, "__dict__")
    except Exception:
        return None


def retention_paths(site: dict, budget: float, max_depth: int = 8, max_targets: int = 1) -> list[dict]:
    """What keeps objects from ``site`` alive: a referrer chain of bounded depth, in bounded time."""
    return _walk(site, budget, max_depth)


def _walk(site: dict, budget: float, max_depth: int) -> list[dict]:
    deadline = time.monotonic() + budget
    want = (site["file"], site["line"])
    get_tb = tracemalloc.get_object_traceback
    target = None
    holder = None
    # First the large containers, wherever they are: what leaks usually piles up in one container that
    # keeps growing (a module dict or list, a deque, a cache's dict, a registry), and checking the newest
    # entries of the large ones costs a type test per object. Then every object, newest generation first.
    big = (dict, list, set, collections.deque)
    # Module globals and their attributes first: a dict that holds only atomic values (bytes keyed by
    # strings or ints, the commonest cache) is not tracked by the collector, so only its holder can lead
    # to it. ``roots`` maps each global's id to (module, name) to end the referrer walk there.
    # ``root``: the module global (module, name[, attribute]) the holder was found under.
    root: tuple | None = None
    mods = list(sys.modules.items())
    # The application's modules are imported last (and __main__ is the script): newest first.
    mods = [kv for kv in mods if kv[0] == "__main__"] + [kv for kv in reversed(mods) if kv[0] != "__main__"]
    dicts = [(name, d) for name, d in ((n, _own_dict(m)) for n, m in mods) if type(d) is dict]

    def holds(c) -> bool:
        nonlocal target, holder
        if type(c) in big and len(c) >= 64:
            for r in _tail_referents(c):
                tb = get_tb(r)
                if tb is not None and site_frame(tb) == want:
                    target, holder = r, c
                    return True
        return False

    # the globals themselves, then the containers among their attributes (a class's cache, a manager's
    # registry, a functools cache's dict)
    for modname, md in dicts:
        if time.monotonic() > deadline:
            break
        for name, v in list(md.items()):
            if holds(v):
                root = (modname, name)
                break
        if root:
            break
    # the attribute descent gets at most a third of the budget: a heap with many modules and large class
    # dicts can take all of it, and the scan of large containers below must still run
    descent_end = min(deadline, time.monotonic() + budget / 3)
    for modname, md in dicts if target is None else ():
        if time.monotonic() > descent_end:
            break
        for name, v in list(md.items()):
            if type(v) in big or isinstance(v, types.ModuleType):
                continue
            if time.monotonic() > descent_end:
                break
            if type(v) is _LRU and any(holds(x) for x in gc.get_referents(v)):
                break  # a module-level functools cache: its dict is a referent of the wrapper
            vd = _own_dict(v)
            if isinstance(vd, (dict, types.MappingProxyType)):
                for attr, x in list(vd.items()):
                    if holds(x):
                        root = (modname, name, attr)
                        break
                    if type(x) is _LRU and any(holds(y) for y in gc.get_referents(x)):
                        break
            if target is not None:
                break
        if target is not None:
            break
    objs = gc.get_objects() if target is None else []
    for i, o in enumerate(objs):
        if i % 4096 == 0 and time.monotonic() > deadline:
            break
        try:
            if holds(o):
                break
        except Exception:
            continue
    objs = []
    for gen in (0, 1, 2):
        if target is not None or time.monotonic() > deadline:
            break
        objs = gc.get_objects(gen)
        for i, o in enumerate(objs):
            if i % 512 == 0 and time.monotonic() > deadline:
                break
            tb = get_tb(o)
            if tb is not None and site_frame(tb) == want:
                target = o
                break
            try:
                refs = _tail_referents(o)
            except Exception:
                continue
            for r in refs:
                if gc.is_tracked(r):
                    continue
                tb = get_tb(r)
                if tb is not None and site_frame(tb) == want:
                    target, holder = r, o
                    break
            if target is not None:
                break
    del objs
    if target is None:
        return []
    chain = [{"type": type(target).__name__, "size": sys.getsizeof(target)}]
    ignore = {id(chain), id(sys._getframe())}
    cur = target
    if holder is not None:
        chain.append(_describe(holder, cur))
        cur = holder
    complete = False
    if root is not None:
        if len(root) == 3:
            owner = dict(dicts).get(root[0], {}).get(root[1])
            owner_name = owner.__name__ if isinstance(owner, type) else type(owner).__name__
            chain.append({"type": f"{owner_name}.{root[2]}"})
        chain.append({"type": "module", "module": root[0], "key": repr(root[1])})
        complete = True
    for _ in range(0 if complete else max_depth):
        if time.monotonic() > deadline:
            break
        refs = [
            r for r in gc.get_referrers(cur)
            if id(r) not in ignore and r is not chain and not _our_frame(r)
        ]
        if not refs:
            complete = True
            break
        # Prefer module globals and long-lived containers over transient ones.
        refs = refs[:64]
        mods = {id(getattr(m, "__dict__", None)) for m in list(sys.modules.values())}
        refs.sort(key=lambda r: 0 if id(r) in mods else 1 if type(r) is _LRU else 2)
        parent = refs[0]
        step = _describe(parent, cur)
        chain.append(step)
        ignore.add(id(refs))
        if "module" in step:
            complete = True
            break
        cur = parent
    refs = None
    text = " <- ".join(
        s.get("module", s["type"]) + (f"[{s['key']}]" if "key" in s else f"[{s['index']}]" if "index" in s else "")
        for s in chain
    )
    return [{"site": f"{site['file']}:{site['line']}", "path": chain, "text": text, "complete": complete}]


