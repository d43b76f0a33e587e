"""Process helpers for the end-to-end harness: free ports, readiness waits, starting and stopping the
real programs (the otelcol-leak collector, Jaeger, Prometheus, Alertmanager), and a webhook sink.

Nothing here talks to anything but 127.0.0.1. Every process is started in its own session and is
stopped by its own pid (SIGTERM, then SIGKILL after a grace period).

The fixtures live in ``conftest.py``; this module is plain Python so other test modules (and a REPL)
can use the classes directly.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

REPO = Path(__file__).resolve().parents[2]
COLLECTOR_DIR = REPO / "collector"
IN_CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}
HOST = "127.0.0.1"


# ------------------------------------------------------------------------------------------------
# Missing prerequisites: fail in CI, skip elsewhere.


def missing(what: str, how: str) -> None:
    """A binary or prerequisite is not there: ``pytest.fail`` under CI=true, ``pytest.skip`` otherwise."""
    import pytest

    msg = f"{what} is missing: {how}"
    if IN_CI:
        pytest.fail(f"{msg} (CI=true: an e2e prerequisite must never be skipped)", pytrace=False)
    pytest.skip(msg)


def find_binary(name: str, env_var: str | None = None) -> str | None:
    """Path of ``name`` from ``$env_var`` (if set) or PATH (plus /usr/bin, /usr/sbin)."""
    if env_var and os.environ.get(env_var):
        p = os.environ[env_var]
        return p if os.access(p, os.X_OK) else None
    return shutil.which(name) or shutil.which(name, path="/usr/bin:/usr/sbin:/usr/local/bin")


def cached_build(script: Path, *, build: bool = False, timeout: float = 1800) -> str | None:
    """Run ``collector/build*.sh`` and return the binary path it prints (last stdout line).

    With ``build=False`` only an already-built binary is returned (``--cached-only``), so a test
    session never starts a multi-minute Go build by surprise.
    """
    argv = ["bash", str(script)] + ([] if build else ["--cached-only"])
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if res.returncode != 0:
        return None
    lines = res.stdout.strip().splitlines()
    path = lines[-1] if lines else ""
    return path if path and os.access(path, os.X_OK) else None


# ------------------------------------------------------------------------------------------------
# Ports and HTTP


def free_ports(n: int, host: str = HOST) -> list[int]:
    """``n`` distinct free TCP ports on ``host`` (held open together while picking, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port(host: str = HOST) -> int:
    return free_ports(1, host)[0]


def http_request(
    url: str,
    *,
    method: str = "GET",
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 5.0,
) -> tuple[int, bytes]:
    """(status, body). HTTP error statuses are returned, not raised; connection errors raise OSError."""
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def get_json(url: str, timeout: float = 5.0) -> Any:
    status, body = http_request(url, timeout=timeout)
    if status != 200:
        raise RuntimeError(f"GET {url} -> {status}: {body[:500]!r}")
    return json.loads(body)


def wait_until(
    fn: Callable[[], Any], *, timeout: float, interval: float = 0.25, what: str = "condition"
) -> Any:
    """Call ``fn`` until it returns something truthy (returned) or ``timeout`` passes (TimeoutError).

    Exceptions from ``fn`` count as "not yet"; the last one is reported on timeout.
    """
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            value = fn()
            if value:
                return value
        except Exception as e:  # noqa: BLE001 - anything is "not ready yet"
            last_exc = e
        if time.monotonic() >= deadline:
            extra = f" (last error: {last_exc!r})" if last_exc else ""
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{extra}")
        time.sleep(interval)


def wait_for_http(url: str, *, timeout: float = 30.0, proc: "Proc | None" = None, status: int = 200) -> bytes:
    """Poll ``url`` until it answers ``status``. Fails fast, with the log tail, if ``proc`` exits."""

    def probe() -> bytes | None:
        if proc is not None and not proc.alive:
            raise ProcessExited(f"{proc.name} exited with {proc.returncode} before {url} was ready:\n{proc.log_tail()}")
        try:
            code, body = http_request(url, timeout=2.0)
        except OSError:
            return None
        return (body or b"ok") if code == status else None

    deadline = time.monotonic() + timeout
    while True:
        body = probe()
        if body:
            return body
        if time.monotonic() >= deadline:
            tail = f"\n--- {proc.name} log ---\n{proc.log_tail()}" if proc else ""
            raise TimeoutError(f"{url} not ready after {timeout:.0f}s{tail}")
        time.sleep(0.1)


class ProcessExited(RuntimeError):
    pass


# ------------------------------------------------------------------------------------------------
# A started program


@dataclass
class Proc:
    """A program we started: stdout+stderr go to ``log_path``. Stop it with :meth:`stop`."""

    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str] | None = None
    cwd: Path | None = None
    popen: subprocess.Popen | None = None

    def start(self) -> "Proc":
        if self.alive:
            return self
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        log.write(f"\n=== start {time.strftime('%H:%M:%S')}: {' '.join(self.argv)}\n".encode())
        log.flush()
        env = dict(os.environ)
        if self.env:
            env.update(self.env)
        self.popen = subprocess.Popen(
            self.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=str(self.cwd) if self.cwd else None,
            start_new_session=True,
        )
        log.close()
        return self

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.popen.poll() if self.popen else None

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM our process, SIGKILL it after ``grace`` seconds. Returns the exit code."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            try:
                self.popen.send_signal(signal.SIGTERM)
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
            except ProcessLookupError:
                pass
        return self.popen.returncode

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


