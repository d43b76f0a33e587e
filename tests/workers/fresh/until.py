"""Load for the packaging test's workers stops early once the detector has done its job: ``declared``."""

import glob
import json
import os


def declared(report_dir):
    """The pid whose per-process report in report_dir declares a leak and has had its suspects named (the
    first tier-2 window over), or None."""
    for path in glob.glob(os.path.join(report_dir or "", "*.json")):
        try:
            with open(path) as fh:
                doc = json.load(fh)
        except (OSError, ValueError):
            continue
        named = doc.get("suspects") or any(e.get("kind") == "suspects" for e in doc.get("events") or ())
        if doc.get("verdict") == "leak" and named:
            return doc.get("pid")
    return None
