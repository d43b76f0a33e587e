"""A Celery app with one leaking task and two healthy ones, for ``otel-leak run``.

    redis-server --port 6379 --save '' --appendonly no &
    cd examples/celery_leak
    otel-leak run --report celery.json --html celery.html -- \\
        celery -A app worker --pool=prefork --concurrency=2 --loglevel=WARNING
    python submit.py 3000          # in another shell; then Ctrl-C the worker

``remember_user`` keeps 64 KiB per call in a module-level dict that is never evicted (the leak);
``resize_image`` allocates 256 KiB and frees it; ``send_email`` does a little string work.
"""

import os

from celery import Celery

BROKER = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
BACKEND = os.environ.get("CELERY_RESULT_BACKEND", BROKER)
LEAK_BYTES = int(os.environ.get("LEAK_BYTES", str(64 * 1024)))

app = Celery("leak_demo", broker=BROKER, backend=BACKEND)
app.conf.update(
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    task_acks_late=False,
    result_expires=600,
)

_USERS: dict[str, bytes] = {}  # the leak: one entry per call, never evicted


@app.task(name="leak_demo.remember_user")
def remember_user(key: str) -> int:
    _USERS[key] = os.urandom(LEAK_BYTES)
    return os.getpid()


@app.task(name="leak_demo.resize_image")
def resize_image(size: int = 256 * 1024) -> int:
    buf = bytearray(size)  # transient
    buf[0] = 1
    return os.getpid()


@app.task(name="leak_demo.send_email")
def send_email(to: str) -> int:
    body = ("hello " + to) * 50
    assert body.upper()
    return os.getpid()
