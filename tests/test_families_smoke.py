"""The held-out scoring harness, end to end on a small subset: one short draw per scenario family.

Each draw is a real worker process under ``otel-leak run`` (bench/families/worker.py): this checks that
every family runs, that every run leaves a valid process report, and that the scorer judges them. The
detector's quality is measured on the held-out seeds (BENCHMARKS.md), not asserted here on 4-second runs, so
four draws run at once on the two cores (what is asserted does not depend on the pace).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from otel_leak.detector.report import validate_process_report
from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "bench" / "families"))
import draw  # noqa: E402


@pytest.mark.timeout(900)
def test_one_short_draw_of_every_family_runs_and_is_judged(tmp_path):
    out = tmp_path / "smoke.json"
    p = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "families" / "score.py"), "--smoke", "--max-duration", "4",
         "--jobs", "4", "--keep", str(tmp_path / "runs"), "--json", str(out)],
        capture_output=True, text=True, timeout=850,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    doc = json.loads(out.read_text())
    rows = doc["rows"]
    assert sorted({r["family"] for r in rows}) == sorted(draw.FAMILIES)
    assert doc["summary"]["missing_reports"] == 0, [r for r in rows if r["verdict"] == "missing"]
    for r in rows:
        assert r["verdict"] in ("leak", "no_leak", "inconclusive"), r
        assert r["tasks"] and r["tasks"] > 0, r
        reports = [json.loads(f.read_text()) for f in (tmp_path / "runs").glob(f"fam-{r['family']}-{r['seed']}-*/[0-9]*.json")]
        assert reports and all(not validate_process_report(rep) for rep in reports), r["family"]
    assert "precision" in p.stdout and "| family |" in p.stdout
