"""A real Celery worker with a real Redis broker under the real ``opentelemetry-instrument``."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from otel_leak import names
from tests.conftest import ROOT, VENV_BIN, instrumented_env, parse_console_exports


@pytest.fixture
def celery_worker(redis_url, tmp_path):
    procs = []

    def start(pool: str) -> tuple[subprocess.Popen, os.PathLike]:
        out = tmp_path / f"worker-{pool}.out"
        args = [str(VENV_BIN / "opentelemetry-instrument"), str(VENV_BIN / "celery"), "-A", "tests.workers.celery_app",
                "worker", f"--pool={pool}", "--loglevel=WARNING", "--without-heartbeat", "--without-gossip",
                "--without-mingle"]
        if pool == "prefork":
            args.append("--concurrency=2")
        env = instrumented_env(OTEL_LEAK_TEST_REDIS=redis_url, OTEL_SERVICE_NAME=f"celery-{pool}")
        with open(out, "w") as f:
            p = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        procs.append(p)
        return p, out

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(10)


def _client(redis_url):
    os.environ["OTEL_LEAK_TEST_REDIS"] = redis_url
    from tests.workers import celery_app

    celery_app.app.conf.broker_url = redis_url
    celery_app.app.conf.result_backend = redis_url
    return celery_app


def _stop(p: subprocess.Popen) -> None:
    time.sleep(1.5)  # let the children's batch span processors export (they exit via os._exit)
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=30)


def _task_spans(out) -> list[dict]:
    spans, _ = parse_console_exports(open(out).read())
    return [s for s in spans if s["name"].startswith("run/")]


@pytest.mark.parametrize("pool", ["solo", "prefork"])
def test_celery_task_spans_carry_memory_attributes(pool, redis_url, celery_worker):
    app = _client(redis_url)
    worker, out = celery_worker(pool)
    results = [app.hold.delay(24).get(timeout=60) for _ in range(4)] + [app.whoami.delay().get(timeout=60)]
    assert len(results) == 5
    _stop(worker)
    spans = _task_spans(out)
    assert len(spans) == 5, open(out).read()[-3000:]
    for s in spans:
        a = s["attributes"]
        assert a[names.SPAN_TASK_NAME] == a["celery.task_name"]  # identity from the Celery instrumentation
        assert {names.SPAN_RSS_DELTA, names.SPAN_RSS_END, names.SPAN_GC_COLLECTIONS, names.SPAN_GC_PAUSE} <= set(a)
    holds = [s for s in spans if s["attributes"]["celery.task_name"] == "tests.hold"]
    assert sum(s["attributes"][names.SPAN_RSS_DELTA] for s in holds) >= 0.8 * 4 * 24 * 1024 * 1024


def test_celery_prefork_child_reports_its_own_memory(redis_url, celery_worker):
    app = _client(redis_url)
    worker, out = celery_worker("prefork")
    held = app.hold.delay(150).get(timeout=60)  # one child now holds 150 MiB more than its parent
    # Ask until the same child answers (the pool has two children)
    for _ in range(40):
        me = app.whoami.delay().get(timeout=60)
        if me["pid"] == held["pid"]:
            break
    else:
        pytest.fail("the child holding the ballast never answered")
    parent_rss = int(open(f"/proc/{worker.pid}/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    _stop(worker)
    spans = _task_spans(out)
    hold_span = next(s for s in spans if s["attributes"]["celery.task_name"] == "tests.hold")
    rss_seen = hold_span["attributes"][names.SPAN_RSS_END]
    assert abs(rss_seen - held["rss"]) < 8 * 1024 * 1024, (rss_seen, held)  # the child's own reading
    assert rss_seen > parent_rss + 120 * 1024 * 1024  # not the parent's
    me_spans = [s["attributes"][names.SPAN_RSS_END] for s in spans if s["attributes"]["celery.task_name"] == "tests.whoami"]
    assert any(abs(r - me["rss"]) < 8 * 1024 * 1024 for r in me_spans)
