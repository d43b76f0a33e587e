"""otel-leak next to the tools a team would pick instead: what each costs a worker, and what each tells.

    python3 bench/peers.py                 # 3 rounds, ~25 min on 2 cores; prints both tables, out/peers.json
    python3 bench/peers.py --quick         # smoke run of every worker and tool (its figures mean nothing)
    python3 bench/peers.py --rounds 5 --workers fast,ms --tools bare,otel-leak,memray

Workers (``bench/peers_workers/``), each healthy and leaking (one task type of the mix keeps a 16-64 KiB
buffer per call in a module-level dict, ~4 MB/s): ``fast``, CPU-bound tasks back to back (~20-30 us bodies
building small lists and strings); ``ms``, ~1 ms CPU-bound tasks; ``celery``, a Celery prefork worker (2
children) on a Redis server this script starts. A bare run first sizes the task count to ``--seconds``.

*Cost*: every round runs the bare worker, then each tool (order rotated per round), all with that count (a
run still going at 2x the time plus 1 s stops there and is marked capped); ratios are against that round's
bare run, the table shows the median over the rounds and its range: throughput, task latency p50/p99 (each
task timed in the worker, the same way under every tool), peak resident memory of the worker's largest
process. *Answer*: for each leaking worker, one longer run per tool (``--answer-seconds``), then what the
tool printed or exported, read by ``bench/peers_workers/answer.py``.

The peers live in a virtual environment made here (``--venv``, default ~/.cache/otel-leak/peers-venv), with
otel-leak installed editable from this repository; none of them is a project dependency.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKERS_DIR = os.path.join(REPO, "bench", "peers_workers")
PEERS = ["memray", "ddtrace", "pyroscope-io", "opentelemetry-sdk", "opentelemetry-instrumentation-system-metrics",
         "celery[redis]", "opentelemetry-instrumentation-celery", "protobuf", "zstandard"]
TOOLS = ["bare", "sdk-spans", "otel-leak", "otel-leak-tier2", "tracemalloc-1", "tracemalloc-25", "memray",
         "memray-pyalloc", "ddtrace", "pyroscope", "system-metrics"]
LOOP_ONLY = {"sdk-spans"}  # the Celery worker's spans come from its instrumentation, under otel-leak run
LABEL = {"sdk-spans": "SDK task spans only (reference)", "otel-leak": "otel-leak default",
         "otel-leak-tier2": "otel-leak, tier-2 window forced", "tracemalloc-1": "python -X tracemalloc=1",
         "tracemalloc-25": "python -X tracemalloc=25", "memray": "memray run",
         "memray-pyalloc": "memray run --trace-python-allocators", "ddtrace": "ddtrace profiler, memory on",
         "pyroscope": "pyroscope-io, mem_enabled", "system-metrics": "otel system-metrics instrumentation"}
DD_ENV = {  # profiler with the heap profiler on, profiles written to files, nothing sent anywhere
    "DD_PROFILING_ENABLED": "true", "DD_PROFILING_MEMORY_ENABLED": "true", "DD_TRACE_ENABLED": "false",
    "DD_INSTRUMENTATION_TELEMETRY_ENABLED": "false", "DD_REMOTE_CONFIGURATION_ENABLED": "false",
    "DD_TRACE_AGENT_URL": "http://127.0.0.1:9", "DD_DOGSTATSD_URL": "udp://127.0.0.1:9",
    "DD_PROFILING_UPLOAD_INTERVAL": "5"}  # not 60 s: Celery children exit without a final profile


def ensure_venv(venv: str) -> tuple[str, dict]:
    """The peers environment's Python (made and filled on first use) and the installed versions."""
    py = os.path.join(venv, "bin", "python")
    stamp = os.path.join(venv, "peers-requirements.txt")
    want = "\n".join(PEERS + ["-e " + REPO])
    if not (os.path.exists(stamp) and open(stamp).read() == want):
        print(f"making the peers environment in {venv} (pip, PyPI) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        subprocess.run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check", *PEERS, "-e", REPO],
                       check=True)
        with open(stamp, "w") as f:
            f.write(want)
    names = ["otel-leak", "memray", "ddtrace", "pyroscope-io", "opentelemetry-sdk",
             "opentelemetry-instrumentation-system-metrics", "celery", "opentelemetry-instrumentation-celery"]
    code = "import importlib.metadata as m, json, sys; print(json.dumps({n: m.version(n) for n in sys.argv[1:]}))"
    versions = json.loads(subprocess.run([py, "-c", code, *names], capture_output=True, text=True, check=True).stdout)
    versions["python"] = subprocess.run([py, "-c", "import platform; print(platform.python_version())"],
                                        capture_output=True, text=True).stdout.strip()
    versions["redis-server"] = subprocess.run(["redis-server", "--version"], capture_output=True,
                                              text=True).stdout.split(" v=")[-1].split()[0]
    return py, versions


