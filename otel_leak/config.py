"""Settings from ``OTEL_PYTHON_LEAK_*`` environment variables.

Every setting is declared once with :func:`setting`; the declarations are the documentation (README table,
``opentelemetry-instrument --help`` via ``otel_leak.environment_variables``). A value that does not parse gets
one warning naming the variable and the default used, never an exception.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import Any

from otel_leak.names import ENV_PREFIX

_log = logging.getLogger("otel_leak")


@dataclass(frozen=True)
class Setting:
    env: str
    kind: str  # "bool" | "int" | "float" | "str" | "list" | "choice"
    default: Any
    doc: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()


SETTINGS: dict[str, Setting] = {}


def setting(
    name: str,
    kind: str,
    default: Any,
    doc: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    choices: tuple[str, ...] = (),
) -> Setting:
    """Declare ``OTEL_PYTHON_LEAK_<NAME>``; returns the declaration (read it with :func:`get`)."""
    env = ENV_PREFIX + name
    s = Setting(env, kind, default, doc, minimum, maximum, choices)
    SETTINGS[env] = s
    return s


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _parse(s: Setting, raw: str) -> Any:
    raw = raw.strip()
    if s.kind == "bool":
        low = raw.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError("expected true/false")
    if s.kind in ("int", "float"):
        value: float = int(raw) if s.kind == "int" else float(raw)
        if value != value:  # NaN
            raise ValueError("not a number")
        if s.minimum is not None and value < s.minimum:
            raise ValueError(f"must be >= {s.minimum:g}")
        if s.maximum is not None and value > s.maximum:
            raise ValueError(f"must be <= {s.maximum:g}")
        return value
    if s.kind == "list":
        return tuple(p.strip() for p in raw.split(",") if p.strip())
    if s.kind == "choice":
        low = raw.lower()
        if low not in s.choices:
            raise ValueError(f"expected one of {', '.join(s.choices)}")
        return low
    if s.kind == "regex_list":
        parts = tuple(p.strip() for p in raw.split(",") if p.strip())
        for p in parts:
            re.compile(p)
        return parts
    return raw


def parse(s: Setting, raw: str) -> Any:
    """``raw`` as setting ``s`` reads it; ValueError saying why it does not parse (where :func:`get` would warn
    and use the default)."""
    return _parse(s, raw)


_warned: set[str] = set()


def get(s: Setting, environ: dict[str, str] | None = None) -> Any:
    """The setting's value, or its default with one warning if the variable is set but invalid."""
    env = os.environ if environ is None else environ
    raw = env.get(s.env)
    if raw is None or raw.strip() == "":
        return s.default
    try:
        return _parse(s, raw)
    except (ValueError, re.error) as exc:
        if s.env not in _warned:
            _warned.add(s.env)
            _log.warning(
                "otel-leak: invalid %s=%r (%s); using the default %r", s.env, raw, exc, s.default
            )
        return s.default


