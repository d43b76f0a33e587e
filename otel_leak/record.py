"""Remediation records: what leaked, where, what holds it, the alert and runbook, the releases compared and
the verification result, as Markdown (for people and the repository next to the baselines) and JSON (for
tools), from a report and, optionally, the results of ``otel-leak compare``.
"""

from __future__ import annotations

import time

SCHEMA = "otel-leak/record/v1"
# The alerts a leak of this kind pages with (names as in dashboards/mixin.py), and their runbooks.
ALERT = "OtelLeakDetectorReportsLeak"
TASK_ALERT = "OtelLeakTaskRetainingMemory"
RUNBOOK_BASE = "https://github.com/otel-leak/otel-leak/blob/main/docs/runbooks"


def build(report: dict, comparisons: list[dict] = (), title: str | None = None, links: list[str] = (),
          runbook_base: str = RUNBOOK_BASE, now: float | None = None) -> dict:
    suspects = report.get("suspects") or []
    top = suspects[0] if suspects else {}
    alerts = [ALERT] + ([TASK_ALERT] if top else [])
    verified = [c for c in comparisons if c.get("verdict") == "fixed"]
    regressed = [c for c in comparisons if c.get("verdict") == "regressed"]
    status = "verified fixed" if verified and not regressed else "regressed" if regressed else (
        "open" if report.get("verdict") == "leak" else "no leak observed")
    return {
        "schema": SCHEMA,
        "title": title or (f"Memory leak in {top.get('task')}" if top else "Memory investigation"),
        "created_unix": round(now if now is not None else time.time(), 3),
        "status": status,
        "leak": {
            "verdict": report.get("verdict"),
            "kind": (report.get("memory") or {}).get("kind"),
            "detected_at_s": report.get("detected_at_s"),
            "started_unix": report.get("started_unix"),
            "command": report.get("command"),
            "suspects": [{k: s.get(k) for k in ("task", "retained_bytes_per_call", "calls", "confidence", "trace_ids")}
                         for s in suspects[:5]],
            "allocation_sites": [{k: s.get(k) for k in ("file", "line", "retained_bytes")}
                                 for s in (report.get("allocation_sites") or [])[:3]],
            "retention_paths": [p.get("text") for p in (report.get("retention_paths") or [])[:3] if isinstance(p, dict)],
        },
        "alerts": [{"alert": a, "runbook_url": f"{runbook_base}/{a}.md"} for a in alerts],
        "verification": [{"base": c.get("base", {}).get("version"), "new": c.get("new", {}).get("version"),
                          "verdict": c.get("verdict"), "reasons": c.get("reasons")} for c in comparisons],
        "links": list(links),
    }


def markdown(rec: dict) -> str:
    leak = rec["leak"]
    out = [f"# {rec['title']}", "", f"- status: **{rec['status']}**",
           f"- recorded: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(rec['created_unix']))}",
           f"- verdict: {leak['verdict']} (memory kind: {leak['kind'] or 'unknown'})"]
    if leak["command"]:
        out.append(f"- command: `{' '.join(leak['command'])}`")
    out += ["", "## What leaked"]
    for s in leak["suspects"]:
        bpc = s.get("retained_bytes_per_call")
        out.append(f"- task `{s['task']}`: ~{bpc:,.0f} bytes per call over {s.get('calls')} calls"
                   if isinstance(bpc, (int, float)) else f"- task `{s['task']}`")
    out += ["", "## Where"] + [f"- `{s['file']}:{s['line']}` ({s.get('retained_bytes') or 0:,} bytes retained)"
                               for s in leak["allocation_sites"]] or ["- (no allocation site)"]
    out += ["", "## What holds it"] + ([f"- `{p}`" for p in leak["retention_paths"]] or ["- (no retention path)"])
    out += ["", "## Alerts and runbooks"] + [f"- {a['alert']}: {a['runbook_url']}" for a in rec["alerts"]]
    out += ["", "## Verification"] + ([f"- {v['base']} -> {v['new']}: **{v['verdict']}** ({'; '.join(v['reasons'] or [])})"
                                       for v in rec["verification"]] or ["- not verified yet (run `otel-leak compare`)"])
    if rec["links"]:
        out += ["", "## Links"] + [f"- {link}" for link in rec["links"]]
    return "\n".join(out) + "\n"
