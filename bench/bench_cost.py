"""What a CPU-bound worker pays with everything on: task loop time with otel-leak against bare, same run.

    .venv/bin/python bench/bench_cost.py                    # ~6 min; prints a table, writes out/bench_cost.json
    .venv/bin/python bench/bench_cost.py --pairs 3 --seconds 2 --bodies alloc   # a quick look

Each measurement is a fresh process that sets up the OpenTelemetry SDK (a tracer and a meter provider, no
exporter) and runs task spans back to back (``start_as_current_span(kind=CONSUMER)`` around the body), as a
worker's own loop would, for a fixed number of tasks after a warm-up. In the *otel-leak* process,
``otel_leak.instrument()`` is called first: span processor, sampler thread, detector (tier 1 always;
tiers 2 and 3 only on suspicion, which healthy bodies never raise), process metrics, GC callbacks: all of
it runs during the timed loop and takes the interpreter lock when it wants it. The *bare* process runs the
same loop without it. Pairs alternate (bare, otel-leak, bare, ...), so drift of the machine hits both; the
figure is the median over the pairs of the per-pair ratio of loop times, with its range.

Bodies (CPU-bound, nothing waits):
  empty   an empty task span (the per-span cost; a bare SDK span is the unit)
  alloc   builds a list of 50 short strings
  cpu25   a pure-Python arithmetic loop of 300 steps (~25 us on this machine kind)
  cpu     a pure-Python arithmetic loop of 7,000 steps (~0.6 ms)
Every child runs with PYTHONHASHSEED=0, so a pair differs in otel-leak only, not in hash layout. The
otel-leak child also reports its other threads' CPU time over the loop (the sampler's and the detector's
work, read from /proc/self/task): at ~1 ms tasks that share is the background cost, measured directly,
where the ratio's process-to-process spread is wider than the cost.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

BODIES = {"empty": ("none", 0), "alloc": ("strings", 50), "cpu25": ("loop", 300), "cpu": ("loop", 7000)}

CHILD = r"""
import json, os, sys, time
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind

kind, seconds, leak = sys.argv[1], float(sys.argv[2]), sys.argv[3] == "1"
tp, mp = TracerProvider(), MeterProvider()
trace.set_tracer_provider(tp)
from opentelemetry import metrics
metrics.set_meter_provider(mp)
if leak:
    import otel_leak
    otel_leak.instrument(tracer_provider=tp, meter_provider=mp)
tracer = tp.get_tracer("bench")
n = int(sys.argv[4])

def run_body():
    if kind == "none":
        return None
    if kind == "strings":
        return [str(i) for i in range(n)]
    s = 0
    for i in range(n):
        s += i * i % 7
    return s

def loop(count):
    for _ in range(count):
        with tracer.start_as_current_span("task", kind=SpanKind.CONSUMER, attributes={"messaging.operation.type": "process"}):
            run_body()

# warm up, and size the timed loop to about `seconds`
t0 = time.perf_counter(); k = 0
while time.perf_counter() - t0 < 0.5:
    loop(100); k += 100
per = (time.perf_counter() - t0) / k
count = max(1000, int(seconds / per))
if len(sys.argv) > 5:
    count = int(sys.argv[5])
def other_threads_cpu():
    # CPU seconds of this process's threads other than the main one (the sampler, the detector, tier 2)
    total, me = 0.0, str(os.getpid())
    for tid in os.listdir("/proc/self/task"):
        if tid == me:
            continue
        try:
            fields = open(f"/proc/self/task/{tid}/stat").read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            pass
    return total

bg0 = other_threads_cpu()
cpu0, t0 = time.process_time(), time.perf_counter()
loop(count)
wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
background = other_threads_cpu() - bg0
share = None
if leak:  # the share of task spans the read budget measured in the timed loop
    from otel_leak.instrumentor import LeakInstrumentor
    st = LeakInstrumentor.runtime.processor.stats
    share = sum(st.measured.values()) / max(1, sum(st.counts.values()))
