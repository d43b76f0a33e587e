"""arq worker for the memory-budget guard's before-a-job test (tests/test_guard_arq.py): the worker allocates
BALLAST_BYTES at start-up (``on_startup``), so it is over the hard budget before its first job; ``work``
returns the pid that ran it. Redis from REDIS_URL."""

import os

from arq.connections import RedisSettings

_BALLAST: list[bytes] = []


async def ballast(ctx) -> None:
    _BALLAST.append(b"\x01" * int(os.environ.get("BALLAST_BYTES", "0")))  # written: resident


async def work(ctx, i: int) -> int:
    return os.getpid()


class WorkerSettings:
    functions = [work]
    on_startup = ballast
    redis_settings = RedisSettings.from_dsn(os.environ["REDIS_URL"])
    poll_delay = 0.05
    keep_result = 120
