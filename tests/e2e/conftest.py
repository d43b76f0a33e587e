"""End-to-end fixtures: the REAL programs on free 127.0.0.1 ports in a per-session temp dir.

Session-scoped, started on first use, stopped at the end of the session:

``collector``     otelcol-leak (collector/build.sh's cached binary) with collector/config.yaml,
                  traces to ``tracestore``. ``collector_factory(...)`` starts more (own ports/config).
``tracestore``    Jaeger v2, in memory (collector/build-tracestore.sh + collector/jaeger.yaml), or the
                  collector's file exporter (collector/traces-to-file.yaml). ``OTEL_LEAK_TRACESTORE``
                  = ``jaeger`` | ``file`` | ``auto`` (default: jaeger if built; outside CI, file if not).
``prometheus``    Debian prometheus 2.42 scraping the collector every 1s with
                  ``--enable-feature=exemplar-storage --web.enable-lifecycle``, rule files from the
                  ``rule_files`` fixture, alerting to ``alertmanager``. ``.url``, ``.query(expr)``,
                  ``.wait_for(expr)``, ``.query_exemplars(...)``, ``.load_rules(paths)`` (reload).
``alertmanager``  Debian prometheus-alertmanager 0.25 (``--cluster.listen-address=``) with the file
                  from the ``alertmanager_config`` fixture, made test-safe by
                  ``_procs.prepare_alertmanager_config``: every receiver notifies ``webhook_sink`` at
                  ``/<receiver name>``, group timers shortened. ``.load_config(text)`` reloads.
``webhook_sink``  stdlib HTTP server collecting POSTed JSON: a stand-in for the pager only.
``run_worker``    run a command under ``.venv/bin/opentelemetry-instrument`` exporting OTLP/gRPC to
                  ``collector``; ``start_worker`` does the same in the background.
``dashboard_workers``  examples/demo_worker.py twice for test_dashboard_queries.py, also started at the first
                  e2e test.
``leak_pair``     tests/workers/e2e_worker.py twice under ``opentelemetry-instrument`` at 100 tasks/s, one
                  keeping 64 KiB per ``ingest`` call, ~3 MB/s (service ``e2e-leaky``, instance ``leaky-1``),
                  one keeping nothing
                  (``e2e-healthy``, ``healthy-1``), both reporting a 400 MiB memory limit. Started at the
                  first e2e test (autouse) and shared by the modules that wait for alerts, which look at what
                  the rules did since ``leak_pair.started``: the leak has been running while the other
                  modules ran, instead of each module waiting minutes for alerts of its own pair.

Plugging in rules and routing (other engineers' files):

* ``rule_files`` defaults to ``dashboards/generated/prometheus-rules.test.yaml`` when it exists.
  Override the fixture (session scope) in a conftest, set ``OTEL_LEAK_E2E_RULE_FILES`` (os.pathsep
  separated), or call ``prometheus.load_rules([...])`` inside a test.
* ``alertmanager_config`` defaults to ``deploy/alertmanager/alertmanager.yml`` when it exists,
  otherwise one ``sink`` receiver. Override the fixture or set ``OTEL_LEAK_E2E_ALERTMANAGER_CONFIG``.

Binaries: a missing one FAILS the test under ``CI=true`` and skips it otherwise. Build the collector
and Jaeger before pytest (``collector/build.sh``, ``collector/build-tracestore.sh``): the fixtures
never start a multi-minute Go build unless ``OTEL_LEAK_E2E_BUILD=1``. ``OTEL_LEAK_COLLECTOR_BIN`` /
``OTEL_LEAK_JAEGER_BIN`` / ``OTEL_LEAK_PROMETHEUS_BIN`` / ``OTEL_LEAK_ALERTMANAGER_BIN`` point at
other binaries. Logs of every program are in the session dir (printed on failure by the fixtures'
error messages; keep it with ``--basetemp``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest

from otel_leak import names

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _procs  # noqa: E402
from _procs import (  # noqa: E402
    COLLECTOR_DIR,
    IN_CI,
    REPO,
    Alertmanager,
    DASHBOARD_MEMORY_LIMIT,
    DASHBOARD_SERVICE,
    DASHBOARD_VERSIONS,
    HEALTHY,
    LEAK_BYTES,
    LEAKY,
    MEMORY_LIMIT,
    PAIR_SECONDS,
    Collector,
    DashboardWorkers,
    LeakPair,
    Proc,
    Prometheus,
    TraceStore,
    WebhookSink,
    cached_build,
    find_binary,
    free_port,
    missing,
)

RULES_TEST_FILE = REPO / "dashboards" / "generated" / "prometheus-rules.test.yaml"
ALERTMANAGER_FILE = REPO / "deploy" / "alertmanager" / "alertmanager.yml"
_BUILD = os.environ.get("OTEL_LEAK_E2E_BUILD", "").lower() in {"1", "true", "yes"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)


# ------------------------------------------------------------------------------------------------
# Binaries


@pytest.fixture(scope="session")
def collector_bin() -> str:
    if os.environ.get("OTEL_LEAK_COLLECTOR_BIN"):
        path = find_binary("otelcol-leak", "OTEL_LEAK_COLLECTOR_BIN")
    else:
        path = cached_build(COLLECTOR_DIR / "build.sh", build=_BUILD)
    if not path:
        missing("otelcol-leak collector binary", "run `collector/build.sh` first (or set OTEL_LEAK_E2E_BUILD=1)")
    return path


@pytest.fixture(scope="session")
def jaeger_bin() -> str | None:
    """The Jaeger v2 binary, or None if it is not built (the tracestore fixture decides what then)."""
    if os.environ.get("OTEL_LEAK_JAEGER_BIN"):
        return find_binary("jaeger", "OTEL_LEAK_JAEGER_BIN")
    return cached_build(COLLECTOR_DIR / "build-tracestore.sh", build=_BUILD)


@pytest.fixture(scope="session")
def prometheus_bin() -> str:
    path = find_binary("prometheus", "OTEL_LEAK_PROMETHEUS_BIN")
    if not path:
        missing("prometheus (Debian package `prometheus`, 2.42)", "apt-get install -y prometheus")
    return path


@pytest.fixture(scope="session")
def alertmanager_bin() -> str:
    path = find_binary("prometheus-alertmanager", "OTEL_LEAK_ALERTMANAGER_BIN")
    if not path:
        missing("prometheus-alertmanager (Debian package, 0.25)", "apt-get install -y prometheus-alertmanager")
    return path


# ------------------------------------------------------------------------------------------------
# Session directory and stop-at-exit bookkeeping


@pytest.fixture(scope="session")
def e2e_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e")


# ------------------------------------------------------------------------------------------------
# Trace store and collector


@pytest.fixture(scope="session")
def tracestore(e2e_dir: Path, jaeger_bin: str | None) -> Iterator[TraceStore]:
    kind = os.environ.get("OTEL_LEAK_TRACESTORE", "auto").strip().lower() or "auto"
    if kind not in {"auto", "jaeger", "file"}:
        pytest.fail(f"OTEL_LEAK_TRACESTORE={kind!r}: expected jaeger, file or auto", pytrace=False)
    if kind == "auto":
        # In CI the Jaeger build is part of .ci/run: its absence is a failure, not a silent fallback.
        kind = "jaeger" if (jaeger_bin or IN_CI) else "file"
    if kind == "jaeger":
        if not jaeger_bin:
            missing("Jaeger v2 binary", "run `collector/build-tracestore.sh` first, or set OTEL_LEAK_TRACESTORE=file")
        store = _procs.start_jaeger(jaeger_bin, e2e_dir / "jaeger")
    else:
        store = _procs.file_tracestore(e2e_dir / "traces")
    yield store
    store.stop()


@pytest.fixture(scope="session")
def collector_factory(
    collector_bin: str, tracestore: TraceStore, e2e_dir: Path
) -> Iterator[Callable[..., Collector]]:
    """``collector_factory(name="...", configs=[...], env={...}, tracestore=True)``: another collector on
    its own ports, stopped at session end. With ``tracestore=True`` its traces go to the session trace
    store (Jaeger endpoint by env, or ``traces-to-file.yaml`` merged in); pass False for a config
    without a trace exporter of its own (``agent.yaml``)."""
    started: list[Collector] = []

    def make(
        name: str = "collector",
        configs: list[Path] | None = None,
        env: dict[str, str] | None = None,
        tracestore: bool = True,
    ) -> Collector:
        configs = list(configs or [COLLECTOR_DIR / "config.yaml"])
        full_env: dict[str, str] = {}
        if tracestore:
            configs += store.collector_configs()
            full_env.update(store.collector_env())
        full_env.update(env or {})
        col = _procs.start_collector(collector_bin, e2e_dir / name, configs=configs, env=full_env, name=name)
        started.append(col)
        return col

    store = tracestore
    yield make
    for col in reversed(started):
        col.stop()


@pytest.fixture(scope="session")
def collector(collector_factory: Callable[..., Collector]) -> Collector:
    return collector_factory("collector")


# ------------------------------------------------------------------------------------------------
# Alerting side


@pytest.fixture(scope="session")
def webhook_sink() -> Iterator[WebhookSink]:
    sink = WebhookSink()
    yield sink
    sink.close()


@pytest.fixture(scope="session")
def alertmanager_config() -> Path | None:
    """The Alertmanager config to test (None: a single ``sink`` receiver)."""
    if os.environ.get("OTEL_LEAK_E2E_ALERTMANAGER_CONFIG"):
        return Path(os.environ["OTEL_LEAK_E2E_ALERTMANAGER_CONFIG"])
    return ALERTMANAGER_FILE if ALERTMANAGER_FILE.exists() else None


@pytest.fixture(scope="session")
def alertmanager(
    alertmanager_bin: str, alertmanager_config: Path | None, webhook_sink: WebhookSink, e2e_dir: Path
) -> Iterator[Alertmanager]:
    workdir = e2e_dir / "alertmanager"
    workdir.mkdir(parents=True, exist_ok=True)
    if alertmanager_config is not None:
        text = _procs.prepare_alertmanager_config(alertmanager_config, webhook_sink.url)
    else:
        text = _procs.default_alertmanager_config(webhook_sink.url)
    path = workdir / "alertmanager.yml"
    path.write_text(text)
    am = Alertmanager(alertmanager_bin, workdir, free_port(), path)
    try:
        am.start()
    except Exception as e:  # noqa: BLE001
        am.stop()
        pytest.fail(f"alertmanager did not start with {alertmanager_config or 'the default config'}: {e}", pytrace=False)
    yield am
    am.stop()


@pytest.fixture(scope="session")
def rule_files() -> list[Path]:
    """Prometheus rule files to load (override to inject short-window test rules)."""
    if os.environ.get("OTEL_LEAK_E2E_RULE_FILES"):
        return [Path(p) for p in os.environ["OTEL_LEAK_E2E_RULE_FILES"].split(os.pathsep) if p]
    return [RULES_TEST_FILE] if RULES_TEST_FILE.exists() else []


@pytest.fixture(scope="session")
def prometheus(
    prometheus_bin: str,
    collector: Collector,
    alertmanager: Alertmanager,
    rule_files: list[Path],
    e2e_dir: Path,
) -> Iterator[Prometheus]:
    prom = Prometheus(
        binary=prometheus_bin,
        workdir=e2e_dir / "prometheus",
        port=free_port(),
        scrape_targets=[collector.prometheus_endpoint],
        rule_files=list(rule_files),
        alertmanagers=[alertmanager.address],
    )
    try:
        prom.start()
    except Exception as e:  # noqa: BLE001
        prom.stop()
        pytest.fail(f"prometheus did not start (rule files {[str(p) for p in rule_files]}): {e}", pytrace=False)
    yield prom
    prom.stop()


# ------------------------------------------------------------------------------------------------
# Workers


@pytest.fixture
def run_worker(collector: Collector, e2e_dir: Path) -> Callable[..., subprocess.CompletedProcess]:
    """``run_worker(argv, service_name=..., timeout=60, collector=None, instrument=True, **otel_env_kwargs)``

    Runs ``argv`` (e.g. ``[sys.executable, "worker.py"]``) under ``opentelemetry-instrument`` with the
    OTLP exporter pointed at the session collector (or ``collector=``). Returns the CompletedProcess
    (text output); does not check the exit code. ``env=`` adds variables.
    """

    def run(
        argv: list[str],
        *,
        service_name: str = "otel-leak-e2e",
        timeout: float = 90,
        collector: Collector | None = None,
        instrument: bool = True,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        **otel_kwargs,
    ) -> subprocess.CompletedProcess:
        target = collector or default_collector
        otel_kwargs.setdefault("instance_id", f"{service_name}-{uuid.uuid4().hex[:8]}")
        full_env = dict(os.environ)
        full_env.update(_procs.otel_env(target, service_name=service_name, **otel_kwargs))
        full_env.update(env or {})
        cmd = _procs.instrumented_argv(list(argv)) if instrument else list(argv)
        return subprocess.run(cmd, env=full_env, cwd=cwd, capture_output=True, text=True, timeout=timeout)

    default_collector = collector
    return run


@pytest.fixture
def start_worker(collector: Collector, e2e_dir: Path) -> Iterator[Callable[..., Proc]]:
    """Like ``run_worker`` but in the background: returns a started :class:`_procs.Proc` (log file in
    the session dir); stopped at the end of the test if still running."""
    procs: list[Proc] = []

    def start(
        argv: list[str],
        *,
        name: str = "worker",
        service_name: str = "otel-leak-e2e",
        collector: Collector | None = None,
        instrument: bool = True,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        **otel_kwargs,
    ) -> Proc:
        target = collector or default_collector
        otel_kwargs.setdefault("instance_id", f"{service_name}-{uuid.uuid4().hex[:8]}")
        full_env = _procs.otel_env(target, service_name=service_name, **otel_kwargs)
        full_env.update(env or {})
        cmd = _procs.instrumented_argv(list(argv)) if instrument else list(argv)
        log = e2e_dir / "workers" / f"{name}-{uuid.uuid4().hex[:6]}.log"
        proc = Proc(name, cmd, log, env=full_env, cwd=cwd).start()
        procs.append(proc)
        return proc

    default_collector = collector
    yield start
    for p in procs:
        p.stop()


# ------------------------------------------------------------------------------------------------
# The leaking and healthy workers the alert modules share

@pytest.fixture(scope="session")
def leak_pair(prometheus: Prometheus, collector: Collector, e2e_dir: Path) -> Iterator[LeakPair]:
    prometheus.wait_for_targets()  # scraping before the workers start: no early sample or exemplar is lost
    started = time.time()
    procs = []
    try:
        for service, instance, leak in ((LEAKY, "leaky-1", LEAK_BYTES), (HEALTHY, "healthy-1", 0)):
            env = _procs.otel_env(collector, service_name=service, instance_id=instance,
                                  extra={names.ENV_PREFIX + "MEMORY_LIMIT": str(MEMORY_LIMIT)})
            argv = _procs.instrumented_argv(
                [sys.executable, str(REPO / "tests" / "workers" / "e2e_worker.py"), "--leak-bytes", str(leak),
                 "--seconds", str(PAIR_SECONDS), "--rate", "100"])
            procs.append(Proc(service, argv, e2e_dir / "workers" / f"{service}.log", env=env, cwd=REPO).start())
        yield LeakPair(procs[0], procs[1], started)
    finally:
        for p in procs:
            p.stop()


@pytest.fixture(scope="session")
def dashboard_workers(prometheus: Prometheus, collector: Collector, e2e_dir: Path) -> Iterator[DashboardWorkers]:
    """Two copies of examples/demo_worker.py (service ``otel-leak-dashboards``, versions ``dash-a`` and
    ``dash-b``) for test_dashboard_queries.py, which stops them when it is done."""
    prometheus.wait_for_targets()  # scraping before the workers start: no early exemplar is lost
    started = DashboardWorkers([], {}, time.time() - 5)
    try:
        for version in DASHBOARD_VERSIONS:
            instance = f"{DASHBOARD_SERVICE}-{version}-{uuid.uuid4().hex[:6]}"
            started.instances[version] = instance
            env = _procs.otel_env(
                collector, service_name=DASHBOARD_SERVICE, instance_id=instance, version=version,
                extra={names.ENV_PREFIX + "MEMORY_LIMIT": str(DASHBOARD_MEMORY_LIMIT),
                       "DEMO_TASKS": "100000000", "DEMO_TASK_SECONDS": "0.002"},
            )
            argv = _procs.instrumented_argv([sys.executable, str(REPO / "examples" / "demo_worker.py")])
            log = e2e_dir / "workers" / f"dashboards-{version}.log"
            started.procs.append(Proc(f"dashboards-{version}", argv, log, env=env, cwd=REPO).start())
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="session", autouse=True)
def _workers_from_the_first_e2e_test(request: pytest.FixtureRequest) -> None:
    """Start ``leak_pair`` and ``dashboard_workers`` with the first e2e test, so that the modules waiting on
    their data find most of the wait done. Where the harness cannot start outside CI (a missing binary
    skips), the tests that need no harness still run."""
    try:
        request.getfixturevalue("leak_pair")
        request.getfixturevalue("dashboard_workers")
    except pytest.skip.Exception:
        if IN_CI:
            raise