# ------------------------------------------------------------------------------------------------
# The collector


@dataclass
class Collector:
    """A running otelcol-leak. Endpoints are ``host:port``; ``otlp_grpc_url`` is for SDK exporters."""

    binary: str
    configs: list[Path]
    workdir: Path
    env: dict[str, str]
    grpc_endpoint: str
    http_endpoint: str
    prometheus_endpoint: str
    health_endpoint: str
    telemetry_port: int
    proc: Proc

    @property
    def otlp_grpc_url(self) -> str:
        return f"http://{self.grpc_endpoint}"

    @property
    def otlp_http_url(self) -> str:
        return f"http://{self.http_endpoint}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.prometheus_endpoint}/metrics"

    @property
    def health_url(self) -> str:
        return f"http://{self.health_endpoint}/"

    def start(self, timeout: float = 30.0) -> "Collector":
        self.proc.start()
        wait_for_http(self.health_url, timeout=timeout, proc=self.proc)
        return self

    def stop(self) -> int | None:
        return self.proc.stop()

    def scrape(self) -> str:
        """The exporter's /metrics page in OpenMetrics format (with exemplars)."""
        status, body = http_request(
            self.metrics_url, headers={"Accept": "application/openmetrics-text; version=1.0.0"}
        )
        if status != 200:
            raise RuntimeError(f"{self.metrics_url} -> {status}")
        return body.decode()


def collector_argv(binary: str, configs: Iterable[Path], command: str | None = None) -> list[str]:
    argv = [binary] + ([command] if command else [])
    return argv + [f"--config={Path(c).resolve()}" for c in configs]


