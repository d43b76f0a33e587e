"""The whole chain with the real programs: a leaking worker under ``opentelemetry-instrument`` (the
session's ``leak_pair``, see conftest.py) → the built collector → Prometheus 2.42 with the generated
short-window rules → Alertmanager 0.25 → a page (webhook sink) naming the service, the instance and the
leaking task, with the runbook URL; an exemplar on the leaking task's histogram whose trace id the trace
store (Jaeger v2) holds. The healthy worker of the pair, run the same way at the same time, never pages.
Times are from the pair's start to each page's arrival.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from otel_leak import names

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _procs import HEALTHY, LEAKY  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PAGE_TIMEOUT = 300  # from the pair's start


def _alerts(payloads):
    for p in payloads:
        for a in p.get("alerts", []):
            yield p, a


def test_leak_pages_with_service_instance_task_runbook_and_trace(
    prometheus, alertmanager, webhook_sink, tracestore, leak_pair
):
    leaky, healthy, started = leak_pair.leaky, leak_pair.healthy, leak_pair.started

    # 1. A page for the leaking task: labels name service, instance and task; annotations the runbook.
    task_page = detector_page = floor_page = None
    deadline = started + PAGE_TIMEOUT
    # the pages are read at least once: this test may start after the deadline when the session-scoped pair
    # began long before (other tests used it first), and what arrived in time still counts
    while True:
        for arrived, payload in webhook_sink.timed_payloads():
            for alert in payload.get("alerts", []):
                labels = alert["labels"]
                if labels.get(names.LABEL_SERVICE) != LEAKY or alert["status"] != "firing" or arrived > deadline:
                    continue
                found = (arrived - started, payload, alert)
                if labels.get("alertname") == "OtelLeakTaskRetainingMemory" and labels.get(names.LABEL_TASK) == "ingest":
                    task_page = task_page or found
                if labels.get("alertname") == "OtelLeakDetectorReportsLeak" and labels.get(names.LABEL_TASK):
                    detector_page = detector_page or found
                if (
                    labels.get("alertname") == "OtelLeakMemoryFloorGrowing"
                    and labels.get("severity") == "critical"
                    and payload["receiver"] == "workers-pagerduty"  # critical → the pager
                ):
                    floor_page = floor_page or found
        if (task_page and floor_page and detector_page) or time.time() >= deadline:
            break
        time.sleep(1)
    assert leaky.alive, "the leaking worker died"
    seen = sorted({(a["labels"]["alertname"], a["labels"].get(names.LABEL_TASK, "")) for _, a in _alerts(webhook_sink.payloads)})
    assert task_page is not None, f"no page for task 'ingest' within {PAGE_TIMEOUT}s; pages: {seen}"
    t_task, payload, alert = task_page
    assert alert["labels"][names.LABEL_TASK] == "ingest"
    assert alert["labels"][names.LABEL_INSTANCE] == "leaky-1"
    assert alert["annotations"]["runbook_url"].endswith("/OtelLeakTaskRetainingMemory.md")
    assert alert["annotations"]["summary"] and alert["annotations"]["description"]
    assert payload["receiver"] == "workers-webhook"
    # The embedded detector attributes by regression, so its page names the leaking task only — the
    # per-task RSS rule can also name a neighbour whose allocations land in pages the leak dirtied.
    assert detector_page is not None, "the detector's per-task verdict never paged"
    detector_tasks = {
        a["labels"].get(names.LABEL_TASK)
        for _, a in _alerts(webhook_sink.payloads)
        if a["labels"].get("alertname") == "OtelLeakDetectorReportsLeak"
        and a["labels"].get(names.LABEL_SERVICE) == LEAKY
        and a["labels"].get(names.LABEL_TASK)
    }
    assert detector_tasks == {"ingest"}
    assert floor_page is not None, "the critical floor alert never paged"
    t_floor, payload, alert = floor_page
    assert alert["labels"][names.LABEL_INSTANCE] == "leaky-1"

    # 2. An exemplar on the leaking task's growth histogram links to a trace the trace store received.
    selector = f'{names.TASK_MEMORY_GROWTH.prom}_bucket{{{names.LABEL_SERVICE}="{LEAKY}",{names.LABEL_TASK}="ingest"}}'
    series = prometheus.query_exemplars(selector, started - 5, time.time())
    trace_ids = [e["labels"]["trace_id"] for s in series for e in s["exemplars"] if "trace_id" in e["labels"]]
    assert trace_ids, f"no exemplar with a trace_id on {selector}"
    spans = tracestore.wait_for_trace(trace_ids[-1], timeout=30)
    assert spans, f"trace {trace_ids[-1]} is not in the trace store"

    # 3. The healthy worker, running all along, never paged and has no firing alert.
    assert healthy.alive
    healthy_pages = [a for _, a in _alerts(webhook_sink.payloads) if a["labels"].get(names.LABEL_SERVICE) == HEALTHY]
    assert healthy_pages == []
    firing = prometheus.query(f'ALERTS{{alertstate="firing",{names.LABEL_SERVICE}="{HEALTHY}"}}')
    assert firing == []

    out = ROOT / "out"
    out.mkdir(exist_ok=True)
    (out / "e2e_timings.json").write_text(
        json.dumps(
            {
                "leak_start_to_task_page_s": round(t_task, 1),
                "leak_start_to_detector_page_s": round(detector_page[0], 1),
                "leak_start_to_critical_page_s": round(t_floor, 1),
            }
        )
    )
