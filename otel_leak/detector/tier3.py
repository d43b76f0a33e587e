"""Tier 3: what keeps a leaking site's objects alive, as a path from a module global, in bounded time.

Runs right after a tier-2 window, with tracemalloc still tracing (the allocation site of an object is how
its objects are recognised). A breadth-first walk over references starts at the roots a worker's data
hangs from: module globals (``__main__`` and the modules imported last first) and the stacks of the other
threads. It stops at the first holder: a large container whose newest entries were allocated at the site,
or any object that holds one allocated there. The path is the walk's own parent links, from the holder up
to its root, so no referrer search is needed.

Safe to run on a background thread next to the worker's own threads:

* It never enumerates the collector's lists (``gc.get_objects``) nor searches referrers
  (``gc.get_referrers``). Those return objects another thread is still building: a tuple being filled by
  ``tuple(generator)`` is tracked but referenced only by the C code filling it, and a second reference,
  held across a thread switch, makes that code fail with ``SystemError`` in the user's task. An object
  reached through references is never one under construction.
* It never runs an object's own code: referents come from the collector's traversal, attribute dicts are
  read with the base ``__getattribute__`` (no ``__getattr__``, no property). A running frame's locals
  are read from its ``f_locals`` snapshot, which keeps references to them until the frame next takes
  one or ends.

What only C-level state holds (not reachable from a module or a stack) is not found.
"""

from __future__ import annotations

import collections
import gc
import itertools
import sys
import threading
import time
import tracemalloc
import types

from otel_leak.detector.tier2 import _OWN, site_frame

MAX_NODES = 250_000  # objects the walk may visit (its own memory: a dict entry and a queue slot each)
MAX_TB_FRAMES = 16  # frames of a kept exception's traceback looked into
BIG = 64  # a container at least this long is checked for entries allocated at the site
WIDE = 1024  # of a container longer than this, only the newest entries are followed
CHECK_EVERY = 256  # objects between two looks at the clock
PER_ROOT = 5_000  # objects of its data walked from one root (not counting those seen from earlier roots)
MAX_PATH = 16

_FRAME = type(sys._getframe())
_TRACEBACK = types.TracebackType
_FUNCTION = types.FunctionType
_QUALNAME = type.__dict__["__qualname__"].__get__  # a class's qualified name, whatever its metaclass does
_CELL = type((lambda x: lambda: x)(0).__closure__[0])
_BIG_TYPES = (dict, list, set, collections.deque)
_ATOMIC = (str, bytes, bytearray, int, float, complex, bool, type(None))
_FUNCTION_DATA_T = frozenset({tuple, dict})  # what of a function's referents can hold data: closure, defaults, __dict__
_CODE = frozenset({_FUNCTION, types.MethodType, property, classmethod, staticmethod, types.BuiltinFunctionType})


def _own_dict(v):
    """``v``'s attribute dict, read without running any of its code (no ``__getattr__``, no property)."""
    try:
        if issubclass(type(v), type):  # not isinstance(): that may ask the object for its __class__
            return type.__getattribute__(v, "__dict__")
        return object.__getattribute__(v, "__dict__")
    except Exception:
        return None


def _modules_by_dict() -> dict[int, str]:
    return {id(d): name for name, m in list(sys.modules.items()) if type(d := _own_dict(m)) is dict}


def _tail(o, n: int = 8) -> list:
    """A container's ``n`` newest entries (leaking containers grow at their end); a set has no order:
    some of its members (at least 64)."""
    t = type(o)
    if t is list:
        return o[-n:]
    if t is collections.deque:
        return list(itertools.islice(reversed(o), n))
    if t is dict:
        return list(itertools.islice(reversed(o.values()), n))
    return list(itertools.islice(o, max(n, 64)))


def _in_tail(o, at_site, parent: dict, deep: bool):
    """``(target, holder)`` when one of container ``o``'s newest entries was allocated at the site, or
    (``deep``) holds such an object in its own data: a callback's defaults or closure (a registry of
    listeners), an instance's attributes (a registry of handlers). The links from ``o`` down to the holder
    go into ``parent``. None otherwise."""
    tail = _tail(o)
    for r in tail:
        if at_site(r):
            return r, o
    if not deep:
        return None
    for r in tail:
        t = type(r)
        if t in _ATOMIC or t in _SKIP:
            continue
        if isinstance(r, BaseException):  # a kept exception: its traceback's frames keep their locals
            hit = _in_traceback(r, at_site, parent, o)
            if hit is not None:
                return hit
            continue
        for x in (_referents(r) if t is _FUNCTION else (d,) if type(d := _own_dict(r)) is dict else ()):
            for y in gc.get_referents(x):
                if type(y) is _CELL:
                    cell, y = y, (gc.get_referents(y) or (None,))[0]
                    if y is not None and at_site(y):
                        parent[id(r)], parent[id(x)], parent[id(cell)] = o, r, x
                        return y, cell
                elif at_site(y):
                    parent[id(r)], parent[id(x)] = o, r
                    return y, x
    return None


