"""Building blocks shared by the otel-leak Grafana dashboards.

Every PromQL expression here is assembled from :mod:`otel_leak.names` (series ``names.X.prom`` and labels
``names.LABEL_*``): no metric or label name is typed by hand, so a rename in ``names.py`` regenerates every
dashboard and ``tests/test_dashboards.py`` catches a query naming a series the project does not produce.
What depends on a :class:`~dashboards.mixin.Mixin` (its selector, process labels and alert thresholds) is in
:mod:`.promql` and :mod:`.thresholds`; the helpers here are the same for every Mixin.

grafanalib 0.7.1 lacks three things the dashboards need, added here:

* :class:`PromTarget`: a ``Target`` with the ``exemplar`` switch grafanalib 0.7.1 lacks, and the data source
  template on every query;
* :class:`Variable`: a ``Template`` whose "All" default renders the way Grafana stores it;
* :func:`heatmap`: the Grafana 9+ heatmap model (``calculate: false`` on Prometheus buckets, exemplars shown),
  set through ``extraJson`` on grafanalib's legacy ``Heatmap``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attr
from grafanalib import core as g

from dashboards.mixin import ALERTS as ALERT_NAMES
from dashboards.mixin import RECORDING_RULES
from otel_leak import names

if TYPE_CHECKING:
    from .promql import Promql

# --------------------------------------------------------------------------------------------------
# Labels (after the collector's resource_to_telemetry_conversion)
SERVICE = names.LABEL_SERVICE
INSTANCE = names.LABEL_INSTANCE
VERSION = names.LABEL_VERSION
TASK = names.LABEL_TASK
GENERATION = names.LABEL_GC_GENERATION

# Every otel-leak data point carries process.pid: prefork children share their parent's resource (and so its
# service.instance.id), the pid tells them apart; per-process panels group by the Mixin's process_labels
# (Promql.process). The detector's gauges carry no pid (one detector per process that runs it), so detector
# queries group by SERVICE/INSTANCE only.
PID = names.label(names.SPAN_PID)
WORKER = (SERVICE, INSTANCE)  # one service instance (the detector's granularity)
WORKER_V = (SERVICE, INSTANCE, VERSION)
DETECTOR_VERDICT_LABEL = names.label(names.ATTR_DETECTOR_VERDICT)
GUARD_REASON = names.LABEL_GUARD_REASON
GUARD_OUTCOME = names.LABEL_GUARD_OUTCOME

# Recording rules of the rules generator (dashboards/mixin.py): the same series the alerts evaluate.
RULE_FLOOR = RECORDING_RULES["floor"]
RULE_FLOOR_SLOPE = RECORDING_RULES["floor_slope"]
RULE_TIME_TO_LIMIT = RECORDING_RULES["time_to_limit"]
RULE_SERVICE_MATURE_SLOPE = RECORDING_RULES["service_mature_slope"]
# The naive per-task RSS signal (growth minus release around each call): neighbour-sensitive, no alert uses it.
RULE_TASK_NET_GROWTH_RATE = RECORDING_RULES["task_net_growth_rate"]
RULE_TASK_NET_GROWTH_PER_CALL = RECORDING_RULES["task_net_growth_per_call"]
RULE_GC_PAUSE_MEAN = RECORDING_RULES["gc_pause_mean"]

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

# Grafana built-in and dashboard variables used in expressions (the e2e test substitutes them).
RATE = "$__rate_interval"
WINDOW = "$window"

# The Prometheus alerts fired by otel-leak's rules carry these label values; see fleet.alert_selector().
ALERTS_SERIES = "ALERTS"


# --------------------------------------------------------------------------------------------------
# PromQL helpers


def by(*labels: str) -> str:
    return ", ".join(labels)


def sel(metric: names.Metric | str, *matchers: str, suffix: str = "") -> str:
    """``series{matchers}`` for a names.Metric (its Prometheus name) or a plain series name."""
    name = (metric.prom if isinstance(metric, names.Metric) else metric) + suffix
    ms = [m for m in matchers if m]
    return f"{name}{{{', '.join(ms)}}}" if ms else name


def eq(label: str, value: str) -> str:
    return f'{label}="{value}"'


def regex(label: str, value: str) -> str:
    return f'{label}=~"{value}"'


def ne(label: str, value: str) -> str:
    return f'{label}!="{value}"'


def var(label: str, variable: str) -> str:
    """Regex matcher on a (possibly multi-valued) dashboard variable."""
    return regex(label, f"${variable}")


# Common scopes
S_SERVICE = (var(SERVICE, "service"),)
S_WORKER = (var(SERVICE, "service"), var(INSTANCE, "instance"))
S_TASK = S_WORKER + (var(TASK, "task"),)
NO_TASK = eq(TASK, "")  # the per-process series of metrics that also exist per task type
ANY_TASK = ne(TASK, "")


def max_by(labels: tuple[str, ...], expr: str) -> str:
    return f"max by ({by(*labels)}) ({expr})"


def sum_by(labels: tuple[str, ...], expr: str) -> str:
    return f"sum by ({by(*labels)}) ({expr})"


def legend(*labels: str, prefix: str = "") -> str:
    body = " ".join("{{" + label + "}}" for label in labels)
    return f"{prefix} {body}".strip() if prefix else body


def proc_legend(prefix: str = "", *more: str) -> str:
    """Legend naming one worker process: ``<prefix> <instance> pid <pid> [more labels]``."""
    text = f"{prefix} {{{{{INSTANCE}}}}} pid {{{{{PID}}}}}".strip()
    return " ".join([text] + ["{{" + m + "}}" for m in more])


# --------------------------------------------------------------------------------------------------
# Targets and variables


@attr.s
class PromTarget(g.Target):
    """A Prometheus query with the exemplar switch grafanalib 0.7.1's Target lacks."""

    exemplar = attr.ib(default=False, validator=attr.validators.instance_of(bool))

    def to_json_data(self):
        data = super().to_json_data()
        data["exemplar"] = self.exemplar
        data["datasource"] = DATASOURCE
        data["editorMode"] = "code"
        data["range"] = not self.instant
        # Grafana's Prometheus data source ignores these Graphite-era fields; keep the JSON readable.
        for key in ("target", "metric", "step", "query"):
            data.pop(key, None)
        return data


