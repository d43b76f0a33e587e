"""The memory-budget guard: recycle a leaking worker process between tasks, safely, dry-run first.

Off unless ``OTEL_PYTHON_LEAK_GUARD`` is ``dry-run`` or ``on``. A framework integration
(:mod:`otel_leak.guard_celery`; :mod:`otel_leak.guard_signal` for gunicorn and RQ) calls :meth:`Guard.check`
before or after each task; the guard reads the detector's state and answers whether this process should be
recycled now. The integration does the recycling, with the framework's own graceful mechanism, between tasks.

The rule (:func:`decide`), on the floor (the lowest of the detector's latest readings, so a collection's
sawtooth does not count):

* the floor is at or above the hard budget: recycle, whatever the verdict;
* the verdict is ``leak`` and the floor is at or above the budget, or the floor would reach the memory limit
  at its trend's slope sooner than ``GUARD_MIN_TIME_TO_LIMIT``: recycle;
* before a task only the hard budget counts.

Safety: a process whose first reading was already above the budget is not recycled for that budget (its
replacement would start there too: a restart loop); recycles are rate-limited per directory and never more
than one process of the directory recycles at once (:class:`~otel_leak.guard_shared.Shared`); a soft recycle
waits a random jitter.
Every decision, taken or not, is recorded once per process and outcome: a span event on the task span, the
``otel_leak.guard.recycles`` counter, one log record, and an entry in the process report (``guard``).
Nothing here raises into the worker: an internal error disables the guard with one warning.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import logging
import os
import random
import time
from dataclasses import dataclass

from otel_leak import config, names
from otel_leak.guard_shared import LOCK_STALE_S, Shared, default_dir  # noqa: F401 (re-exported)

_log = logging.getLogger("otel_leak")

MAX_ENTRIES = 64  # report entries kept per process
LIMIT_REFRESH_S = 60.0  # the memory limit is read again after this long


@dataclass(frozen=True)
class State:
    floor: int | None  # bytes
    first: int | None  # the process's first reading, bytes
    verdict: str  # the detector's: leak | no_leak | inconclusive
    slope: float  # bytes/s of the floor's trend
    limit: int | None  # bytes


@dataclass(frozen=True)
class Budgets:
    budget: int | None  # bytes; None: no soft budget
    hard: int | None
    min_time_to_limit: float  # seconds; 0: off


@dataclass(frozen=True)
class Decision:
    reason: str  # "hard_budget" | "budget" | "time_to_limit"
    floor: int
    budget: int | None  # the budget crossed (None for time_to_limit)
    time_to_limit: float | None
    blocked: str | None = None  # "started_over_budget": the rule holds, but not for this process


def resolve(value: float, limit: int | None) -> int | None:
    """A budget setting in bytes: above 1 it is bytes, in (0, 1] a share of ``limit`` (None without one),
    0 none."""
    if value <= 0:
        return None
    if value <= 1:
        return int(value * limit) if limit else None
    return int(value)


def time_to_limit(floor: int | None, slope: float, limit: int | None) -> float | None:
    """Seconds until the floor reaches the limit at ``slope`` bytes/s: (limit - floor) / slope where the floor
    grows, as the ``time_to_limit`` recording rule computes it from the exported floor; None otherwise."""
    if floor is None or not limit or not slope > 0:
        return None
    return max(0.0, (limit - floor) / slope)


def decide(state: State, b: Budgets, pre_task: bool = False) -> Decision | None:
    """Whether the rule says recycle (a :class:`Decision`), from a state alone: no clock, no side effect."""
    if state.floor is None:
        return None
    floor = state.floor
    ttl = time_to_limit(floor, state.slope, state.limit)
    if b.hard is not None and floor >= b.hard:
        return Decision("hard_budget", floor, b.hard, ttl)
    if pre_task or state.verdict != "leak":
        return None
    over = b.budget is not None and floor >= b.budget
    started_over = over and state.first is not None and state.first >= b.budget
    if over and not started_over:
        return Decision("budget", floor, b.budget, ttl)
    if b.min_time_to_limit > 0 and ttl is not None and ttl < b.min_time_to_limit:
        return Decision("time_to_limit", floor, None, ttl)
    if started_over:
        return Decision("budget", floor, b.budget, ttl, blocked="started_over_budget")
    return None


class Guard:
    """One per instrumented runtime; its per-process state starts afresh in a forked child."""

    def __init__(self, runtime=None, meter=None, environ=None, shared: Shared | None = None,
                 clock=time.time, rng=random.random) -> None:
        env = environ
        self.mode = config.get(config.GUARD, env)
        self.runtime = runtime
        self._budget = config.get(config.GUARD_BUDGET, env)
        self._hard = config.get(config.GUARD_HARD_BUDGET, env)
        self.min_time_to_limit = config.get(config.GUARD_MIN_TIME_TO_LIMIT, env)
        self.max_per_hour = int(config.get(config.GUARD_MAX_RECYCLES_PER_HOUR, env))
        self.jitter = config.get(config.GUARD_JITTER, env)
        self.configured_limit = int(config.get(config.MEMORY_LIMIT, env))
        self.shared = shared if shared is not None else Shared(default_dir(env))
        self.clock, self.rng = clock, rng
        self.disabled = False
        m = names.GUARD_RECYCLES
        self._counter = meter.create_counter(m.name, unit=m.unit, description=m.description) if meter else None
        self._reset()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._reset)
        atexit.register(self.release)

    def _reset(self) -> None:
        self.pid = os.getpid()
        self.entries: collections.deque[dict] = collections.deque(maxlen=MAX_ENTRIES)
        self.recycling: str | None = None  # the reason, once this process is being recycled
        self.recycles = 0
        self.dry_run_recycles = 0
        self._noted: dict[tuple[str, str], dict] = {}
        self._due: float | None = None
        self._holds = False
        self._limit: tuple[float, int | None] | None = None
        self._warned_no_limit = False

    # ------------------------------------------------------------------ reading
    def limit(self) -> int | None:
        now = time.monotonic()
        if self._limit is None or now - self._limit[0] > LIMIT_REFRESH_S:
            from otel_leak.probes import memory_limit

            self._limit = (now, memory_limit(self.configured_limit))
        return self._limit[1]

    def budgets(self, limit: int | None) -> Budgets:
        if limit is None and not self._warned_no_limit and (0 < self._budget <= 1 or 0 < self._hard <= 1
                                                            or self.min_time_to_limit > 0):
            self._warned_no_limit = True
            _log.warning("otel-leak: the memory-budget guard knows no memory limit (no cgroup memory.max or "
                         "RLIMIT_AS): budgets given as a share of it and the time-to-limit rule are off; set "
                         "%sMEMORY_LIMIT or budgets in bytes", names.ENV_PREFIX)
        return Budgets(resolve(self._budget, limit), resolve(self._hard, limit), self.min_time_to_limit)

    def read_state(self, now: bool = False) -> State | None:
        """The detector's state now (the floor: the lowest of its latest readings; ``now``: a reading taken
        now instead, for the hard budget before a task)."""
        rt = self.runtime
        det = getattr(rt, "detector", None)
        if det is not None:
            recent = list(det.recent_rss)
            t1 = det.tier1
            verdict = det.verdict if det.error is None else "inconclusive"
            floor = self._read_now() if now else None
            if floor is None:  # a process's first moments have no floor yet
                floor = min(recent) if recent else self._read_now()
            return State(floor, det.first_rss, verdict, float(t1.trend.slope) if t1.windows else 0.0, self.limit())
        last = getattr(getattr(rt, "sampler", None), "last", None)  # no detector: the hard budget only
        return State(last.floor if last is not None else None, None, "inconclusive", 0.0, self.limit())

    def _read_now(self) -> int | None:
        mem = getattr(self.runtime, "memory", None)
        return mem.rss() if mem is not None else None

    # ------------------------------------------------------------------ deciding
    def check(self, when: str, task: str | None = None, span=None, can_recycle: bool = True,
              state: State | None = None) -> str | None:
        """Before (``pre_task``) or after (``post_task``) a task: the reason to recycle this process now, or
        None. In dry-run always None. ``task``: its name, or a callable returning it (called only when a
        decision is recorded: a framework whose name costs a parse pays it only then). Never raises."""
        if self.mode == "off" or self.disabled:
            return None
        try:
            return self._check(when, task, span, can_recycle, state)
        except Exception as exc:
            self.fail(exc)
            return None

    def _check(self, when, task, span, can_recycle, state) -> str | None:
        if self.recycling is not None:
            return self.recycling
        state = state if state is not None else self.read_state(now=when == "pre_task")
        if state is None:
            return None
        b = self.budgets(state.limit)
        d = decide(state, b, pre_task=when == "pre_task")
        if d is None:
            self._due = None
            return None
        ctx = (d, state, b, when, task, span)
        if d.blocked:
            return self._note(d.blocked, *ctx)
        if self.mode != "on":
            self.dry_run_recycles += ("dry_run", d.reason) not in self._noted
            return self._note("dry_run", *ctx)
        if not can_recycle:
            return self._note("unsupported", *ctx)
        now = self.clock()
        if self._due is None:  # a hard budget does not wait
            self._due = now + (0.0 if d.reason == "hard_budget" else self.rng() * self.jitter)
        if now < self._due:
            return None
        why = self.shared.claim(now, self.max_per_hour, d.reason)
        if why is not None:
            return self._note(why, *ctx)
        self._holds = True
        self.recycling = d.reason
        self.recycles += 1
        self._note("recycled", *ctx)
        return d.reason

    def _note(self, outcome, d: Decision, state: State, b: Budgets, when, task, span) -> None:
        """Record a decision once per (outcome, reason) in this process; repeats are counted on its entry."""
        now = time.time()
        entry = self._noted.get((outcome, d.reason))
        if entry is not None:
            entry["repeats"] += 1
            entry["last_unix"] = round(now, 3)
            return None
        if callable(task):
            task = task()
        entry = {"t_unix": round(now, 3), "last_unix": round(now, 3), "repeats": 0, "mode": self.mode,
                 "when": when, "reason": d.reason, "outcome": outcome, "task": task, "floor_bytes": d.floor,
                 "budget_bytes": d.budget, "hard_budget_bytes": b.hard, "limit_bytes": state.limit,
                 "verdict": state.verdict, "first_bytes": state.first,
                 "time_to_limit_s": None if d.time_to_limit is None else round(d.time_to_limit, 1)}
        self._noted[(outcome, d.reason)] = entry
        self.entries.append(entry)
        attrs = {names.ATTR_GUARD_REASON: d.reason, names.ATTR_GUARD_MODE: self.mode,
                 names.ATTR_GUARD_OUTCOME: outcome}
        if self._counter is not None:
            self._counter.add(1, {**attrs, names.SPAN_PID: os.getpid()})
        if span is None:
            from opentelemetry import trace

            span = trace.get_current_span()
        if span is not None:  # (add_span_event skips a span that neither records nor is ending)
            from otel_leak.processor import add_span_event

            ev = {**attrs, names.ATTR_GUARD_WHEN: when, names.ATTR_GUARD_FLOOR: d.floor}
            if d.budget is not None:
                ev[names.ATTR_GUARD_BUDGET] = d.budget
            if d.time_to_limit is not None:
                ev[names.ATTR_GUARD_TIME_TO_LIMIT] = float(d.time_to_limit)
            add_span_event(span, names.EVENT_GUARD, ev)
        _log.warning("otel-leak guard (%s): %s (%s; %s task %r): floor %d B, budget %s B, time to limit %s s, "
                     "verdict %s, pid %d", self.mode, _OUTCOMES.get(outcome, outcome), d.reason,
                     "before" if when == "pre_task" else "after", task, d.floor, d.budget, entry["time_to_limit_s"],
                     state.verdict, os.getpid())
        return None

    # ------------------------------------------------------------------ the rest
    def release(self) -> None:
        """At this process's exit: its recycling marker goes. Never raises."""
        if self._holds and os.getpid() == self.pid:
            self._holds = False
            with contextlib.suppress(Exception):
                self.shared.release()

    def fail(self, exc: BaseException) -> None:
        if not self.disabled:
            self.disabled = True
            _log.warning("otel-leak: the memory-budget guard stopped after an internal error (%s: %s); the "
                         "worker runs on without it", type(exc).__name__, exc)

    def for_report(self) -> dict | None:
        """The ``guard`` object of the process report. Never raises."""
        try:
            limit = self._limit[1] if self._limit else None
            b = Budgets(resolve(self._budget, limit), resolve(self._hard, limit), self.min_time_to_limit)
            return {"mode": self.mode, "disabled": self.disabled, "budget_bytes": b.budget,
                    "hard_budget_bytes": b.hard, "min_time_to_limit_s": b.min_time_to_limit,
                    "max_recycles_per_hour": self.max_per_hour, "recycles": self.recycles,
                    "dry_run_recycles": self.dry_run_recycles, "recycling": self.recycling,
                    "entries": [dict(e) for e in self.entries]}
        except Exception:
            return None