def _in_traceback(exc: BaseException, at_site, parent: dict, container):
    """``(target, frame)`` when a local variable of a frame in ``exc``'s traceback was allocated at the
    site (the frame links into ``parent``: container -> exception -> traceback -> frame)."""
    tb, depth = exc.__traceback__, 0
    first = tb
    while tb is not None and depth < MAX_TB_FRAMES:
        frame = tb.tb_frame
        for v in list(frame.f_locals.values()):
            if at_site(v):
                parent[id(exc)], parent[id(first)] = container, exc
                prev = first
                t = first.tb_next
                while prev is not tb:  # the traceback's own chain, down to this frame's entry
                    parent[id(t)] = prev
                    prev, t = t, t.tb_next
                parent[id(frame)] = tb
                return v, frame
        tb, depth = tb.tb_next, depth + 1
    return None


def _in_loggers(at_site, parent: dict):
    """``(target, holder)`` when a handler of one of the newest loggers keeps data from the site in its
    attributes (handlers added per tenant, per request...): the logging module's registry of loggers is
    not a module global, so the cheap pass over globals never meets it. The links go into ``parent``, up
    to the ``logging`` module's ``root``."""
    logging = sys.modules.get("logging")
    manager = getattr(getattr(logging, "root", None), "manager", None)
    registry = getattr(manager, "loggerDict", None)
    if type(registry) is not dict:
        return None
    for logger in list(itertools.islice(reversed(registry.values()), 64)):
        for handler in list(getattr(logger, "handlers", None) or ()):
            attrs = _own_dict(handler)
            if type(attrs) is not dict:
                continue
            for v in list(attrs.values()):
                if type(v) in _ATOMIC and at_site(v):
                    handlers = logger.handlers
                    parent[id(handler)], parent[id(handlers)] = handlers, logger
                    parent[id(logger)], parent[id(registry)] = registry, manager
                    parent[id(manager)], parent[id(logging.root)] = logging.root, _own_dict(logging)
                    return v, handler
    return None


def _referents(o) -> list:
    """What the walk follows from ``o``: the collector's view of its references (no code of ``o`` runs);
    of a very long container only its newest entries."""
    t = type(o)
    if t in _BIG_TYPES and len(o) > WIDE:
        return _tail(o, 64)
    if t is _FUNCTION:
        # Data hangs from a function through its closure, defaults and attributes (its __dict__, only
        # when it has one: reading ``__dict__`` would make one); its code, globals (a root of its own)
        # and names hold none.
        g = o.__globals__
        return [x for x in gc.get_referents(o) if type(x) in _FUNCTION_DATA_T and x is not g]
    if issubclass(t, type):
        # a class's data is in its namespace (its bases are globals of their modules)
        return [r for r in gc.get_referents(o) if type(r) is dict]
    if t is _FRAME:
        # A running frame's locals are not in the collector's view of it; f_locals is a snapshot of them
        # (a dict the frame keeps, which ``locals()`` would return too: read, never cleared).
        return list(o.f_locals.values())
    return gc.get_referents(o)


def _describe(obj, child, modules: dict[int, str]) -> dict:
    d = {"type": _QUALNAME(type(obj))}
    try:
        if type(obj) is dict:
            mod = modules.get(id(obj))
            if mod:
                d["module"] = mod
            for k, v in list(obj.items()):
                if v is child:
                    d["key"] = _key_text(k)
                    break
        elif type(obj) in (list, tuple):
            for i, v in enumerate(obj):
                if v is child:
                    d["index"] = i
                    break
            d["len"] = len(obj)
        elif type(obj) is _FUNCTION:
            d["qualname"] = str(obj.__qualname__)[:80]  # (a function's own slots: no user code runs)
            for attr in ("__defaults__", "__closure__", "__kwdefaults__"):
                if object.__getattribute__(obj, attr) is child:
                    d["attr"] = attr
                    break
        elif type(obj) is _CELL:
            d["attr"] = "cell_contents"
        elif type(obj) is _FRAME:
            d["function"] = obj.f_code.co_name
            d["file"] = obj.f_code.co_filename
            d["line"] = obj.f_lineno
            for k, v in list(obj.f_locals.items()):
                if v is child:
                    d["key"] = str(k)
                    break
        elif isinstance(obj, BaseException) and obj.__traceback__ is child:
            d["attr"] = "__traceback__"
        elif type(obj) is _TRACEBACK:
            d["attr"] = "tb_frame" if obj.tb_frame is child else "tb_next"
        else:
            od = _own_dict(obj)
            if od is not None:
                for k, v in list(od.items()):
                    if v is child:
                        d["attr"] = str(k)[:80]
                        break
    except Exception:
        pass
    return d


