"""A Dramatiq app with one leaking actor and two healthy ones, for ``otel-leak run``.

    redis-server --port 6379 --save '' --appendonly no &
    cd examples/dramatiq_leak
    otel-leak run --report dramatiq.json --html dramatiq.html -- dramatiq app --processes 2 --threads 2
    python submit.py 3000          # in another shell; then Ctrl-C the worker

``remember_user`` keeps 64 KiB per call in a module-level dict that is never evicted (the leak);
``resize_image`` allocates 256 KiB and frees it; ``send_email`` does a little string work.
``DRAMATIQ_REDIS_URL`` names the broker (default redis://127.0.0.1:6379/0).
"""

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker

REDIS_URL = os.environ.get("DRAMATIQ_REDIS_URL", "redis://127.0.0.1:6379/0")
LEAK_BYTES = int(os.environ.get("LEAK_BYTES", str(64 * 1024)))

broker = RedisBroker(url=REDIS_URL)
dramatiq.set_broker(broker)

_USERS: dict[str, bytes] = {}  # the leak: one entry per call, never evicted


@dramatiq.actor(max_retries=0)
def remember_user(key: str) -> None:
    _USERS[key] = os.urandom(LEAK_BYTES)


@dramatiq.actor(max_retries=0)
def resize_image(size: int = 256 * 1024) -> None:
    buf = bytearray(size)  # transient
    buf[0] = 1


@dramatiq.actor(max_retries=0)
def send_email(to: str) -> None:
    body = ("hello " + to) * 50
    assert body.upper()
