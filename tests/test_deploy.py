"""Checks of deploy/ that need no Docker engine and no cluster.

* every YAML/JSON file parses; Kubernetes objects are well-formed and listed by the kustomization;
* the compose stack mounts the SAME files the tests check (collector/config.yaml, collector/jaeger.yaml,
  dashboards/generated/prometheus-rules.yaml, deploy/alertmanager/alertmanager.yml,
  dashboards/generated/grafana/*.json) by relative path, and every program is pointed at its mount;
* images are pinned (a tag, never ``latest``), in compose, Dockerfiles and manifests;
* every published port is bound to 127.0.0.1; nothing secret is committed;
* deploy/k8s/*.yaml is what deploy/k8s/generate.py produces now, and its ConfigMaps hold the current files;
* the collector configs validate (the built binary's ``validate``) with the environment compose and the
  manifests give them, and Prometheus' config passes ``promtool check config`` with the real rules file.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
COMPOSE_DIR = DEPLOY / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
K8S = DEPLOY / "k8s"
IN_CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}

RULES = REPO / "dashboards" / "generated" / "prometheus-rules.yaml"
ALERTMANAGER = DEPLOY / "alertmanager" / "alertmanager.yml"
DASHBOARDS = REPO / "dashboards" / "generated" / "grafana"
COLLECTOR_CONFIG = REPO / "collector" / "config.yaml"
JAEGER_CONFIG = REPO / "collector" / "jaeger.yaml"

# service -> {container path: the repository file the tests check}
TESTED_MOUNTS = {
    "otelcol": {"/etc/otelcol-leak/config.yaml": COLLECTOR_CONFIG},
    "jaeger": {"/etc/jaeger/config.yaml": JAEGER_CONFIG},
    "prometheus": {
        "/etc/prometheus/prometheus.yml": COMPOSE_DIR / "prometheus" / "prometheus.yml",
        "/etc/prometheus/rules/prometheus-rules.yaml": RULES,
    },
    "alertmanager": {"/etc/alertmanager/alertmanager.yml": ALERTMANAGER},
    "grafana": {
        "/var/lib/grafana/dashboards/otel-leak": DASHBOARDS,
        "/etc/grafana/provisioning/datasources": COMPOSE_DIR / "grafana" / "provisioning" / "datasources",
        "/etc/grafana/provisioning/dashboards": COMPOSE_DIR / "grafana" / "provisioning" / "dashboards",
    },
}


def _load_generator():
    spec = importlib.util.spec_from_file_location("otel_leak_k8s_generate", K8S / "generate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


GEN = _load_generator()


def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def mounts(service: dict) -> dict[str, Path]:
    """container path -> host path (resolved) of a compose service's bind mounts (short syntax)."""
    out = {}
    for v in service.get("volumes", []):
        assert isinstance(v, str), f"use the short volume syntax: {v}"
        parts = v.split(":")
        src, dst = parts[0], parts[1]
        if src.startswith((".", "/")):
            out[dst] = (COMPOSE_DIR / src).resolve()
    return out


def deploy_files(*suffixes: str) -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.is_file() and p.suffix in suffixes
                  and "secrets" not in p.parts)