def start_redis() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:  # a free port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                          "--appendonly", "no"], stdout=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return p, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    raise SystemExit("redis-server did not start")


class Sink(http.server.BaseHTTPRequestHandler):
    """Stands in for a Pyroscope server: keeps each upload's body in the current run's folder."""
    folder = None
    n = 0

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        if Sink.folder:
            os.makedirs(Sink.folder, exist_ok=True)
            Sink.n += 1
            with open(os.path.join(Sink.folder, f"{Sink.n}.bin"), "wb") as f:
                f.write(body)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def command(tool: str, worker: str, py: str, d: str) -> tuple[list[str], dict]:
    """The command prefix that runs a Python program under ``tool``, and the variables it adds."""
    bindir = os.path.dirname(py)
    env = {"OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none", "OTEL_LOGS_EXPORTER": "none"}
    if tool.startswith("tracemalloc"):
        return [py, "-X", "tracemalloc=" + tool.split("-")[1]], env
    if tool.startswith("memray"):
        pre = [os.path.join(bindir, "memray"), "run", "-q", "-o", os.path.join(d, "memray.bin")]
        pre += ["--follow-fork"] if worker == "celery" else []
        return pre + (["--trace-python-allocators"] if tool == "memray-pyalloc" else []), env
    if tool == "ddtrace":
        return [os.path.join(bindir, "ddtrace-run"), py], dict(env, **DD_ENV,
                                                               DD_PROFILING_OUTPUT_PPROF=os.path.join(d, "dd"))
    if tool.startswith("otel-leak"):
        env["OTEL_PYTHON_LEAK_REPORT_DIR"] = os.path.join(d, "report")
        if worker == "celery":
            return [os.path.join(bindir, "otel-leak"), "run", "--quiet", "--report", os.path.join(d, "report.json"),
                    "--", py], env
    return [py], env