def validate_collector_config(binary: str, configs: Iterable[Path], env: dict[str, str] | None = None):
    """Run ``otelcol-leak validate``: CompletedProcess (text) with the collector's own messages."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        collector_argv(binary, configs, "validate"), capture_output=True, text=True, timeout=60, env=full_env
    )


def start_collector(
    binary: str,
    workdir: Path,
    *,
    configs: Iterable[Path] | None = None,
    env: dict[str, str] | None = None,
    name: str = "collector",
    timeout: float = 30.0,
) -> Collector:
    """Start otelcol-leak on free ports (the OTEL_LEAK_COLLECTOR_* variables of collector/config.yaml)."""
    configs = [Path(c) for c in (configs or [COLLECTOR_DIR / "config.yaml"])]
    workdir.mkdir(parents=True, exist_ok=True)
    grpc, http_, prom, health, telem = free_ports(5)
    full_env = {
        "OTEL_LEAK_COLLECTOR_GRPC_ENDPOINT": f"{HOST}:{grpc}",
        "OTEL_LEAK_COLLECTOR_HTTP_ENDPOINT": f"{HOST}:{http_}",
        "OTEL_LEAK_COLLECTOR_PROMETHEUS_ENDPOINT": f"{HOST}:{prom}",
        "OTEL_LEAK_COLLECTOR_HEALTH_ENDPOINT": f"{HOST}:{health}",
        "OTEL_LEAK_COLLECTOR_TELEMETRY_HOST": HOST,
        "OTEL_LEAK_COLLECTOR_TELEMETRY_PORT": str(telem),
    }
    full_env.update(env or {})
    proc = Proc(name, collector_argv(binary, configs), workdir / f"{name}.log", env=full_env, cwd=workdir)
    col = Collector(
        binary=binary,
        configs=configs,
        workdir=workdir,
        env=full_env,
        grpc_endpoint=full_env["OTEL_LEAK_COLLECTOR_GRPC_ENDPOINT"],
        http_endpoint=full_env["OTEL_LEAK_COLLECTOR_HTTP_ENDPOINT"],
        prometheus_endpoint=full_env["OTEL_LEAK_COLLECTOR_PROMETHEUS_ENDPOINT"],
        health_endpoint=full_env["OTEL_LEAK_COLLECTOR_HEALTH_ENDPOINT"],
        telemetry_port=int(full_env["OTEL_LEAK_COLLECTOR_TELEMETRY_PORT"]),
        proc=proc,
    )
    return col.start(timeout=timeout)


# ------------------------------------------------------------------------------------------------
# Trace store: Jaeger v2 (in memory) or the collector's file exporter


@dataclass
class TraceStore:
    """Where the collector sends traces.

    ``kind == "jaeger"``: a Jaeger v2 all-in-one; ``otlp_endpoint`` is its OTLP/gRPC receiver and
    ``query_url`` its query HTTP API. ``kind == "file"``: no separate process; the collector writes
    OTLP/JSON lines to ``path`` (collector/traces-to-file.yaml).
    """

    kind: str
    workdir: Path
    otlp_endpoint: str | None = None
    query_url: str | None = None
    path: Path | None = None
    proc: Proc | None = None

    def collector_configs(self) -> list[Path]:
        return [COLLECTOR_DIR / "traces-to-file.yaml"] if self.kind == "file" else []

    def collector_env(self) -> dict[str, str]:
        if self.kind == "file":
            return {"OTEL_LEAK_TRACES_FILE": str(self.path)}
        return {"OTEL_LEAK_TRACESTORE_OTLP_ENDPOINT": str(self.otlp_endpoint), "OTEL_LEAK_TRACESTORE_INSECURE": "true"}

    def span_ids(self, trace_id: str) -> set[str]:
        """Hex span ids stored for ``trace_id`` (hex, 32 chars); empty if none (yet)."""
        trace_id = trace_id.lower()
        if self.kind == "jaeger":
            status, body = http_request(f"{self.query_url}/api/traces/{trace_id}")
            if status != 200:
                return set()
            data = json.loads(body).get("data") or []
            return {s["spanID"].lower().rjust(16, "0") for t in data for s in t.get("spans", [])}
        found: set[str] = set()
        try:
            lines = self.path.read_text().splitlines() if self.path else []
        except OSError:
            return found
        for line in lines:
            if trace_id not in line.lower():
                continue
            try:
                req = json.loads(line)
            except ValueError:
                continue  # a line being written
            for rs in req.get("resourceSpans", []):
                for ss in rs.get("scopeSpans", []):
                    for sp in ss.get("spans", []):
                        if sp.get("traceId", "").lower() == trace_id:
                            found.add(sp.get("spanId", "").lower())
        return found

    def wait_for_trace(self, trace_id: str, timeout: float = 20.0) -> set[str]:
        return wait_until(lambda: self.span_ids(trace_id), timeout=timeout, what=f"trace {trace_id} in {self.kind}")

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()


def start_jaeger(binary: str, workdir: Path, timeout: float = 60.0) -> TraceStore:
    """Jaeger v2 with collector/jaeger.yaml on free ports (memory storage)."""
    workdir.mkdir(parents=True, exist_ok=True)
    grpc, http_, query_http, query_grpc, health, telem = free_ports(6)
    env = {
        "OTEL_LEAK_JAEGER_OTLP_GRPC_ENDPOINT": f"{HOST}:{grpc}",
        "OTEL_LEAK_JAEGER_OTLP_HTTP_ENDPOINT": f"{HOST}:{http_}",
        "OTEL_LEAK_JAEGER_QUERY_HTTP_ENDPOINT": f"{HOST}:{query_http}",
        "OTEL_LEAK_JAEGER_QUERY_GRPC_ENDPOINT": f"{HOST}:{query_grpc}",
        "OTEL_LEAK_JAEGER_HEALTH_ENDPOINT": f"{HOST}:{health}",
        "OTEL_LEAK_JAEGER_TELEMETRY_PORT": str(telem),
    }
    proc = Proc(
        "jaeger", [binary, f"--config={COLLECTOR_DIR / 'jaeger.yaml'}"], workdir / "jaeger.log", env=env, cwd=workdir
    ).start()
    store = TraceStore(
        kind="jaeger",
        workdir=workdir,
        otlp_endpoint=env["OTEL_LEAK_JAEGER_OTLP_GRPC_ENDPOINT"],
        query_url=f"http://{env['OTEL_LEAK_JAEGER_QUERY_HTTP_ENDPOINT']}",
        proc=proc,
    )
    wait_for_http(f"{store.query_url}/api/services", timeout=timeout, proc=proc)
    return store


def file_tracestore(workdir: Path) -> TraceStore:
    workdir.mkdir(parents=True, exist_ok=True)
    return TraceStore(kind="file", workdir=workdir, path=workdir / "traces.jsonl")


# ------------------------------------------------------------------------------------------------
# Prometheus


PROMETHEUS_FLAGS = ("--enable-feature=exemplar-storage", "--web.enable-lifecycle")


@dataclass
class Prometheus:
    """A Debian ``prometheus`` 2.42 scraping the collector every second.

    ``load_rules(paths)`` rewrites prometheus.yml and reloads (``--web.enable-lifecycle``), so a test
    can swap rule files without a restart.
    """

    binary: str
    workdir: Path
    port: int
    scrape_targets: list[str]
    rule_files: list[Path]
    alertmanagers: list[str]
    interval: str = "1s"
    proc: Proc | None = None
    config_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.config_path = self.workdir / "prometheus.yml"

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def render_config(self) -> dict:
        cfg: dict[str, Any] = {
            "global": {"scrape_interval": self.interval, "evaluation_interval": self.interval, "scrape_timeout": self.interval},
            "rule_files": [str(Path(p).resolve()) for p in self.rule_files],
            "scrape_configs": [
                {
                    "job_name": "otel-leak-collector",
                    "scrape_interval": self.interval,
                    "static_configs": [{"targets": list(self.scrape_targets)}],
                }
            ],
        }
        if self.alertmanagers:
            cfg["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": list(self.alertmanagers)}]}]}
        return cfg

    def write_config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(self.render_config(), sort_keys=False))
        return self.config_path

    def start(self, timeout: float = 30.0) -> "Prometheus":
        self.write_config()
        argv = [
            self.binary,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address={HOST}:{self.port}",
            *PROMETHEUS_FLAGS,
        ]
        self.proc = Proc("prometheus", argv, self.workdir / "prometheus.log", cwd=self.workdir).start()
        wait_for_http(f"{self.url}/-/ready", timeout=timeout, proc=self.proc)
        self.wait_for_targets(timeout=timeout)
        return self

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()

    def reload(self) -> None:
        self.write_config()
        status, body = http_request(f"{self.url}/-/reload", method="POST", data=b"", timeout=30)
        if status != 200:
            raise RuntimeError(f"prometheus reload failed ({status}): {body.decode(errors='replace')}")

    def wait_for_targets(self, timeout: float = 30.0) -> None:
        """Wait until exactly the configured targets are scraped and up.

        Prometheus applies target changes at most every 5 s (scrape manager), so right after a start or
        a reload nothing has been scraped yet: data sent before that would be seen late, and exemplars
        only present for a moment (they travel with one export) would never be seen at all.
        """
        want = {f"http://{t}/metrics" for t in self.scrape_targets}

        def ready() -> bool:
            active = self.api("targets")["activeTargets"]
            return {t["scrapeUrl"] for t in active} == want and all(t["health"] == "up" for t in active)

        wait_until(ready, timeout=timeout, interval=0.25, what=f"prometheus scraping {sorted(want)}")

    def load_rules(self, paths: Iterable[Path]) -> None:
        """Replace the rule files and reload; raises with Prometheus's message if they do not load."""
        self.rule_files = [Path(p) for p in paths]
        self.reload()

    def set_scrape_targets(self, targets: Iterable[str], timeout: float = 30.0) -> None:
        """Scrape these ``host:port`` targets instead; returns once they are all scraped and up."""
        self.scrape_targets = list(targets)
        self.reload()
        self.wait_for_targets(timeout=timeout)

    def api(self, path: str, **params: Any) -> Any:
        qs = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        status, body = http_request(f"{self.url}/api/v1/{path}?{qs}", timeout=10)
        doc = json.loads(body) if body else {}
        if status != 200 or doc.get("status") != "success":
            raise RuntimeError(f"prometheus /api/v1/{path} {params} -> {status}: {body[:500]!r}")
        return doc["data"]

    def query(self, expr: str, time: float | None = None) -> list[dict]:
        """Instant query: the ``result`` list (vector entries have ``metric`` and ``value``)."""
        return self.api("query", query=expr, time=time)["result"]

    def query_range(self, expr: str, start: float, end: float, step: str = "1s") -> list[dict]:
        return self.api("query_range", query=expr, start=start, end=end, step=step)["result"]

    def query_exemplars(self, expr: str, start: float, end: float) -> list[dict]:
        """``/api/v1/query_exemplars``: [{seriesLabels, exemplars: [{labels, value, timestamp}]}]."""
        return self.api("query_exemplars", query=expr, start=start, end=end)

    def value(self, expr: str) -> float | None:
        """Scalar value of a one-element instant vector, None if empty."""
        res = self.query(expr)
        return float(res[0]["value"][1]) if res else None

    def wait_for(self, expr: str, timeout: float = 30.0, predicate: Callable[[list[dict]], Any] = bool) -> list[dict]:
        """Poll ``expr`` until ``predicate(result)`` is truthy; returns the result."""

        def probe() -> list[dict] | None:
            res = self.query(expr)
            return res if predicate(res) else None

        return wait_until(probe, timeout=timeout, interval=0.5, what=f"prometheus: {expr}")

    def alerts(self) -> list[dict]:
        return self.api("alerts")["alerts"]

    def rules(self) -> list[dict]:
        return self.api("rules")["groups"]


