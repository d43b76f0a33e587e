"""RQ jobs, one leaking and two healthy, for ``otel-leak run``.

    redis-server --port 6379 --save '' --appendonly no &
    cd examples/rq_leak
    otel-leak run --report rq.json --html rq.html -- \\
        rq worker --worker-class rq.worker.SimpleWorker --url redis://127.0.0.1:6379/0 leak_demo
    python enqueue.py 3000         # in another shell; then Ctrl-C the worker

The task names are the jobs' function paths: ``app.remember_user``, ``app.resize_image``, ``app.send_email``.
``remember_user`` keeps 64 KiB per call in a module-level dict that is never evicted (the leak);
``resize_image`` allocates 256 KiB and frees it; ``send_email`` does a little string work. Each returns
the pid of the process that ran it.

``SimpleWorker`` runs the jobs in the worker process, which is where the leak accumulates. RQ's default
``Worker`` forks a work horse per job: what a job keeps dies with its horse (each job's span still shows
its growth), and the long-lived worker process is the one that reports.
"""

import os

LEAK_BYTES = int(os.environ.get("LEAK_BYTES", str(64 * 1024)))

_USERS: dict[str, bytes] = {}  # the leak: one entry per call, never evicted


def remember_user(key: str) -> int:
    _USERS[key] = os.urandom(LEAK_BYTES)
    return os.getpid()


def resize_image(size: int = 256 * 1024) -> int:
    buf = bytearray(size)  # transient
    buf[0] = 1
    return os.getpid()


def send_email(to: str) -> int:
    body = ("hello " + to) * 50
    assert body.upper()
    return os.getpid()
