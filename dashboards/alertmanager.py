"""Deploy-time rendering of ``deploy/alertmanager/alertmanager.yml``.

Alertmanager 0.25 reads the PagerDuty routing key from a file (``routing_key_file``) but has no ``url_file``
for webhooks, so the committed configuration carries placeholder webhook URLs under :data:`WEBHOOK_BASE`
(the reserved ``.invalid`` domain: nothing resolves it). :func:`render` substitutes the real base URL and,
for tests, the key file path, the PagerDuty endpoint and shorter grouping timers:

    from dashboards.alertmanager import render
    text = render(webhook_base="http://127.0.0.1:9099", routing_key_file="/run/secrets/pd-key")

``python -m dashboards.alertmanager --webhook-base URL [--routing-key-file PATH] > alertmanager.yml`` does the
same from a shell.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "alertmanager" / "alertmanager.yml"
WEBHOOK_BASE = "http://alert-webhook.invalid"
ROUTING_KEY_FILE = "/etc/alertmanager/secrets/pagerduty-routing-key"

# Receivers of the committed configuration, and the routes `amtool config routes test` must resolve.
RECEIVERS = ("default-webhook", "workers-webhook", "workers-pagerduty")


def render(
    webhook_base: str | None = None,
    routing_key_file: str | None = None,
    *,
    pagerduty_url: str | None = None,
    group_wait: str | None = None,
    group_interval: str | None = None,
    repeat_interval: str | None = None,
    config: Path = CONFIG,
) -> str:
    """The Alertmanager configuration with placeholders replaced.

    Without timer or PagerDuty-URL overrides the text is the committed file (comments kept) with plain string
    substitutions; with them it is re-serialised YAML.
    """
    text = config.read_text()
    if WEBHOOK_BASE not in text or ROUTING_KEY_FILE not in text:
        raise ValueError(f"{config} no longer contains the placeholders {WEBHOOK_BASE} / {ROUTING_KEY_FILE}")
    if webhook_base:
        text = text.replace(WEBHOOK_BASE, webhook_base.rstrip("/"))
    if routing_key_file:
        text = text.replace(ROUTING_KEY_FILE, routing_key_file)
    if not (pagerduty_url or group_wait or group_interval or repeat_interval):
        return text
    cfg: dict[str, Any] = yaml.safe_load(text)
    timers = {"group_wait": group_wait, "group_interval": group_interval, "repeat_interval": repeat_interval}

    def retime(route: dict[str, Any]) -> None:
        for k, v in timers.items():
            if v and (k in route or route is cfg["route"]):
                route[k] = v
        for child in route.get("routes", []):
            retime(child)

    retime(cfg["route"])
    if pagerduty_url:
        for r in cfg["receivers"]:
            for pd in r.get("pagerduty_configs", []):
                pd["url"] = pagerduty_url
    return yaml.safe_dump(cfg, sort_keys=False, width=1000)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dashboards.alertmanager", description=__doc__.split("\n\n")[0])
    p.add_argument("--webhook-base", required=True, help=f"replaces {WEBHOOK_BASE}")
    p.add_argument("--routing-key-file", help=f"replaces {ROUTING_KEY_FILE}")
    p.add_argument("--pagerduty-url", help="PagerDuty Events API endpoint (tests point it at a local server)")
    p.add_argument("--group-wait")
    p.add_argument("--group-interval")
    p.add_argument("--repeat-interval")
    a = p.parse_args(argv)
    sys.stdout.write(
        render(
            a.webhook_base,
            a.routing_key_file,
            pagerduty_url=a.pagerduty_url,
            group_wait=a.group_wait,
            group_interval=a.group_interval,
            repeat_interval=a.repeat_interval,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
