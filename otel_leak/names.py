"""The one source of names.

Every metric, attribute, unit, Prometheus series and label that otel-leak emits or queries is defined here.
The instruments (``otel_leak.metrics``), the span processor, the detector, the Prometheus rules and Grafana
dashboards (``dashboards/``), the collector configuration and the tests all import these constants.

Semantic-convention names are used where a convention exists (``process.*``, ``cpython.gc.*``, all still
incubating). Everything without a convention lives in the project's own namespace, ``otel_leak.``.

Prometheus names are derived the way the collector's ``prometheus`` exporter derives them
(``add_metric_suffixes: true``, the default): dots become underscores, the unit is appended as a suffix
(``By`` -> ``bytes``, ``s`` -> ``seconds``; ``1`` and ``{annotation}`` units add nothing, except ``1`` on a
gauge which adds ``ratio``), monotonic counters end in ``_total``. See :func:`prom`.
"""

from __future__ import annotations

from dataclasses import dataclass

NAMESPACE = "otel_leak"
INSTRUMENTATION_SCOPE = "otel_leak"


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str
    kind: str  # "gauge" | "counter" | "updowncounter" | "histogram"
    description: str

    @property
    def prom(self) -> str:
        """The Prometheus series name the collector's prometheus exporter produces for this metric."""
        return prom(self)


_UNIT_SUFFIX = {"By": "bytes", "s": "seconds", "ms": "milliseconds"}
_PER_UNIT = {"s": "second", "m": "minute", "h": "hour"}


def prom(metric: Metric) -> str:
    base = metric.name.replace(".", "_")
    if "/" in metric.unit:
        num, den = metric.unit.split("/", 1)
        suffix = f"{_UNIT_SUFFIX.get(num, num)}_per_{_PER_UNIT.get(den, den)}"
    else:
        suffix = _UNIT_SUFFIX.get(metric.unit)
    if suffix is None and metric.unit == "1" and metric.kind == "gauge":
        suffix = "ratio"
    if suffix and not base.endswith("_" + suffix):
        base = f"{base}_{suffix}"
    if metric.kind == "counter":
        base += "_total"
    return base


def label(attribute: str) -> str:
    """Prometheus label name for an OTel attribute (dots to underscores)."""
    return attribute.replace(".", "_")


# --------------------------------------------------------------------------------------------------
# Units (UCUM, as OTel uses them)
UNIT_BYTES = "By"
UNIT_SECONDS = "s"
UNIT_RATIO = "1"

# --------------------------------------------------------------------------------------------------
# Attributes
ATTR_GC_GENERATION = "cpython.gc.generation"  # semconv, int 0/1/2
ATTR_TASK_NAME = "otel_leak.task.name"  # task identity (bounded cardinality, overflow "other")
ATTR_DETECTOR_VERDICT = "otel_leak.detector.verdict"  # "leak" | "no_leak" | "inconclusive"

# Attributes set on task spans at their end
SPAN_TASK_NAME = ATTR_TASK_NAME
SPAN_RSS_DELTA = "otel_leak.task.memory.rss.delta"  # int bytes, end - start resident memory
SPAN_RSS_END = "otel_leak.task.memory.rss"  # int bytes, resident memory of *this* process at task end
SPAN_HEAP_BLOCKS_DELTA = "otel_leak.task.python.heap.blocks.delta"  # int, allocated-block delta
SPAN_HEAP_TRACED_DELTA = "otel_leak.task.python.heap.traced.delta"  # int bytes, only when tracemalloc is on
SPAN_GC_COLLECTIONS = "otel_leak.task.gc.collections"  # int, collections (all generations) during the task
SPAN_GC_PAUSE = "otel_leak.task.gc.pause"  # float seconds of GC pause during the task
SPAN_PID = "process.pid"  # semconv

# Span event and log names emitted by the detector
EVENT_LEAK_SUSPECT = "otel_leak.leak.suspect"
ATTR_LEAK_PATTERN = "otel_leak.leak.pattern"  # on the suspect event: a name from detector.patterns.PATTERNS
LOG_DIAGNOSIS = "otel_leak.diagnosis"

# Value of ATTR_TASK_NAME once the cardinality cap is reached
TASK_OVERFLOW = "other"

# Resource attributes operators group by (semconv)
RES_SERVICE_NAME = "service.name"
RES_SERVICE_INSTANCE = "service.instance.id"
RES_SERVICE_VERSION = "service.version"

