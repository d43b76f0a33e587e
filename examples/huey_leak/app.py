"""A Huey app with one leaking task and two healthy ones, for ``otel-leak run``.

    redis-server --port 6379 --save '' --appendonly no &
    cd examples/huey_leak
    otel-leak run --report huey.json --html huey.html -- huey_consumer app.huey -w 2 -k process
    python submit.py 3000          # in another shell; then Ctrl-C the consumer

(``-k thread`` runs the workers as threads of one process.) ``remember_user`` keeps 64 KiB per call in a
module-level dict that is never evicted (the leak); ``resize_image`` allocates 256 KiB and frees it;
``send_email`` does a little string work. Each returns the pid of the process that ran it.
``HUEY_REDIS_URL`` names the Redis server (default redis://127.0.0.1:6379/0).
"""

import os

from huey import RedisHuey

REDIS_URL = os.environ.get("HUEY_REDIS_URL", "redis://127.0.0.1:6379/0")
LEAK_BYTES = int(os.environ.get("LEAK_BYTES", str(64 * 1024)))

huey = RedisHuey("leak_demo", url=REDIS_URL)

_USERS: dict[str, bytes] = {}  # the leak: one entry per call, never evicted


@huey.task()
def remember_user(key: str) -> int:
    _USERS[key] = os.urandom(LEAK_BYTES)
    return os.getpid()


@huey.task()
def resize_image(size: int = 256 * 1024) -> int:
    buf = bytearray(size)  # transient
    buf[0] = 1
    return os.getpid()


@huey.task()
def send_email(to: str) -> int:
    body = ("hello " + to) * 50
    assert body.upper()
    return os.getpid()