# ------------------------------------------------------------------------------------------------
# Alertmanager


# Alertmanager 0.25's send_resolved default per notifier.
_SEND_RESOLVED_DEFAULT = {
    "webhook_configs": True,
    "pagerduty_configs": True,
    "opsgenie_configs": True,
    "victorops_configs": True,
    "pushover_configs": True,
    "wechat_configs": False,
    "slack_configs": False,
    "email_configs": False,
    "sns_configs": True,
    "telegram_configs": True,
    "discord_configs": True,
    "webex_configs": True,
}


def prepare_alertmanager_config(src: Path, sink_url: str, *, fast: bool = True) -> str:
    """Make an Alertmanager config safe and quick to run in a test, keeping its routing tree.

    * Every receiver that notifies anything (``*_configs``) is replaced by one webhook to
      ``{sink_url}/{receiver name}``, so nothing ever leaves the machine and the test can see which
      receiver a notification went to. ``send_resolved`` is kept when the original said it.
      Receivers with no configs (black holes) stay as they are.
    * ``global`` settings that point at outside services or secret files are dropped.
    * Relative ``templates`` are made absolute (the rendered file lives elsewhere).
    * ``fast``: ``group_wait``/``group_interval`` of every route that sets them (and the root)
      become 1s, ``repeat_interval`` 1m, so a test sees a notification within seconds.
    """
    cfg = yaml.safe_load(Path(src).read_text()) or {}
    base = Path(src).resolve().parent
    glob_ = cfg.get("global") or {}
    for k in list(glob_):
        if k.endswith(("_url", "_file", "_api_key", "_api_secret", "_auth_password", "_auth_secret")) or k.startswith(
            ("smtp_", "slack_", "pagerduty_", "opsgenie_", "victorops_", "wechat_", "telegram_", "webex_")
        ) or k == "http_config":
            del glob_[k]
    if glob_:
        cfg["global"] = glob_
    else:
        cfg.pop("global", None)
    for rcv in cfg.get("receivers") or []:
        keys = [k for k in rcv if k.endswith("_configs")]
        if not any(rcv.get(k) for k in keys):
            continue
        send_resolved = any(
            bool(c.get("send_resolved", _SEND_RESOLVED_DEFAULT.get(k, False))) for k in keys for c in (rcv.get(k) or [])
        )
        for k in keys:
            del rcv[k]
        name = urllib.parse.quote(str(rcv["name"]), safe="")
        rcv["webhook_configs"] = [{"url": f"{sink_url}/{name}", "send_resolved": send_resolved}]
    if cfg.get("templates"):
        cfg["templates"] = [t if os.path.isabs(t) else str(base / t) for t in cfg["templates"]]
    if fast:

        def speed(route: dict, root: bool) -> None:
            for key, val in (("group_wait", "1s"), ("group_interval", "1s"), ("repeat_interval", "1m")):
                if root or key in route:
                    route[key] = val
            for child in route.get("routes") or []:
                speed(child, False)

        if cfg.get("route"):
            speed(cfg["route"], True)
    return yaml.safe_dump(cfg, sort_keys=False)


