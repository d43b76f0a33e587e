"""RQ worker for the memory-budget guard's before-a-job test (tests/test_guard_rq.py): importing this module
(``rq worker -w guard_rq_app.BallastWorker``) allocates BALLAST_BYTES, so the worker is over the hard budget
before its first job; ``work`` returns the pid that ran it."""

import os

from rq.worker import SimpleWorker

_BALLAST = [b"\x01" * int(os.environ.get("BALLAST_BYTES", "0"))]  # written: resident


class BallastWorker(SimpleWorker):
    """RQ's SimpleWorker, in a process that already holds the ballast."""


def work(i: int) -> int:
    return os.getpid()
