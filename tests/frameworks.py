"""What every framework's tests check, written once (tests/test_fw_*.py use these).

* :func:`check_task_spans`: spans exported by a worker under the real ``opentelemetry-instrument`` (console
  exporters, :func:`tests.conftest.instrumented_env`) carry the memory attributes, the messaging attributes
  and the framework's own job name as identity; the per-task histograms' exemplars point at exported spans.
* :class:`OtelLeakRun`: a worker under ``otel-leak run --report`` with a per-process report directory;
  ``stop()`` sends SIGTERM as an operator would, ``report()`` reads the merged report.
* :func:`check_leak_report` / :func:`check_healthy_report`: the verdict, the leaking task, its allocation site.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from otel_leak import names
from tests.conftest import ROOT, parse_console_exports

OTEL_LEAK = str(Path(sys.executable).parent / "otel-leak")
MEMORY_ATTRIBUTES = {names.SPAN_RSS_DELTA, names.SPAN_RSS_END, names.SPAN_GC_COLLECTIONS, names.SPAN_GC_PAUSE}



# Where every span is checked: 33 MiB kept per call is above glibc's largest mmap threshold (it rises, up
# to 32 MiB, each time a larger mmap'd block is freed), so it is always fresh pages, all written: each such
# job raises resident memory and the growth histogram gets exemplars. (1 MiB came from free heap pages
# already resident once the threshold had risen: RSS did not move and no exemplar was made.)
BIG_LEAK = str(33 << 20)

def line_of(path: Path, needle: str) -> int:
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        if needle in line:
            return i
    raise AssertionError(f"{needle!r} not in {path}")


def check_task_spans(text: str, system: str, expected: dict[str, int], queue: str | None = None) -> list[dict]:
    """The task spans in console-exporter output ``text``: exactly ``expected`` (task name -> count), each
    measured and carrying the messaging attributes; every exemplar of the per-task growth histogram names an
    exported span of its task. Returns the task spans."""
    spans, points = parse_console_exports(text)
    tasks = [s for s in spans if names.SPAN_RSS_DELTA in s["attributes"]]
    counts: dict[str, int] = {}
    for s in tasks:
        counts[s["attributes"][names.SPAN_TASK_NAME]] = counts.get(s["attributes"][names.SPAN_TASK_NAME], 0) + 1
    assert counts == expected, (counts, text[-3000:])
    for s in tasks:
        a = s["attributes"]
        assert MEMORY_ATTRIBUTES <= set(a), a
        assert a[names.SPAN_RSS_END] > 0
        assert s["kind"] in ("SpanKind.CONSUMER", "SpanKind.SERVER"), s["kind"]
        if system:
            assert a[names.ATTR_MESSAGING_SYSTEM] == system, a
            assert a[names.ATTR_MESSAGING_OPERATION_TYPE] == "process", a
        if queue is not None:
            assert a[names.ATTR_MESSAGING_DESTINATION] == queue, a
    by_task: dict[str, set[int]] = {}
    for s in tasks:
        by_task.setdefault(s["attributes"][names.SPAN_TASK_NAME], set()).add(int(s["context"]["trace_id"], 16))
    exemplars = 0
    for p in points:
        if p["metric"] != names.TASK_MEMORY_GROWTH.name:
            continue
        for e in p.get("exemplars", []):
            assert e["trace_id"] in by_task[p["attributes"][names.ATTR_TASK_NAME]], (e, p["attributes"])
            exemplars += 1
    assert exemplars, "no exemplar on the per-task growth histogram"
    return tasks


def process_files(proc_dir: Path) -> dict[int, dict]:
    """The per-process report files in ``proc_dir`` by pid (a file being rewritten is skipped)."""
    out = {}
    for f in proc_dir.glob("*.json"):
        try:
            doc = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        out[doc["pid"]] = doc
    return out


class OtelLeakRun:
    """``otel-leak run --report R -- *command`` in ``cwd``, output to ``log``; each process's file in ``procs``."""

    def __init__(self, tmp_path: Path, command: list[str], cwd: Path = ROOT, env: dict | None = None,
                 html: bool = False, otel_leak: str = OTEL_LEAK, base_env: dict | None = None) -> None:
        self.dir = Path(tmp_path)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.procs = self.dir / "procs"
        self.report_path = self.dir / "report.json"
        self.html_path = self.dir / "report.html" if html else None
        self.log_path = self.dir / "worker.log"
        e = {k: v for k, v in (os.environ if base_env is None else base_env).items() if not k.startswith("OTEL_")}
        e.update(PYTHONUNBUFFERED="1", OTEL_PYTHON_LEAK_REPORT_DIR=str(self.procs))
        e.update(env or {})
        args = [otel_leak, "run", "--report", str(self.report_path)]
        if self.html_path:
            args += ["--html", str(self.html_path)]
        self._log = open(self.log_path, "w")
        # a session of its own: close() can kill what it started, also a worker otel-leak run left behind
        self.proc = subprocess.Popen(args + ["--", *command], cwd=cwd, env=e, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def process_files(self) -> dict[int, dict]:
        return process_files(self.procs)

    def declared(self, task: str) -> bool:
        """Whether some process has declared a leak with ``task`` as its top suspect."""
        return any(d.get("verdict") == "leak" and d.get("suspects") and d["suspects"][0]["task"] == task
                   for d in self.process_files().values())

    def stop(self, settle_s: float = 2.5, timeout: float = 90) -> int:
        """One more periodic report write (pool children may leave through ``os._exit``), then SIGTERM to
        ``otel-leak run`` (forwarded to the worker); its exit code."""
        time.sleep(settle_s)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.close()

    def close(self) -> None:
        """Everything the run started is gone: ``otel-leak run`` and any worker process still in its group
        (a failed test must not leave a worker serving the next test's Redis database)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self.proc.poll() is None:
            self.proc.wait(30)
        self._log.close()

    def log(self) -> str:
        return self.log_path.read_text()

    def report(self) -> dict:
        from otel_leak.report import validate_report

        r = json.loads(self.report_path.read_text())
        assert validate_report(r) == [], validate_report(r)
        return r


def check_leak_report(r: dict, leaky: str, app_file: Path, leak_line: str, log: str = "") -> None:
    """The merged report declares a leak, charges it to ``leaky`` and finds the leaking line of the app."""
    assert r["verdict"] == "leak", ({p["pid"]: p["verdict"] for p in r["processes"]}, log[-2000:])
    assert r["suspects"] and r["suspects"][0]["task"] == leaky, r["suspects"]
    top3 = [(Path(s["file"]).name, s["line"]) for s in r["allocation_sites"][:3]]
    assert (Path(app_file).name, line_of(app_file, leak_line)) in top3, top3


def check_healthy_report(r: dict, log: str = "") -> None:
    assert r["verdict"] == "no_leak", ({p["pid"]: (p["verdict"], p["tasks_observed"]) for p in r["processes"]},
                                       log[-2000:])
    assert r["suspects"] == []


@contextlib.contextmanager
def sdk_env(monkeypatch, instrumentor=None):
    """The real SDK and task span processor (:class:`tests.test_processor.Env`) with the integrations' tracer
    on it, and ``instrumentor`` (if given) on for the block."""
    from otel_leak.integrations import _base
    from tests.test_processor import Env

    e = Env(monkeypatch)
    monkeypatch.setattr(_base, "_tracer", e.tp.get_tracer("otel-leak-test"))
    if instrumentor is not None:
        instrumentor.instrument()
    try:
        yield e
    finally:
        if instrumentor is not None:
            instrumentor.uninstrument()
        e.close()


def refused_then_served(docs, task: str, pids: set, refusals: int = 2) -> dict:
    """The process files of a run whose processes start over the hard budget, with the hourly limit at
    ``refusals``: that many processes left before running any task (one entry each: recycled before
    ``task``, over the hard budget, and no task of theirs returned a pid), then one served them all (its
    file is returned)."""
    docs = list(docs)
    refused = [d for d in docs if any(e["outcome"] == "recycled" for e in (d.get("guard") or {}).get("entries", []))]
    assert len(refused) == refusals, [d.get("guard") for d in docs]
    for d in refused:
        (e,) = [e for e in d["guard"]["entries"] if e["outcome"] == "recycled"]
        assert (e["when"], e["reason"], e["task"]) == ("pre_task", "hard_budget", task), e
        assert d["tasks_observed"] == 0 and d["pid"] not in pids, d
    (served,) = [d for d in docs if d.get("tasks_observed")]
    assert pids == {served["pid"]}
    assert any(e["outcome"] == "rate_limited" for e in served["guard"]["entries"]), served["guard"]
    return served
