"""The one configuration object behind otel-leak's Prometheus rules and alerts.

In the style of the kubernetes-/node-mixin ``_config``: every threshold, window, ``for:`` duration,
selector and the runbook base URL is a field of :class:`Mixin`. ``dashboards.rules`` turns a ``Mixin`` into
recording rules and alerts; nothing in the generated YAML is typed anywhere else.

    >>> from dashboards.mixin import Mixin
    >>> Mixin(floor_window="15m", team="payments")          # production defaults for the rest
    >>> Mixin.e2e()                                          # short windows for the end-to-end test

An unknown field fails loudly, naming the field, the closest valid one and the full list:

    >>> Mixin(floor_windw="5m")
    TypeError: unknown Mixin parameter 'floor_windw' (did you mean 'floor_window'?); valid parameters: ...

Durations are Prometheus durations (``"90s"``, ``"10m"``, ``"1h30m"``, ``"1d"``); byte thresholds are bytes;
``*_percent_per_hour`` thresholds are percent of the process's own floor per hour.

Series and label names all come from :mod:`otel_leak.names`. The names of the recording rules this mixin
adds (which ``names.py`` does not define yet) are in :data:`RECORDING_RULES`.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field, fields
from typing import Any

from otel_leak import names

MiB = 1024 * 1024

# Labels that identify one worker process, and one service. Alerts keep these so a page names them.
# job and instance are Prometheus' own target labels (instance is the collector, not the worker); every
# otel-leak data point also carries process_pid (prefork children share their parent's resource).
PROCESS_LABELS = (
    names.LABEL_JOB,
    names.LABEL_PROM_INSTANCE,
    names.LABEL_SERVICE,
    names.LABEL_INSTANCE,
    names.LABEL_VERSION,
    names.LABEL_PID,
)
SERVICE_LABELS = (names.LABEL_JOB, names.LABEL_SERVICE)

# Values of the names.LABEL_SEVERITY label the alerts add (Alertmanager routes on it and on names.LABEL_TEAM).
SEVERITIES = ("warning", "critical")

# --------------------------------------------------------------------------------------------------
# Recording rules added by the mixin: level:metric:operations (Prometheus naming practice). The names do not
# contain the window, so dashboards can query them whatever the windows are.
_NS = names.NAMESPACE
RECORDING_RULES = {
    # per process: lowest RSS over floor_window (sawtooth-proof), and its slope over slope_window (bytes/s)
    "floor": f"process:{names.MEMORY_FLOOR.prom}:min_over_time",
    "floor_slope": f"process:{names.MEMORY_FLOOR.prom}:deriv",
    # per process: seconds until the floor reaches the memory limit (predict_linear over predict_window)
    "time_to_limit": f"process:{_NS}_process_memory_time_to_limit_seconds:predict_linear",
    # per process: floor slope over fleet_slope_window, only for processes past their warm-up and restart-free
    "mature_slope": f"process:{names.MEMORY_FLOOR.prom}:deriv_mature",
    # per service: mean of the above over the service's mature processes (the fleet signal)
    "service_mature_slope": f"service:{names.MEMORY_FLOOR.prom}:deriv_mature",
    # per process and task type: bytes/s retained as attributed by the embedded detector (its retained bytes
    # per call of a suspected task type times that type's call rate). What OtelLeakTaskRetainingMemory uses.
    "task_detector_retained_rate": f"process_task:{_NS}_detector_retained_bytes:rate",
    # per process and task type: the NAIVE per-task RSS signal, growth minus release of resident memory measured
    # around each call (bytes/s, and bytes per call). Neighbour-sensitive: a task that allocates into pages a
    # leaking neighbour forced the allocator to take shows the growth instead of the leaker. Dashboards only:
    # no alert uses it.
    "task_net_growth_rate": f"process_task:{_NS}_task_memory_net_growth_bytes:rate",
    "task_net_growth_per_call": f"process_task:{_NS}_task_memory_net_growth_bytes:per_call",
    # per process and GC generation: mean GC pause over gc_window (seconds)
    "gc_pause_mean": f"process:{names.GC_PAUSE.prom}:mean",
}

# Alert names, one runbook each (docs/runbooks/<name>.md).
ALERTS = (
    "OtelLeakMemoryFloorGrowing",
    "OtelLeakMemoryFillingUp",
    "OtelLeakTaskRetainingMemory",
    "OtelLeakDetectorReportsLeak",
    "OtelLeakGCPauseRegression",
    "OtelLeakTelemetryAbsent",
    "OtelLeakFleetMemoryGrowing",
    "OtelLeakGuardRecycling",
    "OtelLeakGuardRateLimited",
)

_DURATION = re.compile(r"^((\d+)y)?((\d+)w)?((\d+)d)?((\d+)h)?((\d+)m)?((\d+)s)?((\d+)ms)?$")
_UNITS = (365 * 86400, 7 * 86400, 86400, 3600, 60, 1, 0.001)


def seconds(duration: str) -> float:
    """Seconds in a Prometheus duration string ("1h30m" -> 5400)."""
    m = _DURATION.match(duration or "")
    if not duration or not m or not any(m.group(i) for i in range(2, 15, 2)):
        raise ValueError(f"not a Prometheus duration: {duration!r} (examples: 90s, 10m, 1h30m, 1d)")
    return sum(int(m.group(2 * i + 2) or 0) * unit for i, unit in enumerate(_UNITS))


def duration(secs: float) -> str:
    """Shortest Prometheus duration string for a whole number of seconds (5400 -> "1h30m")."""
    secs = int(round(secs))
    if secs <= 0:
        return "0s"
    out = ""
    for unit, suffix in ((86400, "d"), (3600, "h"), (60, "m"), (1, "s")):
        if secs >= unit:
            out += f"{secs // unit}{suffix}"
            secs %= unit
    return out


def _dur(default: str, doc: str) -> Any:
    return field(default=default, metadata={"kind": "duration", "doc": doc})


def _num(default: float, doc: str) -> Any:
    return field(default=default, metadata={"kind": "number", "doc": doc})


def _str(default: Any, doc: str, kind: str = "str") -> Any:
    return field(default=default, metadata={"kind": kind, "doc": doc})


@dataclass(frozen=True)
class Mixin:
    """Thresholds, windows and wiring for the otel-leak rules. The defaults are the production values."""

    # ---- wiring
    selector: str = _str("", 'Extra PromQL matchers on every otel-leak series, e.g. `job="otel-collector"`.')
    team: str = _str("workers", "Value of the `team` label on every alert; Alertmanager routes on it.")
    runbook_url_base: str = _str(
        "https://github.com/otel-leak/otel-leak/blob/main/docs/runbooks",
        "`runbook_url` of alert X is `<runbook_url_base>/X.md`.",
    )
    rule_interval: str = _dur("1m", "Evaluation interval of the rule groups.")
    process_labels: tuple[str, ...] = _str(
        PROCESS_LABELS, "Labels identifying one worker process (kept by per-process rules and alerts).", "labels"
    )
    service_labels: tuple[str, ...] = _str(
        SERVICE_LABELS, "Labels identifying one service (fleet signal, GC baseline, absent service).", "labels"
    )

    # ---- memory floor: sustained growth, sawtooth-proof
    floor_window: str = _dur("10m", "min_over_time window of the floor; longer than the worker's GC cycle.")
    slope_window: str = _dur("1h", "deriv window of the floor slope.")
    sustain_window: str = _dur(
        "20m", "The floor must also still grow over this recent window (a warm-up or one-off step stops)."
    )
    floor_growth_warning_bytes_per_hour: float = _num(16 * MiB, "Warning: floor slope above this ...")
    floor_growth_warning_percent_per_hour: float = _num(1.0, "... and above this % of the floor per hour.")
    floor_growth_critical_bytes_per_hour: float = _num(64 * MiB, "Critical: floor slope above this ...")
    floor_growth_critical_percent_per_hour: float = _num(5.0, "... and above this % of the floor per hour.")
    floor_for_warning: str = _dur("1h", "for: of the warning.")
    floor_for_critical: str = _dur("2h", "for: of the critical (not shorter than the warning's).")

    # ---- memory limit (node-mixin NodeFilesystemSpaceFillingUp style)
    predict_window: str = _dur("6h", "predict_linear window on the floor.")
    limit_horizon_warning: str = _dur("24h", "Warning: the floor reaches the limit within this horizon ...")
    limit_used_warning_ratio: float = _num(0.6, "... and already uses more than this fraction of it.")
    limit_horizon_critical: str = _dur("4h", "Critical: the floor reaches the limit within this horizon ...")
    limit_used_critical_ratio: float = _num(0.8, "... and already uses more than this fraction of it.")
    limit_for: str = _dur("1h", "for: of both.")

    # ---- per task type (the embedded detector's attribution)
    task_window: str = _dur(
        "1h", "rate() window of the per-task call rate (and of the naive growth/release recording rules)."
    )
    task_retained_warning_bytes_per_hour: float = _num(
        16 * MiB, "Warning: a task type the detector suspects retains more than this (per call x call rate) ..."
    )
    task_retained_critical_bytes_per_hour: float = _num(64 * MiB, "Critical: ... more than this.")
    task_for_warning: str = _dur("30m", "for: of the task warning (the detector has already confirmed its verdict).")
    task_for_critical: str = _dur("1h", "for: of the task critical (not shorter than the warning's).")

    # ---- embedded detector
    detector_for: str = _dur("15m", "for: of the detector-verdict alert.")

    # ---- GC pauses
    gc_window: str = _dur("30m", "Window of the mean GC pause (rate of _sum over rate of _count).")
    gc_baseline_offset: str = _dur("1d", "Baseline: the service's mean pause per generation this long ago.")
    gc_regression_factor: float = _num(2.0, "Fires when a process's mean pause exceeds baseline times this ...")
    gc_min_pause_seconds: float = _num(0.02, "... and this many seconds (gen-0 pauses are microseconds).")
    gc_for: str = _dur("1h", "for: of the GC alert.")

    # ---- telemetry absent
    absent_lookback: str = _dur(
        "1h", "A worker seen within this window, silent now, fires (unless its service has as many workers)."
    )
    absent_service_lookback: str = _dur("1d", "A service seen within this window with no worker now fires.")
    absent_for: str = _dur("10m", "for: of the absent alert.")

    # ---- fleet: leaks hidden by restarts
    fleet_warmup: str = _dur(
        "10m", "A process counts for the fleet signal from warmup + floor_window + fleet_slope_window of age."
    )
    fleet_slope_window: str = _dur("15m", "deriv window of the per-process slope in the fleet signal.")
    fleet_window: str = _dur(
        "6h", "The alert takes the median of the service's mature-process slope over this window."
    )
    fleet_growth_bytes_per_hour: float = _num(16 * MiB, "Fires above this median slope ...")
    fleet_growth_percent_per_hour: float = _num(1.0, "... and above this % of the service's mean floor per hour.")
    fleet_for: str = _dur("1h", "for: of the fleet alert.")

    # ---- memory-budget guard (otel_leak.guard). A process records each decision once (its counter series
    # starts at 1, which increase() cannot see), so the guard alerts fire on the series' presence within a
    # window: from the decision until the window has passed since the series was last scraped.
    guard_recycling_window: str = _dur(
        "1h", "The guard recycled a process (or, in dry-run, would have) within this window: warning."
    )
    guard_recycling_for: str = _dur("1m", "for: of the recycling warning.")
    guard_rate_limited_window: str = _dur(
        "1h", "The guard wanted to recycle a process but its hourly rate limit stopped it, within this window."
    )
    guard_rate_limited_for: str = _dur("1m", "for: of the rate-limited critical (pages at once).")

    def __post_init__(self) -> None:
        _validate(self)

    # Presets -----------------------------------------------------------------------------------
    @classmethod
    def production(cls, **overrides: Any) -> "Mixin":
        return cls(**overrides)

    @classmethod
    def e2e(cls, **overrides: Any) -> "Mixin":
        """Short windows for the end-to-end test: 1 s scrape, a leak of several MiB/s fires in ~2 minutes."""
        return cls(**{**E2E_OVERRIDES, **overrides})

    # Derived -----------------------------------------------------------------------------------
    def seconds(self, name: str) -> float:
        return seconds(getattr(self, name))

    @property
    def fleet_min_age(self) -> str:
        """Age (and time since a restart) from which a process counts for the fleet signal."""
        return duration(
            self.seconds("fleet_warmup") + self.seconds("floor_window") + self.seconds("fleet_slope_window")
        )

    def runbook_url(self, alert: str) -> str:
        return f"{self.runbook_url_base.rstrip('/')}/{alert}.md"

    def params(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


PARAMETERS: tuple[str, ...] = tuple(f.name for f in fields(Mixin))


def check_parameters(overrides: dict[str, Any]) -> None:
    """Raise TypeError naming the first unknown parameter, the closest valid one and all valid ones."""
    for k in overrides:
        if k not in PARAMETERS:
            close = difflib.get_close_matches(k, PARAMETERS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TypeError(f"unknown Mixin parameter {k!r}{hint}; valid parameters: {', '.join(PARAMETERS)}")


def parse_set(items: list[str]) -> dict[str, Any]:
    """``--set name=value`` arguments -> Mixin overrides: label lists comma-separated, numbers as floats."""
    kinds = {f.name: f.metadata.get("kind") for f in fields(Mixin)}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise SystemExit(f"--set takes name=value, got {item!r}")
        check_parameters({key: None})
        if kinds[key] == "labels":
            out[key] = tuple(x.strip() for x in raw.split(",") if x.strip())
        elif kinds[key] == "number":
            try:
                out[key] = float(raw)
            except ValueError:
                raise ValueError(f"Mixin parameter {key!r} must be a non-negative number, got {raw!r}") from None
        else:
            out[key] = raw
    return out


_dataclass_init = Mixin.__init__


def _init(self: Mixin, *args: Any, **overrides: Any) -> None:
    if args:
        raise TypeError("Mixin takes keyword parameters only, e.g. Mixin(floor_window='15m')")
    check_parameters(overrides)
    _dataclass_init(self, **overrides)


Mixin.__init__ = _init  # type: ignore[method-assign]


def _validate(m: Mixin) -> None:
    for f in fields(m):
        v = getattr(m, f.name)
        kind = f.metadata.get("kind")
        if kind == "duration":
            if not isinstance(v, str):
                raise TypeError(f"Mixin parameter {f.name!r} must be a Prometheus duration string, got {v!r}")
            try:
                seconds(v)
            except ValueError as e:
                raise ValueError(f"Mixin parameter {f.name!r}: {e}") from None
        elif kind == "number":
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v < 0:
                raise ValueError(f"Mixin parameter {f.name!r} must be a non-negative number, got {v!r}")
        elif kind == "labels":
            if isinstance(v, str) or not v or not all(isinstance(x, str) and _LABEL.fullmatch(x) for x in v):
                raise TypeError(f"Mixin parameter {f.name!r} must be a tuple of label names, got {v!r}")
        elif not isinstance(v, str):
            raise TypeError(f"Mixin parameter {f.name!r} must be a string, got {v!r}")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", m.team):
        raise ValueError(f"Mixin parameter 'team' must be a plain label value, got {m.team!r}")
    if "{" in m.selector or "}" in m.selector:
        raise ValueError(f"Mixin parameter 'selector' takes matchers without braces, got {m.selector!r}")
    missing = [x for x in m.service_labels if x not in m.process_labels]
    if missing:
        raise ValueError(f"service_labels must be a subset of process_labels; not in process_labels: {missing}")
    if m.seconds("floor_window") >= m.seconds("slope_window"):
        raise ValueError("floor_window must be shorter than slope_window")
    if m.seconds("sustain_window") > m.seconds("slope_window"):
        raise ValueError("sustain_window must not be longer than slope_window")
    if m.seconds("floor_for_critical") < m.seconds("floor_for_warning"):
        raise ValueError("floor_for_critical must not be shorter than floor_for_warning (warning fires first)")
    if m.seconds("task_for_critical") < m.seconds("task_for_warning"):
        raise ValueError("task_for_critical must not be shorter than task_for_warning (warning fires first)")
    if m.task_retained_critical_bytes_per_hour < m.task_retained_warning_bytes_per_hour:
        raise ValueError(
            "task_retained_critical_bytes_per_hour must not be below task_retained_warning_bytes_per_hour"
        )
    if m.seconds("limit_horizon_critical") > m.seconds("limit_horizon_warning"):
        raise ValueError("limit_horizon_critical must not be longer than limit_horizon_warning")
    for alert in ("guard_recycling", "guard_rate_limited"):
        if m.seconds(f"{alert}_for") >= m.seconds(f"{alert}_window"):
            raise ValueError(f"{alert}_for must be shorter than {alert}_window (a decision fires for the window)")
    for r in ("limit_used_warning_ratio", "limit_used_critical_ratio"):
        if not 0 <= getattr(m, r) <= 1:
            raise ValueError(f"Mixin parameter {r!r} is a fraction of the limit: 0..1")


_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


# Short windows for the end-to-end test (1 s scrape interval, steady leak of several MiB/s, healthy control).
# Timeline of a 3 MiB/s leak starting at t0: the floor (20 s window) rises from t0+20s; its 60 s slope passes
# 0.5 MiB/s at ~t0+36s and 1 MiB/s at ~t0+42s; warning fires ~t0+81s, critical ~t0+117s (plus one rule
# evaluation). OtelLeakTaskRetainingMemory fires 20 s (warning) and 40 s (critical) after the embedded detector
# names the task, with its call rate over 30 s. A healthy worker's warm-up shorter than ~20 s or a GC cycle
# shorter than 20 s never fires.
E2E_OVERRIDES: dict[str, Any] = dict(
    rule_interval="2s",
    floor_window="20s",
    slope_window="60s",
    sustain_window="20s",
    floor_growth_warning_bytes_per_hour=1800 * MiB,  # 0.5 MiB/s
    floor_growth_critical_bytes_per_hour=3600 * MiB,  # 1 MiB/s
    floor_for_warning="45s",
    floor_for_critical="75s",
    predict_window="60s",
    limit_horizon_warning="10m",
    limit_horizon_critical="2m",
    limit_for="30s",
    task_window="30s",
    task_retained_warning_bytes_per_hour=1800 * MiB,  # 0.5 MiB/s
    task_retained_critical_bytes_per_hour=3600 * MiB,  # 1 MiB/s
    task_for_warning="20s",
    task_for_critical="40s",
    detector_for="10s",
    gc_window="30s",
    gc_baseline_offset="2m",
    gc_for="30s",
    absent_lookback="2m",
    absent_service_lookback="10m",
    absent_for="15s",
    fleet_warmup="10s",
    fleet_slope_window="20s",
    fleet_window="2m",
    fleet_growth_bytes_per_hour=1800 * MiB,
    fleet_for="30s",
    guard_recycling_window="2m",
    guard_recycling_for="4s",
    guard_rate_limited_window="2m",
    guard_rate_limited_for="4s",
)
