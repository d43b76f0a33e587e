"""What a tool told about the leak in one run: ``answer.py TOOL RUNDIR`` prints one JSON object.

Keys ``leaks``, ``task``, ``line``, ``holder``, ``when``: each a short text read from what the tool printed
or exported in RUNDIR (otel-leak's report, the harness's tracemalloc diff, memray's capture file read with
memray's own reader, the pprof files ddtrace wrote, the profiles pyroscope-io uploaded to the local sink,
the metric points the console exporter wrote); "not told" where the tool gives no such answer; ``raw``
keeps what the cells were read from.
"""

from __future__ import annotations

import glob
import json
import os
import sys

NO = "not told"
MIB = 1024 * 1024


def otel_leak(d: str) -> dict:
    files = glob.glob(os.path.join(d, "report.json")) or glob.glob(os.path.join(d, "report", "*.json"))
    if not files:
        return {"leaks": "no report written"}
    r = json.load(open(files[0]))
    sus, sites, paths = r.get("suspects") or [], r.get("allocation_sites") or [], r.get("retention_paths") or []
    slope = (r.get("memory") or {}).get("floor_slope_bytes_per_s") or 0
    at = r.get("detected_at_s")
    return {
        "leaks": f"{r['verdict']} (confidence {r.get('confidence')}, floor {slope / MIB:+.1f} MiB/s)",
        "task": f"{sus[0]['task']} ({sus[0]['retained_bytes_per_call'] / 1024:.0f} KiB/call)" if sus else NO,
        "line": f"{os.path.basename(sites[0]['file'])}:{sites[0]['line']}" if sites else NO,
        "holder": paths[0]["text"] if paths else NO,
        "when": f"declared {at:.1f} s after start" if at is not None
        else f"not declared in the run's {r.get('duration_s', 0):.0f} s",
        "raw": {k: r.get(k) for k in ("verdict", "confidence", "detected_at_s", "suspects", "allocation_sites",
                                      "retention_paths", "duration_s")},
    }


def tracemalloc(d: str) -> dict:
    docs = [json.load(open(f)) for f in glob.glob(os.path.join(d, "tracemalloc.*.json"))]
    docs = [x for x in docs if x["top"]]
    if not docs:
        return {"leaks": "no diff written"}
    doc = max(docs, key=lambda x: x["top"][0]["size_diff"])
    top = doc["top"][0]
    return {"leaks": f"no verdict; the harness's diff: {top['size_diff'] / MIB:+.1f} MiB at its top entry",
            "task": NO + " (frames are file:line only)", "line": os.path.basename(top["traceback"][-1]),
            "holder": NO, "when": "at exit, when the worker's own code diffs two snapshots", "raw": doc}


def _workers(files: list[str], d: str) -> tuple[list[str], str]:
    """A prefork worker's children's files, when they wrote some (the main process only forks them)."""
    try:
        main = str(json.load(open(os.path.join(d, "result.json"))).get("main_pid"))
    except (OSError, ValueError):
        return files, ""
    children = [f for f in files if main not in os.path.basename(f).split(".")]
    if children or not files:
        return children, ""
    return files, " (the main process's: the children wrote none)"


def memray(d: str) -> dict:
    from memray import FileReader

    best = None
    files = glob.glob(os.path.join(d, "memray.bin*"))
    for f in [f for f in files if not f.endswith(".bin")] or files:  # --follow-fork: one file per child
        reader = FileReader(f)
        by: dict[tuple, int] = {}
        for rec in reader.get_leaked_allocation_records(merge_threads=True):
            stack = rec.stack_trace()
            key = stack[0] if stack else ("?", "?", 0)
            by[key] = by.get(key, 0) + rec.size
        total = sum(by.values())
        if best is None or total > best[0]:
            best = total, reader.metadata.peak_memory, sorted(by.items(), key=lambda kv: -kv[1])[:3]
    if best is None:
        return {"leaks": "no capture file"}
    total, peak, top = best
    (fn, file, line), size = top[0] if top else (("?", "?", 0), 0)
    return {"leaks": f"no verdict; its leaks view: {total / MIB:.1f} MiB unfreed at exit (peak {peak / MIB:.0f} MiB)",
            "task": f"{fn} (function of the top unfreed frame)", "line": f"{os.path.basename(file)}:{line}",
            "holder": NO, "when": "after exit, reading the capture file",
            "raw": {"unfreed_bytes": total, "peak_bytes": peak,
                    "top": [[f"{k[0]} {k[1]}:{k[2]}", v] for k, v in top]}}


