"""A Celery app for the packaging test (``celery -A tasks worker``), and the client that loads it.

    python tasks.py produce SECONDS RATE REPORT_DIR

Broker and result backend from ``CELERY_BROKER_URL``. ``tasks.remember`` keeps 24 KiB per call in a dict
that is never evicted; ``tasks.resize`` allocates 64 KiB and frees it; ``tasks.notify`` does a little
string work. The client sends them in batches whose mix changes from batch to batch, about RATE tasks/s,
for SECONDS or until a per-process report in REPORT_DIR declares a leak and its suspects are named, then prints one
line, ``RESULT`` and JSON: tasks sent per name, the pids that ran them, seconds of load, the pid that declared,
the first tasks that raised in the worker.
"""

import json
import os
import random
import sys
import time
import uuid

from celery import Celery

from until import declared

app = Celery("tasks", broker=os.environ["CELERY_BROKER_URL"], backend=os.environ["CELERY_BROKER_URL"])
app.conf.update(worker_prefetch_multiplier=4, broker_connection_retry_on_startup=True, result_expires=600)

_SEEN = {}  # the leak


@app.task(name="tasks.remember")
def remember(key):
    _SEEN[key] = os.urandom(24 * 1024)
    return os.getpid()


@app.task(name="tasks.resize")
def resize():
    buf = bytearray(64 * 1024)
    buf[0] = 1
    return os.getpid()


@app.task(name="tasks.notify")
def notify(to):
    assert ("hello " + to).upper()
    return os.getpid()


def produce(seconds, rate, report_dir):
    notify.delay("warmup@example.com").get(timeout=90)  # the worker is up
    rng = random.Random(9)
    sent = {"tasks.remember": 0, "tasks.resize": 0, "tasks.notify": 0}
    pids = set()
    failed = []
    start = time.monotonic()
    leaker = None
    while time.monotonic() - start < seconds and leaker is None:
        counts = {name: rng.randint(2, 12) for name in sent}
        order = [name for name, n in counts.items() for _ in range(n)]
        rng.shuffle(order)
        batch = []
        for name in order:
            if name == "tasks.remember":
                batch.append(remember.delay(uuid.uuid4().hex))
            elif name == "tasks.resize":
                batch.append(resize.delay())
            else:
                batch.append(notify.delay("someone@example.com"))
            sent[name] += 1
        for name, r in zip(order, batch):
            # polled from the result's key: a redis pub/sub notification now and then comes seconds late
            waited = time.monotonic() + 60
            while not r.ready() and time.monotonic() < waited:
                time.sleep(0.005)
            value = r.get(timeout=60, propagate=False)
            if r.failed():  # the task raised in the worker: name it, keep the load on
                failed.append(f"{name}: {type(value).__name__}: {value}")
            else:
                pids.add(value)
        time.sleep(max(0.0, start + sum(sent.values()) / rate - time.monotonic()))
        leaker = declared(report_dir)
    load_s = round(time.monotonic() - start, 1)
    print("RESULT", json.dumps({"sent": sent, "pids": sorted(pids), "load_s": load_s, "declared_by": leaker,
                                "failed": failed[:5]}), flush=True)


if __name__ == "__main__" and sys.argv[1:2] == ["produce"]:
    produce(float(sys.argv[2]), float(sys.argv[3]), sys.argv[4])
