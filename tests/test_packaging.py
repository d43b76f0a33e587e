"""The package as a user gets it: built, installed alone into a fresh virtual environment, then run.

The wheel and the sdist are built once (``uv build``: the sdist, and the wheel from it); the wheel is
installed into one new virtual environment for the module, with the README's install lines, run in the order
a user meets them: otel-leak alone first, so ``otel-leak run`` must work without opentelemetry-distro, then
Celery and its instrumentation, the html extra, and the distro last. Downloads come from uv's cache (the
dev environment was made from the same index).

The leaking workers keep 24 KiB per call at about 100 tasks/s in a mix of three task types that changes
from batch to batch, and stop as soon as their per-process report declares the leak and its suspects are
named (the verdict and the suspects checked are those of the merged report written at exit). With
``CI=true`` a missing uv or redis-server fails the tests; elsewhere it skips them.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from tests.conftest import IN_CI, ROOT, VENV_BIN

WORKERS = ROOT / "tests" / "workers" / "fresh"

# The README's install lines ("Use it on your worker"), in the order this module runs them.
BASE = 'pip install otel-leak'
CELERY = 'pip install "celery[redis]" opentelemetry-instrumentation-celery'
HTML = 'pip install "otel-leak[html]"'
PIPELINE = 'pip install opentelemetry-distro opentelemetry-exporter-otlp'
INSTALL_LINES = [BASE, CELERY, HTML, PIPELINE]

KIB = 1024
LEAK_CAP_S = 60.0  # a leaking worker stops once declared; this is the most it may take
PREFORK_CAP_S = 90.0


def _uv() -> list[str]:
    """The uv command (as ``scripts/setup-python.sh`` installs it), or fail in CI / skip elsewhere."""
    for cmd in ([shutil.which("uv")] if shutil.which("uv") else [], ["python3", "-m", "uv"]):
        if not cmd:
            continue
        try:
            if subprocess.run([*cmd, "--version"], capture_output=True, timeout=30).returncode == 0:
                return cmd
        except (OSError, subprocess.TimeoutExpired):
            continue
    msg = "uv is not installed (scripts/setup-python.sh installs it)"
    if IN_CI:
        pytest.fail(msg)
    pytest.skip(msg)


def readme_install_lines() -> list[str]:
    """The ``pip install`` lines of the first shell block under README's "Use it on your worker"."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Use it on your worker"):]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.startswith("pip install")]


class Fresh:
    """The fresh virtual environment, its installer, the built distributions, and what is installed."""

    def __init__(self, uv: list[str], root: Path, wheel: Path, sdist: Path) -> None:
        self.uv, self.root, self.wheel, self.sdist = uv, root, wheel, sdist
        self.venv = root / "venv"
        self.bin = self.venv / "bin"
        self.installed: list[str] = []

    def install(self, line: str) -> None:
        """Run one README install line: ``pip install`` by uv into this environment, the built wheel for
        ``otel-leak``."""
        if line in self.installed:
            return
        words = shlex.split(line, comments=True)
        assert words[:2] == ["pip", "install"], line
        args = [f"{w} @ {self.wheel.as_uri()}" if re.fullmatch(r"otel-leak(\[[a-z,]+\])?", w) else w
                for w in words[2:]]
        _check([*self.uv, "pip", "install", "--quiet", "--python", str(self.bin / "python"), *args], timeout=300)
        self.installed.append(line)

    def env(self, **extra: str) -> dict[str, str]:
        """A user's shell in this environment: its bin first on PATH, no OTEL_* or PYTHON* settings."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("OTEL_", "PYTHON", "VIRTUAL_ENV", "CELERY_"))}
        path = [p for p in env.get("PATH", os.defpath).split(os.pathsep) if p and Path(p) != VENV_BIN]
        env["PATH"] = os.pathsep.join([str(self.bin), *path])
        env["PYTHONUNBUFFERED"] = "1"
        env.update(extra)
        return env

    def workdir(self, tmp_path: Path) -> Path:
        """The workers' sources in a directory of their own: nothing of the repository is importable."""
        for src in WORKERS.glob("*.py"):
            shutil.copy(src, tmp_path / src.name)
        return tmp_path


