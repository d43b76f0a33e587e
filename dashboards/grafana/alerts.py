"""Grafana-managed alert rules, built with grafanalib from the alerts ``dashboards.rules`` generates.

Nothing about an alert is written here: for a :class:`~dashboards.mixin.Mixin`, ``Rules(m).alerts()`` gives
each alert's name, expression, ``for``, severity and team labels, summary, description and ``runbook_url``,
and each becomes one Grafana rule:

* ``A``: the alert's PromQL as an instant query of the Prometheus data source, with the recording rules it
  reads inlined (:mod:`.inline`): a Grafana rule must not depend on Prometheus evaluating otel-leak's
  recording rules;
* ``B``: ``A`` reduced to its last value (``$values.B.Value`` is what Prometheus' ``$value`` was);
* ``C``, the condition: true for every series ``A`` returns, as a Prometheus alert fires for every series its
  expression returns (the threshold is inside the PromQL already);
* ``for``, labels and the rule group's interval as in the Prometheus rules; title = the alert name, so the
  Alertmanager sees the same ``alertname`` (routing, grouping and inhibition keep working);
* no series: OK (a Prometheus alert without series is inactive); a failing query: Error.

Annotations are the Prometheus templates made Grafana's: ``$value`` -> ``$values.B.Value``, and the
``query`` template function (Grafana has none) -> the PromQL selector of the value, filled in for the alert.

:func:`outputs` also writes the Prometheus rule file of the Grafana-evaluated mode: the recording rules only
(the dashboards query them), no alerts (Grafana sends those). docs/alerting.md explains the switch.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from grafanalib import core as g

from dashboards import rules
from dashboards.mixin import Mixin

from .inline import inline
from .provisioning import AlertQuery, ProvisionedAlertGroup, ProvisionedAlertRule, provisioning_file

# What Grafana provisioning and deploy/ mount: ALERTING_DIR holds Grafana's alerting provisioning files
# (/etc/grafana/provisioning/alerting), RECORDING_FILE is Prometheus' rule file in the Grafana-evaluated mode.
ALERTING_DIR = "alerting"
RULES_FILE = "otel-leak-alert-rules.yaml"
RECORDING_FILE = "prometheus-recording-rules.yaml"

DATASOURCE_UID = "prometheus"  # the Prometheus data source of deploy/compose/grafana and deploy/k8s
FOLDER = "otel-leak"  # the dashboards' folder in deploy/k8s too
QUERY, VALUE, CONDITION = "A", "B", "C"
# Every series A returns fires, NaN and infinities included (Prometheus fires on those too).
FIRES = f"is_number(${VALUE}) || is_nan(${VALUE}) || is_inf(${VALUE})"
RELATIVE_FROM = 600  # seconds; an instant query is evaluated at the range's end
UID_MAX = 40  # Grafana's limit on a uid

_QUERY_FN = re.compile(
    r"\{\{ with printf `(?P<query>[^`]*)` (?P<args>[^|]*?) \| query \}\}"
    r"\{\{ \. \| first \| value \| \w+ \}\}\{\{ else \}\}unknown\{\{ end \}\}"
)
_VALUE = re.compile(r"\$value\b(?!s)")


def uid(alert: str, severity: str) -> str:
    """Stable per alert and severity (not per Mixin): a changed threshold updates the rule in place."""
    out = f"otel-leak-{alert.removeprefix('OtelLeak').lower()}-{severity}"
    if len(out) > UID_MAX or not re.fullmatch(r"[a-zA-Z0-9_-]+", out):
        raise ValueError(f"alert rule uid {out!r}: Grafana takes up to {UID_MAX} of [a-zA-Z0-9_-]")
    return out


def template(text: str) -> str:
    """A Prometheus alert template as Grafana renders it."""
    text = _QUERY_FN.sub(lambda m: f"`{{{{ printf `{m['query']}` {m['args']} }}}}`", text)
    return _VALUE.sub(f"$values.{VALUE}.Value", text)


def rule(alert: dict[str, Any], recording: list[dict[str, Any]], m: Mixin,
         datasource_uid: str = DATASOURCE_UID) -> ProvisionedAlertRule:
    severity = alert["labels"][rules.SEVERITY]
    return ProvisionedAlertRule(
        title=alert["alert"],
        uid=uid(alert["alert"], severity),
        triggers=[
            AlertQuery(refId=QUERY, expr=inline(alert["expr"], recording, m.rule_interval),
                       datasource=datasource_uid, instant=True),
            g.AlertExpression(refId=VALUE, expression=QUERY, expressionType=g.EXP_TYPE_REDUCE,
                              reduceFunction=g.EXP_REDUCER_FUNC_LAST),
            g.AlertExpression(refId=CONDITION, expression=FIRES, expressionType=g.EXP_TYPE_MATH),
        ],
        condition=CONDITION,
        evaluateFor=alert["for"],
        labels=dict(alert["labels"]),
        annotations={k: template(v) for k, v in alert["annotations"].items()},
        noDataAlertState=g.ALERTRULE_STATE_DATA_OK,
        errorAlertState=g.ALERTRULE_STATE_DATA_ERROR,
        timeRangeFrom=RELATIVE_FROM,
        timeRangeTo=0,
    )


def groups(m: Mixin | None = None, datasource_uid: str = DATASOURCE_UID) -> list[ProvisionedAlertGroup]:
    """One group, like the Prometheus rules: every alert at the rules' interval, in the rules' order."""
    m = Mixin() if m is None else m
    r = rules.Rules(m)
    recording = r.recording()
    return [ProvisionedAlertGroup(
        name=rules.GROUP, folder=FOLDER, evaluateInterval=m.rule_interval,
        rules=[rule(a, recording, m, datasource_uid) for a in r.alerts()],
    )]


def document(m: Mixin | None = None, datasource_uid: str = DATASOURCE_UID) -> dict[str, Any]:
    """The alert-rules provisioning document for ``m`` (default ``Mixin()``), as plain data."""
    return provisioning_file(groups(m, datasource_uid))


def recording_document(m: Mixin | None = None) -> dict[str, Any]:
    """Prometheus rule groups of the Grafana-evaluated mode: the recording rules, no alert."""
    m = Mixin() if m is None else m
    return {"groups": [{"name": rules.GROUP, "interval": m.rule_interval, "rules": rules.Rules(m).recording()}]}


# --------------------------------------------------------------------------------------------------
# Files


def _header(m: Mixin, title: str, regenerate: str) -> str:
    params = "\n".join(f"#   {k} = {v!r}" for k, v in m.params().items())
    return (f"# {title}\n# GENERATED by `{regenerate}`: do not edit by hand.\n"
            f"# Parameters (dashboards/mixin.py):\n{params}\n")


def _yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=rules._Dumper, sort_keys=False, width=1000, allow_unicode=True)


REGENERATE = "python -m dashboards.grafana --out dashboards/generated/grafana"


def outputs(m: Mixin | None = None) -> dict[str, str]:
    """Relative path (under the dashboards' output directory) -> text, for ``m`` (default ``Mixin()``)."""
    from . import notifications  # noqa: PLC0415 (one module per file kind, imported where written)

    m = Mixin() if m is None else m
    return {
        f"{ALERTING_DIR}/{RULES_FILE}": _header(
            m, "otel-leak Grafana-managed alert rules (Grafana file provisioning)", REGENERATE
        ) + _yaml(document(m)),
        f"{ALERTING_DIR}/{notifications.FILE}": notifications.render(),
        RECORDING_FILE: _header(
            m, "otel-leak Prometheus recording rules without the alerts, for Grafana-evaluated alerting",
            REGENERATE,
        ) + _yaml(recording_document(m)),
    }