print("RESULT " + json.dumps({"count": count, "wall_s": wall, "cpu_s": cpu, "per_task_us": wall / count * 1e6,
                              "measured_share": share, "background_cpu_s": background}))
"""


def run_child(body: str, seconds: float, leak: bool, count: int | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(OTEL_TRACES_EXPORTER="none", OTEL_METRICS_EXPORTER="none", OTEL_LOGS_EXPORTER="none",
               PYTHONHASHSEED="0")
    kind, n = BODIES[body]
    args = [sys.executable, "-c", CHILD, kind, str(seconds), "1" if leak else "0", str(n)]
    if count is not None:
        args.append(str(count))
    p = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    if p.returncode != 0:
        raise SystemExit(f"bench child failed ({body}, leak={leak}): {p.stderr[-2000:]}")
    line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line.split(" ", 1)[1])


def measure(body: str, pairs: int, seconds: float) -> dict:
    sized = run_child(body, seconds, leak=False)  # one bare run sizes the loop: every run does the same count
    count = sized["count"]
    rows = []
    for _ in range(pairs):
        bare = run_child(body, seconds, leak=False, count=count)
        leak = run_child(body, seconds, leak=True, count=count)
        rows.append((bare, leak))
    ratios = [lk["wall_s"] / b["wall_s"] for b, lk in rows]
    cpu_ratios = [lk["cpu_s"] / b["cpu_s"] for b, lk in rows]
    bare_us = statistics.median(b["per_task_us"] for b, _ in rows)
    leak_us = statistics.median(lk["per_task_us"] for _, lk in rows)
    return {
        "body": body, "tasks_per_run": count, "pairs": pairs,
        "bare_us": round(bare_us, 2), "otel_leak_us": round(leak_us, 2),
        "added_us": round(statistics.median(lk["per_task_us"] - b["per_task_us"] for b, lk in rows), 2),
        "ratio": round(statistics.median(ratios), 4), "ratio_min": round(min(ratios), 4),
        "ratio_max": round(max(ratios), 4), "cpu_ratio": round(statistics.median(cpu_ratios), 4),
        "measured_share": round(statistics.median(lk["measured_share"] for _, lk in rows), 4),
        # the background threads' CPU over the loop's wall time: what the sampler and the detector took,
        # measured directly (the process-to-process spread of the ratio is far wider at ~1 ms tasks)
        "background_share": round(statistics.median(lk["background_cpu_s"] / lk["wall_s"] for _, lk in rows), 5),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python bench/bench_cost.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=7)
    ap.add_argument("--seconds", type=float, default=4.0, help="length of each timed loop")
    ap.add_argument("--bodies", default=",".join(BODIES))
    ap.add_argument("--json", default="out/bench_cost.json")
    a = ap.parse_args(argv)
    out = []
    started = time.time()
    for body in a.bodies.split(","):
        out.append(measure(body, a.pairs, a.seconds))
        r = out[-1]
        print(f"{r['body']:6} bare {r['bare_us']:9.2f} us/task  otel-leak {r['otel_leak_us']:9.2f}  "
              f"added {r['added_us']:7.2f} us  ratio {r['ratio']:.4f} [{r['ratio_min']:.4f}, {r['ratio_max']:.4f}]  "
              f"cpu ratio {r['cpu_ratio']:.4f}  measured {100 * r['measured_share']:.1f} %  "
              f"background {100 * r['background_share']:.2f} %", flush=True)
    import opentelemetry.sdk.version as v

    doc = {"command": "python bench/bench_cost.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "python": sys.version.split()[0], "sdk": v.__version__, "duration_s": round(time.time() - started),
           "results": out}
    os.makedirs(os.path.dirname(a.json) or ".", exist_ok=True)
    with open(a.json, "w") as f:
        json.dump(doc, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
