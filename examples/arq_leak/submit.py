"""Enqueue a varying mix of jobs for the demo worker and wait for them: ``python submit.py [N]``."""

import asyncio
import random
import sys
import uuid

from arq import create_pool

from app import WorkerSettings


async def main(n: int) -> None:
    redis = await create_pool(WorkerSettings.redis_settings)
    rng = random.Random()
    sent, pids = 0, set()
    while sent < n:
        jobs = []
        for i in range(30):  # a mix that varies, as a real queue's does
            kind = rng.randrange(3)
            if kind == 0:
                jobs.append(await redis.enqueue_job("remember_user", uuid.uuid4().hex))
            elif kind == 1:
                jobs.append(await redis.enqueue_job("resize_image"))
            else:
                jobs.append(await redis.enqueue_job("send_email", f"user{sent + i}@example.com"))
        for job in jobs:
            pids.add(await job.result(timeout=60, poll_delay=0.05))
        sent += len(jobs)
    print(f"{sent} jobs done by worker processes {sorted(pids)}")
    await redis.aclose()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 3000))
