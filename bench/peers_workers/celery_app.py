"""The Celery prefork worker: ``celery -A celery_app worker --pool=prefork`` with this folder on the path.

The tasks are ``tasks.py``'s; the leak variant is chosen by PEERS_LEAK. Each child process times its tasks
from ``task_prerun`` to ``task_postrun`` and appends them to PEERS_OUT/celery.<pid>.times; the
tool's in-process part (``tools.py``) starts and stops in each child. Under ``otel-leak run`` the task spans
come from opentelemetry-instrumentation-celery, and otel-leak is set up by the runner.
"""

from __future__ import annotations

import os
import time

from celery import Celery, signals

import tasks
import tools

LEAK = os.environ.get("PEERS_LEAK") == "1"
TOOL = os.environ.get("PEERS_TOOL", "bare")
OUT = os.environ.get("PEERS_OUT", ".")

app = Celery("peers", broker=os.environ.get("PEERS_REDIS_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(task_ignore_result=True, worker_hijack_root_logger=False, broker_connection_retry_on_startup=True)


@app.task(name="render")
def render():
    return len(tasks.render())


@app.task(name="tokenize")
def tokenize():
    return len(tasks.tokenize())


@app.task(name="remember_session")
def remember_session(key):
    return tasks.remember_session(key, LEAK)


_started: dict[str, int] = {}
_times = {"file": None, "n": 0}


@signals.task_prerun.connect
def _pre(task_id=None, **kw):
    _started[task_id] = time.perf_counter_ns()


@signals.task_postrun.connect
def _post(task_id=None, **kw):
    end = time.perf_counter_ns()
    if _times["file"] is None:
        _times["file"] = open(os.path.join(OUT, f"celery.{os.getpid()}.times"), "a")
    _times["file"].write(f"{_started.pop(task_id, end)} {end}\n")
    _times["n"] += 1
    if _times["n"] % 50 == 0:  # a child killed at the end of a capped run still leaves its times
        _times["file"].flush()


@signals.worker_init.connect
def _main_init(**kw):
    if TOOL.startswith("tracemalloc"):  # one baseline snapshot, in the main process: the children inherit it
        tools.setup(TOOL, OUT)


@signals.worker_process_init.connect
def _init(**kw):
    if TOOL == "otel-leak-tier2":
        tools.force_tier2()
    elif not TOOL.startswith(("otel-leak", "tracemalloc")):
        tools.setup(TOOL, OUT)


@signals.worker_process_shutdown.connect
def _shutdown(**kw):
    if _times["file"] is not None:
        _times["file"].flush()
    tools.finish(TOOL, OUT)
