"""What the processes running the memory-budget guard in one directory share (:mod:`otel_leak.guard`): the
hourly recycle count behind the rate limit and the marker of the process recycling now."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import tempfile

from otel_leak import config

LOCK_STALE_S = 30.0  # a recycling marker older than this (or of a dead process) no longer holds others back
HOUR = 3600.0


def default_dir(environ=None) -> str:
    """Where processes share the rate limit and the recycling marker: the report directory, else one
    directory per user and service name in the temporary directory."""
    from otel_leak.detector import settings as detector_settings

    report_dir = config.get(detector_settings.REPORT_DIR, environ)
    if report_dir:
        return report_dir
    env = os.environ if environ is None else environ
    service = re.sub(r"[^A-Za-z0-9_.-]", "_", env.get("OTEL_SERVICE_NAME", "") or "default")[:64]
    return os.path.join(tempfile.gettempdir(), f"otel-leak-guard-{os.getuid()}-{service}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


class Shared:
    """What the processes of one directory share: ``guard-recycles.log`` (one line per recycle: unix time,
    pid, reason) and ``guard-recycling.pid`` (the process recycling now: pid and unix time), both read and
    written under an exclusive ``flock`` on the log. The marker goes with its process (:meth:`release`, at
    exit) or is ignored once its process is dead or it is older than ``LOCK_STALE_S``."""

    def __init__(self, directory: str) -> None:
        self.dir = directory
        self.log = os.path.join(directory, "guard-recycles.log")
        self.marker = os.path.join(directory, "guard-recycling.pid")

    @contextlib.contextmanager
    def _locked(self):
        os.makedirs(self.dir, exist_ok=True)
        fd = os.open(self.log, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        finally:
            os.close(fd)  # releases the lock

    def _recent(self, now: float) -> list[str]:
        with open(self.log) as f:
            lines = f.read().splitlines()
        return [ln for ln in lines if ln.split(" ", 1)[0].replace(".", "", 1).isdigit()
                and now - float(ln.split(" ", 1)[0]) < HOUR]

    def _holder(self, now: float) -> int | None:
        try:
            with open(self.marker) as f:
                pid_s, t_s = f.read().split()[:2]
            pid, t = int(pid_s), float(t_s)
        except (OSError, ValueError):
            return None
        return pid if now - t < LOCK_STALE_S and _alive(pid) else None

    def recycles_last_hour(self, now: float) -> int:
        with self._locked():
            return len(self._recent(now))

    def claim(self, now: float, max_per_hour: int, reason: str) -> str | None:
        """Take this process's recycle: None when it may go now (counted, marker written), else why not
        ("rate_limited", "other_recycling")."""
        pid = os.getpid()
        with self._locked() as fd:
            recent = self._recent(now)
            if len(recent) >= max_per_hour:
                return "rate_limited"
            holder = self._holder(now)
            if holder is not None and holder != pid:
                return "other_recycling"
            with open(self.marker, "w") as f:
                f.write(f"{pid} {now:.3f}\n")
            if len(recent) > 1000:  # keep the log to the last hour
                os.ftruncate(fd, 0)
                os.write(fd, "".join(ln + "\n" for ln in recent).encode())
            os.write(fd, f"{now:.3f} {pid} {reason}\n".encode())
            return None

    def release(self) -> None:
        """Remove the marker if it is this process's."""
        with self._locked():
            with contextlib.suppress(OSError, ValueError):
                with open(self.marker) as f:
                    mine = int(f.read().split()[0]) == os.getpid()
                if mine:
                    os.unlink(self.marker)
