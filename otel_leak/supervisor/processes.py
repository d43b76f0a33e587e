"""What ``otel-leak run`` sees of the command's processes, independent of the detector's files: the process
tree polled with psutil (live RSS, every process seen), and the termination signals forwarded to the command."""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass, field


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


