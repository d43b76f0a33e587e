"""grafanalib's alerting classes, completed for Grafana's file provisioning: the one place they are subclassed.

grafanalib 0.7.1 has the v9+ alerting model (``AlertGroup``, ``AlertRulev9``, ``AlertExpression``,
``AlertFileBasedProvisioning``) but writes rules in the shape of the ruler HTTP API, which file provisioning
does not read. What each subclass adds, and why:

* :class:`AlertQuery` (``Target``): a Grafana-managed rule's Prometheus query must be an instant query
  (``instant: true, range: false``; ``Target`` has no ``range``) and its model names the data source as an
  object ``{type, uid}`` (``Target`` writes the bare string it also uses as ``datasourceUid``); the graph-panel
  keys ``Target`` adds (a copy of ``expr`` as ``query``, Graphite's ``target``, ``step``) are dropped.
* :class:`ProvisionedAlertRule` (``AlertRulev9``): ``to_json_data`` nests title, condition, data and the
  states under ``grafana_alert`` with snake_case keys (``no_data_state``), the ruler API's shape; a
  provisioning file has them on the rule itself in camelCase (``uid, title, condition, data, noDataState,
  execErrState, for, labels, annotations``). ``AlertExpression`` names Grafana's expression engine by its
  legacy uid ``-100``; the rule writes the current one, ``__expr__``. Otherwise the rule's data and states
  are grafanalib's.
* :class:`ProvisionedAlertGroup` (``AlertGroup``): a provisioned group needs ``orgId`` (``AlertGroup`` has
  none), and its rules must be written in the provisioning shape above.
"""

from __future__ import annotations

import attr
from grafanalib import core as g

PROMETHEUS = "prometheus"  # data source type of every query
EXPRESSIONS, LEGACY_EXPRESSIONS = "__expr__", "-100"  # Grafana's server-side expressions
# Target keys of the old graph panel (Graphite's target, the step, a copy of expr): no meaning in a rule.
_PANEL_ONLY = ("query", "target", "metric", "step", "intervalFactor")


@attr.s
class AlertQuery(g.Target):
    """An instant Prometheus query of an alert rule; ``datasource`` is the data source's uid."""

    def to_json_data(self) -> dict:
        data = super().to_json_data()
        for key in _PANEL_ONLY:
            data.pop(key)
        data["instant"] = True
        data["range"] = False
        data["datasource"] = {"type": PROMETHEUS, "uid": self.datasource}
        return data


@attr.s
class ProvisionedAlertRule(g.AlertRulev9):
    """``AlertRulev9`` written as a rule of a provisioning file."""

    def to_json_data(self) -> dict:
        api = super().to_json_data()  # the ruler API shape; its pieces are what provisioning needs
        alert = api["grafana_alert"]
        for query in alert["data"]:
            if query["datasourceUid"] == LEGACY_EXPRESSIONS:
                query["datasourceUid"] = EXPRESSIONS
                query["model"]["datasource"] = {"type": EXPRESSIONS, "uid": EXPRESSIONS}
        return {
            "uid": api["uid"],
            "title": alert["title"],
            "condition": alert["condition"],
            "data": alert["data"],
            "noDataState": alert["no_data_state"],
            "execErrState": alert["exec_err_state"],
            "for": api["for"],
            "labels": api["labels"],
            "annotations": api["annotations"],
            "isPaused": False,
        }


@attr.s
class ProvisionedAlertGroup(g.AlertGroup):
    """``AlertGroup`` with the ``orgId`` a provisioning file needs."""

    orgId = attr.ib(default=1, validator=attr.validators.instance_of(int))

    def to_json_data(self) -> dict:
        for rule in self.rules:
            if not isinstance(rule, ProvisionedAlertRule):
                raise TypeError(f"a provisioned group holds ProvisionedAlertRule, got {type(rule).__name__}")
        return {"orgId": self.orgId, **super().to_json_data()}


def provisioning_file(groups: list[ProvisionedAlertGroup]) -> dict:
    """The alert-rules provisioning document (``apiVersion: 1, groups: [...]``) as plain data."""
    doc = g.AlertFileBasedProvisioning(groups=[grp.to_json_data() for grp in groups]).to_json_data()
    return doc