def target(expr: str, legend_format: str = "", *, instant: bool = False, exemplar: bool = False,
           table: bool = False, heatmap: bool = False) -> PromTarget:
    fmt = g.TABLE_TARGET_FORMAT if table else ("heatmap" if heatmap else g.TIME_SERIES_TARGET_FORMAT)
    return PromTarget(expr=expr, legendFormat=legend_format, instant=instant, exemplar=exemplar, format=fmt,
                      intervalFactor=1)


@attr.s
class Variable(g.Template):
    """A template variable; multi-valued ones default to All (rendered as Grafana stores it)."""

    def to_json_data(self):
        data = super().to_json_data()
        if self.includeAll and self.default in (None, "$__all"):
            data["current"] = {"selected": True, "text": ["All"], "value": ["$__all"]}
        if self.type == "query":
            data["definition"] = self.query
        return data


def with_ref_ids(targets: list[PromTarget]) -> list[PromTarget]:
    """Give the targets of one panel the refIds Grafana expects (A, B, ...); tables name columns by them."""
    return [attr.evolve(t, refId=t.refId or chr(ord("A") + i)) for i, t in enumerate(targets)]


def datasource_variable() -> g.Template:
    return Variable(
        name="datasource",
        label="Data source",
        query="prometheus",
        type="datasource",
        default="Prometheus",
        regex="",
    )


def query_variable(name: str, label: str, query: str, *, multi: bool = True) -> g.Template:
    """A variable offering the values of a ``label_values()`` query (``Promql.label_values``)."""
    return Variable(
        name=name,
        label=label,
        dataSource=DATASOURCE,
        query=query,
        multi=multi,
        includeAll=multi,
        allValue=".+" if multi else None,
        default="$__all" if multi else None,
        refresh=g.REFRESH_ON_TIME_RANGE_CHANGE,
        sort=g.SORT_ALPHA_ASC,
        regex="",
    )


def service_variable(q: Promql, multi: bool = True) -> g.Template:
    query = q.label_values(names.PROCESS_MEMORY_USAGE, SERVICE)
    return query_variable("service", "Service", query, multi=multi)


def instance_variable(q: Promql) -> g.Template:
    return query_variable("instance", "Instance",
                          q.label_values(names.PROCESS_MEMORY_USAGE, INSTANCE, var(SERVICE, "service")))


def task_variable(q: Promql) -> g.Template:
    return query_variable("task", "Task type", q.label_values(names.TASK_COUNT, TASK, *S_WORKER))


def version_variable(q: Promql, name: str, label: str) -> g.Template:
    query = q.label_values(names.PROCESS_MEMORY_USAGE, VERSION, var(SERVICE, "service"))
    return query_variable(name, label, query, multi=False)


