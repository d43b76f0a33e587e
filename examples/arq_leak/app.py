"""An arq worker with one leaking job and two healthy ones, for ``otel-leak run``.

    redis-server --port 6379 --save '' --appendonly no &
    cd examples/arq_leak
    otel-leak run --report arq.json --html arq.html -- arq app.WorkerSettings
    python submit.py 3000          # in another shell; then Ctrl-C the worker

``remember_user`` keeps 64 KiB per call in a module-level dict that is never evicted (the leak);
``resize_image`` allocates 256 KiB and frees it; ``send_email`` does a little string work. Each job awaits
in the middle, so up to ``max_jobs`` of them interleave on the worker's event loop. ``REDIS_URL`` picks the
Redis server (default ``redis://127.0.0.1:6379/0``).
"""

import asyncio
import os

from arq.connections import RedisSettings

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
LEAK_BYTES = int(os.environ.get("LEAK_BYTES", str(64 * 1024)))

_USERS: dict[str, bytes] = {}  # the leak: one entry per call, never evicted


async def remember_user(ctx, key: str) -> int:
    await asyncio.sleep(0.001)  # e.g. a database read: other jobs run meanwhile
    _USERS[key] = os.urandom(LEAK_BYTES)
    return os.getpid()


async def resize_image(ctx, size: int = 256 * 1024) -> int:
    buf = bytearray(size)  # transient
    await asyncio.sleep(0.001)
    buf[0] = 1
    return os.getpid()


async def send_email(ctx, to: str) -> int:
    body = ("hello " + to) * 50
    await asyncio.sleep(0.001)
    assert body.upper()
    return os.getpid()


class WorkerSettings:
    functions = [remember_user, resize_image, send_email]
    redis_settings = RedisSettings.from_dsn(REDIS_URL)
    max_jobs = 10  # jobs running at once on the event loop
    poll_delay = 0.05  # seconds between queue polls (arq's default 0.5 caps a busy worker's rate)
    keep_result = 120
