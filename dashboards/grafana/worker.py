"""Worker dashboard: one worker (service instance and its processes) in depth.

Answers: is this worker's memory growing for real (floor, not the GC sawtooth), how close is it to its limit,
is the growth in the Python heap or native/other memory, is the garbage collector coping, and what does the
embedded detector conclude, with what confidence, since when.
"""

from __future__ import annotations

from dashboards.mixin import Mixin
from otel_leak import names

from . import thresholds as th
from .core import (
    ANY_TASK,
    BYTES,
    BYTES_PER_S,
    COLLECTIONS_PER_S,
    COUNT,
    DETECTOR_VERDICT_LABEL,
    GENERATION,
    GUARD_OUTCOME,
    GUARD_REASON,
    INSTANCE,
    NO_TASK,
    NONE,
    OBJECTS_PER_S,
    RATIO,
    RULE_FLOOR,
    RULE_FLOOR_SLOPE,
    RULE_GC_PAUSE_MEAN,
    RULE_TIME_TO_LIMIT,
    S_WORKER,
    SECONDS,
    TASK,
    VERDICT_MAPPINGS,
    VERDICT_STEPS,
    WORKER,
    Layout,
    dashboard,
    datasource_variable,
    instance_variable,
    legend,
    limit_override,
    max_by,
    proc_legend,
    service_variable,
    stat,
    steps,
    sum_by,
    target,
    timeseries,
)
from .promql import Promql

W = S_WORKER


