"""Send a mix of messages to the demo app and wait for the queue to drain: ``python submit.py [N]``."""

import random
import sys
import time
import uuid

from app import broker, remember_user, resize_image, send_email


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    sent = 0
    rng = random.Random()
    while sent < n:
        for _ in range(30):  # a mix that varies, as a real queue's does
            kind = rng.randrange(3)
            if kind == 0:
                remember_user.send(uuid.uuid4().hex)
            elif kind == 1:
                resize_image.send()
            else:
                send_email.send(f"user{sent}@example.com")
            sent += 1
        broker.join("default", timeout=60_000)
        time.sleep(0.05)
    print(f"{sent} messages processed")


if __name__ == "__main__":
    main()
