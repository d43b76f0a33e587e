"""Compare two releases' memory baselines: a verdict per task type and overall.

The test, per task type present in both: ``d = new - base`` bytes per call, ``s = sqrt(se_base² + se_new²)``,
``z = d / s``. Per-call estimates come from a regression on task counts, so a different mix of tasks between
the two runs does not bias them (the mix only changes how precise each is, which ``se`` carries).

* ``regressed``: ``z ≥ Z`` and ``d ≥ MIN_BYTES`` (and at least 25 % of the baseline's own value);
* ``fixed``: the baseline retained (``base / se_base ≥ Z`` and ``base ≥ MIN_BYTES``), the new release does
  not (``new / se_new < 2`` or ``new < MIN_BYTES``), and ``z ≤ -Z``;
* ``unchanged``: both measured, neither of the above;
* ``inconclusive``: missing in one release, no error estimate, or fewer than ``MIN_CALLS`` calls in one.

Overall: ``regressed`` when a task regressed or the detector declared a leak in the new release only;
``fixed`` when a task was fixed, or the baseline was declared leaking and the new release is not, and
nothing regressed; ``unchanged`` when at least one task compared and nothing moved; else ``inconclusive``.
When the workloads differ a lot (tasks/s ratio over ``MAX_RATE_RATIO``, or mixes with less than half in
common) the overall verdict is ``inconclusive`` with that reason (a cache warm at one rate and cold at the
other, a task type's cost that depends on its neighbours: two such runs do not tell a release from its
load), what the per-task test said is kept as the evidence, and the floor slopes are not compared.
"""

from __future__ import annotations

import math

Z = 3.0
MIN_BYTES = 512.0
MIN_CALLS = 50
MAX_RATE_RATIO = 4.0
MIN_MIX_OVERLAP = 0.5
VERDICTS = ("regressed", "fixed", "unchanged", "inconclusive")
EXIT_CODES = {"unchanged": 0, "fixed": 0, "regressed": 1, "inconclusive": 3}


def _ok(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def compare_task(task: str, base: dict | None, new: dict | None) -> dict:
    row = {"task": task, "verdict": "inconclusive", "base": base, "new": new, "z": None, "delta_bytes_per_call": None}
    if base is None or new is None:
        row["reason"] = "not run in the " + ("baseline" if base is None else "new release")
        return row
    b, sb, n, sn = base.get("bytes_per_call"), base.get("se"), new.get("bytes_per_call"), new.get("se")
    if not (_ok(b) and _ok(sb) and _ok(n) and _ok(sn)) or sb <= 0 or sn <= 0:
        row["reason"] = "no error estimate"
        return row
    if (base.get("calls") or 0) < MIN_CALLS or (new.get("calls") or 0) < MIN_CALLS:
        row["reason"] = f"fewer than {MIN_CALLS} calls"
        return row
    d = n - b
    z = d / math.sqrt(sb * sb + sn * sn)
    row.update(z=round(z, 2), delta_bytes_per_call=round(d, 1))
    if z >= Z and d >= max(MIN_BYTES, 0.25 * abs(b)):
        row["verdict"] = "regressed"
    elif b / sb >= Z and b >= MIN_BYTES and (n / sn < 2 or n < MIN_BYTES) and z <= -Z:
        row["verdict"] = "fixed"
    else:
        row["verdict"] = "unchanged"
    return row


def workload_note(base: dict, new: dict) -> str | None:
    wb, wn = base.get("workload") or {}, new.get("workload") or {}
    rb, rn = wb.get("tasks_per_s"), wn.get("tasks_per_s")
    notes = []
    if _ok(rb) and _ok(rn) and rb > 0 and rn > 0 and max(rb, rn) / min(rb, rn) > MAX_RATE_RATIO:
        notes.append(f"task rates differ ({rb:g} vs {rn:g} tasks/s)")
    mb, mn = wb.get("mix") or {}, wn.get("mix") or {}
    overlap = sum(min(mb.get(k, 0.0), mn.get(k, 0.0)) for k in set(mb) | set(mn))
    if mb and mn and overlap < MIN_MIX_OVERLAP:
        notes.append(f"task mixes differ ({overlap:.0%} in common)")
    return "; ".join(notes) or None


def gc_rows(base: dict, new: dict) -> list[dict]:
    """Both releases' GC pauses per generation side by side (shown, not part of the verdict: a pause
    distribution moves with the heap's size and the load as much as with the code)."""
    gb, gn = base.get("gc_pauses") or {}, new.get("gc_pauses") or {}
    rows = []
    for gen in sorted(set(gb) | set(gn)):
        b, n = gb.get(gen) or {}, gn.get(gen) or {}
        row = {"generation": gen}
        for k in ("collections", "p50_s", "p99_s", "max_s"):
            row[f"base_{k}"], row[f"new_{k}"] = b.get(k), n.get(k)
        if _ok(b.get("p99_s")) and _ok(n.get("p99_s")) and b["p99_s"] > 0:
            row["p99_ratio"] = round(n["p99_s"] / b["p99_s"], 2)
        rows.append(row)
    return rows


def compare(base: dict, new: dict) -> dict:
    pb, pn = base.get("per_task") or {}, new.get("per_task") or {}
    rows = [compare_task(t, pb.get(t), pn.get(t)) for t in sorted(set(pb) | set(pn))]
    by = {v: [r["task"] for r in rows if r["verdict"] == v] for v in VERDICTS}
    reasons = []
    declared_new = new.get("verdict") == "leak" and base.get("verdict") != "leak"
    declared_fixed = base.get("verdict") == "leak" and new.get("verdict") == "no_leak"
    if by["regressed"] or declared_new:
        verdict = "regressed"
        if by["regressed"]:
            reasons.append("retains more per call: " + ", ".join(by["regressed"]))
        if declared_new:
            reasons.append("the detector declared a leak in the new release only"
                           + (f" (suspect {new['suspects'][0]})" if new.get("suspects") else ""))
    elif by["fixed"] or declared_fixed:
        verdict = "fixed"
        reasons.append("fixed: " + (", ".join(by["fixed"]) if by["fixed"] else "the baseline's leak is gone"))
    elif by["unchanged"]:
        verdict = "unchanged"
        reasons.append(f"{len(by['unchanged'])} task type(s) compared, none moved")
    else:
        verdict = "inconclusive"
        reasons.append("no task type could be compared")
    note = workload_note(base, new)
    if note is not None:
        reasons = [f"the workloads differ too much to compare: {note} (per call, the runs say: {verdict}; "
                   + "; ".join(reasons) + ")"]
        verdict = "inconclusive"
    floor = None
    if note is None and _ok(base.get("floor_slope_bytes_per_s")) and _ok(new.get("floor_slope_bytes_per_s")):
        sb, sn = base.get("floor_slope_se"), new.get("floor_slope_se")
        if _ok(sb) and _ok(sn) and (sb > 0 or sn > 0):
            d = new["floor_slope_bytes_per_s"] - base["floor_slope_bytes_per_s"]
            floor = {"delta_bytes_per_s": round(d, 1), "z": round(d / math.sqrt(sb * sb + sn * sn), 2)}
    return {
        "schema": "otel-leak/compare/v1",
        "verdict": verdict,
        "reasons": reasons,
        "workload_note": note,
        "base": {k: base.get(k) for k in ("service", "version", "environment", "verdict", "workload")},
        "new": {k: new.get(k) for k in ("service", "version", "environment", "verdict", "workload")},
        "tasks": rows,
        "floor": floor,
        "gc_pauses": gc_rows(base, new),
        "series": {"base": base.get("series"), "new": new.get("series")},
    }
