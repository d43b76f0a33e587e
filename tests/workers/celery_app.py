"""Celery app for the tests: broker and result backend from OTEL_LEAK_TEST_REDIS."""

import os

from celery import Celery

app = Celery("otel_leak_test", broker=os.environ["OTEL_LEAK_TEST_REDIS"], backend=os.environ["OTEL_LEAK_TEST_REDIS"])
app.conf.update(worker_prefetch_multiplier=1, task_acks_late=False, broker_connection_retry_on_startup=True)

BALLAST = []


def _vmrss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


@app.task(name="tests.hold")
def hold(mib: int) -> dict:
    """Keep `mib` MiB alive in this worker process; report this process's pid and resident memory."""
    BALLAST.append(bytearray(mib * 1024 * 1024))
    return {"pid": os.getpid(), "rss": _vmrss()}


@app.task(name="tests.whoami")
def whoami() -> dict:
    return {"pid": os.getpid(), "rss": _vmrss()}