# --------------------------------------------------------------------------------------------------
# Process metrics (semantic conventions)
PROCESS_MEMORY_USAGE = Metric(
    "process.memory.usage", UNIT_BYTES, "gauge", "Resident memory (RSS) of the process."
)
PROCESS_MEMORY_VIRTUAL = Metric(
    "process.memory.virtual", UNIT_BYTES, "gauge", "Virtual memory size of the process."
)
PROCESS_THREAD_COUNT = Metric(
    "process.thread.count", "{thread}", "gauge", "Number of threads in the process."
)
GC_COLLECTIONS = Metric(
    "cpython.gc.collections", "{collection}", "counter", "Garbage collections, by generation."
)
GC_COLLECTED = Metric(
    "cpython.gc.collected_objects", "{object}", "counter", "Objects collected by the GC, by generation."
)
GC_UNCOLLECTABLE = Metric(
    "cpython.gc.uncollectable_objects",
    "{object}",
    "counter",
    "Objects the GC found uncollectable, by generation.",
)

# Process metrics (otel_leak namespace: no convention exists)
MEMORY_FLOOR = Metric(
    "otel_leak.process.memory.floor",
    UNIT_BYTES,
    "gauge",
    "Lowest resident memory over the recent floor window: the signal a GC sawtooth cannot fake.",
)
MEMORY_LIMIT = Metric(
    "otel_leak.process.memory.limit",
    UNIT_BYTES,
    "gauge",
    "Memory limit the process runs under (configured, cgroup memory.max, or RLIMIT_AS); absent if none.",
)
HEAP_BLOCKS = Metric(
    "otel_leak.python.heap.blocks",
    "{block}",
    "gauge",
    "Memory blocks currently allocated by the Python allocator (sys.getallocatedblocks).",
)
HEAP_TRACED = Metric(
    "otel_leak.python.heap.traced",
    UNIT_BYTES,
    "gauge",
    "Python heap bytes traced by tracemalloc; only reported while tracemalloc is tracing.",
)
GC_PAUSE = Metric(
    "otel_leak.gc.pause", UNIT_SECONDS, "histogram", "Duration of each garbage collection, by generation."
)

# Per-task-type metrics (attribute ATTR_TASK_NAME), recorded with exemplars
TASK_COUNT = Metric("otel_leak.task.count", "{task}", "counter", "Task spans completed, by task type.")
TASK_MEASURED = Metric(
    "otel_leak.task.measured",
    "{task}",
    "counter",
    "Task spans whose resident memory was measured, by task type: all of them while the reads fit the read "
    "budget, a random sample on faster workers. The growth and release histograms cover these spans only.",
)
TASK_MEMORY_GROWTH = Metric(
    "otel_leak.task.memory.growth",
    UNIT_BYTES,
    "histogram",
    "Resident-memory growth of tasks that grew memory (end minus start, positive part).",
)
TASK_MEMORY_RELEASE = Metric(
    "otel_leak.task.memory.release",
    UNIT_BYTES,
    "histogram",
    "Resident memory released by tasks that shrank memory (start minus end, positive part).",
)

# Detector outputs
DETECTOR_VERDICT = Metric(
    "otel_leak.detector.leak",
    UNIT_RATIO,
    "gauge",
    "1 while the embedded detector declares a leak (per process, and per suspected task type), else 0.",
)
DETECTOR_CONFIDENCE = Metric(
    "otel_leak.detector.confidence",
    UNIT_RATIO,
    "gauge",
    "Confidence of the embedded detector's current verdict (0..1).",
)
DETECTOR_RETAINED_PER_CALL = Metric(
    "otel_leak.detector.retained_per_call",
    UNIT_BYTES,
    "gauge",
    "Bytes retained per call of a suspected task type, as estimated by the detector.",
)
DETECTOR_FLOOR_SLOPE = Metric(
    "otel_leak.detector.floor_slope",
    "By/s",
    "gauge",
    "Robust slope of the resident-memory floor, as estimated by the detector.",
)

