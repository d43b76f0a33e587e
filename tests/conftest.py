"""Shared fixtures: real components started by the tests themselves.

A component that is missing fails the test when ``CI=true`` (CI must install it) and skips it elsewhere
with the reason.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
IN_CI = os.environ.get("CI", "").lower() == "true"


def require_binary(name: str) -> str:
    path = shutil.which(name) or (str(VENV_BIN / name) if (VENV_BIN / name).exists() else None)
    if path is None:
        msg = f"{name} is not installed (CI installs it in .ci/run)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@pytest.fixture(scope="session")
def redis_url():
    """A real redis-server (Debian package) on a free loopback port, for the session."""
    binary = require_binary("redis-server")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="otel-leak-redis-")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


def instrumented_env(**extra: str) -> dict[str, str]:
    """Environment for a worker under the real ``opentelemetry-instrument``, exporting to the console."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(
        OTEL_SERVICE_NAME="otel-leak-test",
        OTEL_TRACES_EXPORTER="console",
        OTEL_METRICS_EXPORTER="console",
        OTEL_LOGS_EXPORTER="none",
        OTEL_METRIC_EXPORT_INTERVAL="500",
        OTEL_BSP_SCHEDULE_DELAY="200",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def parse_console_exports(text: str) -> tuple[list[dict], list[dict]]:
    """Split the console exporters' concatenated JSON documents into (spans, metric data points)."""
    import json

    decoder = json.JSONDecoder()
    spans, points = [], []
    i, n = 0, len(text)
    while i < n:
        j = text.find("{", i)
        if j < 0:
            break
        try:
            obj, end = decoder.raw_decode(text, j)
        except ValueError:
            i = j + 1
            continue
        i = end
        if not isinstance(obj, dict):
            continue
        if "context" in obj and "kind" in obj:
            spans.append(obj)
        elif "resource_metrics" in obj:
            for rm in obj["resource_metrics"]:
                for sm in rm["scope_metrics"]:
                    for m in sm["metrics"]:
                        for dp in m["data"]["data_points"]:
                            points.append({"metric": m["name"], "unit": m.get("unit"), **dp})
    return spans, points