# --------------------------------------------------------------------------------------------------
# Foundation settings
ENABLED = setting("ENABLED", "bool", True, "Turn otel-leak off entirely without uninstalling it.")
TASK_SPAN_KINDS = setting(
    "TASK_SPAN_KINDS",
    "list",
    ("consumer", "server"),
    "Span kinds that make a local root span a task span (comma-separated: consumer, server, internal, "
    "producer, client).",
)
TASK_SPAN_NAMES = setting(
    "TASK_SPAN_NAMES",
    "regex_list",
    (),
    "Comma-separated regular expressions; a span whose name matches any is a task span whatever its kind "
    "or parent.",
)
MAX_TASK_TYPES = setting(
    "MAX_TASK_TYPES",
    "int",
    100,
    "Cardinality cap on task identities; later new identities are recorded as 'other'.",
    minimum=1,
    maximum=100_000,
)
FLOOR_WINDOW = setting(
    "FLOOR_WINDOW",
    "float",
    300.0,
    "Seconds over which the resident-memory floor (lowest RSS) is taken.",
    minimum=1,
)
SAMPLE_INTERVAL = setting(
    "SAMPLE_INTERVAL",
    "float",
    1.0,
    "Seconds between background memory samples feeding the floor and the detector.",
    minimum=0.01,
    maximum=3600,
)
MEMORY_LIMIT = setting(
    "MEMORY_LIMIT",
    "int",
    0,
    "Memory limit in bytes for time-to-limit alerts; 0 means detect it (cgroup memory.max, RLIMIT_AS).",
    minimum=0,
)
TASK_HEAP_BLOCKS = setting(
    "TASK_HEAP_BLOCKS",
    "bool",
    False,
    "Set the Python-heap block delta on task spans. Off by default: sys.getallocatedblocks() walks every "
    "pymalloc arena, so its cost grows with the heap (about 1 us at 50 MB, several us on large heaps). "
    "While tracemalloc traces, the traced-bytes delta is set instead, at constant cost.",
)
START_READING_MAX_AGE_US = setting(
    "START_READING_MAX_AGE_US",
    "float",
    50.0,
    "A task's start resident-memory reading reuses the process's latest reading when that is at most this "
    "many microseconds old (back-to-back tasks then cost one /proc read, not two; the delta may include up to "
    "this long before the start). End readings are always fresh. 0 reads at every start.",
    minimum=0,
    maximum=1_000_000,
)
TASK_READ_BUDGET = setting(
    "TASK_READ_BUDGET",
    "float",
    0.005,
    "Share of wall-clock time task spans may spend reading resident memory (one /proc/self/statm read "
    "per task, 1-5 us). While the reads stay within it every task span is measured; a faster worker has a "
    "random sample of its task spans measured (re-decided at every sampler tick, at least 1 in 100), so "
    "the reads cost at most this share at any task rate. Every task is still counted. 1 measures every task.",
    minimum=0.0001,
    maximum=1,
)
GC_PAUSE = setting("GC_PAUSE", "bool", True, "Time garbage-collection pauses through gc.callbacks.")
SETUP_SDK = setting(
    "SETUP_SDK",
    "bool",
    False,
    "Under opentelemetry-instrument, when no OpenTelemetry SDK configurator (such as opentelemetry-distro's) "
    "is installed and nothing set a tracer provider, set up the SDK's providers from the OTEL_* variables "
    "(exporters only where OTEL_<SIGNAL>_EXPORTER names them). otel-leak run sets it for its command; "
    "otel_leak.instrument() does this whatever its value.",
)
# Memory-budget guard (otel_leak.guard): recycles a leaking worker process between tasks
GUARD = setting(
    "GUARD",
    "choice",
    "off",
    "Memory-budget guard: off; dry-run (record, on the task span, a counter, a log record and the report, what "
    "it would recycle, and recycle nothing); on (recycle the process between tasks: a Celery prefork child "
    "exits after its task as with worker_max_memory_per_child, a solo/threads worker shuts down warm, a "
    "gunicorn worker stops gracefully after its request and the arbiter replaces it, so does a uvicorn "
    "process (its --workers supervisor replaces it), an RQ SimpleWorker shuts "
    "down warm after its job, a dramatiq command reloads itself gracefully after the message, a Huey worker "
    "process leaves as at its max tasks and a Huey consumer with thread workers restarts gracefully, an arq "
    "worker stops taking jobs, lets its running ones finish and exits, a taskiq worker process stops gracefully "
    "and its parent starts another).",
    choices=("off", "dry-run", "on"),
)
GUARD_BUDGET = setting(
    "GUARD_BUDGET",
    "float",
    0.8,
    "Soft memory budget of one process: bytes, or a share (0 < x <= 1) of the memory limit (MEMORY_LIMIT, "
    "else cgroup memory.max, else RLIMIT_AS). A floor at or above it recycles only while the detector's "
    "verdict is leak, and never in a process whose first reading was already above it. 0: no soft budget.",
    minimum=0,
)
GUARD_HARD_BUDGET = setting(
    "GUARD_HARD_BUDGET",
    "float",
    0.95,
    "Hard memory budget (bytes or a share of the limit, as GUARD_BUDGET): a floor at or above it recycles "
    "whatever the verdict. 0: no hard budget.",
    minimum=0,
)
GUARD_MIN_TIME_TO_LIMIT = setting(
    "GUARD_MIN_TIME_TO_LIMIT",
    "float",
    600.0,
    "Seconds: while the verdict is leak, recycle when the floor, at its trend's slope, would reach the "
    "memory limit sooner than this. 0: off.",
    minimum=0,
)
GUARD_MAX_RECYCLES_PER_HOUR = setting(
    "GUARD_MAX_RECYCLES_PER_HOUR",
    "int",
    6,
    "Recycles per hour for all the processes sharing the guard's directory (REPORT_DIR, else one per user "
    "and service in the temporary directory); beyond, the guard only records and logs (the alert pages).",
    minimum=0,
    maximum=100_000,
)
GUARD_JITTER = setting(
    "GUARD_JITTER",
    "float",
    10.0,
    "Seconds: a recycle waits a random delay up to this long after it is decided (processes that cross "
    "their budgets together do not all go at once).",
    minimum=0,
    maximum=3600,
)


def markdown_table() -> str:
    """The settings table in README.md (a test keeps the two equal): ``python -m otel_leak.config``."""
    try:  # the detector declares its own settings
        import otel_leak.detector.settings  # noqa: F401
    except Exception:  # pragma: no cover
        pass
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for s in SETTINGS.values():
        default = ",".join(s.default) if isinstance(s.default, tuple) else s.default
        default = "" if default == "" else f"`{str(default).lower() if s.kind == 'bool' else default}`"
        rows.append(f"| `{s.env}` | {default} | {s.doc.replace('|', '/')} |")
    return "\n".join(rows)


def write_table(path: str) -> bool:
    """Replace the settings table in the Markdown file at ``path`` (the block of table rows that starts
    with the same header) with :func:`markdown_table`; whether the file changed."""
    table = markdown_table()
    header = table.splitlines()[0]
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    start = lines.index(header)  # ValueError: the file has no settings table
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    new = lines[:start] + table.split("\n") + lines[end:]
    if new == lines:
        return False
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(new))
    return True


if __name__ == "__main__":
    import sys

    # The imported module, not this __main__ copy: the detector declares its settings into that one.
    from otel_leak import config as _config

    if sys.argv[1:2] == ["--write"] and len(sys.argv) == 3:
        changed = _config.write_table(sys.argv[2])
        print(f"{sys.argv[2]}: settings table {'rewritten' if changed else 'already current'}")
    else:
        print(_config.markdown_table())