def _key_text(k) -> str:
    """A dict key as text without running its ``__repr__`` (only atoms and tuples of atoms are shown)."""
    if type(k) in _ATOMIC or (type(k) is tuple and all(type(x) in _ATOMIC for x in k)):
        return repr(k)[:80]
    if type(k) is tuple:
        return "(" + ", ".join(repr(x)[:40] if type(x) in _ATOMIC else f"<{type(x).__name__}>" for x in k[:4]) + ")"
    return f"<{type(k).__name__}>"


def _own_types() -> frozenset:
    """The classes otel-leak's modules define: a walk does not go through their instances (the span
    processor, the detector's parts), which are bounded and never what keeps a user's data alive."""
    out = set()
    for name, m in list(sys.modules.items()):
        if name == "otel_leak" or name.startswith("otel_leak."):
            for v in list(getattr(m, "__dict__", {}).values()):
                if isinstance(v, type) and getattr(v, "__module__", "").startswith("otel_leak"):
                    out.add(v)
    return frozenset(out)


def _roots(modules: dict[int, str]) -> list:
    """``__main__``'s globals, the frames of the other threads' stacks (outermost first: a worker's loop
    and its locals), then the other modules' globals, those imported last (the application's) first.
    otel-leak's own modules and threads are left out."""
    mods = list(sys.modules.items())
    dicts = []
    for name, m in [kv for kv in mods if kv[0] == "__main__"] + [kv for kv in reversed(mods) if kv[0] != "__main__"]:
        d = _own_dict(m)
        if type(d) is dict and name != "otel_leak" and not name.startswith("otel_leak."):
            dicts.append(d)
    frames = []
    me = threading.get_ident()
    for ident, f in list(sys._current_frames().items()):
        stack = []
        while f is not None and ident != me:
            stack.append(f)
            f = f.f_back
        if not any(any(x in fr.f_code.co_filename for x in _OWN) for fr in stack):
            frames.extend(reversed(stack))
    return dicts[:1] + frames + dicts[1:]


# Not followed: modules (their dicts are roots of their own), code, descriptors and builtins hold no data
_SKIP = frozenset({
    type(sys), type(_own_dict.__code__), type(len), type(str.join), type(str.__add__), type(int.real),
    type(type.__dict__["__dict__"]), type(dict.__dict__["fromkeys"]), type(type.__dict__),
    type(object.__init__), type(type.__dict__["__basicsize__"]),
})


