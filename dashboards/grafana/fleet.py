"""Fleet dashboard: every worker of the selected services at once.

Answers: which workers leak and how fast (ranked by floor slope), which will hit their memory limit first and
when, which leak alerts fire now, which task types leak across the fleet and how many bytes per second the
fleet loses through each, and whether a service version uses more memory than another.
"""

from __future__ import annotations

from dashboards.mixin import Mixin
from otel_leak import names

from . import thresholds as th
from .core import (
    ALERT_NAMES,
    ALERTS_SERIES,
    ANY_TASK,
    BYTES,
    BYTES_PER_S,
    COUNT,
    INSTANCE,
    NO_TASK,
    NONE,
    PID,
    RATIO,
    RULE_FLOOR,
    RULE_FLOOR_SLOPE,
    RULE_SERVICE_MATURE_SLOPE,
    RULE_TASK_NET_GROWTH_RATE,
    RULE_TIME_TO_LIMIT,
    S_SERVICE,
    SECONDS,
    SERVICE,
    TASK,
    UIDS,
    VERDICT_STEPS,
    VERSION,
    WORKER,
    Layout,
    dashboard,
    data_link,
    datasource_variable,
    eq,
    legend,
    links_override,
    max_by,
    proc_legend,
    regex,
    rename_unit,
    service_variable,
    stat,
    sum_by,
    table,
    target,
    timeseries,
    window_variable,
)
from .promql import Promql

F = S_SERVICE
BY_TASK = (SERVICE, TASK)
BY_VERSION = (SERVICE, VERSION)


def firing_alerts(q: Promql) -> str:
    """Firing otel-leak alerts (Prometheus' ALERTS series) of the selected services. The service-level
    telemetry-absent alert has no instance but has service_name; "|" also keeps alerts without it."""
    return q.sel(
        ALERTS_SERIES,
        eq("alertstate", "firing"),
        regex("alertname", "|".join(ALERT_NAMES)),
        regex(SERVICE, "$service|"),
    )


def hidden_process_labels(process: tuple[str, ...]) -> dict[str, bool]:
    """Table columns to hide: the process labels other than the ones shown (service, instance, pid, version)."""
    return {label: True for label in process if label not in (SERVICE, INSTANCE, PID, VERSION)}


def worker_links(field: str) -> dict:
    return links_override(field, data_link("Open this worker", UIDS["worker"], ("service", SERVICE),
                                           ("instance", INSTANCE)))