_OUTCOMES = {
    "recycled": "recycling the process",
    "dry_run": "would recycle the process",
    "rate_limited": "NOT recycling: the hourly recycle limit is reached",
    "other_recycling": "not recycling yet: another process is recycling",
    "started_over_budget": "NOT recycling: the process started above the budget",
    "unsupported": "NOT recycling: no graceful recycle for this worker",
}


def start(runtime, meter, environ=None) -> Guard | None:
    """The runtime's guard (None when off), with the Celery integration armed for when Celery is imported.
    Never raises."""
    try:
        if config.get(config.GUARD, environ) == "off":
            return None
        guard = Guard(runtime, meter, environ)
        det = getattr(runtime, "detector", None)
        if det is not None:
            det.guard = guard  # the report's "guard" object
        from wrapt import register_post_import_hook

        register_post_import_hook(_on_celery_import, "celery")
        register_post_import_hook(_on_gunicorn_import, "gunicorn.workers.base")
        return guard
    except Exception as exc:
        _log.warning("otel-leak: the memory-budget guard could not start (%s: %s)", type(exc).__name__, exc)
        return None


def _on_celery_import(_module) -> None:
    try:
        from otel_leak import guard_celery

        guard_celery.install()
    except Exception as exc:
        _log.warning("otel-leak: the memory-budget guard cannot hook Celery (%s: %s)", type(exc).__name__, exc)


def _on_gunicorn_import(module) -> None:
    try:
        from otel_leak import guard_gunicorn

        guard_gunicorn.install(module)
    except Exception as exc:
        _log.warning("otel-leak: the memory-budget guard cannot hook gunicorn (%s: %s)", type(exc).__name__, exc)