def build(m: Mixin):
    q = Promql(m)
    # the Mixin's process labels, and query builders that put its selector on every otel-leak series
    P, sel, rule, rate = q.process, q.sel, q.rule, q.rate
    GEN = P + (GENERATION,)
    lay = Layout()

    lay.row("Verdict")
    lay.add(stat(
        "Detector verdict",
        "The embedded detector's verdict for this worker (otel_leak_detector_leak_ratio without a task label): "
        "LEAK once a sustained rise of the memory floor is confirmed over more than one window, after "
        "warm-up, GC sawtooth, bursts and one-off steps are ruled out. If it says LEAK: open the Tasks "
        "dashboard to see which task type retains memory, then follow the alert's runbook. If it stays "
        "'no leak' while the floor clearly climbs, check the confidence panel and the detector settings "
        "(OTEL_PYTHON_LEAK_*).",
        [target(max_by(WORKER, sel(names.DETECTOR_VERDICT, *W, NO_TASK)), legend(INSTANCE))],
        NONE, thresholds=VERDICT_STEPS, mappings=VERDICT_MAPPINGS, graph=False,
    ), w=4, h=5)
    lay.add(stat(
        "Detector confidence",
        "Confidence (0-100 %) of the detector's current verdict. Low confidence with a LEAK verdict means "
        "little evidence so far (few windows, few tasks): wait for more tasks before acting on it. High "
        "confidence with 'no leak' while memory grows points at growth outside what the detector watches "
        "(e.g. a child process).",
        [target(max_by(WORKER + (DETECTOR_VERDICT_LABEL,), sel(names.DETECTOR_CONFIDENCE, *W, NO_TASK)),
                legend(INSTANCE, DETECTOR_VERDICT_LABEL))],
        RATIO, thresholds=steps(("text", None)), decimals=0,
    ), w=4, h=5)
    lay.add(stat(
        "Floor slope (detector)",
        "Robust slope of the resident-memory floor as the detector estimates it, in bytes per second. "
        "Near zero is healthy; a steady positive value is memory the worker never gives back. Compare with "
        "the slope the alerts use on the 'Floor slope' panel below: both should agree. "
        + th.floor_slope_text(m),
        [target(max_by(WORKER, sel(names.DETECTOR_FLOOR_SLOPE, *W)), legend(INSTANCE))],
        BYTES_PER_S, thresholds=th.floor_slope_steps(m),
    ), w=4, h=5)
    lay.add(stat(
        "Resident memory",
        "Resident set size (RSS) of each process now. On its own it says little (a GC sawtooth moves it): "
        "read it against the floor and the limit in the panel below.",
        [target(max_by(P, sel(names.PROCESS_MEMORY_USAGE, *W)), proc_legend())],
        BYTES,
    ), w=4, h=5)
    lay.add(stat(
        "Floor as share of limit",
        "Memory floor (the recording rule's, as the OtelLeakMemoryFillingUp alert divides it) divided by the "
        "memory limit (configured OTEL_PYTHON_LEAK_MEMORY_LIMIT, cgroup memory.max or RLIMIT_AS). "
        f"{th.limit_share_text(m)} Near the red the OOM killer is one burst away. If it reads 'no limit', "
        "the process runs without one and time-to-limit alerts cannot fire: set OTEL_PYTHON_LEAK_MEMORY_LIMIT.",
        [target(f"{rule(RULE_FLOOR, W, P)} / {max_by(P, sel(names.MEMORY_LIMIT, *W))}", proc_legend())],
        RATIO, thresholds=th.limit_share_steps(m), no_value="no limit", decimals=1,
    ), w=4, h=5)
    lay.add(stat(
        "Time until memory limit",
        "At the floor's current slope (the recording rule behind the OtelLeakMemoryFillingUp alert), how long "
        f"until the floor reaches the limit. {th.time_to_limit_text(m)} Empty when the floor is not "
        "growing or no limit is known. Recycling the worker buys this much time again; fixing the leak "
        "removes the countdown.",
        [target(rule(RULE_TIME_TO_LIMIT, W, P), proc_legend())],
        SECONDS, thresholds=th.time_to_limit_steps(m), no_value="not growing / no limit",
    ), w=4, h=5)

    lay.row("Memory")
    lay.add(timeseries(
        "Resident memory against floor and limit",
        "RSS (the sawtooth), the floor (lowest RSS over the floor window: what the process cannot give "
        "back) and the memory limit (red dashed). A rising floor is a leak; a sawtooth over a flat floor is "
        "normal garbage collection. When the floor approaches the limit, recycle the worker now and find "
        "the task on the Tasks dashboard.",
        [
            target(max_by(P, sel(names.PROCESS_MEMORY_USAGE, *W)), proc_legend("RSS")),
            target(max_by(P, sel(names.MEMORY_FLOOR, *W)), proc_legend("floor")),
            target(max_by(P, sel(names.MEMORY_LIMIT, *W)), proc_legend("limit")),
        ],
        BYTES, overrides=[limit_override("limit .*")], fill=0,
    ), w=16, h=9)
    lay.add(timeseries(
        "Floor slope",
        "Slope of the memory floor in bytes per second: the detector's robust estimate, and the recording "
        "rule the OtelLeakMemoryFloorGrowing alert evaluates (deriv of the Prometheus-side floor). Positive "
        "for hours means a leak; a spike that returns to zero is a one-off step (lazy import, cache fill). "
        "If the two disagree for long, trust the rule for paging and check the detector's settings. "
        + th.floor_slope_text(m),
        [
            target(max_by(WORKER, sel(names.DETECTOR_FLOOR_SLOPE, *W)), legend(INSTANCE, prefix="detector")),
            target(rule(RULE_FLOOR_SLOPE, W, P), proc_legend("alert rule")),
        ],
        BYTES_PER_S, thresholds=th.floor_slope_steps(m), threshold_style="line", fill=0,
    ), w=8, h=9)
    lay.add(timeseries(
        "Python heap blocks",
        "Memory blocks currently allocated by CPython's allocator (sys.getallocatedblocks). If it climbs "
        "with the floor, the leak is Python objects: the detector's tracemalloc window will name the "
        "allocation site. If RSS climbs and this stays flat, suspect native memory (C extensions) or "
        "allocator fragmentation.",
        [target(max_by(P, sel(names.HEAP_BLOCKS, *W)), proc_legend("blocks"))],
        COUNT, fill=0,
    ), w=8, h=8)
    lay.add(timeseries(
        "Python heap traced by tracemalloc",
        "Bytes traced by tracemalloc. Only present during the detector's bounded tier-2 windows (tracemalloc "
        "is too costly to leave on), so gaps are normal. A series here means the detector suspected a leak "
        "and is measuring it.",
        [target(max_by(P, sel(names.HEAP_TRACED, *W)), proc_legend("traced"))],
        BYTES, fill=0,
    ), w=8, h=8)
    lay.add(timeseries(
        "Native and other memory",
        "RSS minus the Python heap traced by tracemalloc: C extensions, thread stacks, allocator overhead "
        "and fragmentation. Only computable during tier-2 windows. If this part grows while the traced heap "
        "does not, the leak is native (ctypes/C extension) or fragmentation: tracemalloc cannot see it; "
        "try another allocator (PYTHONMALLOC=malloc with jemalloc) or recycle workers by task count.",
        [target(
            f"{max_by(P, sel(names.PROCESS_MEMORY_USAGE, *W))} - {max_by(P, sel(names.HEAP_TRACED, *W))}",
            proc_legend("native/other"),
        )],
        BYTES, fill=0,
    ), w=8, h=8)
    lay.add(timeseries(
        "Virtual memory",
        "Virtual memory size. Grows with mapped files, thread stacks and arenas; it matters when the limit is "
        "RLIMIT_AS. A steady climb with flat RSS usually means mappings or threads that are never released.",
        [target(max_by(P, sel(names.PROCESS_MEMORY_VIRTUAL, *W)), proc_legend("virtual"))],
        BYTES, fill=0,
    ), w=12, h=8)
    lay.add(timeseries(
        "Threads",
        "Threads in the process. A count that only grows is a leak of its own (threads started per task "
        "and never joined) and drags thread-local data with it: find who starts them (py-spy dump) and join "
        "or pool them.",
        [target(max_by(P, sel(names.PROCESS_THREAD_COUNT, *W)), proc_legend("threads"))],
        COUNT, fill=0,
    ), w=12, h=8)

    lay.row("Garbage collector")
    lay.add(timeseries(
        "GC collections by generation",
        "Garbage collections per second by generation (0 youngest, 2 full). Many generation-2 collections "
        "with a rising floor means the collector works hard on objects that stay reachable: look for "
        "caches and registries that grow per task.",
        [target(sum_by(GEN, rate(names.GC_COLLECTIONS, W)), proc_legend("gen", GENERATION))],
        COLLECTIONS_PER_S, fill=0,
    ), w=8, h=8)
    lay.add(timeseries(
        "Objects collected by generation",
        "Objects freed by the collector per second. Cycles are being created and freed: fine while the floor "
        "is flat. If the floor grows while this is high, cycles outlive their task (exceptions kept with "
        "their frames, closures stored on long-lived objects).",
        [target(sum_by(GEN, rate(names.GC_COLLECTED, W)), proc_legend("gen", GENERATION))],
        OBJECTS_PER_S, fill=0,
    ), w=8, h=8)
    lay.add(timeseries(
        "Uncollectable objects by generation",
        "Objects the collector found but could not free, per second. Should be zero. Anything above zero "
        "is a real leak of unreachable objects (gc.garbage): inspect gc.garbage in the worker.",
        [target(sum_by(GEN, rate(names.GC_UNCOLLECTABLE, W)), proc_legend("gen", GENERATION))],
        OBJECTS_PER_S, thresholds=steps(("green", None), ("red", 1e-9)), threshold_style="line", fill=0,
    ), w=8, h=8)
    lay.add(timeseries(
        "GC pause by generation",
        "Duration of garbage collections from gc.callbacks: p50 and p99 from the pause histogram, and the "
        "mean the OtelLeakGCPauseRegression alert compares with the service's own past. Full (generation 2) "
        "pauses grow with the number of live tracked objects, so a leak of Python objects shows up here as "
        "pauses getting longer. Pauses over 100 ms stall every task in the process: fix the leak; gc.freeze() "
        f"after start-up helps when the growth is a large static heap. {th.gc_pause_text(m)}",
        [
            target(q.histogram_quantile(0.5, names.GC_PAUSE, W, GEN), proc_legend("p50 gen", GENERATION)),
            target(q.histogram_quantile(0.99, names.GC_PAUSE, W, GEN), proc_legend("p99 gen", GENERATION)),
            target(rule(RULE_GC_PAUSE_MEAN, W, GEN), proc_legend("mean (alert rule) gen", GENERATION)),
        ],
        SECONDS, thresholds=th.gc_pause_steps(m), threshold_style="line", fill=0,
    ), w=12, h=8)
    lay.add(timeseries(
        "Time spent in GC",
        "Share of wall-clock time spent in garbage-collection pauses. Above 5 % the collector costs real "
        "throughput; above 10 % it is the bottleneck. Rising with the floor: a leak of Python objects.",
        [target(sum_by(P, rate(names.GC_PAUSE, W, suffix="_sum")), proc_legend())],
        RATIO, thresholds=steps(("green", None), ("orange", 0.05), ("red", 0.1)), threshold_style="line", fill=0,
    ), w=12, h=8)

    lay.row("Detector")
    lay.add(timeseries(
        "Leak verdict over time",
        "1 while the detector declares a leak, 0 otherwise: for the worker and for each task type it "
        "suspects. The moment it flips to 1 is the detection time; a task series at 1 names the task type "
        "to look at first (Tasks dashboard, with exemplars to its traces).",
        [
            target(max_by(WORKER, sel(names.DETECTOR_VERDICT, *W, NO_TASK)), legend(INSTANCE, prefix="worker")),
            target(max_by(WORKER + (TASK,), sel(names.DETECTOR_VERDICT, *W, ANY_TASK)),
                   legend(INSTANCE, TASK, prefix="task")),
        ],
        NONE, mappings=VERDICT_MAPPINGS, min_value=0, max_value=1, interpolation="stepAfter", fill=20,
    ), w=12, h=8)
    lay.add(timeseries(
        "Detector confidence over time",
        "Confidence of the current verdict (0-100 %), for the worker (labelled with the verdict) and for each "
        "suspected task type. It should rise steadily while a leak continues. A confidence that flaps means "
        "the evidence is borderline (a slow leak under noisy load): give it more time or lengthen the "
        "windows before paging anyone on it.",
        [
            target(max_by(WORKER + (DETECTOR_VERDICT_LABEL,), sel(names.DETECTOR_CONFIDENCE, *W, NO_TASK)),
                   legend(INSTANCE, DETECTOR_VERDICT_LABEL, prefix="worker")),
            target(max_by(WORKER + (TASK,), sel(names.DETECTOR_CONFIDENCE, *W, ANY_TASK)),
                   legend(INSTANCE, TASK, prefix="task")),
        ],
        RATIO, min_value=0, max_value=1, fill=0,
    ), w=12, h=8)
    lay.add(timeseries(
        "Floor: in-process gauge and Prometheus-side rule",
        "The floor the worker computes itself (lowest RSS over OTEL_PYTHON_LEAK_FLOOR_WINDOW, sampled every "
        "OTEL_PYTHON_LEAK_SAMPLE_INTERVAL) and the floor the recording rule computes from scraped RSS (what the "
        "alerts use). They should track each other; a rule floor far above the gauge means the scrape "
        "interval misses the sawtooth's lows: lengthen the rule's floor window.",
        [
            target(max_by(P, sel(names.MEMORY_FLOOR, *W)), proc_legend("in-process")),
            target(rule(RULE_FLOOR, W, P), proc_legend("rule")),
        ],
        BYTES, fill=0,
    ), w=24, h=7)

    lay.row("Memory-budget guard")
    window = m.guard_recycling_window
    lay.add(timeseries(
        "Guard decisions by reason and outcome",
        f"Processes of this worker for which the memory-budget guard (OTEL_PYTHON_LEAK_GUARD) decided to recycle "
        f"within the last {window}, by reason (budget, hard_budget, time_to_limit) and outcome: recycled; dry_run "
        "(it would have, in dry-run); rate_limited (the hourly recycle limit stopped it: the leak refills faster "
        "than restarts contain it, OtelLeakGuardRateLimited pages); started_over_budget, other_recycling, "
        "unsupported (not recycled, see the guard's log record). Each process records a decision once, so with "
        f"the guard on the 'recycled' line is the number of recycles per {window} (what OtelLeakGuardRecycling "
        "fires on). Recycles contain a leak, they do not fix it: find the task on the Tasks dashboard. "
        "Empty while the guard is off or has decided nothing.",
        [target(sum_by(WORKER + (GUARD_REASON, GUARD_OUTCOME),
                       f"max_over_time({sel(names.GUARD_RECYCLES, *W)}[{window}])"),
                legend(INSTANCE, GUARD_REASON, GUARD_OUTCOME))],
        COUNT, interpolation="stepAfter", fill=20,
    ), w=24, h=7)

    variables = [datasource_variable(), service_variable(q), instance_variable(q)]
    return dashboard(
        "worker",
        "One worker: resident memory against its floor and limit, Python heap versus native memory, garbage "
        "collector, threads, and the embedded detector's verdict and confidence over time.",
        lay, variables,
    )
