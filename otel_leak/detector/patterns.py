"""What kind of leak it is, and what to do about it: a pattern and its remedy from the detector's evidence.

The remedy depends on the kind of leak: a cache is bounded, a handler removed, a traceback dropped, a
queue given backpressure. The evidence is what the detector already has: the retention path tier 3
found (the types and names of the objects from a module global down to the leaked data), the kind of
memory that grows (Python heap, or native: the allocator's in-use bytes, its free bytes, or neither, for
memory outside malloc) and whether the garbage collector runs. Rules are tried most specific first; the
first that matches names the pattern, with a confidence: high when a holder on the path says it
(``functools._lru_cache_wrapper``, ``Handler``, a traceback), lower when only the shape of the evidence
does (a module-level container, native growth). ``unknown`` when nothing decides.

Pure functions on plain data (report dicts), so the same classification runs in the worker and on a
report read back; bounded work: a path is at most 16 steps.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Pattern:
    name: str
    title: str
    remedy: str


PATTERNS = {p.name: p for p in (
    Pattern("unbounded_memoisation", "a memoising cache without a bound",
            "functools.lru_cache(maxsize=None), @cache or a hand-made memo keeps every argument (and, on a "
            "method, every self) for ever: give it a maxsize, cache a module-level function of the key "
            "only instead of a method, or keep the cache on the instance so it dies with it."),
    Pattern("handler_registration", "a handler, callback or listener registered per task",
            "Something is registered on every call and never removed (a logging handler, a callback, a "
            "listener, a signal receiver): register it once at start-up, or remove it in a finally "
            "(logger.removeHandler(h), registry.remove(cb)); hold listeners that should die with their "
            "owner through weak references (weakref.WeakMethod, weakref.WeakSet)."),
    Pattern("kept_exceptions", "exceptions kept with their tracebacks",
            "Caught exceptions are kept, and each one's traceback keeps its frames with all their local "
            "variables: keep the formatted text (traceback.format_exception) or the exception without "
            "its traceback (exc.with_traceback(None)), and bound how many are kept."),
    Pattern("asyncio_tasks", "asyncio tasks or futures kept after they are done",
            "Tasks or futures stay in a set or list once done (fire-and-forget kept for a reference): "
            "discard each one when it finishes (task.add_done_callback(tasks.discard)) or use "
            "asyncio.TaskGroup, and bound how many run at once."),
    Pattern("queue_backlog", "a queue filled faster than it is drained",
            "A producer outpaces its consumer: bound the queue (queue.Queue(maxsize=N), "
            "collections.deque(maxlen=N) if dropping is acceptable) and apply backpressure (block or shed "
            "load when full), or add consumers; export the queue's length as a metric."),
    Pattern("unbounded_container", "a module-level cache, dict or registry that only grows",
            "A module-level container gains entries with traffic and nothing removes them (keys such as "
            "ids, URLs or tenants grow without end): bound it (an LRU with a size: "
            "functools.lru_cache(maxsize=N), cachetools.LRUCache/TTLCache), or remove each entry when the "
            "work that added it is done."),
    Pattern("uncollected_cycles", "reference cycles the garbage collector does not free",
            "The garbage collector is disabled (gc.disable()) or its thresholds keep full collections from "
            "running, and objects in reference cycles pile up: re-enable it or call gc.collect() "
            "periodically, and break the cycles (weak back-references, clear references in close())."),
    Pattern("native_memory", "native memory in use, outside the Python heap",
            "The allocator's in-use bytes grow but Python objects do not explain it: a C extension's "
            "buffers (numpy, Arrow, image or compression libraries, ctypes): release them (del, close(), "
            "context managers), bound the extension's own caches, and profile natively (memray run "
            "--native) on one worker."),
    Pattern("allocator_retention", "memory freed but kept by the allocator (fragmentation)",
            "Resident memory grows while the allocator's in-use bytes do not: freed memory stays in the "
            "allocator's arenas (fragmentation, one arena per thread). Try MALLOC_ARENA_MAX=2, "
            "malloc_trim(0) after large tasks, or jemalloc; allocate large buffers once and reuse them."),
    Pattern("outside_malloc", "memory mapped outside malloc",
            "Resident memory grows outside the allocator (mmap, shared memory, a native library's own "
            "pools): close the maps you open (mmap.close(), context managers) and check the native "
            "libraries' own memory settings."),
    Pattern("unknown", "not decided by the evidence",
            "The evidence does not say which kind of leak this is: read the allocation sites and open the "
            "trace exemplars of the suspected task; a longer tier-2 window or memray on one worker says "
            "more."),
)}

_EXCEPTION_HINTS = ("Error", "Exception", "Warning")


def _steps(paths: list[dict]) -> list[dict]:
    return list(paths[0].get("path") or []) if paths else []


def classify(kind: str | None, retention: list[dict], allocator: dict | None = None,
             gc_enabled: bool = True) -> dict:
    """``{"pattern", "title", "confidence", "evidence", "remedy"}`` for a declared leak.

    ``kind``: ``python_heap``, ``mixed``, ``native_or_fragmentation`` or None; ``retention``: tier 3's
    paths (each ``{"path": [step, ...], "text": ...}``, the first the one it found); ``allocator``: the
    allocator trend (``explains``: ``native_in_use``, ``allocator_free_retained``, ``outside_malloc``);
    ``gc_enabled``: whether the collector runs in the process."""
    name, confidence, evidence = _decide(kind, retention, allocator, gc_enabled)
    p = PATTERNS[name]
    return {"pattern": p.name, "title": p.title, "confidence": confidence, "evidence": evidence,
            "remedy": p.remedy}


def _decide(kind, retention, allocator, gc_enabled) -> tuple[str, float, str]:
    steps = _steps(retention)
    types = [str(s.get("type", "")) for s in steps]
    attrs = [str(s.get("attr", "")) for s in steps]
    text = retention[0].get("text", "") if retention else ""
    python = kind in ("python_heap", "mixed") or bool(steps)
    if any(t.endswith("_lru_cache_wrapper") or t == "lru_cache" for t in types):
        return "unbounded_memoisation", 0.9, "the path goes through a functools cache"
    if "__traceback__" in attrs or "tb_frame" in attrs or "traceback" in types:
        return "kept_exceptions", 0.9, "the path goes through an exception's traceback"
    if any(t in ("Task", "Future", "_GatheringFuture") or t.endswith(".Task") for t in types):
        return "asyncio_tasks", 0.85, "the path goes through an asyncio task or future"
    if any(t.endswith("Handler") for t in types) or "handlers" in attrs or "loggerDict" in attrs:
        return "handler_registration", 0.85, "the path goes through a logging handler"
    if any(a in ("__defaults__", "__closure__", "__kwdefaults__", "cell_contents") for a in attrs):
        return "handler_registration", 0.75, "the data is kept by registered functions (defaults or closures)"
    if any(t in ("Queue", "SimpleQueue", "LifoQueue", "PriorityQueue", "JoinableQueue") for t in types):
        return "queue_backlog", 0.85, "the path goes through a queue"
    if steps and any("module" in s for s in steps):
        holder = next(s for s in steps if "module" in s)
        key = holder.get("key", "")
        if types and "deque" in types and any(w in key.lower() for w in ("queue", "backlog", "pending", "jobs")):
            return "queue_backlog", 0.6, f"a module-level deque named {key}"
        return "unbounded_container", 0.7, f"a module-level container: {text}"
    if python and not gc_enabled:
        return "uncollected_cycles", 0.7, "the Python heap grows while the garbage collector is disabled"
    if kind == "native_or_fragmentation":
        explains = (allocator or {}).get("explains")
        if explains == "native_in_use":
            return "native_memory", 0.7, "the allocator's in-use bytes grow with resident memory"
        if explains == "allocator_free_retained":
            return "allocator_retention", 0.6, "the allocator's free bytes grow with resident memory"
        if explains == "outside_malloc":
            return "outside_malloc", 0.5, "resident memory grows; the allocator's bytes do not"
    return "unknown", 0.0, "no retention path and no allocator evidence decide"


def runbook_markdown() -> str:
    """docs/patterns.md: one section per pattern (``make generate`` writes it from PATTERNS)."""
    out = ["# Leak patterns and their remedies", "",
           "<!-- GENERATED from otel_leak/detector/patterns.py by `make generate`: do not edit. -->", "",
           "The detector names the pattern of a declared leak (the report's `pattern`, the summary's "
           "`pattern` and `remedy` lines, the `otel_leak.leak.pattern` attribute of the suspect span event, "
           "the diagnosis log record) from the retention path tier 3 found, the kind of memory that grows and "
           "whether the garbage collector runs. Its confidence is high when a holder on the path says it "
           "(a functools cache, a logging handler, a traceback), lower when only the shape of the evidence "
           "does.", ""]
    for p in PATTERNS.values():
        out += [f"## `{p.name}`: {p.title}", "", p.remedy, ""]
    return "\n".join(out)


if __name__ == "__main__":
    import sys

    if len(sys.argv) == 3 and sys.argv[1] == "--write":
        with open(sys.argv[2], "w") as f:
            f.write(runbook_markdown())
    else:
        sys.stdout.write(runbook_markdown())
