"""The canary gate: is release B's memory worse than release A's, from the fleet's Prometheus?

Evidence, per release (``service_version``), over the last ``window``:

* the net resident-memory change per completed task, all task types pooled: (growth histogram sum −
  release histogram sum) / measured tasks (all of them below the read budget, a random sample above it),
  in ``POINTS`` consecutive sub-windows, so each release gets a
  robust centre (median) and a standard error (a canary and its baseline serve the same traffic, so the same mix);
* whether the embedded detector declared a leak in any of its processes during the window, and the task
  types it names at its end with their retained bytes per call (its regression on task counts: the one per-task figure that is right when
  one task's leak dirties the pages another task then touches);
* per task type, the same net change per call from task spans, reported but not decided on, for the reason
  just given.

Decision: ``fail`` when the canary's detector declared a leak and the baseline's did not, or when the pooled
change per task is higher in the canary by ``z ≥ Z`` (the two standard errors combined) and by at least
``MIN_BYTES`` and a quarter of the baseline's; ``inconclusive`` when either release completed fewer than
``MIN_TASKS`` tasks in the window; ``pass`` otherwise.

The PromQL comes from :func:`net_per_call`, :func:`tasks` and :func:`detector_leak`, which also build the
queries of the Argo Rollouts AnalysisTemplate and the Flagger MetricTemplate in ``deploy/k8s``. Series and
label names come from :mod:`otel_leak.names`. Nothing here raises except :class:`GateError` (one line).
"""

from __future__ import annotations

import json
import math
import re
import time
import urllib.error
import urllib.parse
import urllib.request

from otel_leak import names

POINTS = 6
Z = 3.0
MIN_BYTES = 512.0
MIN_TASKS = 200
_DURATION = re.compile(r"^(\d+)(s|m|h)$")


class GateError(Exception):
    """Prometheus unreachable or answering with an error, or a bad argument: one line for the user."""


def seconds(duration: str) -> int:
    m = _DURATION.match(duration.strip())
    if not m:
        raise GateError(f"window {duration!r}: use a Prometheus duration such as 90s, 15m or 1h")
    return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600}[m.group(2)]


def _sel(selector: str, service: str, version: str | None = None) -> str:
    parts = [p for p in (selector,) if p]
    parts.append(f'{names.LABEL_SERVICE}="{service}"')
    if version is not None:
        parts.append(f'{names.LABEL_VERSION}="{version}"')
    return ",".join(parts)


def tasks(selector: str, service: str, window: str, version: str | None = None) -> str:
    """Completed tasks per release and task type over ``window``."""
    by = f"{names.LABEL_VERSION}, {names.LABEL_TASK}"
    return f"sum by ({by}) (increase({names.TASK_COUNT.prom}{{{_sel(selector, service, version)}}}[{window}]))"


def net_per_call(selector: str, service: str, window: str, version: str | None = None, per_task: bool = True) -> str:
    """Mean net resident-memory change per call over ``window`` (bytes), per release and (``per_task``) task."""
    s = _sel(selector, service, version)
    by = f"{names.LABEL_VERSION}, {names.LABEL_TASK}" if per_task else names.LABEL_VERSION
    grow = f"sum by ({by}) (increase({names.TASK_MEMORY_GROWTH.prom}_sum{{{s}}}[{window}]))"
    rel = f"sum by ({by}) (increase({names.TASK_MEMORY_RELEASE.prom}_sum{{{s}}}[{window}]))"
    # Per measured call: a fast worker measures a random sample of its task spans (the read budget).
    count = f"sum by ({by}) (increase({names.TASK_MEASURED.prom}{{{s}}}[{window}]))"
    return f"({grow} - ({rel} or {grow} * 0)) / {count}"


def suspects(selector: str, service: str, version: str | None = None) -> str:
    """Bytes per call the detector charges to each task type it names now (its latest verdict)."""
    s = _sel(selector, service, version)
    return f"max by ({names.LABEL_VERSION}, {names.LABEL_TASK}) ({names.DETECTOR_RETAINED_PER_CALL.prom}{{{s}}})"


def gc_pause(selector: str, service: str, window: str, version: str | None = None, q: float | None = None) -> str:
    """GC pauses per generation over ``window``: the ``q`` quantile (seconds), or the count when ``q`` is None."""
    s = _sel(selector, service, version)
    gen = names.LABEL_GC_GENERATION
    if q is None:
        return f"sum by ({gen}) (increase({names.GC_PAUSE.prom}_count{{{s}}}[{window}]))"
    return f"histogram_quantile({q}, sum by (le, {gen}) (increase({names.GC_PAUSE.prom}_bucket{{{s}}}[{window}])))"


def detector_leak(selector: str, service: str, window: str, version: str | None = None) -> str:
    """1 when the detector of any process of the release declared a leak during ``window``."""
    s = _sel(selector, service, version)
    return f"max by ({names.LABEL_VERSION}) (max_over_time({names.DETECTOR_VERDICT.prom}{{{s}}}[{window}]))"


class Prometheus:
    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url, self.timeout = url.rstrip("/"), timeout

    def _get(self, path: str, params: dict) -> list:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as resp:
                doc = json.load(resp)
        except urllib.error.HTTPError as exc:
            raise GateError(f"Prometheus at {self.url} answered {exc.code}: {exc.read()[:200]!r}") from None
        except (OSError, ValueError) as exc:
            raise GateError(f"cannot query Prometheus at {self.url}: {exc}") from None
        if doc.get("status") != "success":
            raise GateError(f"Prometheus at {self.url}: {doc.get('error') or doc}")
        return doc["data"]["result"]

    def instant(self, expr: str, at: float) -> list:
        return self._get("/api/v1/query", {"query": expr, "time": at})

    def range(self, expr: str, start: float, end: float, step: float) -> list:
        return self._get("/api/v1/query_range", {"query": expr, "start": start, "end": end, "step": step})