def default_alertmanager_config(sink_url: str) -> str:
    """Everything to one webhook receiver named ``sink`` (used when no deploy config exists yet)."""
    return yaml.safe_dump(
        {
            "route": {"receiver": "sink", "group_by": ["alertname"], "group_wait": "1s", "group_interval": "1s", "repeat_interval": "1m"},
            "receivers": [{"name": "sink", "webhook_configs": [{"url": f"{sink_url}/sink", "send_resolved": True}]}],
        },
        sort_keys=False,
    )


@dataclass
class Alertmanager:
    """A Debian ``prometheus-alertmanager`` 0.25, no clustering (``--cluster.listen-address=``)."""

    binary: str
    workdir: Path
    port: int
    config_path: Path
    proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def start(self, timeout: float = 30.0) -> "Alertmanager":
        argv = [
            self.binary,
            f"--config.file={self.config_path}",
            f"--storage.path={self.workdir / 'data'}",
            f"--web.listen-address={self.address}",
            "--cluster.listen-address=",
        ]
        self.proc = Proc("alertmanager", argv, self.workdir / "alertmanager.log", cwd=self.workdir).start()
        wait_for_http(f"{self.url}/-/ready", timeout=timeout, proc=self.proc)
        return self

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()

    def load_config(self, text: str) -> None:
        """Write a new (already prepared) config and reload; raises with Alertmanager's message."""
        self.config_path.write_text(text)
        status, body = http_request(f"{self.url}/-/reload", method="POST", data=b"", timeout=30)
        if status != 200:
            raise RuntimeError(f"alertmanager reload failed ({status}): {body.decode(errors='replace')}")

    def alerts(self) -> list[dict]:
        return get_json(f"{self.url}/api/v2/alerts")

    def post_alerts(self, alerts: list[dict]) -> None:
        status, body = http_request(
            f"{self.url}/api/v2/alerts",
            method="POST",
            data=json.dumps(alerts).encode(),
            headers={"Content-Type": "application/json"},
        )
        if status != 200:
            raise RuntimeError(f"alertmanager POST alerts -> {status}: {body!r}")


