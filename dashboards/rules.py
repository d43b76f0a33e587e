"""Prometheus recording rules and alerts for otel-leak, generated from one :class:`~dashboards.mixin.Mixin`.

    .venv/bin/python -m dashboards.rules --out dashboards/generated

writes ``prometheus-rules.yaml`` (production parameters) and ``prometheus-rules.test.yaml`` (the short
windows of :meth:`Mixin.e2e`, for the end-to-end test with a 1 s scrape interval). ``--set name=value``
overrides a parameter of both; an unknown name fails with the list of valid ones.

Every series and label name comes from :mod:`otel_leak.names`; the recording-rule names the mixin adds are in
:data:`dashboards.mixin.RECORDING_RULES`. Design notes (why the floor, why the fleet signal) are in
``dashboards/README.md``; one runbook per alert is in ``docs/runbooks/``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from dashboards.mixin import ALERTS, PARAMETERS, RECORDING_RULES as R, Mixin, check_parameters, parse_set
from otel_leak import config, names

PRODUCTION_FILE = "prometheus-rules.yaml"
TEST_FILE = "prometheus-rules.test.yaml"
GROUP = "otel-leak"

SERVICE = names.LABEL_SERVICE
INSTANCE = names.LABEL_INSTANCE
VERSION = names.LABEL_VERSION
TASK = names.LABEL_TASK
GENERATION = names.LABEL_GC_GENERATION
PID = names.LABEL_PID
SEVERITY = names.LABEL_SEVERITY
TEAM = names.LABEL_TEAM
REASON = names.LABEL_GUARD_REASON
OUTCOME = names.LABEL_GUARD_OUTCOME


def _lbl(label: str) -> str:
    """Go-template reference to an alert label, for annotations."""
    return "{{ $labels.%s }}" % label


# "worker <instance> (pid <pid>, version <v>) of <service>", as alert text
WORKER_TEXT = (
    f"worker {_lbl(INSTANCE)} (pid {_lbl(PID)}, version {_lbl(VERSION)}) of service {_lbl(SERVICE)}"
)
PER_HOUR = "{{ $value | humanize1024 }}B/h"
# What each reason of a guard decision means (the reasons otel_leak.guard.decide gives)
GUARD_REASONS = {
    "budget": "the floor reached the soft budget while the detector's verdict is leak",
    "hard_budget": "the floor reached the hard budget, whatever the verdict",
    "time_to_limit": "at its slope the floor would reach the memory limit sooner than "
    + config.GUARD_MIN_TIME_TO_LIMIT.env,
}


def _reason_text() -> str:
    """Alert text for the alert's guard reason label: a Go template with one branch per reason."""
    branches = [f'{{{{ {"if" if i == 0 else "else if"} eq $labels.{REASON} "{reason}" }}}}{text}'
                for i, (reason, text) in enumerate(GUARD_REASONS.items())]
    return "".join(branches) + "{{ else }}see the guard's log record{{ end }}"


GUARD_REASON_TEXT = _reason_text()


