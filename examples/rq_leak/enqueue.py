"""Enqueue a mix of jobs for the demo app and wait for them: ``python enqueue.py [N]``.

``REDIS_URL`` (default ``redis://127.0.0.1:6379/0``) and ``QUEUE`` (default ``leak_demo``) say where.
"""

import os
import random
import sys
import time
import uuid

from redis import Redis
from rq import Queue

from app import remember_user, resize_image, send_email


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    queue = Queue(os.environ.get("QUEUE", "leak_demo"),
                  connection=Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")))
    rng = random.Random()
    sent = 0
    pids: set[int] = set()
    while sent < n:
        jobs = []
        for i in range(30):  # a mix that varies, as a real queue's does
            kind = rng.randrange(3)
            if kind == 0:
                jobs.append(queue.enqueue(remember_user, uuid.uuid4().hex, result_ttl=60))
            elif kind == 1:
                jobs.append(queue.enqueue(resize_image, result_ttl=60))
            else:
                jobs.append(queue.enqueue(send_email, f"user{sent + i}@example.com", result_ttl=60))
        for job in jobs:
            while job.get_status(refresh=True) not in ("finished", "failed"):
                time.sleep(0.01)
            pids.add(job.return_value())
        sent += len(jobs)
    print(f"{sent} jobs done by worker processes {sorted(p for p in pids if p)}")


if __name__ == "__main__":
    main()
