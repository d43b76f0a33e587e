"""Benign asyncio worker: background tasks are awaited or cancelled, nothing is kept."""
import asyncio
import os
import random
import time

import otel_leak

DURATION = float(os.environ.get("SCENARIO_DURATION", "40"))


async def listener(buf):
    await asyncio.sleep(0.05)
    return len(buf)


async def subscribe(i):
    t = asyncio.get_running_loop().create_task(listener(bytearray(12000)))
    await t


async def watch(i):
    t = asyncio.get_running_loop().create_task(asyncio.sleep(10))
    await asyncio.sleep(0)
    t.cancel()


async def heartbeat(i):
    return i


async def one(name, fn, i):
    with otel_leak.task_span(name):
        await fn(i)


async def main():
    rnd = random.Random(5)
    fns = {"subscribe": subscribe, "watch": watch, "heartbeat": heartbeat}
    stop = time.monotonic() + DURATION
    i = 0
    while time.monotonic() < stop:
        await asyncio.gather(*[one(n, fns[n], i + k) for k, n in enumerate(rnd.choices(list(fns), k=4))])
        i += 4
        await asyncio.sleep(rnd.expovariate(10.0))


asyncio.run(main())