# ------------------------------------------------------------------------------------------------
# Webhook sink: a stand-in for the pager, nothing more


class WebhookSink:
    """Collects JSON POSTed to ``{url}/<anything>`` as ``(path, payload)`` pairs, in arrival order."""

    def __init__(self) -> None:
        self.received: list[tuple[str, Any]] = []
        self.arrived: list[float] = []  # unix time each of ``received`` arrived
        self._cond = threading.Condition()
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    payload: Any = json.loads(raw)
                except ValueError:
                    payload = raw.decode(errors="replace")
                with sink._cond:
                    sink.received.append((self.path, payload))
                    sink.arrived.append(time.time())
                    sink._cond.notify_all()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer((HOST, 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="webhook-sink", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self._server.server_address[1]}"

    @property
    def payloads(self) -> list[Any]:
        with self._cond:
            return [p for _, p in self.received]

    def timed_payloads(self) -> list[tuple[float, Any]]:
        """``(arrival unix time, payload)`` in arrival order."""
        with self._cond:
            return [(t, p) for t, (_, p) in zip(self.arrived, self.received)]

    def for_receiver(self, name: str) -> list[Any]:
        with self._cond:
            return [p for path, p in self.received if path.strip("/") == name]

    def clear(self) -> None:
        with self._cond:
            self.received.clear()
            self.arrived.clear()

    def wait_for(self, predicate: Callable[[str, Any], bool], timeout: float = 30.0) -> tuple[str, Any]:
        """First (path, payload) matching ``predicate`` (already received or arriving within timeout)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for path, payload in self.received:
                    if predicate(path, payload):
                        return path, payload
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no matching webhook within {timeout:.0f}s; got {self.received!r}"[:2000])
                self._cond.wait(left)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# ------------------------------------------------------------------------------------------------
# Workers under opentelemetry-instrument

LEAKY, HEALTHY = "e2e-leaky", "e2e-healthy"  # the services of conftest.py's leak_pair
LEAK_BYTES = 64 * 1024
MEMORY_LIMIT = 400 * 1024 * 1024
PAIR_SECONDS = 1200  # longer than the e2e modules take; stopped at the end of the session


@dataclass
class LeakPair:
    leaky: Proc
    healthy: Proc
    started: float  # unix time, just before the two workers started


DASHBOARD_SERVICE = "otel-leak-dashboards"  # the service of conftest.py's dashboard_workers
DASHBOARD_VERSIONS = ("dash-a", "dash-b")
DASHBOARD_MEMORY_LIMIT = 2 * 1024**3


@dataclass
class DashboardWorkers:
    procs: list[Proc]
    instances: dict[str, str]  # version -> service.instance.id
    start: float  # unix time, 5 s before the workers started

    def stop(self) -> None:
        for p in self.procs:
            p.stop()



def venv_bin(name: str) -> str:
    """A console script of the venv pytest runs in (falls back to the repo's .venv)."""
    for d in (Path(sys.executable).parent, REPO / ".venv" / "bin"):
        p = d / name
        if p.exists():
            return str(p)
    return name


def otel_env(
    collector: Collector,
    *,
    service_name: str,
    instance_id: str | None = None,
    version: str = "0.0.0-e2e",
    timeout_s: float | None = None,
    export_interval_ms: int = 1000,
    disabled_instrumentations: Iterable[str] = (),
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    """OTEL_* environment for an SDK/auto-instrumented program that exports OTLP/gRPC to ``collector``."""
    attrs = [f"service.version={version}"]
    if instance_id:
        attrs.append(f"service.instance.id={instance_id}")
    env = {
        "OTEL_SERVICE_NAME": service_name,
        "OTEL_RESOURCE_ATTRIBUTES": ",".join(attrs),
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.otlp_grpc_url,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_LOGS_EXPORTER": "otlp",
        "OTEL_METRIC_EXPORT_INTERVAL": str(export_interval_ms),
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "OTEL_TRACES_SAMPLER": "parentbased_always_on",
        "OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED": "true",
        "PYTHONUNBUFFERED": "1",
    }
    if timeout_s is not None:
        env["OTEL_EXPORTER_OTLP_TIMEOUT"] = str(timeout_s)  # seconds in the Python SDK
    disabled = list(disabled_instrumentations)
    if disabled:
        env["OTEL_PYTHON_DISABLED_INSTRUMENTATIONS"] = ",".join(disabled)
    env.update(extra or {})
    return env


def instrumented_argv(argv: list[str]) -> list[str]:
    return [venv_bin("opentelemetry-instrument"), *argv]