def _check(cmd: list[str], timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    assert p.returncode == 0, f"{shlex.join(cmd)} -> {p.returncode}\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
    return p


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> Fresh:
    uv = _uv()
    root = tmp_path_factory.mktemp("packaging")
    dist = root / "dist"
    _check([*uv, "build", "--quiet", "--out-dir", str(dist), str(ROOT)], timeout=300)
    (wheel,), (sdist,) = list(dist.glob("*.whl")), list(dist.glob("*.tar.gz"))
    _check([*uv, "venv", "--quiet", str(root / "venv"), "--python", sys.executable])
    env = Fresh(uv, root, wheel, sdist)
    env.install(BASE)
    return env


def _otel_leak_run(fresh: Fresh, cwd: Path, args: list[str], timeout: float = LEAK_CAP_S + 60, **env: str):
    p = subprocess.run([str(fresh.bin / "otel-leak"), "run", "--report", "r.json", *args], cwd=cwd,
                       env=fresh.env(**env), capture_output=True, text=True, timeout=timeout)
    report = json.loads((cwd / "r.json").read_text()) if (cwd / "r.json").exists() else None
    return p, report


def _worker_line(stdout: str) -> dict:
    """The ``RESULT`` line a worker or the producer prints last."""
    return json.loads([line for line in stdout.splitlines() if line.startswith("RESULT ")][-1].split(" ", 1)[1])


def _assert_leak(report: dict, task: str, detail) -> None:
    assert report["verdict"] == "leak", detail
    assert report["suspects"], (report["suspects"], detail)
    top = report["suspects"][0]
    assert top["task"] == task, report["suspects"]
    assert 16 * KIB <= top["retained_bytes_per_call"] <= 36 * KIB, top


def _celery_suspect(report: dict, task: str, procs: Path) -> None:
    """The suspect of a Celery run, with the tier-2 windows' task counts when it is wrong."""
    windows = []
    for f in procs.glob("*.json"):
        doc = json.loads(f.read_text())
        windows += [run.get("tasks") for run in (doc.get("tier2") or {}).get("runs") or ()]
    assert report["suspects"], ("no suspect", windows)
    top = report["suspects"][0]
    assert top["task"] == task and 16 * KIB <= top["retained_bytes_per_call"] <= 36 * KIB, (report["suspects"], windows)


# ------------------------------------------------------------------------------------------------------
# The distributions


def test_readme_install_lines_are_the_ones_this_test_runs():
    assert [shlex.split(line, comments=True) for line in readme_install_lines()] == [
        shlex.split(line) for line in INSTALL_LINES]


def test_sdist_and_wheel_hold_the_package_its_entry_points_and_command(fresh):
    with zipfile.ZipFile(fresh.wheel) as whl:
        names = set(whl.namelist())
        entry_points = next(whl.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert {"otel_leak/instrumentor.py", "otel_leak/report/diagnosis.py", "otel_leak/detector/__init__.py"} <= names
    assert not any(n.startswith(("tests/", "bench/")) for n in names)
    assert "otel-leak = otel_leak.cli:main" in entry_points
    assert "otel_leak = otel_leak.instrumentor:LeakInstrumentor" in entry_points
    from otel_leak.integrations import INTEGRATIONS

    for name, target in INTEGRATIONS.items():  # every framework integration, loadable by name
        assert f"{name} = {target}" in entry_points, name
    assert "otel_leak = otel_leak.pytest_plugin" in entry_points  # the pytest plugin
    with tarfile.open(fresh.sdist) as sd:
        members = {m.name.split("/", 1)[1] for m in sd.getmembers() if "/" in m.name}
    assert {"pyproject.toml", "README.md", "otel_leak/instrumentor.py"} <= members


# ------------------------------------------------------------------------------------------------------
# otel-leak alone: no opentelemetry-distro, no exporter


@pytest.mark.parametrize("mode, leaky", [("manual", "ingest"), ("api", "refresh_cache")])
def test_plain_worker_with_the_package_alone(fresh, tmp_path, mode, leaky):
    """(a) task spans from ``otel_leak.task_span``; (b) only the OpenTelemetry API's CONSUMER spans."""
    assert fresh.installed == [BASE], fresh.installed  # a plain install: otel-leak and nothing else
    cwd = fresh.workdir(tmp_path)
    procs = cwd / "procs"
    p, r = _otel_leak_run(fresh, cwd, ["--", "python", "plain.py", mode, str(LEAK_CAP_S), str(procs)],
                          OTEL_PYTHON_LEAK_REPORT_DIR=str(procs))
    assert p.returncode == 0, p.stderr[-3000:]
    worker = _worker_line(p.stdout)
    assert worker["provider"] == "TracerProvider" and worker["auto_version"] is None, worker  # otel-leak's SDK
    _assert_leak(r, leaky, (worker, r["errors"], p.stderr[-2000:]))
    assert r["tasks_observed"] == sum(worker["counts"].values()) and r["incomplete"] is False, (r, worker)
    for noise in ("Traceback", "Failed to auto initialize", "Connection refused"):
        assert noise not in p.stderr, p.stderr[-3000:]


def test_standard_behaviour_where_otel_leak_run_did_not_ask(fresh, tmp_path):
    cwd = fresh.workdir(tmp_path)
    # plain opentelemetry-instrument without a distro: nothing sets up the SDK, otel-leak attaches nothing
    p = _check([str(fresh.bin / "opentelemetry-instrument"), "python", "plain.py", "api", "0.5"], cwd=cwd,
               env=fresh.env())
    assert _worker_line(p.stdout)["provider"] == "ProxyTracerProvider", p.stdout
    # otel-leak run told not to set it up: no report, and the summary says why and what to do
    p, r = _otel_leak_run(fresh, cwd, ["--", "python", "plain.py", "api", "0.5"], OTEL_PYTHON_LEAK_SETUP_SDK="false")
    assert p.returncode == 0 and r["verdict"] == "inconclusive", p.stderr
    assert any("OTEL_PYTHON_LEAK_SETUP_SDK=false and no OpenTelemetry SDK configurator is installed in "
               f"{fresh.venv}" in e for e in r["errors"]), r["errors"]


def test_html_page_says_what_to_install_for_charts_then_has_them(fresh, tmp_path):
    cwd = fresh.workdir(tmp_path)
    has_mpl = subprocess.run([str(fresh.bin / "python"), "-c", "import matplotlib"], capture_output=True).returncode
    assert has_mpl != 0, "the html extra is installed already"
    p, _ = _otel_leak_run(fresh, cwd, ["--html", "r.html", "--", "python", "plain.py", "manual", "1"])
    assert p.returncode == 0, p.stderr
    assert 'they need matplotlib, the html extra (pip install "otel-leak[html]")' in " ".join(p.stderr.split())
    page = (cwd / "r.html").read_text()
    assert "<svg" not in page and "otel-leak[html]" in page
    fresh.install(HTML)
    p, _ = _otel_leak_run(fresh, cwd, ["--html", "r.html", "--", "python", "plain.py", "manual", "1"])
    assert p.returncode == 0 and "matplotlib" not in p.stderr, p.stderr
    assert "<svg" in (cwd / "r.html").read_text()


# ------------------------------------------------------------------------------------------------------
# A real Celery worker on Redis


@pytest.fixture()
def celery_workdir(fresh, tmp_path, redis_url):
    fresh.install(CELERY)
    return fresh.workdir(tmp_path)


def _celery(fresh: Fresh, cwd: Path, broker: str, pool: list[str], cap: float):
    """``otel-leak run -- celery -A tasks worker POOL`` under the producer's load; (report, load, log)."""
    procs = cwd / "procs"
    env = fresh.env(CELERY_BROKER_URL=broker, OTEL_PYTHON_LEAK_REPORT_DIR=str(procs))
    with open(cwd / "worker.log", "w") as log:
        runner = subprocess.Popen(
            [str(fresh.bin / "otel-leak"), "run", "--report", "r.json", "--", "celery", "-A", "tasks", "worker",
             *pool, "--loglevel=WARNING", "--without-heartbeat", "--without-gossip", "--without-mingle"],
            cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            p = _check([str(fresh.bin / "python"), "tasks.py", "produce", str(cap), "100", str(procs)],
                       timeout=cap + 150, cwd=cwd, env=env)
            load = _worker_line(p.stdout)
            time.sleep(2.5)  # one more periodic write: prefork children leave through os._exit
            runner.send_signal(signal.SIGTERM)  # forwarded to the worker: a warm shutdown
            rc = runner.wait(timeout=90)
        finally:
            if runner.poll() is None:  # the worker too, not only otel-leak run
                os.killpg(runner.pid, signal.SIGKILL)
                runner.wait(30)
    out = (cwd / "worker.log").read_text()
    assert rc == 0, out[-3000:]
    assert not load["failed"], (load["failed"], out[-3000:])  # otel-leak must never break a task
    return json.loads((cwd / "r.json").read_text()), load, out


def test_celery_solo_worker(fresh, celery_workdir, redis_url):
    r, load, out = _celery(fresh, celery_workdir, redis_url.rsplit("/", 1)[0] + "/3", ["--pool=solo"], LEAK_CAP_S)
    assert r["verdict"] == "leak", (load, r["errors"], out[-2000:])
    (proc,) = r["processes"]
    assert proc["pid"] == load["pids"][0] == load["declared_by"] and proc["role"] == "command"
    assert r["tasks_observed"] >= sum(load["sent"].values()), (r["tasks_observed"], load)
    _celery_suspect(r, "tasks.remember", celery_workdir / "procs")


def test_celery_prefork_worker(fresh, celery_workdir, redis_url):
    r, load, out = _celery(fresh, celery_workdir, redis_url.rsplit("/", 1)[0] + "/4",
                           ["--pool=prefork", "--concurrency=2"], PREFORK_CAP_S)
    assert r["verdict"] == "leak", (load, r["errors"], out[-2000:])
    by_role: dict[str, list] = {}
    for proc in r["processes"]:
        by_role.setdefault(proc["role"], []).append(proc)
    (parent,) = by_role["command"]
    assert parent["tasks_observed"] == 0
    children = {p["pid"]: p for p in by_role["child"] if p.get("reported", True)}
    assert set(load["pids"]) <= set(children) and len(load["pids"]) == 2, (load, sorted(children))
    assert children[load["declared_by"]]["verdict"] == "leak"
    assert r["tasks_observed"] >= sum(load["sent"].values()), (r["tasks_observed"], load)
    _celery_suspect(r, "tasks.remember", celery_workdir / "procs")


# ------------------------------------------------------------------------------------------------------
# The frameworks otel-leak makes task spans for itself: the plain wheel, each framework as its user installs it

# (distributions, example app, the app's Redis URL variable, worker command, producer script)
FRAMEWORKS = {
    "rq": (["rq"], "rq_leak", "REDIS_URL",
           ["rq", "worker", "--worker-class", "rq.worker.SimpleWorker", "--url", "{url}", "leak_demo"], "enqueue.py"),
    "dramatiq": (["dramatiq[redis]"], "dramatiq_leak", "DRAMATIQ_REDIS_URL",
                 ["dramatiq", "app", "--processes", "2", "--threads", "2"], "submit.py"),
    "huey": (["huey"], "huey_leak", "HUEY_REDIS_URL", ["huey_consumer", "app.huey", "-w", "2", "-k", "process"],
             "submit.py"),
    "arq": (["arq"], "arq_leak", "REDIS_URL", ["arq", "app.WorkerSettings"], "submit.py"),
    "taskiq": (["taskiq", "taskiq-redis"], "taskiq_leak", "REDIS_URL", ["taskiq", "worker", "app:broker", "--workers", "1"],
               "submit.py"),
}
FRAMEWORK_JOBS = 120


def _pinned(dist: str) -> str:
    """``dist`` at the version the dev environment has (so uv's cache serves it; redis-py stays below 5.3)."""
    from importlib.metadata import version

    name = re.sub(r"\[.*\]", "", dist)
    return f"{dist}=={version(name)}"


@pytest.mark.parametrize("framework", sorted(FRAMEWORKS))
def test_framework_worker_from_the_wheel_gets_a_measured_task_span_per_job(fresh, tmp_path, redis_url, framework):
    """``pip install otel-leak <framework>``, then ``otel-leak run -- <the framework's worker command>``: every
    job of the example app (three task types) is a measured task span in some process's report."""
    import redis

    from tests.frameworks import OtelLeakRun

    dists, example, var, command, producer = FRAMEWORKS[framework]
    _check([*fresh.uv, "pip", "install", "--quiet", "--python", str(fresh.bin / "python"),
            *(_pinned(d) for d in dists), _pinned("redis")], timeout=300)
    url = redis_url.rsplit("/", 1)[0] + "/13"
    redis.Redis.from_url(url).flushdb()
    work = tmp_path / example
    shutil.copytree(ROOT / "examples" / example, work)
    env = fresh.env(**{var: url})
    run = OtelLeakRun(tmp_path, [c.replace("{url}", url) for c in command], cwd=work, env=env,
                      otel_leak=str(fresh.bin / "otel-leak"), base_env=env)
    try:
        p = subprocess.run([str(fresh.bin / "python"), producer, str(FRAMEWORK_JOBS)], cwd=work, env=env,
                           capture_output=True, text=True, timeout=180)
        assert p.returncode == 0, (p.stdout[-1000:], p.stderr[-2000:], run.log()[-2000:])
        done = int(p.stdout.split()[0])
        assert done >= FRAMEWORK_JOBS, p.stdout
        rc = run.stop()
    finally:
        run.close()
    assert rc in (0, 128 + signal.SIGTERM), run.log()[-3000:]
    r = json.loads(run.report_path.read_text())
    counts: dict[str, int] = {}
    for proc in r["processes"]:
        for task, n in proc["task_counts"].items():
            counts[task] = counts.get(task, 0) + n
    assert sum(counts.values()) == done, (counts, done, run.log()[-2000:])  # every job, once
    assert sorted(k.rsplit(".", 1)[-1].rsplit(":", 1)[-1] for k in counts) == [
        "remember_user", "resize_image", "send_email"], counts
    assert r["tasks_observed"] == done


# ------------------------------------------------------------------------------------------------------
# With opentelemetry-distro (the pipeline's packages): the distro sets the SDK up, otel-leak changes nothing


def test_with_opentelemetry_distro_the_distro_sets_up_the_sdk(fresh, tmp_path):
    fresh.install(PIPELINE)
    cwd = fresh.workdir(tmp_path)
    p = _check([str(fresh.bin / "opentelemetry-instrument"), "python", "plain.py", "manual", "1"], cwd=cwd,
               env=fresh.env(OTEL_TRACES_EXPORTER="console", OTEL_METRICS_EXPORTER="none", OTEL_LOGS_EXPORTER="none"))
    worker = _worker_line(p.stdout)
    assert worker["provider"] == "TracerProvider" and worker["auto_version"], worker  # the distro's
    assert '"otel_leak.task.memory.rss.delta"' in p.stdout  # otel-leak attached to it
    p, r = _otel_leak_run(fresh, cwd, ["--", "python", "plain.py", "manual", "1"])
    assert p.returncode == 0, p.stderr[-3000:]
    worker = _worker_line(p.stdout)
    assert worker["auto_version"], worker  # still the distro's configurator, not otel-leak's set-up
    assert r["tasks_observed"] == sum(worker["counts"].values()) and r["processes"], r
    assert "Traceback" not in p.stderr and "Connection refused" not in p.stderr, p.stderr[-3000:]


# ------------------------------------------------------------------------------------------------------
# Worker frameworks otel-leak makes the task spans for: the wheel alone, plus the framework


ENQUEUE_RQ = """
import sys
from redis import Redis
from rq import Queue
from app import remember_user, resize_image, send_email
q = Queue("leak_demo", connection=Redis.from_url(sys.argv[1]))
for i in range(20):
    q.enqueue(remember_user, f"k{i}"); q.enqueue(resize_image); q.enqueue(send_email, "a@example.com")
"""
ENQUEUE_ARQ = """
import asyncio
from arq import create_pool
from app import WorkerSettings
async def main():
    redis = await create_pool(WorkerSettings.redis_settings)
    for i in range(20):
        for name, args in (("remember_user", (f"k{i}",)), ("resize_image", ()), ("send_email", ("a@example.com",))):
            await redis.enqueue_job(name, *args)
asyncio.run(main())
"""


@pytest.mark.parametrize("framework", ["rq", "arq"])
def test_framework_task_spans_from_the_wheel(fresh, tmp_path, redis_url, framework):
    """``pip install otel-leak <framework>`` and nothing else: the wheel's entry point makes the task spans, a
    burst worker under ``otel-leak run`` drains 60 jobs of three kinds and the report counts each kind."""
    fresh.install(f"pip install {framework}")
    for name in ("app.py",):
        shutil.copy(ROOT / "examples" / f"{framework}_leak" / name, tmp_path / name)
    url = redis_url.rsplit("/", 1)[0] + ("/13" if framework == "rq" else "/14")
    env = fresh.env(REDIS_URL=url)
    subprocess.run([str(fresh.bin / "python"), "-c", "import redis, sys; redis.Redis.from_url(sys.argv[1]).flushdb()",
                    url], check=True, env=env, timeout=60)
    _check([str(fresh.bin / "python"), "-c", ENQUEUE_RQ if framework == "rq" else ENQUEUE_ARQ, url], cwd=tmp_path,
           env=env)
    worker = (["rq", "worker", "--burst", "--worker-class", "rq.worker.SimpleWorker", "--url", url, "leak_demo"]
              if framework == "rq" else ["arq", "app.WorkerSettings", "--burst"])
    p, r = _otel_leak_run(fresh, tmp_path, ["--", *worker], timeout=120, REDIS_URL=url)
    assert p.returncode == 0, p.stderr[-3000:]
    counts = {}
    for proc in r["processes"]:
        for k, v in proc["task_counts"].items():
            counts[k] = counts.get(k, 0) + v
    expected = ({f"app.{n}": 20 for n in ("remember_user", "resize_image", "send_email")} if framework == "rq"
                else {n: 20 for n in ("remember_user", "resize_image", "send_email")})
    assert counts == expected, (counts, p.stderr[-2000:])
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
