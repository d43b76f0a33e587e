"""Enqueue a mix of tasks to the demo app and wait for their results: ``python submit.py [N]``."""

import random
import sys
import time
import uuid

from app import remember_user, resize_image, send_email


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    sent = 0
    pids: set[int] = set()
    rng = random.Random()
    while sent < n:
        results = []
        for _ in range(30):  # a mix that varies, as a real queue's does
            kind = rng.randrange(3)
            if kind == 0:
                results.append(remember_user(uuid.uuid4().hex))
            elif kind == 1:
                results.append(resize_image())
            else:
                results.append(send_email(f"user{sent}@example.com"))
            sent += 1
        pids.update(r.get(blocking=True, timeout=60) for r in results)
        time.sleep(0.05)
    print(f"{sent} tasks done by worker processes {sorted(pids)}")


if __name__ == "__main__":
    main()
