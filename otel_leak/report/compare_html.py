"""The HTML page of ``otel-leak compare``: the verdict, the per-task table and both releases' resident memory
side by side (inline SVG, no dependency), rendered from one template. Values are escaped."""

from __future__ import annotations

import html
from string import Template

PAGE = Template("""<!doctype html>
<html><head><meta charset="utf-8"><title>otel-leak compare: $title</title>
<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:.3em .6em;text-align:right}td:first-child{text-align:left}
.regressed{color:#b00}.fixed{color:#070}.charts{display:flex;gap:2em}figure{margin:0}</style></head>
<body><h1>$title</h1><p class="$verdict"><b>$verdict</b>: $reasons</p>$note
<table><tr><th>task</th><th>base B/call</th><th>new B/call</th><th>z</th><th>verdict</th></tr>$rows</table>
$gc
<h2>Resident memory</h2><div class="charts">$charts</div></body></html>
""")
W, H = 420, 180


def _svg(series: dict | None, label: str) -> str:
    t, y = (series or {}).get("t_s") or [], (series or {}).get("rss") or []
    if len(t) < 2 or len(y) < 2:
        return f"<figure><figcaption>{html.escape(label)}: no series</figcaption></figure>"
    t0, t1, lo, hi = t[0], t[-1] or 1, min(y), max(y)
    span, rng = (t1 - t0) or 1, (hi - lo) or 1
    pts = " ".join(f"{(a - t0) / span * W:.1f},{H - (b - lo) / rng * H:.1f}" for a, b in zip(t, y))
    cap = f"{label}: {lo / 2**20:.1f} to {hi / 2**20:.1f} MiB over {span:.0f} s"
    return (f'<figure><svg width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img" aria-label="{html.escape(cap)}">'
            f'<polyline fill="none" stroke="#36c" stroke-width="1.5" points="{pts}"/></svg>'
            f"<figcaption>{html.escape(cap)}</figcaption></figure>")


def _cell(e: dict | None) -> str:
    if not e or e.get("bytes_per_call") is None:
        return "-"
    return f"{e['bytes_per_call']:+,.0f} &plusmn; {e['se']:,.0f}"


def render(result: dict) -> str:
    b, n = result["base"], result["new"]
    title = f"{b.get('service')} {b.get('version')} → {n.get('version')}"
    rows = "".join(
        f"<tr><td>{html.escape(str(r['task']))}</td><td>{_cell(r['base'])}</td><td>{_cell(r['new'])}</td>"
        f"<td>{'-' if r['z'] is None else format(r['z'], '+.1f')}</td>"
        f"<td class=\"{r['verdict']}\">{html.escape(r['verdict'] + (' (' + r['reason'] + ')' if r.get('reason') else ''))}</td></tr>"
        for r in result["tasks"])
    def ms(x) -> str:
        return "-" if x is None else f"{x * 1000:.2f} ms"

    gc_rows = "".join(
        f"<tr><td>{html.escape(str(r['generation']))}</td><td>{r['base_collections'] or '-'} / {r['new_collections'] or '-'}</td>"
        f"<td>{ms(r['base_p50_s'])} / {ms(r['new_p50_s'])}</td><td>{ms(r['base_p99_s'])} / {ms(r['new_p99_s'])}</td></tr>"
        for r in result.get("gc_pauses") or [])
    gc = ("<h2>GC pauses per generation (shown, not judged)</h2><table><tr><th>generation</th><th>collections base / new</th>"
          f"<th>p50 base / new</th><th>p99 base / new</th></tr>{gc_rows}</table>") if gc_rows else ""
    series = result.get("series") or {}
    return PAGE.substitute(
        gc=gc,
        title=html.escape(title), verdict=html.escape(result["verdict"]),
        reasons=html.escape("; ".join(result["reasons"])),
        note=f"<p>{html.escape(result['workload_note'])}</p>" if result.get("workload_note") else "",
        rows=rows,
        charts=_svg(series.get("base"), f"base {b.get('version')}") + _svg(series.get("new"), f"new {n.get('version')}"),
    )


def write_html(result: dict, path: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(render(result))