class Rules:
    """PromQL for one Mixin."""

    def __init__(self, m: Mixin):
        self.m = m
        self.P = ", ".join(m.process_labels)
        self.S = ", ".join(m.service_labels)

    # -- selectors
    def sel(self, metric: names.Metric, suffix: str = "", *matchers: str) -> str:
        name = metric.prom + suffix
        ms = ", ".join(x for x in (self.m.selector, *matchers) if x)
        return f"{name}{{{ms}}}" if ms else name

    @property
    def rss(self) -> str:
        return self.sel(names.PROCESS_MEMORY_USAGE)

    @property
    def limit(self) -> str:
        return f"max by ({self.P}) ({self.sel(names.MEMORY_LIMIT)})"

    # -- recording rules
    def recording(self) -> list[dict[str, Any]]:
        m, P, S = self.m, self.P, self.S
        growth = self.sel(names.TASK_MEMORY_GROWTH, "_sum")
        release = self.sel(names.TASK_MEMORY_RELEASE, "_sum")
        g = f"sum by ({P}, {TASK}) (rate({growth}[{m.task_window}]))"
        r = f"sum by ({P}, {TASK}) (rate({release}[{m.task_window}]))"
        calls = f"sum by ({P}, {TASK}) (rate({self.sel(names.TASK_COUNT)}[{m.task_window}]))"
        measured = f"sum by ({P}, {TASK}) (rate({self.sel(names.TASK_MEASURED)}[{m.task_window}]))"
        pause_sum = self.sel(names.GC_PAUSE, "_sum")
        pause_count = self.sel(names.GC_PAUSE, "_count")
        age = m.fleet_min_age
        return [
            {
                "record": R["floor"],
                # "and on() rss": a process that stopped reporting has no floor (min_over_time alone would
                # carry its last samples on for floor_window).
                "expr": f"min by ({P}) (min_over_time({self.rss}[{m.floor_window}]))\n  and on({P}) {self.rss}",
            },
            {"record": R["floor_slope"], "expr": f"deriv({R['floor']}[{m.slope_window}])"},
            {
                "record": R["time_to_limit"],
                "expr": (
                    f"clamp_min(\n  ({self.limit} - predict_linear({R['floor']}[{m.predict_window}], 0))\n"
                    f"  / (deriv({R['floor']}[{m.predict_window}]) > 0),\n  0\n)"
                ),
            },
            {
                # The floor slope of processes that have lived past warm-up and have not restarted within
                # fleet_min_age: a new series (new pid/instance) is excluded until it existed that long ago,
                # a restart under the same identity is seen as a reset of its GC counter.
                "record": R["mature_slope"],
                "expr": (
                    f"deriv({R['floor']}[{m.fleet_slope_window}])\n"
                    f"  and on({P}) present_over_time({self.rss}[{m.floor_window}] offset {age})\n"
                    f"  unless on({P}) (max by ({P}) (resets({self.sel(names.GC_COLLECTIONS)}[{age}])) > 0)"
                ),
            },
            {"record": R["service_mature_slope"], "expr": f"avg by ({S}) ({R['mature_slope']})"},
            {
                # NAIVE per-task signal, for dashboards only: growth minus release of resident memory measured
                # around each call, per measured call (a fast worker measures a random sample of its task
                # spans: otel_leak.task.measured counts them); a task type with only one of the two
                # histograms counts the other as 0. A neighbour of the leaking task can carry the growth (it
                # allocates into fresh pages because the leak kept the freed ones), so no alert uses these
                # two rules.
                "record": R["task_net_growth_per_call"],
                "expr": f"(({g} or 0 * {r})\n- ({r} or 0 * {g}))\n/ ({measured} > 0)",
            },
            {"record": R["task_net_growth_rate"], "expr": f"{R['task_net_growth_per_call']}\n* on({P}, {TASK}) {calls}"},
            {
                # What the alert uses: the detector's attribution (regression of window growth on task counts,
                # tracemalloc in tier 2) in bytes per call of each suspected task type, times its call rate.
                # The detector exports a series only for the task types it suspects.
                "record": R["task_detector_retained_rate"],
                "expr": (
                    f"max by ({P}, {TASK}) ({self.sel(names.DETECTOR_RETAINED_PER_CALL)})\n"
                    f"* on({P}, {TASK})\n{calls}"
                ),
            },
            {
                "record": R["gc_pause_mean"],
                "expr": (
                    f"sum by ({P}, {GENERATION}) (rate({pause_sum}[{m.gc_window}]))\n"
                    f"/ (sum by ({P}, {GENERATION}) (rate({pause_count}[{m.gc_window}])) > 0)"
                ),
            },
        ]

    def query_value(self, record: str, fmt: str, *extra_labels: str) -> str:
        """Go template printing `record` for the alert's own process (and task), formatted with `fmt`."""
        labels = [*self.m.process_labels, *extra_labels]
        matchers = ", ".join(f'{l}="%s"' for l in labels)
        args = " ".join(f"$labels.{l}" for l in labels)
        return (
            f"{{{{ with printf `{record}{{{matchers}}}` {args} | query }}}}"
            f"{{{{ . | first | value | {fmt} }}}}{{{{ else }}}}unknown{{{{ end }}}}"
        )

    # -- alerts
    def _alert(self, name: str, severity: str, expr: str, for_: str, summary: str, description: str) -> dict:
        assert name in ALERTS, name
        return {
            "alert": name,
            "expr": expr,
            "for": for_,
            "labels": {SEVERITY: severity, TEAM: self.m.team},
            "annotations": {
                "summary": summary,
                "description": description,
                "runbook_url": self.m.runbook_url(name),
            },
        }

    def alerts(self) -> list[dict[str, Any]]:
        m, P, S = self.m, self.P, self.S
        floor, slope = R["floor"], R["floor_slope"]
        out = []

        # 1. Sustained floor growth (warning, critical)
        for sev in ("warning", "critical"):
            abs_ = getattr(m, f"floor_growth_{sev}_bytes_per_hour")
            pct = getattr(m, f"floor_growth_{sev}_percent_per_hour")
            for_ = getattr(m, f"floor_for_{sev}")
            out.append(
                self._alert(
                    "OtelLeakMemoryFloorGrowing",
                    sev,
                    (
                        f"{slope} * 3600 > {_num(abs_)}\n"
                        f"and {slope} * 3600 > {_num(pct / 100)} * {floor}\n"
                        f"and deriv({floor}[{m.sustain_window}]) * 3600 > {_num(abs_)}"
                    ),
                    for_,
                    f"Memory floor of {_lbl(SERVICE)} worker {_lbl(INSTANCE)} grows {PER_HOUR}.",
                    (
                        f"The resident-memory floor (lowest RSS over {m.floor_window}, which a GC sawtooth cannot "
                        f"raise) of {WORKER_TEXT} has grown {PER_HOUR} over the last {m.slope_window} and is "
                        f"still growing, for {for_}: memory the process never gives back. Threshold: "
                        f"{_human_bytes(abs_)}/h and {_num(pct)}% of the floor per hour."
                    ),
                )
            )

        # 2. Memory limit predicted within hours (node-mixin NodeFilesystemSpaceFillingUp style)
        for sev in ("warning", "critical"):
            used = getattr(m, f"limit_used_{sev}_ratio")
            horizon = getattr(m, f"limit_horizon_{sev}")
            out.append(
                self._alert(
                    "OtelLeakMemoryFillingUp",
                    sev,
                    (
                        f"{floor} / {self.limit} > {_num(used)}\n"
                        f"and predict_linear({floor}[{m.predict_window}], {int(m.seconds(f'limit_horizon_{sev}'))})"
                        f" > {self.limit}"
                    ),
                    m.limit_for,
                    f"{_lbl(SERVICE)} worker {_lbl(INSTANCE)} is predicted to reach its memory limit within {horizon}.",
                    (
                        f"The memory floor of {WORKER_TEXT} uses {{{{ $value | humanizePercentage }}}} of its "
                        f"memory limit and, extrapolating its last {m.predict_window}, reaches the limit within "
                        f"{horizon} (in {self.query_value(R['time_to_limit'], 'humanizeDuration')}): the worker "
                        f"will be OOM-killed or start swapping."
                    ),
                )
            )

        # 3. A task type retaining memory, as the embedded detector attributes it (warning, critical). Only
        # task types the detector suspects (verdict 1 for the task) can fire; the naive per-task RSS rules
        # never page (they name the neighbour of a leak as often as the leaker).
        rate = R["task_detector_retained_rate"]
        task_set = f'{TASK}!=""'
        suspected = f"{self.sel(names.DETECTOR_VERDICT, '', task_set)} >= 1"
        per_call = self.query_value(names.DETECTOR_RETAINED_PER_CALL.prom, "humanize1024", TASK)
        confidence = self.query_value(names.DETECTOR_CONFIDENCE.prom, "humanizePercentage", TASK)
        for sev in ("warning", "critical"):
            thr = getattr(m, f"task_retained_{sev}_bytes_per_hour")
            for_ = getattr(m, f"task_for_{sev}")
            out.append(
                self._alert(
                    "OtelLeakTaskRetainingMemory",
                    sev,
                    f"{rate} * 3600 > {_num(thr)}\nand on({P}, {TASK}) ({suspected})",
                    for_,
                    f"Task {_lbl(TASK)} retains {PER_HOUR} in {_lbl(SERVICE)} worker {_lbl(INSTANCE)}.",
                    (
                        f"The leak detector embedded in {WORKER_TEXT} suspects task type {_lbl(TASK)}: it "
                        f"attributes {per_call}B retained per call to it (confidence {confidence}), "
                        f"{PER_HOUR} at the task's call rate over {m.task_window}, above "
                        f"{_human_bytes(thr)}/h for {for_}. The detector regresses memory growth on task "
                        f"counts (and diffs tracemalloc snapshots), so a neighbour task whose own RSS grows "
                        f"because it allocates into fresh pages is not named. Its diagnosis log "
                        f"({names.LOG_DIAGNOSIS}) names the allocation sites; open an exemplar of this task on "
                        f"the Tasks dashboard."
                    ),
                )
            )

        # 4. The embedded detector's own verdict
        out.append(
            self._alert(
                "OtelLeakDetectorReportsLeak",
                "warning",
                f"max by ({P}, {TASK}) ({self.sel(names.DETECTOR_VERDICT)}) >= 1",
                m.detector_for,
                (
                    f"otel-leak detector reports a leak in {_lbl(SERVICE)} worker {_lbl(INSTANCE)}"
                    f"{{{{ if $labels.{TASK} }}}} (task {_lbl(TASK)}){{{{ end }}}}."
                ),
                (
                    f"The detector embedded in {WORKER_TEXT} has declared a leak"
                    f"{{{{ if $labels.{TASK} }}}} and suspects task type {_lbl(TASK)}{{{{ end }}}} for "
                    f"{m.detector_for}. Its diagnosis log ({names.LOG_DIAGNOSIS}) and span events "
                    f"({names.EVENT_LEAK_SUSPECT}) name the allocation sites."
                ),
            )
        )

        # 5. GC pause regression against the service's own baseline
        pause_sum = self.sel(names.GC_PAUSE, "_sum")
        pause_count = self.sel(names.GC_PAUSE, "_count")
        w, o = m.gc_window, m.gc_baseline_offset
        baseline = (
            f"sum by ({S}, {GENERATION}) (rate({pause_sum}[{w}] offset {o}))\n"
            f"    / (sum by ({S}, {GENERATION}) (rate({pause_count}[{w}] offset {o})) > 0)"
        )
        out.append(
            self._alert(
                "OtelLeakGCPauseRegression",
                "warning",
                (
                    f"{R['gc_pause_mean']}\n  > on({S}, {GENERATION}) group_left()\n"
                    f"  ({_num(m.gc_regression_factor)} * (\n      {baseline}\n  ))\n"
                    f"and {R['gc_pause_mean']} > {_num(m.gc_min_pause_seconds)}"
                ),
                m.gc_for,
                (
                    f"GC generation {_lbl(GENERATION)} pauses of {_lbl(SERVICE)} worker {_lbl(INSTANCE)} "
                    f"regressed to {{{{ $value | humanizeDuration }}}}."
                ),
                (
                    f"The mean generation-{_lbl(GENERATION)} GC pause of {WORKER_TEXT} is "
                    f"{{{{ $value | humanizeDuration }}}} over {w}, more than {_num(m.gc_regression_factor)}x "
                    f"the service's mean {o} ago. Growing pauses usually mean a growing number of live objects "
                    f"(a leak of Python objects) or a release that allocates more."
                ),
            )
        )

        # 6. Telemetry absent: a worker stopped reporting (and was not replaced), or a whole service did
        rss, alb = self.rss, m.absent_lookback
        out.append(
            self._alert(
                "OtelLeakTelemetryAbsent",
                "warning",
                (
                    f"(\n  group by ({P}) (present_over_time({rss}[{alb}]))\n"
                    f"    unless on({P}) group by ({P}) ({rss})\n"
                    f"    unless on({S}) (\n"
                    f"      count by ({S}) (group by ({P}) ({rss}))\n"
                    f"        >= count by ({S}) (group by ({P}) ({rss} offset {alb}))\n    )\n)\n"
                    f"or\n(\n  group by ({S}) (present_over_time({rss}[{m.absent_service_lookback}]))\n"
                    f"    unless on({S}) group by ({S}) ({rss})\n)"
                ),
                m.absent_for,
                (
                    f"{{{{ if $labels.{INSTANCE} }}}}{_lbl(SERVICE)} worker {_lbl(INSTANCE)} (pid {_lbl(PID)})"
                    f" stopped reporting{{{{ else }}}}No worker of {_lbl(SERVICE)} reports{{{{ end }}}} memory telemetry."
                ),
                (
                    f"{{{{ if $labels.{INSTANCE} }}}}{WORKER_TEXT} reported "
                    f"{names.PROCESS_MEMORY_USAGE.prom} within the last {alb} and has not for {m.absent_for}, "
                    f"and the service has fewer workers reporting than {alb} ago: it died without a "
                    f"replacement, hangs, or lost its telemetry pipeline."
                    f"{{{{ else }}}}Service {_lbl(SERVICE)} reported {names.PROCESS_MEMORY_USAGE.prom} within "
                    f"the last {m.absent_service_lookback} and no worker of it has for {m.absent_for}."
                    f"{{{{ end }}}} Leak alerts cannot fire for workers that do not report."
                ),
            )
        )

        # 7. Fleet: growth within process lifetimes, across restarts. The median over fleet_window (not the
        # mean) so that a long warm-up's few positive samples are outvoted by the flat hours after it.
        fslope = R["service_mature_slope"]
        avg = f"quantile_over_time(0.5, {fslope}[{m.fleet_window}]) * 3600"
        out.append(
            self._alert(
                "OtelLeakFleetMemoryGrowing",
                "warning",
                (
                    f"{avg} > {_num(m.fleet_growth_bytes_per_hour)}\n"
                    f"and on({S})\n{avg} > {_num(m.fleet_growth_percent_per_hour / 100)} * avg by ({S}) ({floor})"
                ),
                m.fleet_for,
                f"Workers of {_lbl(SERVICE)} grow their memory floor {PER_HOUR} during their lifetime.",
                (
                    f"Over the last {m.fleet_window} (median), the memory floor of {_lbl(SERVICE)}'s workers older than "
                    f"{m.fleet_min_age} grows {PER_HOUR} while they live. Restarts (deploys, "
                    f"--max-tasks-per-child, OOM kills) hide this leak from the per-worker alerts: each process "
                    f"starts low again, so no single series shows a long-window slope."
                ),
            )
        )

        # 8. The memory-budget guard recycled a process, or in dry-run would have: a contained leak is still a
        # leak. One alert for both modes; the outcome label tells them apart (and lets a silence take one).
        w = m.guard_recycling_window
        dry = f'{{{{ if eq $labels.{OUTCOME} "{names.GUARD_DRY_RUN}" }}}}'
        out.append(
            self._alert(
                "OtelLeakGuardRecycling",
                "warning",
                self.guard_decided(f'{OUTCOME}=~"{names.GUARD_RECYCLED}|{names.GUARD_DRY_RUN}"', w),
                m.guard_recycling_for,
                (
                    f"The memory-budget guard {dry}would have recycled{{{{ else }}}}recycled{{{{ end }}}} "
                    f"{_lbl(SERVICE)} worker {_lbl(INSTANCE)} (pid {_lbl(PID)}, {_lbl(REASON)})."
                ),
                (
                    f"Within the last {w}, the memory-budget guard (otel_leak.guard) in {WORKER_TEXT} "
                    f"{dry}decided, in dry-run, that it would recycle the process (nothing was recycled; with "
                    f"{config.GUARD.env}=on it would have been){{{{ else }}}}recycled the process between "
                    f"tasks{{{{ end }}}}, reason {_lbl(REASON)}: {GUARD_REASON_TEXT}. A recycle contains a leak, "
                    f"it does not fix it: the replacement starts low and leaks again. The process report's guard "
                    f"entries and the log record 'otel-leak guard' name the floor, the budget and the verdict."
                ),
            )
        )

        # 9. The guard wanted to recycle but the hourly rate limit of its directory stopped it: the leak refills
        # faster than restarts contain it.
        w = m.guard_rate_limited_window
        out.append(
            self._alert(
                "OtelLeakGuardRateLimited",
                "critical",
                self.guard_decided(f'{OUTCOME}="{names.GUARD_RATE_LIMITED}"', w),
                m.guard_rate_limited_for,
                (
                    f"The memory-budget guard cannot recycle {_lbl(SERVICE)} worker {_lbl(INSTANCE)} "
                    f"(pid {_lbl(PID)}): its hourly recycle limit is reached."
                ),
                (
                    f"Within the last {w}, the memory-budget guard in {WORKER_TEXT} decided to recycle the "
                    f"process, reason {_lbl(REASON)} ({GUARD_REASON_TEXT}), and could not: the processes sharing its "
                    f"directory had already recycled {config.GUARD_MAX_RECYCLES_PER_HOUR.env} times in the "
                    f"last hour. The leak refills memory faster than recycling contains it; the process runs on "
                    f"over its budget until the hour's count lets it go. Time to its memory limit at the floor's "
                    f"slope: {self.query_value(R['time_to_limit'], 'humanizeDuration')}."
                ),
            )
        )
        return out

    def guard_decided(self, outcome: str, window: str) -> str:
        """Processes with a guard decision of ``outcome`` (a matcher) within ``window``, by process, reason and
        outcome. Each process counts a decision once, so its series starts at 1: presence (max_over_time), not
        increase(), is the signal; it lasts ``window`` past the series' last scrape."""
        recycles = self.sel(names.GUARD_RECYCLES, "", outcome)
        return f"max by ({self.P}, {REASON}, {OUTCOME}) (max_over_time({recycles}[{window}])) > 0"

    def groups(self) -> dict[str, Any]:
        # One group: Prometheus evaluates the rules of a group in order, so every alert sees the recording
        # rules of the same evaluation (separate groups run on independent timers, and promtool orders them
        # arbitrarily unless told).
        return {
            "groups": [
                {"name": GROUP, "interval": self.m.rule_interval, "rules": self.recording() + self.alerts()},
            ]
        }