def run(tool: str, worker: str, leak: bool, count: int, cap: float, py: str, d: str, redis_url: str,
        read: bool = False) -> dict:
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    pre, extra = command(tool, worker, py, d)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "DD_"))}
    env.update(extra, PYTHONUNBUFFERED="1", **({"PEERS_ANSWER": "1"} if read else {}))
    Sink.folder = os.path.join(d, "sink")
    if worker == "celery":
        cfg = {"redis": redis_url, "leak": leak, "tool": tool, "out": d, "count": count, "cap": cap, "prefix": pre}
        cmd = [py, os.path.join(WORKERS_DIR, "celery_drive.py"), json.dumps(cfg)]
    else:
        cmd = pre + [os.path.join(WORKERS_DIR, "loop.py"), worker, "1" if leak else "0", tool, str(count), str(cap), d]
    with open(os.path.join(d, "stderr.log"), "w") as err:
        p = subprocess.Popen(cmd, env=env, stdout=err, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(p.pid, 0)
    try:
        res = json.load(open(os.path.join(d, "result.json")))
    except OSError:
        raise SystemExit(f"{worker}/{tool} failed (status {status}): see {d}/stderr.log") from None
    res.setdefault("peak_rss_kib", usage.ru_maxrss)
    res["tasks_per_s"] = res["tasks"] / res["wall_s"]
    return res


def answer(tool: str, py: str, d: str) -> dict:
    p = subprocess.run([py, os.path.join(WORKERS_DIR, "answer.py"), tool, d], capture_output=True, text=True)
    try:
        return json.loads(p.stdout)
    except ValueError:
        return {"leaks": f"answer not read: {p.stderr.strip().splitlines()[-1:] or p.returncode}"}


METRICS = [("tasks_per_s", "throughput"), ("p50_us", "p50"), ("p99_us", "p99"), ("peak_rss_kib", "peak RSS")]


def summarise(rounds: list[dict]) -> dict:
    out = {}
    for tool in rounds[0]:
        ratios = {m: [r[tool][m] / r["bare"][m] for r in rounds if r[tool][m] is not None] for m, _ in METRICS}
        out[tool] = {m: {"median": round(statistics.median(v), 3), "min": round(min(v), 3), "max": round(max(v), 3)}
                     if v else None for m, v in ratios.items()}
        out[tool]["capped_rounds"] = sum(bool(r[tool].get("capped")) for r in rounds)
    out["bare_absolute"] = {m: round(statistics.median(r["bare"][m] for r in rounds), 1) for m, _ in METRICS}
    out["bare_absolute"]["tasks_per_run"] = rounds[0]["bare"]["tasks"]
    return out


def print_cost(key: str, s: dict) -> None:
    b = s["bare_absolute"]
    print(f"\n## cost: {key}  (bare: {b['tasks_per_s']:.0f} tasks/s, p50 {b['p50_us']:.0f} us, p99 "
          f"{b['p99_us']:.0f} us, peak {b['peak_rss_kib'] / 1024:.0f} MiB; ratios to bare, median [min, max])")
    print(f"| {'tool':38} | " + " | ".join(f"{h:21}" for _, h in METRICS) + " |")
    print("|---|" + "---|" * len(METRICS))
    for tool, row in s.items():
        if tool in ("bare", "bare_absolute"):
            continue
        cells = [f"{row[m]['median']:.3f} [{row[m]['min']:.2f}, {row[m]['max']:.2f}]" if row[m] else "no task done"
                 for m, _ in METRICS]
        note = f" (capped {row['capped_rounds']}x)" if row["capped_rounds"] else ""
        print(f"| {LABEL.get(tool, tool) + note:38} | " + " | ".join(f"{c:21}" for c in cells) + " |")


STARTED = time.time()


def show(key: str, tool: str, res: dict) -> None:
    print(f"{time.time() - STARTED:5.0f}s {key:17} {tool:15} {res['tasks']:7} tasks {res['tasks_per_s']:7.0f}/s "
          f"p50 {res['p50_us'] or 0:8.1f} us peak {res['peak_rss_kib'] / 1024:5.0f} MiB"
          + ("  capped" if res.get("capped") else ""), flush=True)


def cost(worker: str, leak: bool, tools: list[str], count: int, a, py: str, redis_url: str, doc: dict) -> None:
    """Rounds of bare then each tool (order rotated per round), the same task count in every run."""
    key = f"{worker}/{'leaking' if leak else 'healthy'}"
    others = tools[1:]
    rounds = []
    for r in range(a.rounds):
        res = {}
        for tool in ["bare"] + others[r % len(others):] + others[: r % len(others)]:
            d = os.path.join(a.keep, worker, key.split("/")[1], tool)
            res[tool] = run(tool, worker, leak, count, 2 * a.seconds + 1, py, d, redis_url)
            show(f"{key} r{r + 1}", tool, res[tool])
        rounds.append(res)
    doc["runs"][key] = {"tasks_per_run": count, "rounds": rounds}
    doc["cost"][key] = summarise(rounds)


def answers(worker: str, tools: list[str], count: int, a, py: str, redis_url: str, doc: dict) -> None:
    """One longer leaking run per tool (``--answer-seconds`` of bare work, stopped at 1.5x that), read."""
    for tool in tools:
        if tool == "otel-leak-tier2":  # a cost configuration: its answer is otel-leak's
            continue
        if tool in ("bare", "sdk-spans"):  # no memory tool: nothing to read
            doc["answer"].setdefault(worker, {})[tool] = {"leaks": "nothing about memory printed or exported",
                                                          "task": "-", "line": "-", "holder": "-", "when": "-",
                                                          "run_s": "-"}
            continue
        d = os.path.join(a.keep, worker, "answer", tool)
        res = run(tool, worker, True, count, 1.5 * a.answer_seconds, py, d, redis_url, read=True)
        show(f"{worker} answer", tool, res)
        doc["answer"].setdefault(worker, {})[tool] = dict(answer(tool, py, d), run_s=round(res["wall_s"], 1),
                                                          tasks=res["tasks"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python3 bench/peers.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, help="default 3 (--quick: 1)")
    ap.add_argument("--seconds", type=float, help="bare run length the task counts are sized to: 1.5 (--quick: 0.3)")
    ap.add_argument("--answer-seconds", type=float, help="length of the leaking runs that are read: 10 (--quick: 2)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run of every worker and tool: 1 round of 0.3 s healthy runs, 2 s answer runs")
    ap.add_argument("--workers", default="fast,ms,celery")
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--venv", default=os.path.expanduser("~/.cache/otel-leak/peers-venv"))
    ap.add_argument("--json", default=os.path.join(REPO, "out", "peers.json"))
    ap.add_argument("--keep", default=os.path.join(REPO, "out", "peers-runs"), help="folder for each run's files")
    a = ap.parse_args(argv)
    for k, full, quick in (("rounds", 3, 1), ("seconds", 1.5, 0.3), ("answer_seconds", 10.0, 2.0)):
        if getattr(a, k) is None:
            setattr(a, k, quick if a.quick else full)
    started = time.time()
    py, versions = ensure_venv(a.venv)
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()), flush=True)
    redis, redis_url = start_redis()
    sink = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    os.environ["PEERS_SINK"] = f"http://127.0.0.1:{sink.server_address[1]}"
    tools = ["bare"] + [t for t in a.tools.split(",") if t != "bare"]
    doc = {"command": "python3 bench/peers.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "versions": versions, "seconds": a.seconds, "answer_seconds": a.answer_seconds, "rounds": a.rounds,
           "cost": {}, "answer": {}, "runs": {}}
    try:
        for worker in a.workers.split(","):
            mine = [t for t in tools if not (worker == "celery" and t in LOOP_ONLY)]
            probe = 400 if a.quick else 1500
            sized = run("bare", worker, False, probe if worker == "celery" else 10**9, a.seconds, py,
                        os.path.join(a.keep, worker, "sizing"), redis_url)
            rate = sized["tasks_per_s"]
            for leak in (False,) if a.quick else (False, True):  # --quick: the answer runs are the leaking ones
                cost(worker, leak, mine, max(200, int(rate * a.seconds)), a, py, redis_url, doc)
            answers(worker, mine, max(200, int(rate * a.answer_seconds)), a, py, redis_url, doc)
    finally:
        redis.terminate()
        sink.shutdown()
    for key, s in doc["cost"].items():
        print_cost(key, s)
    for worker, rows in doc["answer"].items():
        print(f"\n## answer: {worker}/leaking (what each tool printed or exported in its answer run)")
        print("| tool | run | that it leaks | which task | which line | what holds it | when |")
        print("|---|---|---|---|---|---|---|")
        for tool, c in rows.items():
            cells = [c[k] if len(c[k]) <= 90 else c[k][:87] + "..." for k in ("leaks", "task", "line", "holder", "when")]
            print(f"| {LABEL.get(tool, tool)} | {c['run_s']} s | " + " | ".join(cells) + " |")
    doc["duration_s"] = round(time.time() - started)
    os.makedirs(os.path.dirname(a.json), exist_ok=True)
    with open(a.json, "w") as f:
        json.dump(doc, f, indent=1)
    print(f"\n{doc['duration_s']} s; wrote {a.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