def window_variable(default: str = "1h") -> g.Template:
    """Window for slopes (deriv) and table rates: longer is steadier, shorter reacts faster."""
    return Variable(
        name="window",
        label="Slope window",
        query="15m,30m,1h,3h,6h",
        type="custom",
        default=default,
    )


# --------------------------------------------------------------------------------------------------
# Thresholds (Grafana's steps: the first has value null). Those mirroring an alert are in thresholds.py.


def steps(*pairs: tuple[str, float | None]) -> list[dict]:
    return [{"color": color, "value": value} for color, value in pairs]


BYTES = "bytes"
BYTES_PER_S = "Bps"
SECONDS = "s"
RATIO = "percentunit"
COUNT = "short"
NONE = "none"
PER_S = "suffix: /s"
TASKS_PER_S = "suffix: tasks/s"
OBJECTS_PER_S = "suffix: objects/s"
COLLECTIONS_PER_S = "suffix: collections/s"

VERDICT_STEPS = steps(("green", None), ("red", 1))
VERDICT_MAPPINGS = [
    {
        "type": "value",
        "options": {
            "0": {"text": "no leak", "color": "green", "index": 0},
            "1": {"text": "LEAK", "color": "red", "index": 1},
        },
    }
]


def override(matcher_id: str, matcher: str, **props) -> dict:
    return {
        "matcher": {"id": matcher_id, "options": matcher},
        "properties": [{"id": k, "value": v} for k, v in props.items()],
    }


def rename_unit(field: str, display: str, unit: str, **extra) -> dict:
    """Table column override: display name and unit of a field (e.g. ``Value #A``)."""
    return override("byName", field, displayName=display, unit=unit, **extra)


LIMIT_STYLE = {
    "color": {"mode": "fixed", "fixedColor": "red"},
    "custom.lineStyle": {"fill": "dash", "dash": [10, 10]},
    "custom.fillOpacity": 0,
}


def limit_override(pattern: str) -> dict:
    return {
        "matcher": {"id": "byRegexp", "options": pattern},
        "properties": [{"id": k, "value": v} for k, v in LIMIT_STYLE.items()],
    }


# --------------------------------------------------------------------------------------------------
# Panels


def timeseries(title: str, description: str, targets: list[PromTarget], unit: str, *,
               thresholds: list[dict] | None = None, threshold_style: str = "off", overrides=None,
               mappings=None, min_value: int | None = None, max_value: int | None = None,
               interpolation: str = "linear", fill: int = 10, legend_calcs=None, stacking=None,
               links=None) -> g.TimeSeries:
    return g.TimeSeries(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=with_ref_ids(targets),
        unit=unit,
        thresholds=thresholds or steps(("green", None)),
        thresholdsStyleMode=threshold_style,
        overrides=overrides or [],
        mappings=mappings or [],
        valueMin=min_value,
        valueMax=max_value,
        lineInterpolation=interpolation,
        fillOpacity=fill,
        legendDisplayMode="table",
        legendPlacement="bottom",
        legendCalcs=legend_calcs if legend_calcs is not None else ["lastNotNull", "max"],
        tooltipMode="multi",
        tooltipSort="desc",
        stacking=stacking or {},
        maxDataPoints=500,
        links=links or [],
    )


def stat(title: str, description: str, targets: list[PromTarget], unit: str, *,
         thresholds: list[dict] | None = None, mappings=None, no_value: str = "no data",
         decimals: int | None = None, graph: bool = True, links=None) -> g.Stat:
    return g.Stat(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=with_ref_ids(targets),
        format=unit,
        reduceCalc="lastNotNull",
        thresholds=thresholds or steps(("green", None)),
        mappings=mappings or [],
        noValue=no_value,
        decimals=decimals,
        graphMode="area" if graph else "none",
        colorMode="value",
        textMode="value_and_name",
        maxDataPoints=500,
        links=links or [],
    )


def table(title: str, description: str, targets: list[PromTarget], unit: str, *, overrides=None,
          sort_by: str | None = None, organize: dict | None = None, links=None) -> g.Table:
    transformations = [{"id": "merge", "options": {}}]
    if organize is not None:
        transformations.append({"id": "organize", "options": organize})
    return g.Table(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=with_ref_ids(targets),
        unit=unit,
        overrides=overrides or [],
        sortBy=[g.TableSortByField(displayName=sort_by, desc=True)] if sort_by else [],
        transformations=transformations,
        filterable=True,
        links=links or [],
    )


