"""Submit a mix of tasks to the demo app and wait for them: ``python submit.py [N] [ROUNDS_PER_S]``."""

import itertools
import random
import sys
import time
import uuid

from app import remember_user, resize_image, send_email


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    batch = 30
    sent = 0
    pids: set[int] = set()
    counter = itertools.count()
    rng = random.Random()
    while sent < n:
        results = []
        for _ in range(batch):  # a mix that varies, as a real queue's does
            kind = rng.randrange(3)
            if kind == 0:
                results.append(remember_user.delay(uuid.uuid4().hex))
            elif kind == 1:
                results.append(resize_image.delay())
            else:
                results.append(send_email.delay(f"user{next(counter)}@example.com"))
        pids.update(r.get(timeout=60) for r in results)
        sent += len(results)
        time.sleep(0.05)
    print(f"{sent} tasks done by worker processes {sorted(pids)}")


if __name__ == "__main__":
    main()
