"""``otel-leak run``: run a command under auto-instrumentation with the detector on, then merge and report.

The command runs exactly as ``opentelemetry-instrument COMMAND`` would run it (its ``sitecustomize`` directory
and the working directory first on ``PYTHONPATH``), plus:

* ``OTEL_PYTHON_LEAK_DETECTOR=true`` and ``OTEL_PYTHON_LEAK_REPORT_DIR=<temp dir>``: every instrumented process,
  including the ones it forks (prefork pools), writes ``<pid>.json`` there (a REPORT_DIR set by the user is
  used instead and kept; only files of processes started by this run are merged);
* ``OTEL_PYTHON_LEAK_SETUP_SDK=true`` unless the user set it: without an SDK configurator (no
  opentelemetry-distro) otel-leak sets up the SDK's providers in the command itself;
* the interpreter's ``bin`` directory first on ``PATH`` when missing, so ``python``/``celery`` name the
  environment otel-leak is installed in (the only one where auto-instrumentation can load);
* ``OTEL_{TRACES,METRICS,LOGS}_EXPORTER=none`` for each signal with neither an exporter nor an OTLP endpoint
  configured by the user, so nothing tries to reach a collector that is not there.

While it runs, a one-line status (RSS of the whole process tree, tasks, current verdict) is pinned to the
terminal's last row (:class:`~otel_leak.report.console.BottomStatus`). Termination signals sent to
``otel-leak run`` are forwarded to the command. At exit the per-process files are merged (:mod:`otel_leak.report.merging`) and written;
when there are none, :mod:`otel_leak.report.diagnosis` says why.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

from otel_leak.report.console import BottomStatus, error, print_summary, status_line, stderr_console
from otel_leak.report.diagnosis import Process, diagnose
from otel_leak.report.html import charts_note
from otel_leak.report.merging import Loaded, RunInfo, failed_report, merge, read_process_dir, write_json
from otel_leak.supervisor.environment import build_env, resolve, sitecustomize_dir
from otel_leak.supervisor.processes import Forwarder, Tree

POLL_S = 0.25
STATUS_EVERY_S = 1.0
ORPHAN_GRACE_S = 3.0


# ------------------------------------------------------------------------------------------------------
# The run


@dataclass
class Options:
    command: list[str]
    report: str | None = None  # None: default path in the working directory
    html: str | None = None
    quiet: bool = False
    env: dict[str, str] = field(default_factory=dict)  # variables set for the command over the environment's


def default_report_path(command: list[str]) -> str:
    base = os.path.basename(command[0]) or "command"
    if base.startswith("python") and len(command) > 1 and not command[1].startswith("-"):
        base = os.path.splitext(os.path.basename(command[1]))[0] or base
    elif base.startswith("python") and len(command) > 2 and command[1] == "-m":
        base = command[2]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in base)[:40]
    return f"otel-leak-{safe}.{os.getpid()}.json"


def live_status(report: dict, rss: float | None, elapsed: float, tree_n: int) -> object:
    procs = report.get("processes") or []
    suspects = report.get("suspects") or []
    return status_line(
        elapsed=elapsed,
        processes=max(tree_n, len(procs)),
        rss=rss,
        tasks=int(report.get("tasks_observed") or 0),
        verdict=report.get("verdict") if procs else None,
        confidence=report.get("confidence") if procs else None,
        suspect=suspects[0]["task"] if suspects else None,
    )


def run(opts: Options) -> int:
    console = stderr_console()
    if not opts.command:
        error(console, "no command given: otel-leak run [--report FILE] [--html FILE] -- COMMAND [ARGS...]")
        return 2
    user_dir = os.environ.get("OTEL_PYTHON_LEAK_REPORT_DIR", "").strip()
    if user_dir:  # the user wants the per-process files: use and keep that directory
        try:
            os.makedirs(user_dir, exist_ok=True)
        except OSError as exc:
            error(console, f"cannot create OTEL_PYTHON_LEAK_REPORT_DIR={user_dir}: {exc.strerror or exc}")
            return 1
        report_dir, keep_dir = os.path.abspath(user_dir), True
    else:
        report_dir, keep_dir = tempfile.mkdtemp(prefix="otel-leak-"), False
    try:
        env = build_env({**os.environ, **opts.env}, report_dir)
        exe, problem = resolve(opts.command[0], env)
        if exe is None:
            if problem == "not_found":
                error(console, f"command not found: {opts.command[0]}")
                return 127
            error(console, f"command not executable: {opts.command[0]}")
            return 126
        if sitecustomize_dir() is None:
            error(console, "opentelemetry-instrumentation is not installed: the command runs uninstrumented")
        start = time.time()
        try:
            child = subprocess.Popen(opts.command, executable=exe, env=env)
        except PermissionError:
            error(console, f"command not executable: {opts.command[0]}")
            return 126
        except OSError as exc:
            error(console, f"cannot run {opts.command[0]}: {exc.strerror or exc}")
            return 126 if exc.errno in (8, 13) else 127

        rc, orphans, tree = _supervise(child, start, report_dir, console, opts.quiet)
        end = time.time()

        info = RunInfo(command=list(opts.command), pid=child.pid, start_unix=start, end_unix=end)
        if rc < 0:
            info.signal = _signame(-rc)
            info.exit_code = 128 - rc
        else:
            info.exit_code = rc
        if orphans:
            info.errors.append(
                f"processes still running after the command exited: {', '.join(map(str, orphans[:10]))} "
                "(their reports are as of their last periodic write)"
            )
        try:
            info.observed = tree.observed()
            loaded = fresh(read_process_dir(report_dir), start)
            if not any(item.doc for item in loaded):
                seen = [Process(list(opts.command), exe)] + [Process(s.cmdline, s.exe) for s in tree.seen.values()]
                info.errors.append(diagnose(opts.command, exe, env, seen))
            report = merge(loaded, info)
            _add_unreported(report, tree, start)
        except Exception as exc:  # noqa: BLE001 - never a traceback
            report = failed_report(info, f"merge failed: {exc.__class__.__name__}: {exc}")

        report_path = opts.report or default_report_path(opts.command)
        failed = False
        show_dir = report_dir if user_dir else None
        try:
            write_json(report, report_path)
            shown_report = report_path
        except OSError as exc:
            failed = True
            shown_report = None
            error(console, f"cannot write the report to {report_path}: {exc.strerror or exc}")
            keep_dir = True  # the per-process files are all that is left: keep them
            show_dir = report_dir
        shown_html = None
        if opts.html:
            note = charts_note()
            if note:
                error(console, note)
            try:
                from otel_leak.report.html import write_html

                write_html(report, opts.html)
                shown_html = opts.html
            except OSError as exc:
                failed = True
                error(console, f"cannot write the HTML page to {opts.html}: {exc.strerror or exc}")
            except Exception as exc:  # noqa: BLE001
                failed = True
                error(console, f"cannot render the HTML page: {exc.__class__.__name__}: {exc}")
        if not opts.quiet or failed:
            try:
                print_summary(console, report, report_path=shown_report, html_path=shown_html, kept_dir=show_dir)
            except Exception as exc:  # noqa: BLE001 - the verdict line at least
                error(console, f"verdict {report.get('verdict')} (summary failed: {exc.__class__.__name__}: {exc})")
        code = info.exit_code if info.exit_code is not None else 1
        if code == 0 and failed:
            code = 1
        return code
    finally:
        if not keep_dir:
            shutil.rmtree(report_dir, ignore_errors=True)


def _supervise(child: subprocess.Popen, start: float, report_dir: str, console, quiet: bool):
    tree = Tree(child.pid, start)
    status = None
    if not quiet and console.is_terminal:
        status = BottomStatus(console)
        if not status.start():
            status = None
    last_poll = 0.0
    current = None
    orphans: list[int] = []

    def tick() -> None:
        nonlocal last_poll, current
        now = time.time()
        if now - last_poll >= STATUS_EVERY_S:
            last_poll = now
            current = (tree.poll(), _report_from_dir(report_dir, start))
        if status is not None and current is not None:
            alive = sum(1 for s in tree.seen.values() if s.alive)
            status.update(live_status(current[1], current[0], now - start, alive))

    try:
        with Forwarder(child.pid):
            while True:
                try:
                    rc = child.wait(timeout=POLL_S)
                    break
                except subprocess.TimeoutExpired:
                    pass
                tick()
            # The command is gone; processes it forked may still be finishing (writing their final files).
            deadline = time.time() + ORPHAN_GRACE_S
            tree.poll()
            while tree.alive_descendants() and time.time() < deadline:
                time.sleep(0.1)
                tree.poll()
            orphans = tree.alive_descendants()
    finally:
        if status is not None:
            status.stop()
    return rc, orphans, tree


def fresh(loaded: list[Loaded], start: float) -> list[Loaded]:
    """Only this run's files: a kept directory may hold reports of earlier runs (processes that started
    before this run did)."""
    out = []
    for item in loaded:
        t = item.doc.get("start_unix") if item.doc else None
        if isinstance(t, (int, float)) and t < start - 1.0:
            continue
        out.append(item)
    return out


def _report_from_dir(report_dir: str, start: float) -> dict:
    try:
        return merge(fresh(read_process_dir(report_dir), start), RunInfo())
    except Exception:  # noqa: BLE001
        return {}


SHORT_LIVED_S = 3.0


def _add_unreported(report: dict, tree: Tree, start: float) -> None:
    """Python processes the parent saw that never wrote a report (killed before their first write).

    Not those that lived under SHORT_LIVED_S as children of a process that did report: a work horse forked
    per job (RQ) or a spawned helper runs without a report of its own by design, and its parent's report
    covers it."""
    reported = {p.get("pid") for p in report.get("processes") or []}
    for pid, s in sorted(tree.seen.items()):
        if pid in reported or not s.python:
            continue
        if s.ppid in reported and s.last_seen_unix - s.first_seen_unix < SHORT_LIVED_S:
            continue
        report["processes"].append(
            {
                "pid": pid,
                "ppid": s.ppid,
                "argv": s.cmdline,
                "role": "command" if pid == tree.root_pid else "child",
                "verdict": "inconclusive",
                "confidence": 0.0,
                "detected_at_s": None,
                "start_offset_s": round(s.first_seen_unix - start, 3),
                "tasks_observed": 0,
                "memory": {
                    "kind": None,
                    "rss_start_bytes": s.rss[0] if s.rss else None,
                    "rss_end_bytes": s.rss[-1] if s.rss else None,
                    "floor_slope_bytes_per_s": None,
                },
                "suspects": [],
                "allocation_sites": [],
                "retention_paths": [],
                "reported": False,
                "series": {"t_s": list(s.t), "rss": list(s.rss)},
                "note": "wrote no report; memory as sampled by otel-leak run",
            }
        )
        report["incomplete"] = True


def _signame(n: int) -> str:
    try:
        return signal.Signals(n).name
    except ValueError:
        return f"signal {n}"
