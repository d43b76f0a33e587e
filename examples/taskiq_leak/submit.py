"""Send a varying mix of tasks to the demo worker and wait for them: ``python submit.py [N]``."""

import asyncio
import random
import sys
import uuid

from app import broker, remember_user, resize_image, send_email


async def main(n: int) -> None:
    await broker.startup()
    rng = random.Random()
    sent, pids = 0, set()
    while sent < n:
        tasks = []
        for i in range(30):  # a mix that varies, as a real queue's does
            kind = rng.randrange(3)
            if kind == 0:
                tasks.append(await remember_user.kiq(uuid.uuid4().hex))
            elif kind == 1:
                tasks.append(await resize_image.kiq())
            else:
                tasks.append(await send_email.kiq(f"user{sent + i}@example.com"))
        for t in tasks:
            pids.add((await t.wait_result(timeout=60, check_interval=0.05)).return_value)
        sent += len(tasks)
    print(f"{sent} tasks done by worker processes {sorted(pids)}")
    await broker.shutdown()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 3000))