def heatmap(title: str, description: str, expr: str, unit: str) -> g.Heatmap:
    """Grafana 9+ heatmap of a Prometheus histogram: buckets as-is (no re-bucketing), exemplars shown.

    The target is marked ``exemplar: true``: Grafana asks Prometheus for the exemplars of the bucket series
    and draws them on the heatmap; with the data source's ``exemplarTraceIdDestinations`` each one links to
    the trace of the task that recorded it.
    """
    panel = g.Heatmap(
        title=title,
        description=description,
        dataSource=DATASOURCE,
        targets=with_ref_ids([target(expr, "{{le}}", exemplar=True, heatmap=True)]),
        dataFormat="tsbuckets",
        hideZeroBuckets=True,
        maxDataPoints=200,
        extraJson={
            "options": {
                "calculate": False,
                "cellGap": 1,
                "color": {"mode": "scheme", "scheme": "Oranges", "scale": "exponential", "exponent": 0.5,
                          "fill": "dark-orange", "reverse": False, "steps": 64},
                "exemplars": {"color": "rgba(31, 120, 193, 0.9)"},
                "filterValues": {"le": 1e-9},
                "legend": {"show": True},
                "rowsFrame": {"layout": "auto", "value": "tasks/s"},
                "tooltip": {"show": True, "yHistogram": True},
                "yAxis": {"axisPlacement": "left", "reverse": False, "unit": unit},
                "cellValues": {"unit": TASKS_PER_S},
                "showValue": "never",
            },
            "fieldConfig": {"defaults": {"unit": unit, "custom": {"hideFrom": {"legend": False,
                                                                               "tooltip": False,
                                                                               "viz": False},
                                                                  "scaleDistribution": {"type": "linear"}}},
                            "overrides": []},
        },
    )
    return panel


def dashboard_link(title: str, uid: str, *, vars_: bool = True) -> g.DashboardLink:
    return g.DashboardLink(
        title=title,
        type="link",
        uri=f"/d/{uid}",
        icon="dashboard",
        includeVars=vars_,
        keepTime=True,
        tooltip=f"Open the {title} dashboard with the same variables and time range",
    )


def data_link(title: str, uid: str, *params: tuple[str, str]) -> dict:
    """Table-cell link to another dashboard: ``(variable, label)`` pairs take the clicked row's label values."""
    query = "&".join(f"var-{variable}=${{__data.fields.{label}}}" for variable, label in params)
    return {"title": title, "url": f"/d/{uid}?{query}&${{__url_time_range}}"}


def links_override(field: str, *links: dict) -> dict:
    return {"matcher": {"id": "byName", "options": field}, "properties": [{"id": "links", "value": list(links)}]}


# --------------------------------------------------------------------------------------------------
# Layout: panels flow left to right in rows of 24 grid units


class Layout:
    def __init__(self) -> None:
        self.panels: list = []
        self._x = 0
        self._y = 0
        self._row_h = 0

    def row(self, title: str) -> Layout:
        self._newline()
        self.panels.append(g.RowPanel(title=title, gridPos=g.GridPos(h=1, w=24, x=0, y=self._y)))
        self._y += 1
        return self

    def add(self, panel, w: int = 12, h: int = 8) -> Layout:
        if self._x + w > 24:
            self._newline()
        self.panels.append(attr.evolve(panel, gridPos=g.GridPos(h=h, w=w, x=self._x, y=self._y)))
        self._x += w
        self._row_h = max(self._row_h, h)
        return self

    def _newline(self) -> None:
        if self._x:
            self._y += self._row_h
        self._x = 0
        self._row_h = 0


UIDS = {
    "fleet": "otel-leak-fleet",
    "worker": "otel-leak-worker",
    "tasks": "otel-leak-tasks",
    "release": "otel-leak-release",
}
TITLES = {
    "fleet": "otel-leak / Fleet",
    "worker": "otel-leak / Worker",
    "tasks": "otel-leak / Tasks",
    "release": "otel-leak / Release comparison",
}


def links(current: str) -> list[g.DashboardLink]:
    return [dashboard_link(TITLES[k], UIDS[k]) for k in UIDS if k != current]


def dashboard(key: str, description: str, layout: Layout, variables: list[g.Template], *,
              time_from: str = "now-6h") -> g.Dashboard:
    return g.Dashboard(
        title=TITLES[key],
        uid=UIDS[key],
        description=description,
        tags=["otel-leak", "memory"],
        timezone="browser",
        refresh="1m",
        time=g.Time(time_from, "now"),
        graphTooltip=g.GRAPH_TOOLTIP_MODE_SHARED_CROSSHAIR,
        panels=layout.panels,
        templating=g.Templating(list=variables),
        links=links(key),
        schemaVersion=39,
        editable=True,
    ).auto_panel_ids()
