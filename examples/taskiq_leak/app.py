"""A taskiq broker with one leaking task and two healthy ones, for ``otel-leak run``.

    redis-server --port 6379 --save '' --appendonly no &
    cd examples/taskiq_leak
    otel-leak run --report taskiq.json --html taskiq.html -- taskiq worker app:broker --workers 1
    python submit.py 3000          # in another shell; then Ctrl-C the worker

``remember_user`` keeps 64 KiB per call in a module-level dict that is never evicted (the leak);
``resize_image`` allocates 256 KiB and frees it; ``send_email`` does a little string work. Each task awaits
in the middle, so the tasks a worker process runs at once (``--max-async-tasks``, 100 by default)
interleave on its event loop. One worker process gets every task, which tier 2 (tracemalloc, under which
taskiq-redis runs ~20x slower) needs to see enough of them (docs/frameworks/taskiq.md). ``REDIS_URL``
picks the Redis server (default ``redis://127.0.0.1:6379/0``).
"""

import asyncio
import os

import taskiq.compat

if not hasattr(taskiq.compat, "model_dump"):
    # taskiq-redis 1.0.x (the last release that allows redis < 6, which arq needs) imports these two
    # helpers, which taskiq 0.13 removed from taskiq.compat: the same pydantic 2 calls taskiq makes itself
    taskiq.compat.model_dump = lambda instance: instance.model_dump(mode="json")
    taskiq.compat.model_validate = lambda model_class, data: model_class.model_validate(data)

from redis.asyncio import Redis  # noqa: E402
from redis.exceptions import LockError  # noqa: E402
from taskiq import AckableMessage  # noqa: E402
from taskiq_redis import RedisAsyncResultBackend, RedisStreamBroker  # noqa: E402

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
LEAK_BYTES = int(os.environ.get("LEAK_BYTES", str(64 * 1024)))

# A Redis stream: the worker reads with a 2 s block timeout, so it sees a stop signal in time (a
# ListQueueBroker's worker blocks in BRPOP until the next message arrives, and only then stops).
# A worker reads up to ``count`` messages at once; those it had read but not started when it stopped (a
# deploy, otel-leak's guard) are claimed again by a worker after ``idle_timeout`` ms (10 minutes by default).
IDLE_TIMEOUT_MS = int(os.environ.get("TASKIQ_IDLE_TIMEOUT_MS", "600000"))


class StreamBroker(RedisStreamBroker):
    """taskiq-redis 1.0.x's stream broker with a reclaim lock that cannot outlive its holder.

    ``RedisStreamBroker.listen`` takes the Redis lock ``autoclaim:<group>:<stream>`` without a timeout
    around its XAUTOCLAIM and holds it while the reclaimed messages are handed to the receiver. A
    worker process that stops or dies inside that section (a deploy, an OOM kill, otel-leak's guard)
    leaves the lock set forever, and no worker reclaims a pending message again: the messages a stopped
    worker had read but not started are never run. Here the lock expires after ``LOCK_TIMEOUT_S`` and is
    released before the messages are handed on. Later taskiq-redis releases take an
    ``unacknowledged_lock_timeout`` argument instead (they need redis-py >= 6, which arq does not allow).
    """

    LOCK_TIMEOUT_S = 10.0

    async def listen(self):  # the same reads as RedisStreamBroker.listen, with the bounded lock
        async with Redis(connection_pool=self.connection_pool) as redis_conn:
            while True:
                fetched = await redis_conn.xreadgroup(self.consumer_group_name, self.consumer_name,
                                                      {self.queue_name: ">", **self.additional_streams},
                                                      block=self.block, noack=False, count=self.count)
                for _, msg_list in fetched:
                    for msg_id, msg in msg_list:
                        yield AckableMessage(data=msg[b"data"], ack=self._ack_generator(msg_id))
                for stream in [self.queue_name, *self.additional_streams]:
                    for msg_id, msg in await self._reclaim(redis_conn, stream):
                        yield AckableMessage(data=msg[b"data"], ack=self._ack_generator(msg_id))

    async def _reclaim(self, redis_conn, stream: str) -> list:
        lock = redis_conn.lock(f"autoclaim:{self.consumer_group_name}:{stream}", timeout=self.LOCK_TIMEOUT_S)
        if not await lock.acquire(blocking=False):
            return []  # another worker is reclaiming
        try:
            return (await redis_conn.xautoclaim(name=stream, groupname=self.consumer_group_name,
                                                consumername=self.consumer_name, min_idle_time=self.idle_timeout,
                                                count=self.unacknowledged_batch_size))[1]
        finally:
            try:
                await lock.release()
            except LockError:
                pass  # expired meanwhile: another worker may hold it now, and its own copy is left alone


broker = StreamBroker(REDIS_URL, idle_timeout=IDLE_TIMEOUT_MS).with_result_backend(RedisAsyncResultBackend(REDIS_URL, result_ex_time=600))

_USERS: dict[str, bytes] = {}  # the leak: one entry per call, never evicted


@broker.task
async def remember_user(key: str) -> int:
    await asyncio.sleep(0.001)  # e.g. a database read: other tasks run meanwhile
    _USERS[key] = os.urandom(LEAK_BYTES)
    return os.getpid()


@broker.task
async def resize_image(size: int = 256 * 1024) -> int:
    buf = bytearray(size)  # transient
    await asyncio.sleep(0.001)
    buf[0] = 1
    return os.getpid()


@broker.task
async def send_email(to: str) -> int:
    body = ("hello " + to) * 50
    await asyncio.sleep(0.001)
    assert body.upper()
    return os.getpid()
