"""The dashboards' PromQL for one :class:`~dashboards.mixin.Mixin`: the wiring the alert rules use.

:class:`Promql` applies the mixin the way ``dashboards.rules`` does:

* the ``selector`` matchers go first on every selector of an otel-leak series (``names.X``), in panel queries
  and in the template variables' ``label_values()`` queries;
* recording rules and Prometheus' ``ALERTS`` are selected without them: the rules already computed them from
  selected series only, and aggregate the selector's labels away when they are not in ``process_labels``;
* per-process panels group by ``process_labels`` (per-process and GC-generation ones by ``process_labels``
  plus the generation, per-task ones plus the task label), so one line is one process as the alerts see it;
  the restart-proof service slope groups by ``service_labels``, like the fleet alert.
"""

from __future__ import annotations

from dashboards.mixin import Mixin
from otel_leak import names

from .core import RATE, WINDOW, by, max_by, sel, sum_by


class Promql:
    """Query builders for the dashboards of one Mixin."""

    def __init__(self, m: Mixin) -> None:
        self.m = m
        self.process: tuple[str, ...] = tuple(m.process_labels)  # one worker process, as the alerts group
        self.service: tuple[str, ...] = tuple(m.service_labels)  # one service, as the fleet alert groups

    def sel(self, metric: names.Metric | str, *matchers: str, suffix: str = "") -> str:
        """``series{selector, matchers}`` for an otel-leak series; a recording rule or ``ALERTS`` (a plain
        name) gets the matchers only."""
        if isinstance(metric, names.Metric):
            matchers = (self.m.selector, *matchers)
        return sel(metric, *matchers, suffix=suffix)

    def rate(self, metric: names.Metric, scope: tuple[str, ...], window: str = RATE, suffix: str = "") -> str:
        return f"rate({self.sel(metric, *scope, suffix=suffix)}[{window}])"

    def floor_slope(self, scope: tuple[str, ...], labels: tuple[str, ...] | None = None,
                    window: str = WINDOW) -> str:
        """Slope (bytes/s) of the in-process memory floor gauge over the dashboard's slope window, per process
        unless ``labels`` say otherwise: deriv() of a gauge, never rate(). The alerts use the recording rule
        of the floor slope instead (fixed window)."""
        expr = f"deriv({self.sel(names.MEMORY_FLOOR, *scope)}[{window}])"
        return max_by(self.process if labels is None else labels, expr)

    def rule(self, record: str, scope: tuple[str, ...], labels: tuple[str, ...]) -> str:
        """A recording rule of the rules generator, aggregated to ``labels``."""
        return max_by(labels, self.sel(record, *scope))

    def task_rate(self, scope: tuple[str, ...], labels: tuple[str, ...], window: str = RATE) -> str:
        return sum_by(labels, self.rate(names.TASK_COUNT, scope, window))

    def histogram_quantile(self, q: float, metric: names.Metric, scope: tuple[str, ...],
                           labels: tuple[str, ...]) -> str:
        return (
            f"histogram_quantile({q}, sum by ({by('le', *labels)}) "
            f"({self.rate(metric, scope, suffix='_bucket')}))"
        )

    def label_values(self, metric: names.Metric, label: str, *scope: str) -> str:
        """A template variable's query: the values of ``label`` on an otel-leak series."""
        return f"label_values({self.sel(metric, *scope)}, {label})"