def retention_paths(site: dict, budget: float, max_nodes: int = MAX_NODES, per_root: int = PER_ROOT) -> list[dict]:
    """What keeps objects from ``site`` alive: the path from a module global (or a thread's stack) to
    the holder, found within ``budget`` seconds and ``max_nodes`` objects; [] when none was found.

    First the data of each root (instances and containers) is walked breadth first, over at most
    ``per_root`` objects not seen from an earlier root: the application's globals (the first roots)
    before the standard library's, no single large root taking the whole budget. Then the functions
    met on the way. (Walking every root's functions first, a holder a few attributes below a library's
    globals, a logger's handler, was out of reach among a busy worker's ~850 modules.)"""
    deadline = time.monotonic() + budget
    want = (site["file"], site["line"])
    get_tb = tracemalloc.get_object_traceback
    raw_tb = getattr(tracemalloc, "_get_object_traceback", None)  # frames as tuples, most recent first

    def at_site(o) -> bool:
        # Most objects of a traced heap have a traceback: a containment test on the raw frames first (in C)
        # spares the site check (string tests per frame) for all but those allocated under the site's line.
        if raw_tb is not None:
            raw = raw_tb(o)
            if raw is None or want not in raw:
                return False
        tb = get_tb(o)
        return tb is not None and site_frame(tb) == want

    modules = _modules_by_dict()
    roots = _roots(modules)
    skip = _SKIP | _own_types()  # otel-leak's own objects (reached through the SDK's) hold no user data
    parent: dict[int, object] = {id(r): None for r in roots}  # id -> the object it was reached from
    target = holder = None
    # First, cheaply, the large containers that are module globals themselves (the commonest holder: a
    # module-level cache or registry), application modules first, within a third of the budget (on a busy
    # worker's ~1,000 roots this pass alone took 0.2 s), before the walk spends the rest module by module.
    # The entries themselves first; then, within a sixth of the budget more, what the newest entries hold
    # in their own data (a registry of callbacks keeping their data as defaults or in closures).
    for deep, share in ((False, 1 / 3), (True, 1 / 6)):
        cheap_deadline = time.monotonic() + budget * share
        if deep and target is None:
            try:
                hit = _in_loggers(at_site, parent)
            except Exception:
                hit = None
            if hit is not None:
                target, holder = hit
                break
        for d in roots:
            if target is not None or time.monotonic() > cheap_deadline:
                break
            if type(d) is not dict:
                continue
            try:
                for v in list(d.values()):
                    if type(v) in _BIG_TYPES and len(v) >= BIG:
                        hit = _in_tail(v, at_site, parent, deep)
                        if hit is not None:
                            target, holder = hit
                            parent[id(v)] = d
                            break
            except Exception:
                continue
    # Then a walk over references, breadth first, in two passes. First each root's data (instances,
    # containers, classes), over at most ``per_root`` objects not seen from an earlier root, the
    # functions it reaches (whose closures and defaults rarely hold the data, and there are many) put
    # aside; then those functions, in the roots' order, each one's own data before the next one.
    # Under tracemalloc every allocation is slow (a traceback taken and stored): the loop allocates as
    # little as it can (two queues for all roots; counted without ints, each new one an allocation).
    data: collections.deque = collections.deque()
    code: collections.deque = collections.deque()
    repeat = itertools.repeat
    found: list = []

    def walk(limit: int, with_code: bool) -> None:
        for _ in repeat(None, -(-limit // CHECK_EVERY)):
            if time.monotonic() > deadline or len(parent) > max_nodes:
                return
            for _ in repeat(None, CHECK_EVERY):
                if data:
                    o = data.popleft()
                elif with_code and code:
                    o = code.popleft()
                else:
                    return
                try:
                    if type(o) in _BIG_TYPES and len(o) >= BIG:
                        hit = _in_tail(o, at_site, parent, False)
                        if hit is not None:
                            found.append(hit)
                            return
                    for r in _referents(o):
                        t = type(r)
                        if t in skip:
                            continue
                        if t in _ATOMIC:  # (most referents, a dict's keys) checked without an id()
                            if at_site(r):
                                found.append((r, o))
                                return
                            continue
                        i = id(r)  # (an int allocated: one per referent that may be new)
                        if i in parent:
                            continue
                        if at_site(r):
                            found.append((r, o))
                            return
                        parent[i] = o
                        (code if t in _CODE else data).append(r)
                except Exception:  # a container another thread changed under the walk: go on with the next
                    continue

    if target is None:
        for root in roots:
            if found or time.monotonic() > deadline or len(parent) > max_nodes:
                break
            data.clear()
            data.append(root)
            walk(per_root, with_code=False)
        if not found:
            data.clear()
            walk(max_nodes, with_code=True)
        if found:
            target, holder = found[0]
    data.clear()
    code.clear()
    found.clear()
    if target is None:
        return []
    # (sys.getsizeof would call a class's own __sizeof__: only atoms get it)
    size = sys.getsizeof(target) if type(target) in _ATOMIC else object.__sizeof__(target)
    chain = [{"type": type(target).__name__, "size": size}]
    child, cur = target, holder
    complete = False
    while cur is not None and len(chain) < MAX_PATH:
        up = parent.get(id(cur))
        if type(cur) is dict and up is not None and id(cur) not in modules and _own_dict(up) is cur:
            cur = up  # an instance's attribute dict (the walk met it once the dict existed): one step, X.attr
        step = _describe(cur, child, modules)
        chain.append(step)
        if "module" in step or (type(cur) is _FRAME and parent.get(id(cur)) is None):  # a running stack: a root
            complete = True
            break
        child, cur = cur, parent.get(id(cur))
    parent.clear()
    text = " <- ".join(_step_text(s) for s in chain)
    return [{"site": f"{site['file']}:{site['line']}", "path": chain, "text": text, "complete": complete}]


def _step_text(s: dict) -> str:
    if "function" in s:
        local = f" local {s['key']!r}" if "key" in s else ""
        return f"{s['function']}(){local} at {s['file']}:{s['line']}"
    head = s.get("module") or s.get("qualname") or s["type"]
    if "key" in s:
        return f"{head}[{s['key']}]"
    if "index" in s:
        return f"{head}[{s['index']}]"
    if "attr" in s:
        return f"{head}.{s['attr']}"
    return head