def _num(x: float) -> str:
    """A number as PromQL text: integers without a decimal point, others with repr precision."""
    if float(x).is_integer():
        return str(int(x))
    return repr(float(x))


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:g} {unit}" if unit == "B" else f"{n:.4g} {unit}"
        n /= 1024
    raise AssertionError


def generate(**overrides: Any) -> dict[str, Any]:
    """The rule groups for ``Mixin(**overrides)`` (production defaults), as a dict ready for YAML."""
    return Rules(Mixin(**overrides)).groups()


# --------------------------------------------------------------------------------------------------
# YAML output


class _Dumper(yaml.SafeDumper):
    pass


def _str_representer(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str_representer)


def render(m: Mixin, title: str) -> str:
    params = "\n".join(f"#   {k} = {v!r}" for k, v in m.params().items())
    header = (
        f"# {title}\n"
        "# GENERATED by `python -m dashboards.rules --out dashboards/generated`: do not edit by hand.\n"
        "# Parameters (dashboards/mixin.py):\n"
        f"{params}\n"
    )
    body = yaml.dump(Rules(m).groups(), Dumper=_Dumper, sort_keys=False, width=1000, allow_unicode=True)
    return header + body


def outputs(**overrides: Any) -> dict[str, str]:
    """File name -> content of both generated rule files."""
    check_parameters(overrides)
    return {
        PRODUCTION_FILE: render(Mixin.production(**overrides), "otel-leak Prometheus rules: production parameters"),
        TEST_FILE: render(
            Mixin.e2e(**overrides),
            "otel-leak Prometheus rules: short windows for the end-to-end test (1 s scrape interval)",
        ),
    }


def write(out: Path, **overrides: Any) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in outputs(**overrides).items():
        path = out / name
        path.write_text(text)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dashboards.rules", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="directory for the generated rule files")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help=f"override a Mixin parameter (one of: {', '.join(PARAMETERS)})",
    )
    args = p.parse_args(argv)
    try:
        overrides = parse_set(args.set)
        paths = write(args.out, **overrides)
    except (TypeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
