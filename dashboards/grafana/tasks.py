"""Tasks dashboard: which task type retains memory, how much per call, and the traces of calls that did.

Answers: which task types does the detector suspect and how many bytes does each call retain; how much
resident memory does a call of each type grow and release (heatmaps whose exemplars open the trace of a task
that grew memory); how often does each task type run.
"""

from __future__ import annotations

from dashboards.mixin import Mixin
from otel_leak import names

from .core import (
    ANY_TASK,
    BYTES,
    BYTES_PER_S,
    INSTANCE,
    NONE,
    PID,
    RATIO,
    RULE_TASK_NET_GROWTH_PER_CALL,
    RULE_TASK_NET_GROWTH_RATE,
    S_TASK,
    SERVICE,
    TASK,
    TASKS_PER_S,
    UIDS,
    VERDICT_MAPPINGS,
    Layout,
    dashboard,
    data_link,
    datasource_variable,
    heatmap,
    instance_variable,
    legend,
    links_override,
    max_by,
    rename_unit,
    service_variable,
    sum_by,
    table,
    target,
    task_variable,
    timeseries,
)
from .promql import Promql

T = S_TASK
BY_TASK = (SERVICE, TASK)


def build(m: Mixin):
    q = Promql(m)
    # the Mixin's process labels, and query builders that put its selector on every otel-leak series
    P, sel, rule, rate, task_rate, histogram_quantile = (
        q.process, q.sel, q.rule, q.rate, q.task_rate, q.histogram_quantile)
    lay = Layout()

    lay.row("Retention by task type")
    lay.add(timeseries(
        "Retained bytes per call by task type",
        "Two estimates of the bytes each call leaves behind. 'detector': the embedded detector's robust "
        "regression of window-to-window growth on task counts (neighbours' allocations in other threads do "
        "not blur it); only suspected task types appear, and OtelLeakTaskRetainingMemory is based on it. 'rule': "
        "the naive growth minus release of resident memory per call from the task histograms, for every task "
        "type; noisy when tasks interleave, and neighbour-sensitive (a task allocating fresh pages because a "
        "leaking neighbour kept the freed ones shows the neighbour's leak). Healthy task types sit near zero. "
        "Open a trace from the heatmap exemplars below "
        "to find the code path of a type that does not.",
        [
            target(max_by(BY_TASK, sel(names.DETECTOR_RETAINED_PER_CALL, *T)), legend(TASK, prefix="detector")),
            target(rule(RULE_TASK_NET_GROWTH_PER_CALL, T, BY_TASK), legend(TASK, prefix="rule")),
        ],
        BYTES, fill=0,
    ), w=12, h=9)
    lay.add(table(
        "Task types now",
        "One row per task type: calls per second, resident memory retained per call and per second (growth "
        "minus release, the naive recording rules, worst process), the detector's retained bytes per call "
        "and its verdict for the task type. A task type with a LEAK verdict or a large retained rate is the "
        "one to feature-flag or patch first (see the runbook). The rule columns are noisy with interleaved "
        "tasks: trust the detector's column when they disagree.",
        [
            target(task_rate(T, BY_TASK, "5m"), instant=True, table=True),
            target(rule(RULE_TASK_NET_GROWTH_PER_CALL, T, BY_TASK), instant=True, table=True),
            target(rule(RULE_TASK_NET_GROWTH_RATE, T, BY_TASK), instant=True, table=True),
            target(max_by(BY_TASK, sel(names.DETECTOR_RETAINED_PER_CALL, *T)), instant=True, table=True),
            target(max_by(BY_TASK, sel(names.DETECTOR_VERDICT, *T, ANY_TASK)), instant=True, table=True),
        ],
        NONE,
        overrides=[
            rename_unit("Value #A", "calls/s (5m)", TASKS_PER_S),
            rename_unit("Value #B", "retained per call (rule)", BYTES),
            rename_unit("Value #C", "retained per second (rule)", BYTES_PER_S),
            rename_unit("Value #D", "retained per call (detector)", BYTES),
            rename_unit("Value #E", "verdict", NONE, mappings=VERDICT_MAPPINGS),
            links_override(TASK, data_link("This task type only", UIDS["tasks"], ("service", SERVICE),
                                           ("task", TASK))),
        ],
        sort_by="retained per second (rule)",
        organize={"excludeByName": {"Time": True}, "indexByName": {SERVICE: 0, TASK: 1}},
    ), w=12, h=9)
    lay.add(timeseries(
        "Resident memory retained per second by task type",
        "Growth minus release of resident memory per second, by task type and process: the naive, "
        "neighbour-sensitive signal (no alert uses it; OtelLeakTaskRetainingMemory uses the detector). "
        "Around zero for healthy task types. Persistently "
        "positive for one type only: that type retains memory. Positive for all types at once: something "
        "shared grows (a global cache, fragmentation): look at the Worker dashboard.",
        [target(rule(RULE_TASK_NET_GROWTH_RATE, T, P + (TASK,)), legend(TASK, INSTANCE, PID))],
        BYTES_PER_S, fill=0,
    ), w=12, h=8)
    lay.add(timeseries(
        "Resident memory growth per call, p50 and p99 (exemplars)",
        "Quantiles of per-call resident growth by task type, with exemplars: each dot is a real call; click it "
        "to open its trace. A p99 far above p50 means a few calls grow memory a lot (large payloads, cache "
        "fills); a p50 that creeps up means every call leaves something behind.",
        [
            target(histogram_quantile(0.5, names.TASK_MEMORY_GROWTH, T, BY_TASK), legend(TASK, prefix="p50"),
                   exemplar=True),
            target(histogram_quantile(0.99, names.TASK_MEMORY_GROWTH, T, BY_TASK), legend(TASK, prefix="p99"),
                   exemplar=True),
        ],
        BYTES, fill=0,
    ), w=12, h=8)

    lay.row("Growth and release per call (heatmaps with exemplars)")
    lay.add(heatmap(
        "Resident growth per call",
        "How many calls per second grew resident memory by how much (task histogram "
        f"{names.TASK_MEMORY_GROWTH.prom}). Exemplar dots link to the trace of a call in that bucket: open "
        "one from a high bucket of the suspected task type to find the code path that keeps memory. A band "
        "that stays at the same height while the release heatmap stays empty is memory that is never given "
        "back.",
        sum_by(("le",), rate(names.TASK_MEMORY_GROWTH, T, suffix="_bucket")),
        BYTES,
    ), w=12, h=10)
    lay.add(heatmap(
        "Resident release per call",
        "How many calls per second released resident memory, and how much (task histogram "
        f"{names.TASK_MEMORY_RELEASE.prom}). Healthy task types release about as much as they grow; a task "
        "type that only ever grows is the suspect. Exemplars link to the traces. Empty for a task type that "
        "never gives memory back.",
        sum_by(("le",), rate(names.TASK_MEMORY_RELEASE, T, suffix="_bucket")),
        BYTES,
    ), w=12, h=10)

    lay.row("Task rates")
    lay.add(timeseries(
        "Tasks per second by task type",
        "Completed task spans per second by task type. Retention scales with calls: a leak that appeared "
        "with a traffic spike may be the same per-call leak under more load. A task type missing here is not "
        "recognised as a task (check OTEL_PYTHON_LEAK_TASK_SPAN_KINDS / TASK_SPAN_NAMES); 'other' means the "
        "OTEL_PYTHON_LEAK_MAX_TASK_TYPES cap was reached.",
        [target(task_rate(T, BY_TASK), legend(SERVICE, TASK))],
        TASKS_PER_S, fill=0,
    ), w=12, h=8)
    lay.add(timeseries(
        "Resident memory grown and released per second",
        "Bytes per second of resident growth and release summed over calls, by task type. The gap between a "
        "type's two lines is what it adds to the process every second: about retained bytes per call times "
        "calls per second when the detector is right.",
        [
            target(sum_by(BY_TASK, rate(names.TASK_MEMORY_GROWTH, T, suffix="_sum")), legend(TASK, prefix="grown")),
            target(sum_by(BY_TASK, rate(names.TASK_MEMORY_RELEASE, T, suffix="_sum")),
                   legend(TASK, prefix="released")),
        ],
        BYTES_PER_S, fill=0,
    ), w=12, h=8)
    lay.add(timeseries(
        "Tasks per second by worker process",
        "Completed tasks per second per worker process. Uneven load between processes of one service "
        "explains why one of them leaks faster than the others.",
        [target(sum_by(P, rate(names.TASK_COUNT, T)), legend(SERVICE, INSTANCE, PID))],
        TASKS_PER_S, fill=0,
    ), w=12, h=7)
    lay.add(timeseries(
        "Share of task spans measured",
        "The share of task spans whose resident memory was measured, by task type. 100 % unless the worker "
        "runs tasks so fast that one /proc read per task would exceed OTEL_PYTHON_LEAK_TASK_READ_BUDGET; then a "
        "random sample is measured, and the per-call growth figures above are per measured call. Every task "
        "is counted either way, and the detector's attribution does not depend on it.",
        [target(f"{sum_by(BY_TASK, rate(names.TASK_MEASURED, T))}\n/ {sum_by(BY_TASK, rate(names.TASK_COUNT, T))}",
                legend(TASK))],
        RATIO, fill=0,
    ), w=12, h=7)

    variables = [datasource_variable(), service_variable(q), instance_variable(q), task_variable(q)]
    return dashboard(
        "tasks",
        "Per task type: retained bytes per call, resident growth/release heatmaps with exemplars linking to "
        "the traces of tasks that grew memory, and task rates.",
        lay, variables,
    )
