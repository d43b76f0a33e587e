"""taskiq worker for the memory-budget guard's before-a-task test (tests/test_guard_taskiq.py): the broker and
tasks of examples/taskiq_leak, in a worker process that allocates BALLAST_BYTES when it imports this module
(``taskiq worker guard_taskiq_app:broker``), so it is over the hard budget before its first task."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "taskiq_leak"))

from app import broker  # noqa: E402,F401 (what the worker serves)

_BALLAST = [b"\x01" * int(os.environ.get("BALLAST_BYTES", "0"))]  # written: resident
