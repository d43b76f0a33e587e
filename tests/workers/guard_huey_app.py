"""Huey app for the memory-budget guard's before-a-task test (tests/test_guard_huey.py): every worker process
allocates BALLAST_BYTES when it starts (Huey's startup hook), so it is over the hard budget before its first
task; ``work`` returns the pid that ran it. Redis from HUEY_REDIS_URL."""

import os

from huey import RedisHuey

huey = RedisHuey("guard_pre_task", url=os.environ["HUEY_REDIS_URL"])
_BALLAST: list[bytes] = []


@huey.on_startup()
def ballast() -> None:
    _BALLAST.append(b"\x01" * int(os.environ.get("BALLAST_BYTES", "0")))  # written: resident


@huey.task()
def work(i: int) -> int:
    return os.getpid()