def _mean_se(values: list[float]) -> tuple[float | None, float | None]:
    """A robust centre of the sub-window values and its standard error: the median, and 1.4826 × MAD × 1.25
    / √n (the median's efficiency): one sub-window where the allocator returned or grabbed a large block
    moves neither."""
    xs = sorted(v for v in values if math.isfinite(v))
    n = len(xs)
    if n < 3:
        return (sum(xs) / n if xs else None), None
    med = xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2
    dev = sorted(abs(x - med) for x in xs)
    mad = dev[n // 2] if n % 2 else (dev[n // 2 - 1] + dev[n // 2]) / 2
    if mad == 0:
        mad = (sum(dev) / n) or 1.0
    return med, 1.4826 * mad * 1.25 / math.sqrt(n)


def _sub(prom: Prometheus, expr: str, start: float, end: float, step: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for series in prom.range(expr, start, end, step):
        out.setdefault(series["metric"].get(names.LABEL_TASK, ""), []).extend(float(v) for _, v in series["values"])
    return out


def _est(values: list[float], calls: int) -> dict:
    m, se = _mean_se(values)
    return {"bytes_per_call": None if m is None else round(m, 1), "se": None if se is None else round(se, 1),
            "calls": calls}


def evidence(prom: Prometheus, selector: str, service: str, version: str, window: str, end: float) -> dict:
    """One release's evidence over ``window`` ending at ``end`` (see the module docstring)."""
    total = seconds(window)
    step = max(1, total // POINTS)
    start = end - total + step
    calls = {s["metric"].get(names.LABEL_TASK, ""): int(round(float(s["value"][1])))
             for s in prom.instant(tasks(selector, service, window, version), end)}
    pooled = _sub(prom, net_per_call(selector, service, f"{step}s", version, per_task=False), start, end, step)
    per = _sub(prom, net_per_call(selector, service, f"{step}s", version), start, end, step)
    named = {s["metric"].get(names.LABEL_TASK, ""): round(float(s["value"][1]), 1)
             for s in prom.instant(suspects(selector, service, version), end)}
    leak = prom.instant(detector_leak(selector, service, window, version), end)
    pauses: dict[str, dict] = {}
    for key, q in (("collections", None), ("p50_s", 0.5), ("p99_s", 0.99)):
        for s in prom.instant(gc_pause(selector, service, window, version, q), end):
            v = float(s["value"][1])
            if math.isfinite(v):
                gen = s["metric"].get(names.LABEL_GC_GENERATION, "")
                pauses.setdefault(gen, {})[key] = int(round(v)) if q is None else round(v, 6)
    return {
        "version": version,
        "tasks": sum(calls.values()),
        "pooled": _est(pooled.get("", []), sum(calls.values())),
        "detector_leak": any(float(s["value"][1]) >= 1 for s in leak),
        "suspects": {k: v for k, v in named.items() if k},
        "per_task_spans": {t: _est(per.get(t, []), calls.get(t, 0)) for t in sorted(set(per) | set(calls))},
        "gc_pauses": {g: v for g, v in sorted(pauses.items()) if v.get("collections")},
    }


def decide(base: dict, canary: dict) -> dict:
    reasons = []
    b, c = base["pooled"], canary["pooled"]
    grew = None
    if None not in (b["bytes_per_call"], b["se"], c["bytes_per_call"], c["se"]):
        d = c["bytes_per_call"] - b["bytes_per_call"]
        z = d / (math.hypot(b["se"], c["se"]) or 1.0)
        if z >= Z and d >= max(MIN_BYTES, 0.25 * abs(b["bytes_per_call"])):
            grew = {"delta_bytes_per_task": round(d, 1), "z": round(z, 2)}
    newly = canary["detector_leak"] and not base["detector_leak"]
    # most retained per call first: the detector may also name a neighbour that touched the leak's pages
    regressed = sorted(set(canary["suspects"]) - set(base["suspects"]), key=lambda t: -canary["suspects"][t])
    if base["tasks"] < MIN_TASKS or canary["tasks"] < MIN_TASKS:
        verdict = "inconclusive"
        reasons.append(f"too few tasks in the window (baseline {base['tasks']}, canary {canary['tasks']}; "
                       f"{MIN_TASKS} needed)")
    elif newly or grew:
        verdict = "fail"
        if newly:
            named = ", ".join(f"{t} ~{canary['suspects'][t]:,.0f} B/call" for t in regressed)
            reasons.append("the detector declared a leak in the canary only" + (f" ({named})" if named else ""))
        if grew:
            reasons.append(f"the canary keeps {grew['delta_bytes_per_task']:+,.0f} B more per task (z={grew['z']})")
    else:
        verdict = "pass"
        reasons.append("the canary keeps no more memory per task, and no leak declared in it only")
    return {"verdict": verdict, "reasons": reasons, "regressed": regressed, "growth": grew}


def gate(url: str, service: str, baseline_version: str, canary_version: str, window: str = "15m",
         selector: str = "", end: float | None = None) -> dict:
    prom = Prometheus(url)
    end = time.time() if end is None else end
    base = evidence(prom, selector, service, baseline_version, window, end)
    canary = evidence(prom, selector, service, canary_version, window, end)
    return {"schema": "otel-leak/gate/v1", "service": service, "window": window, **decide(base, canary),
            "baseline": base, "canary": canary}
