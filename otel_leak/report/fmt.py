"""Human formatting shared by the terminal summary and the HTML page."""

from __future__ import annotations

import os
from typing import Any

from otel_leak.report.schema import is_num


def bytes_h(n: Any) -> str:
    if not is_num(n):
        return "—"
    sign = "-" if n < 0 else ""
    v = float(abs(n))
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if v < 1024 or unit == "TiB":
            if unit == "B":
                return f"{sign}{v:.0f} B"
            return f"{sign}{v:.1f} {unit}"
        v /= 1024
    return f"{sign}{v:.1f} TiB"  # pragma: no cover


def rate_h(n: Any) -> str:
    if not is_num(n):
        return "—"
    s = bytes_h(n)
    return ("+" if n > 0 else "") + s + "/s"


def secs_h(s: Any) -> str:
    if not is_num(s):
        return "—"
    s = float(s)
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60)} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60)} min"


def short_path(p: str, width: int = 60) -> str:
    """Shorten a path for display: relative to the current directory when inside it, else elided."""
    if not isinstance(p, str):
        return str(p)
    try:
        cwd = os.getcwd()
        if p.startswith(cwd + os.sep):
            p = p[len(cwd) + 1 :]
    except OSError:
        pass
    marker = "site-packages" + os.sep
    if marker in p:
        p = p.split(marker, 1)[1]
    if len(p) > width:
        p = "…" + p[-(width - 1) :]
    return p


def fmt_site(site: dict) -> str:
    f = short_path(str(site.get("file")), 70)
    line = site.get("line")
    return f"{f}:{line}" if line is not None else f