# Memory-budget guard (otel_leak.guard)
GUARD_RECYCLES = Metric(
    "otel_leak.guard.recycles",
    "{recycle}",
    "counter",
    "Recycles the memory-budget guard decided, by reason, mode and outcome (recycled, or why not: dry_run, "
    "rate_limited, started_over_budget, other_recycling, unsupported).",
)
ATTR_GUARD_REASON = "otel_leak.guard.reason"  # "budget" | "hard_budget" | "time_to_limit"
ATTR_GUARD_MODE = "otel_leak.guard.mode"  # "dry-run" | "on"
ATTR_GUARD_OUTCOME = "otel_leak.guard.outcome"  # "recycled" | "dry_run" | "rate_limited" | ...
ATTR_GUARD_WHEN = "otel_leak.guard.when"  # "pre_task" | "post_task"
ATTR_GUARD_FLOOR = "otel_leak.guard.floor"  # int bytes, the floor the decision read
ATTR_GUARD_BUDGET = "otel_leak.guard.budget"  # int bytes, the budget crossed (soft or hard)
ATTR_GUARD_TIME_TO_LIMIT = "otel_leak.guard.time_to_limit"  # float seconds, when known
EVENT_GUARD = "otel_leak.guard.recycle"  # span event on the current task span, one per guard record
# Values of ATTR_GUARD_OUTCOME: the process was recycled, or why not
GUARD_RECYCLED = "recycled"
GUARD_DRY_RUN = "dry_run"  # dry-run: it would have been
GUARD_RATE_LIMITED = "rate_limited"  # the directory's hourly recycle limit is reached
GUARD_OUTCOMES = (GUARD_RECYCLED, GUARD_DRY_RUN, GUARD_RATE_LIMITED, "other_recycling", "started_over_budget",
                  "unsupported")
GUARD_METRICS = (GUARD_RECYCLES,)

PROCESS_METRICS = (
    PROCESS_MEMORY_USAGE,
    PROCESS_MEMORY_VIRTUAL,
    PROCESS_THREAD_COUNT,
    GC_COLLECTIONS,
    GC_COLLECTED,
    GC_UNCOLLECTABLE,
    MEMORY_FLOOR,
    MEMORY_LIMIT,
    HEAP_BLOCKS,
    HEAP_TRACED,
    GC_PAUSE,
)
TASK_METRICS = (TASK_COUNT, TASK_MEASURED, TASK_MEMORY_GROWTH, TASK_MEMORY_RELEASE)
DETECTOR_METRICS = (DETECTOR_VERDICT, DETECTOR_CONFIDENCE, DETECTOR_RETAINED_PER_CALL, DETECTOR_FLOOR_SLOPE)
ALL_METRICS = PROCESS_METRICS + TASK_METRICS + DETECTOR_METRICS + GUARD_METRICS

# Prometheus labels (after the collector converts resource attributes to labels)
LABEL_TASK = label(ATTR_TASK_NAME)  # otel_leak_task_name
LABEL_GC_GENERATION = label(ATTR_GC_GENERATION)  # cpython_gc_generation
LABEL_SERVICE = label(RES_SERVICE_NAME)  # service_name
LABEL_INSTANCE = label(RES_SERVICE_INSTANCE)  # service_instance_id
LABEL_VERSION = label(RES_SERVICE_VERSION)  # service_version
LABEL_PID = label(SPAN_PID)  # process_pid: prefork children share their parent's resource
LABEL_JOB = "job"  # set by the collector's prometheus exporter from service.namespace/service.name
LABEL_PROM_INSTANCE = "instance"  # the scrape target (the collector), not the worker
LABEL_GUARD_REASON = label(ATTR_GUARD_REASON)  # otel_leak_guard_reason
LABEL_GUARD_MODE = label(ATTR_GUARD_MODE)  # otel_leak_guard_mode
LABEL_GUARD_OUTCOME = label(ATTR_GUARD_OUTCOME)  # otel_leak_guard_outcome
# Alert labels
LABEL_SEVERITY = "severity"  # warning | critical
LABEL_TEAM = "team"

# --------------------------------------------------------------------------------------------------
# Settings (OTEL_PYTHON_LEAK_*); defaults and parsing live in otel_leak.config
ENV_PREFIX = "OTEL_PYTHON_LEAK_"

# --------------------------------------------------------------------------------------------------
# Messaging semantic conventions, set on the task spans otel-leak's framework integrations make
ATTR_MESSAGING_SYSTEM = "messaging.system"  # "rq", "dramatiq", "arq", "huey", "taskiq"
ATTR_MESSAGING_OPERATION_TYPE = "messaging.operation.type"  # always "process" here
ATTR_MESSAGING_OPERATION_NAME = "messaging.operation.name"
ATTR_MESSAGING_DESTINATION = "messaging.destination.name"  # the queue
ATTR_MESSAGING_MESSAGE_ID = "messaging.message.id"  # the job / message id
