"""asyncio worker: 'subscribe' starts a background task that waits forever and is kept in a set."""
import asyncio
import os
import random
import time

import otel_leak

DURATION = float(os.environ.get("SCENARIO_DURATION", "40"))
_background = set()


async def listener(buf):
    await asyncio.Event().wait()
    return len(buf)


async def subscribe(i):
    buf = bytearray(12000)  # leak-site
    _background.add(asyncio.get_running_loop().create_task(listener(buf)))


async def publish(i):
    await asyncio.sleep(0)
    return [i] * 30


async def heartbeat(i):
    return i


async def one(name, fn, i):
    with otel_leak.task_span(name):
        await fn(i)
        junk = [str(k) for k in range(80)]
        await asyncio.sleep(0.001)
        return len(junk)


async def main():
    rnd = random.Random(3)
    fns = {"publish": publish, "subscribe": subscribe, "heartbeat": heartbeat}
    stop = time.monotonic() + DURATION
    i = 0
    while time.monotonic() < stop:
        batch = [one(n, fns[n], i + k) for k, n in enumerate(rnd.choices(list(fns), k=4))]
        await asyncio.gather(*batch)
        i += 4
        await asyncio.sleep(rnd.expovariate(10.0))


asyncio.run(main())
