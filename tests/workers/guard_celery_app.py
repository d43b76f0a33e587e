"""Celery app for the memory-budget guard tests (tests/test_guard_celery.py): broker and result backend from
OTEL_LEAK_TEST_REDIS. ``leak`` keeps LEAK_BYTES per call in a module global and counts its executions per task
id in Redis (INCR), so the test sees a task that ran twice or never."""

import os

import redis
from celery import Celery

URL = os.environ["OTEL_LEAK_TEST_REDIS"]
app = Celery("otel_leak_guard_test", broker=URL, backend=URL)
app.conf.update(worker_prefetch_multiplier=1, task_acks_late=False, broker_connection_retry_on_startup=True,
                result_expires=600)
LEAK_BYTES = int(os.environ.get("LEAK_BYTES", str(64 * 1024)))
KEPT = []  # the leak
_redis = {}


def _client():
    pid = os.getpid()
    if pid not in _redis:  # one connection per process (a prefork child must not use its parent's)
        _redis[pid] = redis.Redis.from_url(URL)
    return _redis[pid]


@app.task(name="guard.leak", bind=True)
def leak(self) -> int:
    KEPT.append(os.urandom(LEAK_BYTES))
    _client().incr(f"guard-exec:{self.request.id}")
    return os.getpid()
