"""Release comparison dashboard: the same signals side by side for two values of service.version.

Answers: does the new release (canary) retain more memory than the old one, in which task type, and did a fix
actually remove the leak. Version A on the left, version B on the right, every pair with the same unit.
"""

from __future__ import annotations

from typing import Callable

from dashboards.mixin import Mixin
from otel_leak import names

from . import thresholds as th
from .core import (
    BYTES,
    BYTES_PER_S,
    COUNT,
    GENERATION,
    INSTANCE,
    NO_TASK,
    SECONDS,
    SERVICE,
    TASK,
    TASKS_PER_S,
    VERDICT_STEPS,
    VERSION,
    WORKER,
    PID,
    RULE_TASK_NET_GROWTH_PER_CALL,
    Layout,
    dashboard,
    datasource_variable,
    eq,
    legend,
    max_by,
    service_variable,
    stat,
    target,
    timeseries,
    var,
    version_variable,
    window_variable,
)
from .promql import Promql

SIDES = (("A", "version_a"), ("B", "version_b"))


def scope(variable: str) -> tuple[str, ...]:
    return (var(SERVICE, "service"), eq(VERSION, f"${variable}"))


def pair(lay: Layout, title: str, description: str, unit: str,
         targets: Callable[[tuple[str, ...]], list], *, h: int = 8, kind: str = "timeseries", **kw) -> None:
    """Two panels, version A left and version B right, same query shape and unit."""
    for side, variable in SIDES:
        panel_title = f"{side} (${variable}): {title}"
        desc = f"{description} This panel: version {side} (variable {variable})."
        if kind == "stat":
            panel = stat(panel_title, desc, targets(scope(variable)), unit, **kw)
            lay.add(panel, w=6, h=h)
        else:
            panel = timeseries(panel_title, desc, targets(scope(variable)), unit, fill=0, **kw)
            lay.add(panel, w=12, h=h)


def build(m: Mixin):
    q = Promql(m)
    # the Mixin's process labels, and query builders that put its selector on every otel-leak series
    P, sel = q.process, q.sel
    lay = Layout()

    lay.row("Summary (A left, B right)")
    pair(lay, "workers flagged", "Workers of this version whose detector declares a leak now. A canary with "
         "flagged workers where the baseline has none introduced a leak: stop the rollout.", COUNT,
         lambda s: [target(f"count({max_by(WORKER, sel(names.DETECTOR_VERDICT, *s, NO_TASK))} == 1)", "flagged")],
         kind="stat", h=5, thresholds=VERDICT_STEPS, no_value="0")
    pair(lay, "mean floor slope", "Mean memory-floor slope of this version's workers over the slope window. "
         "After a fix, B should be near zero where A was clearly positive; if not, the fix did not remove the "
         f"leak (or not all of it). {th.floor_slope_text(m)}", BYTES_PER_S,
         lambda s: [target(f"avg({q.floor_slope(s)})", "mean slope")], kind="stat", h=5,
         thresholds=th.floor_slope_steps(m))

    lay.row("Memory")
    pair(lay, "resident memory and floor per worker (mean)", "Mean resident memory and memory floor of a "
         "worker of this version. Same load, same shape expected; a floor that separates from the other "
         "version's is retained memory.", BYTES,
         lambda s: [
             target(f"avg({max_by(P, sel(names.PROCESS_MEMORY_USAGE, *s))})", "RSS (mean)"),
             target(f"avg({max_by(P, sel(names.MEMORY_FLOOR, *s))})", "floor (mean)"),
         ])
    pair(lay, "floor slope per worker", "Memory-floor slope of each worker of this version (deriv over the "
         f"slope window). Flat around zero is healthy; a steady positive line is a leak. {th.floor_slope_text(m)}",
         BYTES_PER_S, lambda s: [target(q.floor_slope(s), legend(INSTANCE) + " pid {{" + PID + "}}")],
         thresholds=th.floor_slope_steps(m), threshold_style="line")
    pair(lay, "Python heap blocks per worker (mean)", "Mean allocated Python blocks per worker. A version "
         "whose block count keeps climbing leaks Python objects; equal block counts with diverging memory "
         "point at native memory.", COUNT,
         lambda s: [target(f"avg({max_by(P, sel(names.HEAP_BLOCKS, *s))})", "heap blocks (mean)")])

    lay.row("Task types")
    pair(lay, "retained bytes per call by task type", "The detector's retained bytes per call for each "
         "suspected task type in this version. A task type present on one side only is where the versions "
         "differ: that is the change to look at.", BYTES,
         lambda s: [target(max_by((TASK,), sel(names.DETECTOR_RETAINED_PER_CALL, *s)), legend(TASK))])
    pair(lay, "net resident growth per call by task type", "Growth minus release per call from the task "
         "histograms (naive and neighbour-sensitive; the alert uses the detector), worst process, by task type. "
         "Compare the same task type across versions: the difference is what the change costs per call.",
         BYTES,
         lambda s: [target(q.rule(RULE_TASK_NET_GROWTH_PER_CALL, s, (TASK,)), legend(TASK))])
    pair(lay, "tasks per second by task type", "Task rate by type for this version. Compare retention only "
         "between versions doing comparable work: a canary with a tenth of the traffic leaks a tenth as fast.",
         TASKS_PER_S,
         lambda s: [target(q.task_rate(s, (TASK,)), legend(TASK))])

    lay.row("Garbage collector")
    pair(lay, "GC pause p99 by generation", "99th percentile garbage-collection pause per generation. "
         "Longer full (generation 2) pauses in one version mean more live objects: a Python-object leak or a "
         "bigger static heap.", SECONDS,
         lambda s: [target(q.histogram_quantile(0.99, names.GC_PAUSE, s, (GENERATION,)),
                           legend(GENERATION, prefix="p99 gen"))])

    variables = [
        datasource_variable(),
        service_variable(q, multi=False),
        version_variable(q, "version_a", "Version A (baseline)"),
        version_variable(q, "version_b", "Version B (canary / fix)"),
        window_variable(),
    ]
    return dashboard(
        "release",
        "Two values of service.version side by side (A left, B right): memory, floor slope, retained bytes "
        "per call by task type, task rates and GC pauses. For canary checks and for verifying a fix.",
        lay, variables, time_from="now-24h",
    )
