"""The detector's settings (``OTEL_PYTHON_LEAK_*``), declared once through :func:`otel_leak.config.setting`."""

from __future__ import annotations

from otel_leak.config import setting

DETECTOR = setting(
    "DETECTOR",
    "bool",
    True,
    "Run the embedded leak detector (tier 1 trend check always; tier 2/3 only on suspicion).",
)
REPORT_DIR = setting(
    "REPORT_DIR",
    "str",
    "",
    "Directory where each process writes its report <pid>.json (schema otel-leak/process/v1) every few "
    "seconds and at exit; empty: no file.",
)
REPORT_INTERVAL = setting(
    "REPORT_INTERVAL",
    "float",
    2.0,
    "Seconds between rewrites of the per-process report file.",
    minimum=0.1,
    maximum=3600,
)
MIN_GROWTH = setting(
    "DETECTOR_MIN_GROWTH",
    "int",
    2 * 1024 * 1024,
    "Bytes the resident-memory floor must have grown over the analysed windows before a leak is declared.",
    minimum=0,
)
MIN_WINDOW_SAMPLES = setting(
    "DETECTOR_WINDOW_SAMPLES",
    "int",
    3,
    "Minimum samples per detector window (windows also wait for DETECTOR_WINDOW_TASKS tasks).",
    minimum=2,
    maximum=10_000,
)
MIN_WINDOW_TASKS = setting(
    "DETECTOR_WINDOW_TASKS",
    "int",
    12,
    "Minimum completed tasks per detector window: windows stretch for slow workers.",
    minimum=1,
    maximum=10_000_000,
)
IDLE_WINDOW = setting(
    "DETECTOR_IDLE_WINDOW",
    "float",
    120.0,
    "A window closes after this many seconds even without enough tasks (idle or uninstrumented workers).",
    minimum=1,
)
MIN_WINDOWS = setting(
    "DETECTOR_MIN_WINDOWS",
    "int",
    5,
    "Windows (after the first, which is start-up) a trend must span before it can be called a leak.",
    minimum=3,
    maximum=1000,
)
TIER2 = setting(
    "DETECTOR_TIER2",
    "bool",
    True,
    "On suspicion, trace Python allocations with tracemalloc for a short bounded window.",
)
TIER2_WINDOW = setting(
    "DETECTOR_TIER2_WINDOW",
    "float",
    1.0,
    "Tracemalloc window length in seconds, for a window that has seen 90 tasks by then (one that has not goes "
    "on, up to 4x this or 4 s).",
    minimum=0.1,
    maximum=600,
)
TIER2_SHARE = setting(
    "DETECTOR_TIER2_SHARE",
    "float",
    0.03,
    "Cap on the share of the process's run time spent in tier 2 (tracemalloc on, snapshots).",
    minimum=0.0,
    maximum=1.0,
)
TIER2_FRAMES = setting(
    "DETECTOR_TIER2_FRAMES",
    "int",
    32,
    "Frames kept per tracemalloc traceback (deep enough to reach the task's own code).",
    minimum=1,
    maximum=500,
)
TIER3 = setting(
    "DETECTOR_TIER3",
    "bool",
    True,
    "After tier 2, look for what keeps the top site's objects alive (a bounded walk over references from "
    "module globals and the other threads' stacks).",
)
TIER3_BUDGET = setting(
    "DETECTOR_TIER3_BUDGET",
    "float",
    1.0,
    "Seconds tier 3 may spend walking references (once per declared leak, on a background thread sharing the "
    "interpreter with the worker's).",
    minimum=0.0,
    maximum=60,
)
FULL_GC_INTERVAL = setting(
    "DETECTOR_FULL_GC_INTERVAL",
    "float",
    60.0,
    "Least seconds between two full garbage collections the detector forces to confirm a suspected leak "
    "(each also waits for 1000x its pause; one is forced only when none ran since the growth began).",
    minimum=1.0,
    maximum=86400,
)