def k8s_docs() -> list[tuple[Path, dict]]:
    return [(p, d) for p in sorted(K8S.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]


def k8s_containers() -> list[tuple[str, dict]]:
    out = []
    for path, doc in k8s_docs():
        spec = (doc.get("spec") or {}).get("template", {}).get("spec", {})
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            out.append((f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", c))
    return out


def dockerfiles() -> list[Path]:
    return sorted(DEPLOY.rglob("Dockerfile"))


# --------------------------------------------------------------------------------------------------
# Parsing


@pytest.mark.parametrize("path", deploy_files(".yml", ".yaml", ".json"), ids=lambda p: str(p.relative_to(REPO)))
def test_every_deploy_file_parses(path: Path) -> None:
    text = path.read_text()
    docs = [json.loads(text)] if path.suffix == ".json" else [d for d in yaml.safe_load_all(text) if d]
    assert docs, f"{path} is empty"


def test_k8s_objects_are_well_formed_and_all_in_the_kustomization() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kust["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk
    kinds = set()
    for path, doc in k8s_docs():
        if doc.get("kind") == "Kustomization":
            continue
        assert doc.get("apiVersion") and doc.get("kind") and doc["metadata"].get("name"), f"{path}: {doc}"
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == GEN.NAMESPACE, f"{path}: {doc['metadata']['name']}"
        kinds.add((doc["kind"], doc["metadata"]["name"]))
    # the pieces the stack needs
    for kind, name in [("DaemonSet", GEN.AGENT), ("Deployment", GEN.GATEWAY), ("PrometheusRule", "otel-leak-rules"),
                       ("Instrumentation", "otel-leak"), ("PodMonitor", GEN.GATEWAY), ("Deployment", GEN.JAEGER)]:
        assert (kind, name) in kinds, f"missing {kind}/{name}"
    dash_maps = [n for k, n in kinds if k == "ConfigMap" and n.startswith("grafana-dashboard-")]
    assert len(dash_maps) == len(list(DASHBOARDS.glob("*.json")))


# --------------------------------------------------------------------------------------------------
# Compose: the same files the tests use


def test_compose_mounts_exist_and_are_the_tested_files() -> None:
    services = compose()["services"]
    for name, service in services.items():
        for dst, src in mounts(service).items():
            assert src.exists(), f"{name}: mounted {src} does not exist"
            assert REPO in src.parents, f"{name}: mounts {src} from outside the repository"
    for name, expected in TESTED_MOUNTS.items():
        got = mounts(services[name])
        for dst, path in expected.items():
            assert got.get(dst) == path.resolve(), f"{name} must mount {path.relative_to(REPO)} at {dst}, got {got}"


def test_programs_are_pointed_at_their_mounts() -> None:
    services = compose()["services"]

    def flag(service: dict, name: str) -> str:
        for arg in service["command"]:
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
        raise AssertionError(f"no {name} in {service['command']}")

    assert flag(services["otelcol"], "--config") in mounts(services["otelcol"])
    assert flag(services["jaeger"], "--config") in mounts(services["jaeger"])
    assert flag(services["prometheus"], "--config.file") in mounts(services["prometheus"])
    assert "--enable-feature=exemplar-storage" in services["prometheus"]["command"]
    assert flag(services["alertmanager"], "--config.file") in mounts(services["alertmanager"])

    prom = yaml.safe_load((COMPOSE_DIR / "prometheus" / "prometheus.yml").read_text())
    for rule_file in prom["rule_files"]:
        assert rule_file in mounts(services["prometheus"]), f"rule file {rule_file} is not mounted"
    targets = [t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    port = services["otelcol"]["environment"]["OTEL_LEAK_COLLECTOR_PROMETHEUS_ENDPOINT"].rsplit(":", 1)[1]
    assert f"otelcol:{port}" in targets, "Prometheus must scrape the collector's prometheus exporter"
    am_targets = [t for am in prom["alerting"]["alertmanagers"] for sc in am["static_configs"] for t in sc["targets"]]
    assert am_targets == ["alertmanager:9093"]

    provider = yaml.safe_load((COMPOSE_DIR / "grafana" / "provisioning" / "dashboards" / "otel-leak.yaml").read_text())
    path = provider["providers"][0]["options"]["path"]
    assert mounts(services["grafana"])[path] == DASHBOARDS.resolve()
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (DASHBOARDS / Path(home).relative_to(path)).exists()

    # the collector sends traces to the trace store's OTLP port; Grafana reaches the query port
    assert services["otelcol"]["environment"]["OTEL_LEAK_TRACESTORE_OTLP_ENDPOINT"] == \
        "jaeger:" + services["jaeger"]["environment"]["OTEL_LEAK_JAEGER_OTLP_GRPC_ENDPOINT"].rsplit(":", 1)[1]


def test_alertmanager_secret_files_and_webhooks_are_provided() -> None:
    """Every *_file the Alertmanager config reads is mounted; its .invalid webhook host resolves in the stack."""
    services = compose()["services"]
    am = services["alertmanager"]
    targets = {s["target"] for s in am.get("secrets", [])} | set(mounts(am))
    text = ALERTMANAGER.read_text()

    def file_values(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if isinstance(k, str) and k.endswith("_file") and isinstance(v, str):
                    yield v
                else:
                    yield from file_values(v)
        elif isinstance(node, list):
            for item in node:
                yield from file_values(item)

    files = list(file_values(yaml.safe_load(text)))
    assert files, "expected the PagerDuty routing_key_file"
    for f in files:
        assert f in targets, f"alertmanager.yml reads {f}, which compose does not mount"
    hosts = {re.match(r"https?://([^/:]+)", u).group(1) for u in re.findall(r"url:\s*(\S+)", text)}
    aliases = {a for s in services.values() for a in (s.get("networks") or {}).get("default", {}).get("aliases", [])}
    assert hosts <= aliases | set(services), f"webhook hosts {hosts - aliases} resolve nowhere in the stack"
    for name, secret in compose()["secrets"].items():
        assert secret["file"].startswith("${"), f"secret {name} must come from .env, not a committed path"


def test_builds_and_dockerfiles_reference_existing_files() -> None:
    for name, service in compose()["services"].items():
        build = service.get("build")
        if not build:
            continue
        context = (COMPOSE_DIR / build["context"]).resolve()
        dockerfile = context / build["dockerfile"]
        assert dockerfile.exists(), f"{name}: {dockerfile}"
        for line in dockerfile.read_text().splitlines():
            m = re.match(r"COPY\s+(?!--from)(.+)\s+\S+$", line.strip())
            if m:
                for src in m.group(1).split():
                    assert (context / src).exists(), f"{dockerfile.relative_to(REPO)}: COPY {src} not in context"
    # the instrumentation image's Dockerfile (built from the repository root) too
    df = K8S / "instrumentation" / "Dockerfile"
    for line in df.read_text().splitlines():
        m = re.match(r"COPY\s+(?!--from)(.+)\s+\S+$", line.strip())
        if m:
            for src in m.group(1).split():
                assert (REPO / src).exists(), f"{df}: COPY {src}"


def test_collector_image_uses_the_manifest_and_builder_of_collector_build_sh() -> None:
    df = (COMPOSE_DIR / "collector" / "Dockerfile").read_text()
    script = (REPO / "collector" / "build.sh").read_text()
    ocb = re.search(r"^OCB_VERSION=(\S+)", script, re.M).group(1)
    assert f"ARG OCB_VERSION={ocb}" in df
    assert "COPY collector/builder.yaml" in df
    version = yaml.safe_load((REPO / "collector" / "builder.yaml").read_text())["dist"]["version"]
    assert compose()["services"]["otelcol"]["image"].endswith(f":{version}")


# --------------------------------------------------------------------------------------------------
# Pinned images, local ports, no secrets


def _pinned(image: str) -> bool:
    if "@sha256:" in image:
        return True
    name = image.rsplit("/", 1)[-1]
    return ":" in name and name.rsplit(":", 1)[1] not in ("", "latest")


def test_image_tags_are_pinned() -> None:
    images = []
    for name, service in compose()["services"].items():
        assert "image" in service, f"{name}: name the image (and tag) even when it is built"
        images.append((f"compose {name}", service["image"]))
    for where, c in k8s_containers():
        images.append((where, c["image"]))
    for path, doc in k8s_docs():
        if doc.get("kind") == "Instrumentation":
            images.append((f"{path.name} python", doc["spec"]["python"]["image"]))
    for df in dockerfiles():
        stages = set()
        for line in df.read_text().splitlines():
            m = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line.strip(), re.I)
            if m:
                if m.group(1) not in stages and m.group(1) != "scratch":
                    images.append((str(df.relative_to(REPO)), m.group(1)))
                if m.group(2):
                    stages.add(m.group(2))
    assert len(images) >= 12
    bad = [(w, i) for w, i in images if not _pinned(i)]
    assert not bad, f"unpinned images: {bad}"


def test_published_ports_are_bound_to_localhost() -> None:
    published = 0
    for name, service in compose()["services"].items():
        assert service.get("network_mode") != "host", name
        for port in service.get("ports", []):
            assert isinstance(port, str) and port.startswith("127.0.0.1:"), f"{name}: {port}"
            published += 1
    assert published >= 5


SECRET_PATTERNS = [
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"AKIA[0-9A-Z]{16}"),
    re.compile(r"(?i)(password|passwd|secret|token|api[_-]?key|routing_key|service_key)\s*[:=]\s*['\"]?(?!\$\{)[^\s'\"#]{6,}"),
    re.compile(r"\b[0-9a-f]{32}\b"),  # PagerDuty routing/integration keys
]
ALLOWED = re.compile(r"(_file:|secretKeyRef)")


def test_no_secrets_committed() -> None:
    hits = []
    for path in sorted(p for p in DEPLOY.rglob("*") if p.is_file()):
        if "secrets" in path.relative_to(DEPLOY).parts and path.name != "README.md":
            hits.append(f"{path}: files in secrets/ must not be in the repository")
            continue
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if ALLOWED.search(line):
                continue
            if any(p.search(line) for p in SECRET_PATTERNS):
                hits.append(f"{path.relative_to(REPO)}:{n}: {line.strip()[:120]}")
    assert not hits, "\n".join(hits)
    env_example = (COMPOSE_DIR / ".env.example").read_text()
    assert re.search(r"^GRAFANA_ADMIN_PASSWORD=$", env_example, re.M), "the example must leave the password empty"
    gitignore = (COMPOSE_DIR / ".gitignore").read_text().split()
    assert ".env" in gitignore and "secrets/*" in gitignore


def test_compose_variables_are_documented_in_env_example() -> None:
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", COMPOSE_FILE.read_text()))
    documented = set(re.findall(r"^([A-Z0-9_]+)=", (COMPOSE_DIR / ".env.example").read_text(), re.M))
    assert used and used <= documented, f"undocumented: {used - documented}"
    grafana_env = compose()["services"]["grafana"]["environment"]
    assert grafana_env["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")


# --------------------------------------------------------------------------------------------------
# Grafana data sources: exemplars link to the trace store


def test_prometheus_data_source_links_exemplars_to_the_trace_store() -> None:
    doc = yaml.safe_load((COMPOSE_DIR / "grafana" / "provisioning" / "datasources" / "otel-leak.yaml").read_text())
    by_uid = {d["uid"]: d for d in doc["datasources"]}
    prom = next(d for d in doc["datasources"] if d["type"] == "prometheus")
    dests = prom["jsonData"]["exemplarTraceIdDestinations"]
    assert [d["name"] for d in dests] == ["trace_id"], "the exemplar label the collector's exporter writes"
    assert by_uid[dests[0]["datasourceUid"]]["type"] in ("jaeger", "tempo")
    # the dashboards' data source variable defaults to this data source
    for path in DASHBOARDS.glob("*.json"):
        var = next(v for v in json.loads(path.read_text())["templating"]["list"] if v["name"] == "datasource")
        assert var["current"]["value"] == prom["name"], path.name


# --------------------------------------------------------------------------------------------------
# Kubernetes: generated, current, holding the current files


def test_k8s_manifests_are_current(tmp_path: Path) -> None:
    outputs = GEN.outputs()
    on_disk = {p.name: p.read_text() for p in K8S.glob("*.yaml")}
    assert sorted(on_disk) == sorted(outputs), "deploy/k8s has extra or missing generated files"
    stale = [n for n, text in outputs.items() if on_disk[n] != text]
    assert not stale, f"stale {stale}: run `.venv/bin/python deploy/k8s/generate.py` and commit"


def test_k8s_configmaps_hold_the_tested_files() -> None:
    seen = set()
    for path, doc in k8s_docs():
        if doc.get("kind") != "ConfigMap":
            continue
        sources = doc["metadata"]["annotations"]["otel-leak.io/generated-from"].split(", ")
        for key, source in zip(doc["data"], sources):
            src = REPO / source
            seen.add(src)
            if src.suffix == ".json" or src.parent.name != "datasources":
                assert doc["data"][key] == src.read_text(), f"{path.name}: {key} differs from {source}"
    for f in ("agent.yaml", "config.yaml", "gateway.yaml", "jaeger.yaml"):
        assert REPO / "collector" / f in seen, f"collector/{f} is in no ConfigMap"
    assert {p for p in DASHBOARDS.glob("*.json")} <= seen
    rule = next(d for _, d in k8s_docs() if d.get("kind") == "PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]


def test_instrumentation_injects_otel_leak_with_known_settings() -> None:
    from otel_leak import config
    from otel_leak.names import ENV_PREFIX

    inst = next(d for _, d in k8s_docs() if d.get("kind") == "Instrumentation")
    env = {e["name"]: e["value"] for e in inst["spec"]["python"]["env"]}
    leak = {k: v for k, v in env.items() if k.startswith(ENV_PREFIX)}
    assert leak, "the Instrumentation should show the OTEL_PYTHON_LEAK_* settings"
    assert set(leak) <= set(config.SETTINGS), f"unknown settings {set(leak) - set(config.SETTINGS)}"
    assert inst["spec"]["exporter"]["endpoint"].startswith(f"http://{GEN.AGENT}.")
    agent_svc = next(d for _, d in k8s_docs() if d["kind"] == "Service" and d["metadata"]["name"] == GEN.AGENT)
    assert agent_svc["spec"]["internalTrafficPolicy"] == "Local"
    assert inst["spec"]["exporter"]["endpoint"].endswith(":4318"), "the operator's Python default is OTLP/HTTP"


# --------------------------------------------------------------------------------------------------
# Real tools: the collector's validate and promtool


def _collector_binary() -> str | None:
    if os.environ.get("OTEL_LEAK_COLLECTOR_BIN"):
        return os.environ["OTEL_LEAK_COLLECTOR_BIN"]
    res = subprocess.run(["bash", str(REPO / "collector" / "build.sh"), "--cached-only"], capture_output=True, text=True)
    path = res.stdout.strip().splitlines()[-1] if res.returncode == 0 and res.stdout.strip() else ""
    return path if path and os.access(path, os.X_OK) else None


def _missing(what: str) -> None:
    if IN_CI:
        pytest.fail(f"{what} is missing (CI=true: never skipped)", pytrace=False)
    pytest.skip(f"{what} is missing")


def _collector_runs() -> list[tuple[str, list[Path], dict[str, str]]]:
    """(where, config files on disk, environment) of every collector the deploy files start."""
    runs = []
    otelcol = compose()["services"]["otelcol"]
    where = {dst: src for dst, src in mounts(otelcol).items()}
    configs = [where[a.split("=", 1)[1]] for a in otelcol["command"] if a.startswith("--config=")]
    runs.append(("compose otelcol", configs, {k: str(v) for k, v in otelcol["environment"].items()}))
    for name, c in k8s_containers():
        if c["name"] != "otelcol":
            continue
        files = [REPO / "collector" / Path(a.split("=", 1)[1]).name for a in c["args"] if a.startswith("--config=")]
        env = {e["name"]: e.get("value", "node-1") for e in c["env"]}
        runs.append((name, files, env))
    return runs


def test_deploy_environment_variables_exist_in_the_configs() -> None:
    for where, configs, env in _collector_runs():
        referenced = set().union(*(re.findall(r"\$\{env:([A-Z0-9_]+)", p.read_text()) for p in configs))
        assert set(env) <= referenced, f"{where}: sets {set(env) - referenced}, which its configs never read"
    jaeger = compose()["services"]["jaeger"]["environment"]
    assert set(jaeger) <= set(re.findall(r"\$\{env:([A-Z0-9_]+)", JAEGER_CONFIG.read_text()))


@pytest.mark.parametrize("run", _collector_runs(), ids=lambda r: r[0])
def test_collector_configs_validate_with_the_deploy_environment(run) -> None:
    binary = _collector_binary()
    if not binary:
        _missing("otelcol-leak (collector/build.sh)")
    where, configs, env = run
    argv = [binary, "validate", *[f"--config={p}" for p in configs]]
    res = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **env}, timeout=60)
    assert res.returncode == 0, f"{where}: {' '.join(argv)}\n{res.stdout}\n{res.stderr}"


def test_promtool_checks_the_compose_prometheus_config(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if not promtool:
        _missing("promtool (Debian package prometheus)")
    cfg = yaml.safe_load((COMPOSE_DIR / "prometheus" / "prometheus.yml").read_text())
    where = mounts(compose()["services"]["prometheus"])
    cfg["rule_files"] = [str(where[r]) for r in cfg["rule_files"]]  # container paths -> the mounted files
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(cfg))
    res = subprocess.run([promtool, "check", "config", str(path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout + res.stderr