def _profile_answer(tops: dict, live: str, when: str) -> dict:
    top = tops.get(live) or []
    if not top:
        return {"leaks": f"no {live} samples exported", "when": when, "raw": tops}
    value, frame = top[0]
    fn, where = frame.split(" ", 1)
    return {"leaks": f"no verdict; a live-heap profile ({live}: {sum(v for v, _ in top) / MIB:.1f} MiB in its top "
                     f"frames)", "task": f"{fn} (leaf function of the top live-heap frame)",
            "line": os.path.basename(where), "holder": NO, "when": when, "raw": tops}


def ddtrace(d: str) -> dict:
    import pprof

    files, note = _workers(glob.glob(os.path.join(d, "dd.*.pprof")), d)
    if not files:
        return {"leaks": "no profile written"}
    live = "heap-space/bytes"
    tops = max((pprof.top_frames(open(f, "rb").read()) for f in files),
               key=lambda t: sum(v for v, _ in t.get(live) or []))  # the process with the most live heap
    out = _profile_answer(tops, live, "in the profile written every 5 s here (60 s by default) and at exit")
    out["line"] = out.get("line", NO) + note
    return out


def pyroscope(d: str) -> dict:
    import pprof

    last = None
    for f in sorted(glob.glob(os.path.join(d, "sink", "*.bin")), key=lambda p: int(os.path.basename(p)[:-4])):
        for labels, raw in pprof.push_profiles(open(f, "rb").read()):
            if labels.get("__name__") == "memory":
                last = raw
    if last is None:
        return {"leaks": "no memory profile uploaded"}
    return _profile_answer(pprof.top_frames(last), "inuse_space/bytes",
                           "in the profile uploaded at shutdown (and every 10 s)")


def system_metrics(d: str) -> dict:
    points = []
    for f in glob.glob(os.path.join(d, "metrics.*.jsonl")):
        for ln in open(f):
            for rm in json.loads(ln)["resource_metrics"]:
                for sm in rm["scope_metrics"]:
                    for m in sm["metrics"]:
                        if m["name"] == "process.memory.usage":
                            points += [(p["time_unix_nano"], p["value"]) for p in m["data"]["data_points"]]
    if not points:
        return {"leaks": "no process.memory.usage point exported"}
    points.sort()
    return {"leaks": f"no verdict; process.memory.usage {points[0][1] / MIB:.0f} -> {points[-1][1] / MIB:.0f} MiB "
                     f"over {len(points)} points", "task": NO, "line": NO, "holder": NO,
            "when": "a point every export interval", "raw": {"points": len(points)}}


def main() -> None:
    tool, d = sys.argv[1], sys.argv[2]
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    base = tool.split("-")[0] if tool.startswith(("tracemalloc", "memray")) else tool
    fn = {"otel": otel_leak, "otel-leak": otel_leak, "otel-leak-tier2": otel_leak, "tracemalloc": tracemalloc,
          "memray": memray, "ddtrace": ddtrace, "pyroscope": pyroscope, "system-metrics": system_metrics}.get(base)
    out = {"leaks": NO + " (nothing about memory printed or exported)"} if fn is None else fn(d)
    try:
        if json.load(open(os.path.join(d, "result.json"))).get("killed"):
            out["leaks"] += "; the worker was killed, its warm shutdown too long"
    except (OSError, ValueError):
        pass
    for k in ("leaks", "task", "line", "holder", "when"):
        out.setdefault(k, NO)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
