"""Panel thresholds taken from the same :class:`~dashboards.mixin.Mixin` fields as the alerts they mirror.

A panel showing the series an alert evaluates colours at the alert's thresholds, converted to the panel's
unit, so that a firing alert never sits on a green panel:

* floor slope, orange and red: ``floor_growth_{warning,critical}_bytes_per_hour``
  (OtelLeakMemoryFloorGrowing), bytes/h -> bytes/s;
* restart-proof service slope, orange: ``fleet_growth_bytes_per_hour`` (OtelLeakFleetMemoryGrowing), bytes/h
  -> bytes/s;
* floor as a share of the limit, orange and red: ``limit_used_{warning,critical}_ratio``
  (OtelLeakMemoryFillingUp), fractions as they are;
* time until the limit, red under ``limit_horizon_critical`` and orange under ``limit_horizon_warning``
  (OtelLeakMemoryFillingUp), Prometheus durations -> seconds;
* mean GC pause, orange: ``gc_min_pause_seconds`` (OtelLeakGCPauseRegression), seconds as they are.

The alerts compare with ``>`` where Grafana colours from the step value on: the two differ only at the
threshold itself. Conditions a single series cannot show (the floor's growth as a share of the floor, the
GC baseline, the median over the fleet window) are stated in the panels' descriptions, built here too.
"""

from __future__ import annotations

from dashboards.mixin import Mixin
from dashboards.rules import _human_bytes

from .core import steps

HOUR = 3600.0

# A pause this long stalls every task of the process: red on the GC pause panel. No alert has this threshold.
GC_STALL_SECONDS = 0.1


def per_hour(bytes_per_hour: float) -> str:
    """``16 MiB/h``, formatted as the alerts' descriptions format their thresholds."""
    return f"{_human_bytes(bytes_per_hour)}/h"


def percent(ratio: float) -> str:
    return f"{ratio * 100:g} %"


# --------------------------------------------------------------------------------------------------
# Colour steps (Grafana's: the first has value null)


def floor_slope_steps(m: Mixin) -> list[dict]:
    """Bytes/s: orange from the floor-growth warning, red from the critical."""
    return steps(
        ("green", None),
        ("orange", m.floor_growth_warning_bytes_per_hour / HOUR),
        ("red", m.floor_growth_critical_bytes_per_hour / HOUR),
    )


def fleet_slope_steps(m: Mixin) -> list[dict]:
    """Bytes/s: orange from the fleet alert's threshold (a warning only)."""
    return steps(("green", None), ("orange", m.fleet_growth_bytes_per_hour / HOUR))


def limit_share_steps(m: Mixin) -> list[dict]:
    """Fraction of the memory limit: orange from the warning's share, red from the critical's."""
    return steps(("green", None), ("orange", m.limit_used_warning_ratio), ("red", m.limit_used_critical_ratio))


def time_to_limit_steps(m: Mixin) -> list[dict]:
    """Seconds: red under the critical horizon, orange under the warning horizon, green beyond."""
    return steps(
        ("red", None),
        ("orange", m.seconds("limit_horizon_critical")),
        ("green", m.seconds("limit_horizon_warning")),
    )


def gc_pause_steps(m: Mixin) -> list[dict]:
    """Seconds: orange from the pause the GC alert needs at least, red from a stalling pause (if longer)."""
    out = [("green", None), ("orange", m.gc_min_pause_seconds)]
    if GC_STALL_SECONDS > m.gc_min_pause_seconds:
        out.append(("red", GC_STALL_SECONDS))
    return steps(*out)


# --------------------------------------------------------------------------------------------------
# Description sentences naming the thresholds


def floor_slope_text(m: Mixin) -> str:
    return (
        f"Orange from {per_hour(m.floor_growth_warning_bytes_per_hour)}, red from "
        f"{per_hour(m.floor_growth_critical_bytes_per_hour)}: the OtelLeakMemoryFloorGrowing warning and "
        f"critical thresholds (the alert also needs {m.floor_growth_warning_percent_per_hour:g} / "
        f"{m.floor_growth_critical_percent_per_hour:g} % of the floor per hour, still growing over the last "
        f"{m.sustain_window})."
    )


def fleet_slope_text(m: Mixin) -> str:
    return (
        f"Orange from {per_hour(m.fleet_growth_bytes_per_hour)}: the OtelLeakFleetMemoryGrowing threshold "
        f"(the alert takes the median over {m.fleet_window} and also needs "
        f"{m.fleet_growth_percent_per_hour:g} % of the service's mean floor per hour)."
    )


def limit_share_text(m: Mixin) -> str:
    return (
        f"Orange from {percent(m.limit_used_warning_ratio)}, red from {percent(m.limit_used_critical_ratio)}: "
        "the shares from which OtelLeakMemoryFillingUp warns and pages (if the limit is also near)."
    )


def time_to_limit_text(m: Mixin) -> str:
    return (
        f"Red under {m.limit_horizon_critical}, orange under {m.limit_horizon_warning}: the horizons of the "
        "OtelLeakMemoryFillingUp critical and warning (which also need the floor to use "
        f"{percent(m.limit_used_critical_ratio)} / {percent(m.limit_used_warning_ratio)} of the limit)."
    )


def gc_pause_text(m: Mixin) -> str:
    red = f", red from {GC_STALL_SECONDS * 1000:g} ms" if GC_STALL_SECONDS > m.gc_min_pause_seconds else ""
    return (
        f"Orange from {m.gc_min_pause_seconds * 1000:g} ms, the shortest mean pause OtelLeakGCPauseRegression "
        f"fires on (it also needs {m.gc_regression_factor:g}x the service's pause {m.gc_baseline_offset} "
        f"ago){red}."
    )