def build(m: Mixin):
    q = Promql(m)
    # the Mixin's process labels, and query builders that put its selector on every otel-leak series
    P, sel, rule = q.process, q.sel, q.rule
    lay = Layout()
    processes = f"count({max_by(P, sel(names.PROCESS_MEMORY_USAGE, *F))})"

    lay.row("Fleet at a glance")
    lay.add(stat(
        "Worker processes reporting",
        "Worker processes of the selected services that report memory now. A drop that is not a deploy or a "
        "scale-down means workers died (OOM kills show up exactly like this) or stopped exporting: check the "
        "OtelLeakTelemetryAbsent alert and the collector.",
        [target(processes, "processes")],
        COUNT,
    ), w=5, h=5)
    lay.add(stat(
        "Workers the detector flags",
        "Workers whose embedded detector currently declares a leak. Anything above zero: look at the ranking "
        "below and open the worker.",
        [target(f"count({max_by(WORKER, sel(names.DETECTOR_VERDICT, *F, NO_TASK))} == 1)", "flagged")],
        COUNT, thresholds=VERDICT_STEPS, no_value="0",
    ), w=5, h=5)
    lay.add(stat(
        "Firing leak alerts",
        "otel-leak alerts firing now for the selected services (Prometheus ALERTS). Each has a runbook_url: "
        "follow it. Zero alerts while the detector flags workers means the alerts' 'for' durations have not "
        "elapsed yet (or the rules are not loaded into this Prometheus).",
        [target(f"count({firing_alerts(q)})", "firing")],
        COUNT, thresholds=VERDICT_STEPS, no_value="0",
    ), w=4, h=5)
    lay.add(stat(
        "Soonest memory limit",
        "The shortest time until any worker process's memory floor reaches its limit at the current slope "
        f"(the recording rule behind OtelLeakMemoryFillingUp). {th.time_to_limit_text(m)} Recycle that "
        "worker before it is OOM-killed mid-task, then find the leak.",
        [target(f"min({rule(RULE_TIME_TO_LIMIT, F, P)})", "soonest")],
        SECONDS, thresholds=th.time_to_limit_steps(m), no_value="none growing",
    ), w=5, h=5)
    lay.add(stat(
        "Fastest floor growth",
        "The steepest memory-floor slope among the worker processes (the recording rule behind "
        "OtelLeakMemoryFloorGrowing). Compare with the service's usual value; a step up after a deploy "
        f"points at the new release (Release comparison dashboard). {th.floor_slope_text(m)}",
        [target(f"max({rule(RULE_FLOOR_SLOPE, F, P)})", "fastest")],
        BYTES_PER_S, thresholds=th.floor_slope_steps(m),
    ), w=5, h=5)

    lay.row("Workers ranked")
    lay.add(table(
        "Worker processes ranked by floor slope",
        "One row per worker process, steepest memory-floor growth first: the floor slope and the time until "
        "the memory limit as the alerts compute them, the floor and its share of the limit (the recording "
        "rule's floor, as OtelLeakMemoryFillingUp divides it). Click "
        "an instance to open it on the Worker dashboard. Processes at the top with a short time to limit are "
        "the ones to recycle first; if all processes of one version are at the top, compare releases.",
        [
            target(rule(RULE_FLOOR_SLOPE, F, P), instant=True, table=True),
            target(rule(RULE_TIME_TO_LIMIT, F, P), instant=True, table=True),
            target(rule(RULE_FLOOR, F, P), instant=True, table=True),
            target(f"{rule(RULE_FLOOR, F, P)} / {max_by(P, sel(names.MEMORY_LIMIT, *F))}", instant=True,
                   table=True),
        ],
        BYTES_PER_S,
        overrides=[
            rename_unit("Value #A", "floor slope", BYTES_PER_S),
            rename_unit("Value #B", "time to limit", SECONDS),
            rename_unit("Value #C", "floor", BYTES),
            rename_unit("Value #D", "floor / limit", RATIO),
            worker_links(INSTANCE),
        ],
        sort_by="floor slope",
        organize={"excludeByName": {"Time": True, **hidden_process_labels(P)},
                  "indexByName": {SERVICE: 0, INSTANCE: 1, PID: 2, VERSION: 3}},
    ), w=14, h=10)
    lay.add(timeseries(
        "Time until memory limit (10 soonest)",
        "Per worker process, how long until the memory floor reaches the memory limit at its current slope; "
        "only processes whose floor grows and that know their limit. Lines falling towards the red band "
        "will be OOM-killed: recycle them and follow the OtelLeakMemoryFillingUp runbook. "
        + th.time_to_limit_text(m),
        [target(f"bottomk(10, {rule(RULE_TIME_TO_LIMIT, F, P)})", legend(SERVICE) + " " + proc_legend())],
        SECONDS, thresholds=th.time_to_limit_steps(m), threshold_style="line+area", fill=0,
    ), w=10, h=10)
    lay.add(timeseries(
        "Memory floor slope per worker process (10 steepest)",
        "Slope of each process's memory floor (lowest resident memory over the floor window). The floor "
        "ignores the GC sawtooth, so a slope that stays positive is memory never given back. A slope that "
        f"jumps and returns to zero is a one-off step (a cache filled once). {th.floor_slope_text(m)}",
        [target(f"topk(10, {rule(RULE_FLOOR_SLOPE, F, P)})", legend(SERVICE) + " " + proc_legend())],
        BYTES_PER_S, thresholds=th.floor_slope_steps(m), threshold_style="line", fill=0,
    ), w=12, h=8)
    lay.add(timeseries(
        "Service floor slope of mature processes (restart-proof)",
        "Mean floor slope of each service's processes that are past warm-up and have not restarted: the "
        "signal of OtelLeakFleetMemoryGrowing. Restarts (deploys, max-tasks-per-child, OOM kills) hide a "
        "leak from every single process's long-window slope; this line still shows it. Positive for hours: "
        f"the service leaks even if no worker lives long enough to page. {th.fleet_slope_text(m)}",
        [target(rule(RULE_SERVICE_MATURE_SLOPE, F, q.service), legend(SERVICE))],
        BYTES_PER_S, thresholds=th.fleet_slope_steps(m), threshold_style="line", fill=0,
    ), w=12, h=8)

    lay.row("Alerts")
    lay.add(table(
        "Firing leak alerts",
        "otel-leak alerts firing now, with their severity and the worker and task type they name. The "
        "runbook linked by each alert says how to confirm and what to do, from recycling the worker to "
        "rolling back the release. Empty is the normal state.",
        [target(firing_alerts(q), instant=True, table=True)],
        NONE,
        overrides=[worker_links(INSTANCE)],
        sort_by="severity",
        organize={"excludeByName": {"Time": True, "Value": True, "__name__": True, "alertstate": True,
                                    **hidden_process_labels(P)}},
    ), w=14, h=8)
    lay.add(timeseries(
        "Leak alerts firing over time",
        "How many otel-leak alerts of each name and severity fire over time. An alert that flaps (fires and "
        "resolves repeatedly) on a worker that is recycled regularly still means a leak: the fleet-wide "
        "signal is the one to trust.",
        [target(f"count by (alertname, severity) ({firing_alerts(q)})", legend("alertname", "severity"))],
        COUNT, interpolation="stepAfter", fill=0,
    ), w=10, h=8)

    lay.row("Leaking task types across the fleet")
    lay.add(table(
        "Task types leaking across the fleet",
        "One row per task type and service: how many workers' detectors flag it, the largest retained bytes "
        "per call among them, and the resident memory the whole fleet retains through it per second (growth "
        "minus release summed over every process: the naive, neighbour-sensitive signal; trust the detector's "
        "columns when they disagree). "
        "The top row is the fix worth most; open the Tasks dashboard for its traces.",
        [
            target(f"count by ({SERVICE}, {TASK}) ({max_by(WORKER + (TASK,), sel(names.DETECTOR_VERDICT, *F, ANY_TASK))} == 1)",
                   instant=True, table=True),
            target(max_by(BY_TASK, sel(names.DETECTOR_RETAINED_PER_CALL, *F)), instant=True, table=True),
            target(sum_by(BY_TASK, sel(RULE_TASK_NET_GROWTH_RATE, *F)), instant=True, table=True),
        ],
        NONE,
        overrides=[
            rename_unit("Value #A", "workers flagging", COUNT),
            rename_unit("Value #B", "retained per call (detector, max)", BYTES),
            rename_unit("Value #C", "fleet retention", BYTES_PER_S),
            links_override(TASK, data_link("Open this task type", UIDS["tasks"], ("service", SERVICE),
                                           ("task", TASK))),
        ],
        sort_by="fleet retention",
        organize={"excludeByName": {"Time": True}, "indexByName": {SERVICE: 0, TASK: 1}},
    ), w=12, h=9)
    lay.add(timeseries(
        "Fleet retention by task type",
        "Resident memory retained per second by each task type, summed over every process of the service "
        "(growth minus release). A task type retaining on one process only may be an outlier input; on "
        "every process, it is the code. The detector's per-call estimate for suspected types is on the "
        "Tasks dashboard.",
        [target(sum_by(BY_TASK, sel(RULE_TASK_NET_GROWTH_RATE, *F)), legend(SERVICE, TASK))],
        BYTES_PER_S, fill=0,
    ), w=12, h=9)

    lay.row("Memory by service version")
    lay.add(timeseries(
        "Resident memory per process by version (mean)",
        "Mean resident memory of a worker process, per service version. During a rollout the new version "
        "should sit at the old one's level; a version that climbs away from it is the suspect: compare them "
        "on the Release comparison dashboard and roll back if it keeps climbing.",
        [target(f"avg by ({SERVICE}, {VERSION}) ({max_by(P, sel(names.PROCESS_MEMORY_USAGE, *F))})",
                legend(SERVICE, VERSION))],
        BYTES, fill=0,
    ), w=8, h=8)
    lay.add(timeseries(
        "Memory floor per process by version (mean)",
        "Mean memory floor of a worker process, per version: the part of memory that garbage collection "
        "cannot give back. This is the comparison that matters for leaks; RSS alone moves with load.",
        [target(f"avg by ({SERVICE}, {VERSION}) ({max_by(P, sel(names.MEMORY_FLOOR, *F))})",
                legend(SERVICE, VERSION))],
        BYTES, fill=0,
    ), w=8, h=8)
    lay.add(timeseries(
        "Floor slope by version (mean)",
        "Mean memory-floor slope per version, over the dashboard's slope window. A new version with a "
        "clearly positive slope where the old one is flat introduced a leak: roll back or feature-flag the "
        f"task type the detector names. {th.floor_slope_text(m)}",
        [target(f"avg by ({SERVICE}, {VERSION}) ({q.floor_slope(F)})", legend(SERVICE, VERSION))],
        BYTES_PER_S, thresholds=th.floor_slope_steps(m), threshold_style="line", fill=0,
    ), w=8, h=8)
    lay.add(timeseries(
        "Worker processes per version",
        "Worker processes reporting, per service version: shows rollouts and restarts. Read the memory "
        "panels above against it (a version with one process is a small sample).",
        [target(f"count by ({SERVICE}, {VERSION}) ({max_by(P, sel(names.PROCESS_MEMORY_USAGE, *F))})",
                legend(SERVICE, VERSION))],
        COUNT, interpolation="stepAfter", fill=0,
    ), w=24, h=6)

    variables = [datasource_variable(), service_variable(q), window_variable()]
    return dashboard(
        "fleet",
        "All workers of the selected services: ranked by memory-floor growth and time until their memory "
        "limit, firing leak alerts, task types leaking across the fleet, memory by service version.",
        lay, variables,
    )
