"""Reading the generated dashboards back: their queries, the series and labels they name, and variable
substitution the way Grafana does it. Used by ``tests/test_dashboards.py`` and ``tests/test_dashboards_mixin.py``
(static checks) and ``tests/e2e/test_dashboard_queries.py`` (every query run against the end-to-end Prometheus).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from otel_leak import names

GENERATED = Path(__file__).resolve().parent.parent / "generated" / "grafana"

# Labels a dashboard query may use besides names.LABEL_*: histogram buckets and Prometheus' ALERTS series.
PROMETHEUS_LABELS = frozenset({"le", "alertname", "alertstate", "severity"})
ALERTS = "ALERTS"

_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "inf", "nan", "atan2"})
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")
_NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*\"")
_LABEL_VALUES = re.compile(r"^\s*label_values\((?P<selector>.*),\s*(?P<label>[a-zA-Z_][a-zA-Z0-9_]*)\s*\)\s*$")


@dataclass(frozen=True)
class Query:
    dashboard: str  # file name
    panel: str  # panel title
    panel_type: str
    ref_id: str
    expr: str
    instant: bool
    exemplar: bool

    @property
    def where(self) -> str:
        return f"{self.dashboard} / {self.panel!r} / {self.ref_id}"


def load(directory: Path = GENERATED) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text(encoding="utf-8")) for p in sorted(directory.glob("*.json"))}


def panels(dashboard: dict) -> Iterator[dict]:
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", []) or []


def queries(dashboards: dict[str, dict]) -> list[Query]:
    out = []
    for fname, dash in dashboards.items():
        for panel in panels(dash):
            for t in panel.get("targets", []) or []:
                out.append(Query(fname, panel.get("title", ""), panel.get("type", ""), t.get("refId", ""),
                                 t.get("expr", ""), bool(t.get("instant")), bool(t.get("exemplar"))))
    return out


def allowed_series(recording_rules: frozenset[str] = frozenset()) -> frozenset[str]:
    """Every series a dashboard may query: names.py metrics (histograms with their _bucket/_sum/_count),
    Prometheus' ALERTS and the recording rules of the rules generator."""
    allowed = {ALERTS, *recording_rules}
    for m in names.ALL_METRICS:
        if m.kind == "histogram":
            allowed.update(m.prom + s for s in ("_bucket", "_sum", "_count"))
        else:
            allowed.add(m.prom)
    return frozenset(allowed)


def allowed_labels() -> frozenset[str]:
    """Labels a dashboard query may name: names.LABEL_*, the Prometheus form of every attribute names.py
    defines (e.g. process_pid, otel_leak_detector_verdict), and Prometheus' own (le, ALERTS labels)."""
    ours = {getattr(names, n) for n in dir(names) if n.startswith("LABEL_")}
    ours |= {names.label(getattr(names, n)) for n in dir(names) if n.startswith(("ATTR_", "RES_", "SPAN_PID"))}
    return frozenset(ours | PROMETHEUS_LABELS)


def _strip(expr: str) -> str:
    expr = _STRING.sub('""', expr)
    expr = _VARIABLE.sub("", expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = _GROUPING.sub(" ", expr)
    expr = re.sub(r"\boffset\s+\S+", " ", expr)
    return _NUMBER.sub(" ", expr)


def series_names(expr: str) -> set[str]:
    """Series (metric) names a PromQL expression selects: identifiers that are not functions, aggregations,
    keywords, label names, durations or numbers."""
    stripped = _strip(expr)
    found = set()
    for m in _IDENT.finditer(stripped):
        word = m.group(0)
        rest = stripped[m.end():].lstrip()
        if rest.startswith("(") or word.lower() in _KEYWORDS:
            continue
        found.add(word)
    return found


def selectors(expr: str) -> list[tuple[str, str]]:
    """``(series, matchers)`` for every series selector of a PromQL expression, in order; ``matchers`` is the
    text between the braces, ``""`` for a bare name."""
    # Blank out string contents, then the insides of braces and brackets (label names, durations): what is
    # left is identifiers outside selectors, at the same offsets as in ``expr``.
    blank = _STRING.sub(lambda s: s.group(0)[0] + " " * (len(s.group(0)) - 2) + s.group(0)[-1], expr)
    braces = {b.start(): b.end() for b in re.finditer(r"\{[^}]*\}", blank)}
    outside = re.sub(r"\{[^}]*\}|\[[^\]]*\]", lambda b: " " * len(b.group(0)), blank)
    series = series_names(expr)
    out = []
    for m in _IDENT.finditer(outside):
        after = blank[m.end():]
        if m.group(0) not in series or after.lstrip().startswith("("):
            continue
        start = m.end() + len(after) - len(after.lstrip())  # the selector's "{", if it has one
        out.append((m.group(0), expr[start + 1:braces[start] - 1] if start in braces else ""))
    return out


def groupings(expr: str) -> list[tuple[str, ...]]:
    """The label lists of every by/without/on/ignoring/group_* clause, in order."""
    text = _STRING.sub('""', _VARIABLE.sub("", expr))
    return [tuple(x.strip() for x in m.group(2).split(",") if x.strip()) for m in _GROUPING.finditer(text)]


def label_names(expr: str) -> set[str]:
    """Label names used in matchers and in by/without/on/ignoring/group_* clauses."""
    text = _VARIABLE.sub("", expr)
    labels = {m.group(1) for m in _MATCHER.finditer(text)}
    for m in _GROUPING.finditer(_STRING.sub('""', text)):
        labels.update(x.strip() for x in m.group(2).split(",") if x.strip())
    return labels


def variables(dashboard: dict) -> list[dict]:
    return list(dashboard.get("templating", {}).get("list", []))


def label_values_query(query: str) -> tuple[str, str] | None:
    """``label_values(selector, label)`` -> (selector, label)."""
    m = _LABEL_VALUES.match(query or "")
    return (m.group("selector"), m.group("label")) if m else None


def used_variables(expr: str) -> set[str]:
    return {v.strip("${}").split(":")[0] for v in _VARIABLE.findall(expr)}


def substitute(expr: str, values: dict[str, str]) -> str:
    """Replace ``$name`` and ``${name}`` (longest name first) with the given text, as Grafana interpolates
    before sending a query. Builtins such as ``__rate_interval`` are passed in ``values`` too."""
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", values[name]).replace("$" + name, values[name])
    return expr


def regex_value(values: list[str]) -> str:
    """A multi-value variable's text inside ``=~"..."``, the way Grafana's Prometheus data source formats it."""
    escaped = [re.sub(r"([\\^$.|?*+()\[\]{}])", r"\\\\\1", v) for v in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"
