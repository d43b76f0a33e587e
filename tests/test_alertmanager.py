"""deploy/alertmanager/alertmanager.yml: valid for Alertmanager 0.25, routes as documented, no secrets, and a
real Alertmanager delivers to the webhook and to PagerDuty (key read from a file), inhibiting warnings.

amtool and prometheus-alertmanager come from the Debian ``prometheus-alertmanager`` package
(scripts/setup-services.sh). Missing, these tests FAIL under ``CI=true`` and skip elsewhere.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import yaml

from dashboards import alertmanager as am
from dashboards.mixin import ALERTS, Mixin
from otel_leak import names

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
IN_CI = os.environ.get("CI", "").lower() == "true"
TEAM = Mixin().team
SEVERITY, TEAM_LABEL = names.LABEL_SEVERITY, names.LABEL_TEAM


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        msg = f"{name} is not installed (apt-get install prometheus-alertmanager; scripts/setup-services.sh does it)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=ROOT)


def cfg() -> dict:
    return yaml.safe_load(CONFIG.read_text())


# --------------------------------------------------------------------------------------------------
# Static checks


def test_amtool_check_config():
    out = run(binary("amtool"), "check-config", str(CONFIG))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_rendered_config_is_valid(tmp_path):
    key = tmp_path / "key"
    key.write_text("k\n")
    path = tmp_path / "am.yml"
    path.write_text(am.render("https://hooks.example.com", str(key), pagerduty_url="http://127.0.0.1:1/pd",
                              group_wait="1s", group_interval="1s"))
    out = run(binary("amtool"), "check-config", str(path))
    assert out.returncode == 0, out.stdout + out.stderr
    text = path.read_text()
    assert am.WEBHOOK_BASE not in text and am.ROUTING_KEY_FILE not in text
    assert "https://hooks.example.com/otel-leak/workers" in text


# (labels, receivers) -- every route of the documented routing table
ROUTES = [
    ({"alertname": "OtelLeakMemoryFloorGrowing", SEVERITY: "critical", TEAM_LABEL: TEAM, names.LABEL_SERVICE: "billing"},
     "workers-pagerduty,workers-webhook"),
    ({"alertname": "OtelLeakMemoryFillingUp", SEVERITY: "critical", TEAM_LABEL: TEAM}, "workers-pagerduty,workers-webhook"),
    ({"alertname": "OtelLeakMemoryFloorGrowing", SEVERITY: "warning", TEAM_LABEL: TEAM, names.LABEL_SERVICE: "billing"},
     "workers-webhook"),
    ({"alertname": "OtelLeakTaskRetainingMemory", SEVERITY: "warning", TEAM_LABEL: TEAM, names.LABEL_TASK: "resize"},
     "workers-webhook"),
    ({"alertname": "OtelLeakTaskRetainingMemory", SEVERITY: "critical", TEAM_LABEL: TEAM, names.LABEL_TASK: "resize"},
     "workers-pagerduty,workers-webhook"),
    ({"alertname": "OtelLeakTelemetryAbsent", SEVERITY: "info", TEAM_LABEL: TEAM}, "workers-webhook"),
    ({"alertname": "OtelLeakGuardRecycling", SEVERITY: "warning", TEAM_LABEL: TEAM,
      names.LABEL_GUARD_OUTCOME: "dry_run"}, "workers-webhook"),
    ({"alertname": "OtelLeakGuardRateLimited", SEVERITY: "critical", TEAM_LABEL: TEAM,
      names.LABEL_GUARD_OUTCOME: "rate_limited"}, "workers-pagerduty,workers-webhook"),
    ({"alertname": "OtelLeakMemoryFloorGrowing", SEVERITY: "critical", TEAM_LABEL: "payments"}, "default-webhook"),
    ({"alertname": "OtelLeakMemoryFloorGrowing", SEVERITY: "critical"}, "default-webhook"),
    ({"alertname": "Watchdog"}, "default-webhook"),
]


@pytest.mark.parametrize("labels, receivers", ROUTES, ids=[f"{l.get(TEAM_LABEL, '-')}/{l.get(SEVERITY, '-')}/{r}" for l, r in ROUTES])
def test_amtool_routes(labels, receivers):
    args = [f"{k}={v}" for k, v in labels.items()]
    out = run(binary("amtool"), "config", "routes", "test", f"--config.file={CONFIG}",
              f"--verify.receivers={receivers}", *args)
    assert out.returncode == 0, f"{labels} -> {out.stdout.strip()} (expected {receivers})\n{out.stderr}"
    assert out.stdout.strip() == receivers


def test_routing_matches_the_rules_team_and_receivers_exist():
    c = cfg()
    team_routes = [r for r in c["route"]["routes"] if f'{TEAM_LABEL}="{TEAM}"' in r.get("matchers", [])]
    assert team_routes, f"no route for team {TEAM!r} (the rules generator's default team)"
    assert {r["name"] for r in c["receivers"]} == set(am.RECEIVERS)


def test_grouping_and_inhibition_use_project_labels():
    c = cfg()
    assert c["route"]["group_by"] == ["alertname", names.LABEL_SERVICE]
    by_crit = next(r for r in c["inhibit_rules"] if r["source_matchers"] == [f'{SEVERITY}="critical"'])
    assert by_crit["target_matchers"] == [f'{SEVERITY}="warning"']
    assert by_crit["equal"] == ["alertname", names.LABEL_SERVICE, names.LABEL_INSTANCE, names.LABEL_PID, names.LABEL_TASK]
    for rule in c["inhibit_rules"]:
        for m in rule["source_matchers"] + rule["target_matchers"]:
            if m.startswith("alertname="):
                assert m.split('"')[1] in ALERTS


def test_no_secrets_in_the_repository():
    c = cfg()
    for r in c["receivers"]:
        for pd in r.get("pagerduty_configs", []):
            assert "routing_key" not in pd and "service_key" not in pd, "PagerDuty keys come from a file"
            assert pd["routing_key_file"] == am.ROUTING_KEY_FILE
        for wh in r.get("webhook_configs", []):
            assert wh["url"].startswith(am.WEBHOOK_BASE + "/"), "webhook URLs are placeholders replaced at deploy"


def test_render_requires_the_placeholders(tmp_path):
    broken = tmp_path / "am.yml"
    broken.write_text(CONFIG.read_text().replace(am.WEBHOOK_BASE, "http://x"))
    with pytest.raises(ValueError, match="placeholders"):
        am.render("http://y", config=broken)


def test_alertmanager_0_25_has_no_webhook_url_file(tmp_path):
    """Why the webhook URL is a placeholder: 0.25 rejects `url_file` (re-check when upgrading)."""
    path = tmp_path / "am.yml"
    path.write_text("route: {receiver: w}\nreceivers:\n- name: w\n  webhook_configs:\n  - url_file: /x\n")
    out = run(binary("amtool"), "check-config", str(path))
    if out.returncode == 0:
        pytest.fail("this Alertmanager supports webhook url_file: use it instead of the URL placeholder")
    assert "url_file" in out.stdout + out.stderr


# --------------------------------------------------------------------------------------------------
# A real Alertmanager: webhook delivery, PagerDuty key from the file, inhibition


class _Sink(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.path, json.loads(body)))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b'{"status":"success"}')

    def log_message(self, *args):
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_real_alertmanager_delivers(tmp_path):
    exe = binary("prometheus-alertmanager")
    _Sink.received = []
    sink = HTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{sink.server_address[1]}"
    key = tmp_path / "pagerduty-routing-key"
    key.write_text("TEST-ROUTING-KEY\n")
    config = tmp_path / "alertmanager.yml"
    config.write_text(am.render(base, str(key), pagerduty_url=f"{base}/pagerduty", group_wait="1s",
                                group_interval="1s"))
    port = _free_port()
    proc = subprocess.Popen(
        [exe, f"--config.file={config}", f"--storage.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail("alertmanager did not start")
                time.sleep(0.1)
        worker = {names.LABEL_SERVICE: "billing", names.LABEL_INSTANCE: "host-a", names.LABEL_PID: "101", TEAM_LABEL: TEAM}
        ann = {"summary": "s", "description": "d", "runbook_url": Mixin().runbook_url("OtelLeakMemoryFloorGrowing")}
        guard_worker = {names.LABEL_SERVICE: "thumbs", names.LABEL_INSTANCE: "host-b", TEAM_LABEL: TEAM}
        alerts = [
            {"labels": {"alertname": "OtelLeakMemoryFloorGrowing", SEVERITY: "critical", **worker}, "annotations": ann},
            {"labels": {"alertname": "OtelLeakMemoryFloorGrowing", SEVERITY: "warning", **worker}, "annotations": ann},
            {"labels": {"alertname": "OtelLeakTelemetryAbsent", SEVERITY: "warning", names.LABEL_SERVICE: "search"},
             "annotations": {"summary": "s2"}},
            # the guard of another service: its rate-limited page mutes its recycling warning
            {"labels": {"alertname": "OtelLeakGuardRateLimited", SEVERITY: "critical", **guard_worker,
                        names.LABEL_PID: "301"},
             "annotations": {"summary": "s3", "runbook_url": Mixin().runbook_url("OtelLeakGuardRateLimited")}},
            {"labels": {"alertname": "OtelLeakGuardRecycling", SEVERITY: "warning", **guard_worker,
                        names.LABEL_PID: "302"},
             "annotations": {"summary": "s4"}},
        ]
        req = urllib.request.Request(f"http://127.0.0.1:{port}/api/v2/alerts", data=json.dumps(alerts).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        urllib.request.urlopen(req, timeout=5)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len({p for p, _ in _Sink.received}) < 3:
            time.sleep(0.2)
        time.sleep(1.5)  # a second group_interval: a late (uninhibited) warning would show up now
    finally:
        proc.terminate()
        log = proc.communicate(timeout=10)[0].decode(errors="replace")
        sink.shutdown()
    by_path: dict[str, list] = {}
    for path, body in _Sink.received:
        by_path.setdefault(path, []).append(body)
    assert set(by_path) == {"/otel-leak/workers", "/otel-leak/default", "/pagerduty"}, log[-2000:]

    # webhook v4 payload, the warning inhibited by the critical of the same alert and worker, the guard's
    # recycling warning by its rate-limited page
    workers = [a for b in by_path["/otel-leak/workers"] for a in b["alerts"]]
    assert {a["labels"][SEVERITY] for a in workers} == {"critical"}
    assert {a["labels"]["alertname"] for a in workers} == {"OtelLeakMemoryFloorGrowing", "OtelLeakGuardRateLimited"}
    [body] = [b for b in by_path["/otel-leak/workers"] if b["groupLabels"]["alertname"] == "OtelLeakMemoryFloorGrowing"]
    assert body["version"] == "4" and body["receiver"] == "workers-webhook"
    assert body["groupLabels"] == {"alertname": "OtelLeakMemoryFloorGrowing", names.LABEL_SERVICE: "billing"}
    assert body["commonAnnotations"]["runbook_url"].endswith("/OtelLeakMemoryFloorGrowing.md")
    assert by_path["/otel-leak/default"][0]["receiver"] == "default-webhook"

    # PagerDuty Events v2 with the key read (and trimmed) from the file
    assert {p["payload"]["custom_details"]["service"] for p in by_path["/pagerduty"]} == {"billing", "thumbs"}
    [pd] = [p for p in by_path["/pagerduty"] if p["payload"]["custom_details"]["service"] == "billing"]
    assert pd["routing_key"] == "TEST-ROUTING-KEY"
    assert pd["payload"]["severity"] == "critical"
    assert pd["payload"]["custom_details"]["service"] == "billing"
    assert pd["links"][0]["href"].endswith("/OtelLeakMemoryFloorGrowing.md")
