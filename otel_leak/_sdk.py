"""What otel-leak borrows from OpenTelemetry SDK internals, in one place, each use guarded.

* :func:`renew_locks_after_fork`: the periodic metric reader recreates its thread after a fork but not its
  export lock (checked on SDK 1.45.1). A child forked while the parent's reader was exporting inherits
  that lock held by a thread that does not exist there, and every later export and ``force_flush`` of the
  child waits forever. A fresh lock in the child is what the reader's own at-fork hook would give it.
* :class:`CollectForkGuard`: the meter provider's measurement consumer holds one lock through a whole
  collection (every observable callback, every instrument's aggregation). A child forked meanwhile inherits
  it held: the child's first ``create_observable_*`` (taskiq's middleware makes one in each worker process)
  waits forever, and so does every collection. The guard takes that lock just before a fork (so no
  collection is half done in the child) and gives the child a fresh one.
"""

from __future__ import annotations

import threading


def renew_locks_after_fork(meter_provider) -> int:
    """Give each of ``meter_provider``'s readers a fresh export lock; how many were renewed. Never raises."""
    renewed = 0
    try:
        readers = getattr(meter_provider, "_metric_readers", None)  # SDK 1.45
        if readers is None:  # else where other versions may keep them
            readers = getattr(getattr(meter_provider, "_sdk_config", None), "metric_readers", ())
        for reader in readers or ():
            if hasattr(reader, "_export_lock"):
                reader._export_lock = threading.Lock()
                renewed += 1
    except Exception:
        pass
    return renewed


class CollectForkGuard:
    """os.register_at_fork hooks around ``meter_provider``'s collection lock (see the module docstring)."""

    WAIT_S = 1.0  # a collection takes milliseconds; a fork from inside a callback must not deadlock

    def __init__(self, meter_provider) -> None:
        self._consumer = getattr(meter_provider, "_measurement_consumer", None)  # SDK 1.45
        self._held = False

    def _lock(self):
        lock = getattr(self._consumer, "_lock", None)
        return lock if hasattr(lock, "acquire") and hasattr(lock, "release") else None

    def before(self) -> None:
        try:
            lock = self._lock()
            self._held = bool(lock is not None and lock.acquire(timeout=self.WAIT_S))
        except Exception:
            self._held = False

    def after_in_parent(self) -> None:
        try:
            if self._held:
                self._held = False
                self._lock().release()
        except Exception:
            pass

    def after_in_child(self) -> None:
        try:
            self._held = False
            if self._lock() is not None:
                self._consumer._lock = threading.Lock()
        except Exception:
            pass

    def register(self) -> bool:
        """Install the hooks; False when there is nothing to guard (another SDK version)."""
        import os

        if self._lock() is None or not hasattr(os, "register_at_fork"):
            return False
        os.register_at_fork(before=self.before, after_in_parent=self.after_in_parent,
                            after_in_child=self.after_in_child)
        return True
