"""Drive the web demo apps with concurrent HTTP requests: ``python load.py URL [SECONDS] [RATE] [--healthy]``.

Requests go out in batches whose mix of routes changes from batch to batch (as real traffic's does), from
a few threads with one keep-alive connection each, at about RATE requests/s (default 75) for SECONDS
(default 60). ``--healthy`` leaves the leaking route out. Each request carries a W3C ``traceparent`` with a
fresh trace id, as a proxy in front of the app would send: the app's SERVER span joins that trace, so a
request can be found in the exported spans by its trace id. The tests drive the apps with :func:`drive`.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import sys
import threading
import time
import urllib.parse
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

KINDS = ("leak", "resize", "hello")
HEALTHY_KINDS = ("resize", "hello")


@dataclass
class Tally:
    sent: dict[str, int] = field(default_factory=lambda: {k: 0 for k in KINDS})
    pids: set[int] = field(default_factory=set)
    by_pid: dict[int, dict[str, int]] = field(default_factory=dict)  # worker pid -> kind -> requests it served
    # (kind, trace id, pid of the worker that answered) of each request, when drive(keep=True)
    requests: list[tuple[str, int, int]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.sent.values())


class Client:
    """One keep-alive HTTP connection per thread (reopened when the server closes it); ``close``: a new
    connection for each request (``Connection: close``), so that every worker process accepts some."""

    def __init__(self, base_url: str, timeout: float = 30.0, close: bool = False) -> None:
        u = urllib.parse.urlsplit(base_url)
        self.host, self.port, self.timeout, self.close = u.hostname, u.port or 80, timeout, close
        self._local = threading.local()

    def get(self, path: str) -> tuple[int, dict]:
        """``GET path`` under a fresh trace id: (trace id, JSON body). Raises on any status but 200."""
        trace_id = uuid.uuid4().int
        headers = {"traceparent": f"00-{trace_id:032x}-{os.urandom(8).hex()}-01"}
        if self.close:
            headers["Connection"] = "close"
        for attempt in (0, 1):
            conn = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._local.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                conn.request("GET", path, headers=headers)
                resp = conn.getresponse()
                body = resp.read()
            except (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine):
                conn.close()
                self._local.conn = None
                if attempt:
                    raise
                continue  # a keep-alive connection the server had closed: once more on a new one
            if resp.status != 200:
                raise RuntimeError(f"GET {path}: HTTP {resp.status} {body[:200]!r}")
            return trace_id, json.loads(body)
        raise AssertionError("unreachable")


def wait_ready(client: Client, timeout: float = 90.0, alive: Callable[[], bool] | None = None) -> None:
    """Until the app answers (one ``GET /hello/ready``), while ``alive()`` (the server process runs)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.get("/hello/ready")
            return
        except OSError:
            if time.monotonic() > deadline or (alive is not None and not alive()):
                raise
            time.sleep(0.2)


def path_of(kind: str, n: int) -> str:
    if kind == "leak":
        return f"/users/{uuid.uuid4().hex}"  # a new user each time: the app keeps each one
    if kind == "resize":
        return "/images/resize"
    return f"/hello/user{n}"


def drive(
    base_url: str,
    *,
    seconds: float,
    rate: float = 75.0,
    kinds: tuple[str, ...] = KINDS,
    seed: int | None = None,
    threads: int = 4,
    until: Callable[[], bool] | None = None,
    keep: bool = False,
    close: bool = False,
    batch_range: tuple[int, int] = (2, 12),
) -> Tally:
    """Batches of shuffled requests (per batch, each kind ``rng.randint(*batch_range)`` times) at about
    ``rate`` requests/s, until ``seconds`` passed or ``until()`` is true (checked after each batch)."""
    rng = random.Random(seed)
    client = Client(base_url, close=close)
    tally = Tally()
    t0 = time.monotonic()
    n = 0
    with ThreadPoolExecutor(threads) as pool:
        while time.monotonic() - t0 < seconds:
            order = [k for k in kinds for _ in range(rng.randint(*batch_range))]
            rng.shuffle(order)
            paths = []
            for k in order:
                n += 1
                paths.append(path_of(k, n))
            for kind, (trace_id, body) in zip(order, pool.map(client.get, paths)):
                tally.sent[kind] += 1
                tally.pids.add(body["pid"])
                served = tally.by_pid.setdefault(body["pid"], {})
                served[kind] = served.get(kind, 0) + 1
                if keep:
                    tally.requests.append((kind, trace_id, body["pid"]))
            if until is not None and until():
                break
            time.sleep(max(0.0, t0 + tally.total / rate - time.monotonic()))
    tally.seconds = time.monotonic() - t0
    return tally


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    base = args[0] if args else "http://127.0.0.1:8000"
    seconds = float(args[1]) if len(args) > 1 else 60.0
    rate = float(args[2]) if len(args) > 2 else 75.0
    kinds = HEALTHY_KINDS if "--healthy" in sys.argv else KINDS
    t = drive(base, seconds=seconds, rate=rate, kinds=kinds)
    print(f"{t.total} requests in {t.seconds:.0f} s ({t.sent}), served by worker processes {sorted(t.pids)}")


if __name__ == "__main__":
    main()
