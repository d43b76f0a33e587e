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

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

from otel_leak import config
from otel_leak.report.console import BottomStatus, error, print_summary, status_line, stderr_console
from otel_leak.report.diagnosis import Process, diagnose
from otel_leak.report.merging import Loaded, RunInfo, failed_report, merge, read_process_dir, write_json

POLL_S = 0.25
STATUS_EVERY_S = 1.0
ORPHAN_GRACE_S = 3.0
SIGNALS = ("TRACES", "METRICS", "LOGS")


# ------------------------------------------------------------------------------------------------------
# Environment


def sitecustomize_dir() -> str | None:
    """Directory of opentelemetry-instrument's ``sitecustomize`` (what it prepends to PYTHONPATH)."""
    try:
        spec = importlib.util.find_spec("opentelemetry.instrumentation.auto_instrumentation")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def exporter_env(environ: dict[str, str]) -> dict[str, str]:
    """``OTEL_<SIGNAL>_EXPORTER=none`` for every signal the user configured nowhere."""
    generic = any(environ.get(k) for k in ("OTEL_EXPORTER_OTLP_ENDPOINT",))
    out = {}
    for sig in SIGNALS:
        if environ.get(f"OTEL_{sig}_EXPORTER"):
            continue
        if generic or environ.get(f"OTEL_EXPORTER_OTLP_{sig}_ENDPOINT"):
            continue
        out[f"OTEL_{sig}_EXPORTER"] = "none"
    return out


def build_env(environ: dict[str, str], report_dir: str, cwd: str | None = None) -> dict[str, str]:
    env = dict(environ)
    env["OTEL_PYTHON_LEAK_DETECTOR"] = "true"
    env["OTEL_PYTHON_LEAK_REPORT_DIR"] = report_dir
    if not env.get(config.SETUP_SDK.env, "").strip():
        env[config.SETUP_SDK.env] = "true"
    env.update(exporter_env(environ))
    # Same PYTHONPATH manipulation as opentelemetry-instrument's run().
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    cwd = cwd or os.getcwd()
    if cwd not in parts:
        parts.insert(0, cwd)
    site = sitecustomize_dir()
    if site:
        parts = [site] + [p for p in parts if p != site]
    env["PYTHONPATH"] = os.pathsep.join(parts)
    bindir = os.path.dirname(sys.executable)
    path = env.get("PATH", os.defpath).split(os.pathsep)
    if bindir and bindir not in path:
        env["PATH"] = os.pathsep.join([bindir] + path)
    return env


def resolve(command: str, env: dict[str, str]) -> tuple[str | None, str | None]:
    """(path, problem): the executable for ``command`` under the child's PATH, or why there is none."""
    if os.sep in command:
        if not os.path.exists(command):
            return None, "not_found"
        if os.path.isdir(command) or not os.access(command, os.X_OK):
            return None, "not_executable"
        return command, None
    found = shutil.which(command, path=env.get("PATH", os.defpath))
    if found is None:
        return None, "not_found"
    return found, None


# ------------------------------------------------------------------------------------------------------
# Watching the process tree (what the parent sees, independent of the detector's files)


@dataclass
class Seen:
    pid: int
    first_seen_unix: float
    last_seen_unix: float
    rss_max_bytes: int = 0
    python: bool = False
    cmdline: list[str] = field(default_factory=list)
    exe: str | None = None
    ppid: int | None = None
    alive: bool = True
    t: list[float] = field(default_factory=list)
    rss: list[int] = field(default_factory=list)


class Tree:
    """Polls the command's process tree with psutil: live RSS, and a record of every process seen."""

    MAX_POINTS = 400

    def __init__(self, root_pid: int, start: float) -> None:
        self.root_pid = root_pid
        self.start = start
        self.seen: dict[int, Seen] = {}
        self._procs: dict[int, object] = {}
        self._py = _real(sys.executable)
        try:
            import psutil

            self._psutil = psutil
            self._root = psutil.Process(root_pid)
        except Exception:
            self._psutil = None
            self._root = None

    def poll(self) -> float | None:
        """Sum of RSS over the live tree (None if unknown)."""
        ps = self._psutil
        if ps is None:
            return None
        now = time.time()
        members = []
        try:
            members = [self._root] + self._root.children(recursive=True)
        except Exception:
            members = []
        # orphans: processes seen before whose parent died are no longer children of root
        known = {p.pid for p in members}
        for pid, proc in list(self._procs.items()):
            if pid not in known and self.seen[pid].alive:
                members.append(proc)
        total = 0
        alive_now = set()
        for proc in members:
            try:
                if not proc.is_running() or proc.status() == ps.STATUS_ZOMBIE:
                    continue
                rss = proc.memory_info().rss
            except Exception:
                continue
            pid = proc.pid
            alive_now.add(pid)
            total += rss
            s = self.seen.get(pid)
            if s is None:
                s = Seen(pid, now, now)
                try:
                    s.cmdline = proc.cmdline()[:20]
                    s.ppid = proc.ppid()
                    s.exe = _real(proc.exe())
                    s.python = s.exe == self._py
                except Exception:
                    pass
                self.seen[pid] = s
                self._procs[pid] = proc
            s.last_seen_unix = now
            s.rss_max_bytes = max(s.rss_max_bytes, rss)
            s.t.append(round(now - s.first_seen_unix, 3))
            s.rss.append(rss)
            if len(s.t) > self.MAX_POINTS:  # keep it bounded: drop every other point
                s.t, s.rss = s.t[::2], s.rss[::2]
        for pid, s in self.seen.items():
            s.alive = pid in alive_now
        return float(total)

    def alive_descendants(self) -> list[int]:
        return [pid for pid, s in self.seen.items() if s.alive and pid != self.root_pid]

    def observed(self) -> dict[int, dict]:
        return {
            pid: {
                "first_seen_unix": s.first_seen_unix,
                "last_seen_unix": s.last_seen_unix,
                "rss_max_bytes": s.rss_max_bytes,
                "alive": s.alive,
            }
            for pid, s in self.seen.items()
        }


def _real(path: str) -> str:
    try:
        return os.path.realpath(path)
    except OSError:
        return path


# ------------------------------------------------------------------------------------------------------
# Signals


class Forwarder:
    """Forward termination signals to the command; Ctrl-C from a terminal already reaches it."""

    FORWARD = ("SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGINT")

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.old: dict[int, object] = {}
        self.received: list[int] = []

    def __enter__(self) -> "Forwarder":
        for name in self.FORWARD:
            sig = getattr(signal, name, None)
            if sig is None:
                continue
            try:
                self.old[sig] = signal.signal(sig, self._handle)
            except (ValueError, OSError):  # not the main thread
                pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self.old.items():
            try:
                signal.signal(sig, old)
            except (ValueError, OSError, TypeError):
                pass

    def _handle(self, signum, _frame) -> None:
        self.received.append(signum)
        if signum == signal.SIGINT and _terminal_sent_it():
            return  # the terminal sent SIGINT to the whole foreground group: the command has it already
        try:
            os.kill(self.pid, signum)
        except OSError:
            pass


def _terminal_sent_it() -> bool:
    for fd in (0, 1, 2):
        try:
            if os.isatty(fd) and os.tcgetpgrp(fd) == os.getpgrp():
                return True
        except OSError:
            continue
    return False


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


def charts_note() -> str | None:
    """What to install when the HTML page cannot have charts (None when it can)."""
    try:
        if importlib.util.find_spec("matplotlib") is not None:
            return None
    except (ImportError, ValueError):
        pass
    return 'the HTML page has no charts: they need matplotlib, the html extra (pip install "otel-leak[html]")'


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
