"""One self-contained HTML page for an ``otel-leak/report/v1`` report.

No external URL anywhere: styles are inline, charts are inline SVG drawn with matplotlib (the ``html`` extra).
Without matplotlib the page still renders, with the tables and a note where the charts would be.
"""

from __future__ import annotations

import datetime as _dt
import html
import importlib.util
import io
import os
import re
from typing import Any

from otel_leak._files import atomic_write_text
from otel_leak.report.fmt import bytes_h, fmt_site, rate_h, secs_h, short_path
from otel_leak.report.schema import is_num

PALETTE = ["#2563eb", "#d97706", "#059669", "#7c3aed", "#db2777", "#0891b2", "#65a30d", "#dc2626"]
VERDICT_STYLE = {
    "leak": ("LEAK", "#b91c1c", "#fef2f2"),
    "no_leak": ("NO LEAK", "#047857", "#ecfdf5"),
    "inconclusive": ("INCONCLUSIVE", "#92400e", "#fffbeb"),
}
MAX_CHART_PROCESSES = 8


def charts_note() -> str | None:
    """What to install when the HTML page cannot have charts (None when it can)."""
    try:
        if importlib.util.find_spec("matplotlib") is not None:
            return None
    except (ImportError, ValueError):
        pass
    return 'the HTML page has no charts: they need matplotlib, the html extra (pip install "otel-leak[html]")'


def e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


# ------------------------------------------------------------------------------------------------------
# Charts (matplotlib, no pyplot: no global backend state)


def _mpl():
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_svg import FigureCanvasSVG
        from matplotlib.figure import Figure
    except Exception:
        return None
    return Figure, FigureCanvasSVG


def _svg(fig, canvas_cls) -> str:
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        canvas_cls(fig).print_svg(buf)
    text = buf.getvalue()
    start = text.find("<svg")
    svg = text[start:] if start >= 0 else text
    # drop matplotlib's RDF metadata (creator URLs): the page names no outside address at all
    svg = re.sub(r"<metadata>.*?</metadata>\s*", "", svg, flags=re.S)
    # responsive: let CSS size it
    return svg.replace("<svg ", '<svg class="chart" preserveAspectRatio="xMidYMid meet" ', 1)


def _style_axes(ax) -> None:
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    for side in ("left", "bottom"):
        ax.spines[side].set_color("#94a3b8")
    ax.tick_params(colors="#475569", labelsize=8)
    ax.grid(True, color="#e2e8f0", linewidth=0.6)
    ax.set_axisbelow(True)


MIB = 1048576.0


def memory_chart(report: dict) -> str | None:
    """RSS (thin) and floor (thick) over run time, one panel per process, the detection moment marked."""
    mpl = _mpl()
    procs = [p for p in report.get("processes", []) if (p.get("series") or {}).get("t_s")]
    if mpl is None or not procs:
        return None
    Figure, Canvas = mpl
    procs = sorted(procs, key=lambda p: (p.get("verdict") != "leak", p.get("start_offset_s") or 0, p.get("pid")))
    procs = procs[:MAX_CHART_PROCESSES]
    n = len(procs)
    cols = 1 if n == 1 else 2
    rows = (n + cols - 1) // cols
    width = 10.0
    fig = Figure(figsize=(width, 2.9 * rows + 0.3), dpi=100)
    fig.patch.set_alpha(0)
    axes = fig.subplots(rows, cols, squeeze=False)
    for idx, p in enumerate(procs):
        ax = axes[idx // cols][idx % cols]
        _style_axes(ax)
        s = p["series"]
        off = p.get("start_offset_s") or 0.0
        t = [(v + off) if is_num(v) else None for v in s["t_s"]]
        color = "#dc2626" if p.get("verdict") == "leak" else PALETTE[idx % len(PALETTE)]
        rss = s.get("rss")
        floor = s.get("floor")
        seen: list[float] = []
        if rss:
            pts = [(a, b / MIB) for a, b in zip(t, rss) if a is not None and b is not None]
            if pts:
                xs, ys = [a for a, _ in pts], [b for _, b in pts]
                ax.plot(xs, ys, color=color, alpha=0.45, linewidth=1.0, label="RSS")
                seen += ys
        if floor:
            pts = [(a, b / MIB) for a, b in zip(t, floor) if a is not None and b is not None]
            if pts:
                xs, ys = [a for a, _ in pts], [b for _, b in pts]
                ax.plot(xs, ys, color=color, linewidth=2.4, label="floor")
                ax.fill_between(xs, ys, 0, color=color, alpha=0.06, linewidth=0)
                seen += ys
        if seen:
            lo, hi = min(seen), max(seen)
            span = max(hi - lo, 0.12 * hi, 1.0)
            ax.set_ylim(max(0.0, lo - 0.25 * span), hi + 0.2 * span)
        det = p.get("detected_at_s")
        if p.get("verdict") == "leak" and is_num(det):
            x = det + off
            ax.axvline(x, color="#b91c1c", linestyle="--", linewidth=1.2)
            ax.annotate(
                "leak declared",
                xy=(x, 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(4, -12),
                textcoords="offset points",
                color="#b91c1c",
                fontsize=8,
                fontweight="bold",
            )
        for ev in p.get("events") or []:
            name = str(ev.get("name") or ev.get("event") or ev.get("kind") or "")
            et = ev.get("t_s")
            if is_num(et) and "tier2" in name and "start" in name:
                ax.axvspan(et + off, et + off + 0.001, color="#7c3aed", alpha=0.5)
        verdict = (p.get("verdict") or "").replace("_", " ")
        role = p.get("role") or ""
        ax.set_title(f"pid {p.get('pid')} · {role} · {verdict}", fontsize=9.5, loc="left", color="#0f172a")
        ax.set_ylabel("MiB", fontsize=8, color="#475569")
        if idx // cols == rows - 1:
            ax.set_xlabel("seconds since start", fontsize=8, color="#475569")
        if idx == 0:
            ax.legend(fontsize=8, frameon=False, loc="lower right")
    for j in range(n, rows * cols):
        axes[j // cols][j % cols].set_visible(False)
    fig.tight_layout(pad=0.6, h_pad=1.2, w_pad=1.5)
    return _svg(fig, Canvas)


def task_bars(report: dict) -> tuple[str | None, str]:
    """Horizontal bars of retained bytes per call by task type. Returns (svg, caption)."""
    mpl = _mpl()
    rows: list[tuple[str, float, int, bool, float]] = []
    suspects = {s["task"]: s for s in report.get("suspects") or [] if isinstance(s, dict) and s.get("task")}
    for s in suspects.values():
        if is_num(s.get("retained_bytes_per_call")):
            rows.append(
                (s["task"], float(s["retained_bytes_per_call"]), int(s.get("calls") or 0), True,
                 float(s.get("confidence") or 0))
            )
    # estimates for other task types, when the detector publishes them per process
    est: dict[str, list[tuple[float, int]]] = {}
    for p in report.get("processes") or []:
        for item in _task_estimates(p):
            if item[0] not in suspects:
                est.setdefault(item[0], []).append((item[1], item[2]))
    for task, vals in est.items():
        w = sum(max(1, c) for _, c in vals)
        rows.append((task, sum(v * max(1, c) for v, c in vals) / w, sum(c for _, c in vals), False, 0.0))
    if not rows:
        return None, ""
    rows.sort(key=lambda r: r[1], reverse=True)
    rows = rows[:12]
    caption = "Retained bytes per call, by task type (suspects in red, pale when confidence < 0.5)"
    if mpl is None:
        return None, caption
    Figure, Canvas = mpl
    fig = Figure(figsize=(10, 0.45 * len(rows) + 0.9), dpi=100)
    fig.patch.set_alpha(0)
    ax = fig.subplots()
    _style_axes(ax)
    ax.grid(True, axis="x")
    ax.grid(False, axis="y")
    labels = [short_path(r[0], 48) for r in rows][::-1]
    top = max((max(0.0, r[1]) for r in rows), default=0.0)
    scale, unit = next(((f, u) for f, u in ((MIB, "MiB"), (1024.0, "KiB")) if top >= f), (1.0, "B"))
    values = [max(0.0, r[1]) / scale for r in rows][::-1]
    colors = [("#dc2626" if r[4] >= 0.5 else "#fca5a5") if r[3] else "#94a3b8" for r in rows][::-1]
    bars = ax.barh(labels, values, color=colors, height=0.6)
    vmax = max(values) if values else 1.0
    for bar, r in zip(bars, rows[::-1]):
        ax.text(
            bar.get_width() + vmax * 0.01,
            bar.get_y() + bar.get_height() / 2,
            f"{bytes_h(r[1])}/call · {r[2]:,} calls",
            va="center",
            fontsize=8,
            color="#334155",
        )
    ax.set_xlim(0, vmax * 1.35 if vmax > 0 else 1)
    ax.set_xlabel(f"{unit} retained per call", fontsize=8, color="#475569")
    ax.tick_params(axis="y", labelsize=9)
    fig.tight_layout(pad=0.6)
    return _svg(fig, Canvas), caption


def _task_estimates(p: dict) -> list[tuple[str, float, int]]:
    out = []
    raw = p.get("tasks") or p.get("task_estimates")
    items = raw.items() if isinstance(raw, dict) else ((None, x) for x in raw or [])
    for key, v in items:
        if not isinstance(v, dict):
            continue
        task = v.get("task") or key
        rpc = v.get("retained_bytes_per_call")
        if isinstance(task, str) and is_num(rpc):
            out.append((task, float(rpc), int(v.get("calls") or 0)))
    return out


# ------------------------------------------------------------------------------------------------------
# Page

CSS = """
:root{--ink:#0f172a;--muted:#64748b;--line:#e2e8f0;--bg:#f8fafc;--card:#fff}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);font:14px/1.5 -apple-system,BlinkMacSystemFont,"Segoe UI",
Roboto,"Helvetica Neue",Arial,"DejaVu Sans",sans-serif}
main{max-width:1100px;margin:0 auto;padding:28px 24px 48px}
header.top{display:flex;align-items:center;gap:18px;flex-wrap:wrap;margin-bottom:6px}
h1{font-size:20px;margin:0;font-weight:650;letter-spacing:-.01em}
h2{font-size:15px;margin:0 0 12px;font-weight:650}
.badge{display:inline-block;padding:5px 14px;border-radius:999px;font-weight:700;font-size:13px;letter-spacing:.06em}
.conf{color:var(--muted);font-size:13px}
.cmd{font:12.5px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,"DejaVu Sans Mono",monospace;background:#0f172a;
color:#e2e8f0;padding:10px 14px;border-radius:8px;overflow-x:auto;white-space:pre;margin:12px 0 18px}
.banner{border-radius:10px;padding:16px 20px;margin:0 0 18px;border:1px solid}
.banner p{margin:4px 0 0}
.banner .headline{font-size:17px;font-weight:650}
.warn{background:#fffbeb;border:1px solid #fcd34d;color:#78350f;border-radius:8px;padding:8px 14px;margin:0 0 14px;font-size:13px}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(200px,1fr));gap:12px;margin-bottom:18px}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:12px 16px}
.card .k{color:var(--muted);font-size:11.5px;text-transform:uppercase;letter-spacing:.06em}
.card .v{font-size:18px;font-weight:650;margin-top:2px;word-break:break-word}
.card .s{color:var(--muted);font-size:12.5px}
section{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:16px 18px;margin-bottom:18px}
svg.chart{width:100%;height:auto;display:block}
table{border-collapse:collapse;width:100%;font-size:13px}
th{text-align:left;color:var(--muted);font-weight:600;font-size:11.5px;text-transform:uppercase;letter-spacing:.05em;
border-bottom:1px solid var(--line);padding:6px 8px}
td{border-bottom:1px solid var(--line);padding:7px 8px;vertical-align:top}
td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr:last-child td{border-bottom:0}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,"DejaVu Sans Mono",monospace;font-size:12.5px}
details summary{cursor:pointer;color:#2563eb;font-size:12.5px}
ol.tb{margin:6px 0 0;padding-left:22px;font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,"DejaVu Sans Mono",monospace;
font-size:12px;color:#334155}
ol.tb li.own{color:#0f172a;font-weight:600}
.pill{display:inline-block;border-radius:999px;padding:1px 9px;font-size:11.5px;font-weight:650}
.p-leak{background:#fee2e2;color:#b91c1c}.p-no_leak{background:#d1fae5;color:#047857}
.p-inconclusive{background:#fef3c7;color:#92400e}
.muted{color:var(--muted)}
footer{color:var(--muted);font-size:12px;margin-top:24px}
pre.rp{background:#f1f5f9;border-radius:8px;padding:10px 12px;font-size:12px;overflow-x:auto;margin:6px 0}
"""


def _pill(verdict: str) -> str:
    label = VERDICT_STYLE.get(verdict, (verdict,))[0].lower()
    return f'<span class="pill p-{e(verdict)}">{e(label)}</span>'


def _card(k: str, v: str, s: str = "") -> str:
    return f'<div class="card"><div class="k">{e(k)}</div><div class="v">{v}</div><div class="s">{s}</div></div>'


def _headline(report: dict) -> tuple[str, str]:
    verdict = report.get("verdict")
    suspects = report.get("suspects") or []
    sites = report.get("allocation_sites") or []
    if verdict == "leak":
        if suspects:
            s = suspects[0]
            head = f"Task <code>{e(s['task'])}</code> leaks"
            if is_num(s.get("retained_bytes_per_call")):
                head += f" about {e(bytes_h(s['retained_bytes_per_call']))} per call"
        else:
            head = "Memory is leaking"
        sub = []
        if sites:
            sub.append(f"Top allocation site: <code>{e(fmt_site(sites[0]))}</code>")
        kind = (report.get("memory") or {}).get("kind")
        if kind == "native_or_fragmentation":
            sub.append("Resident memory grows while the Python heap does not: native memory or fragmentation.")
        return head, " · ".join(sub)
    if verdict == "no_leak":
        return "No leak found", "Memory levelled off: no sustained growth of the resident-memory floor."
    return "Inconclusive", "Not enough evidence either way (too short a run, too few tasks, or missing data)."


def render_html(report: dict, *, title: str | None = None) -> str:
    """The page for one merged report. Never raises on odd data: missing pieces are simply left out."""
    verdict = report.get("verdict") if report.get("verdict") in VERDICT_STYLE else "inconclusive"
    label, fg, bg = VERDICT_STYLE[verdict]
    mem = report.get("memory") or {}
    procs = report.get("processes") or []
    suspects = report.get("suspects") or []
    sites = report.get("allocation_sites") or []
    cmd = report.get("command")
    head, sub = _headline(report)
    parts: list[str] = []
    parts.append('<header class="top">')
    parts.append(f"<h1>{e(title or 'otel-leak report')}</h1>")
    parts.append(f'<span class="badge" style="background:{fg};color:#fff">{e(label)}</span>')
    parts.append(f'<span class="conf">confidence {float(report.get("confidence") or 0):.2f}</span>')
    parts.append("</header>")
    if cmd:
        parts.append(f'<div class="cmd">$ {e(_shell_join(cmd))}</div>')
    parts.append(
        f'<div class="banner" style="background:{bg};border-color:{fg}33;color:{fg}">'
        f'<div class="headline">{head}</div>' + (f"<p>{sub}</p>" if sub else "") + "</div>"
    )
    warn = []
    if report.get("incomplete"):
        what = []
        if report.get("signal"):
            what.append(f"the command was killed by {report['signal']}")
        elif report.get("exit_code") not in (None, 0):
            what.append(f"the command exited with {report['exit_code']}")
        warn.append("Incomplete: " + ("; ".join(what) if what else "some data is missing") + ". The report shows what was seen.")
    for err in (report.get("errors") or [])[:6]:
        warn.append(str(err))
    for w in warn:
        parts.append(f'<div class="warn">{e(w)}</div>')

    # cards
    cards = []
    det = report.get("detected_at_s")
    cards.append(
        _card(
            "detected after",
            e(secs_h(det)) if is_num(det) else "—",
            f"{int(report.get('tasks_observed') or 0):,} tasks in {e(secs_h(report.get('duration_s') or 0))}",
        )
    )
    if suspects:
        s = suspects[0]
        rpc = s.get("retained_bytes_per_call")
        cards.append(
            _card(
                "leaking task",
                f"<span class='mono'>{e(s['task'])}</span>",
                (f"{e(bytes_h(rpc))} retained per call · " if is_num(rpc) else "")
                + f"{int(s.get('calls') or 0):,} calls · conf {float(s.get('confidence') or 0):.2f}",
            )
        )
    rs, re_ = mem.get("rss_start_bytes"), mem.get("rss_end_bytes")
    cards.append(
        _card(
            "resident memory",
            f"{e(bytes_h(rs))} → {e(bytes_h(re_))}" if is_num(rs) and is_num(re_) else "—",
            f"floor {e(rate_h(mem.get('floor_slope_bytes_per_s')))}"
            + (f" · {e(str(mem.get('kind')).replace('_', ' '))}" if mem.get("kind") else ""),
        )
    )
    n_leak = sum(1 for p in procs if p.get("verdict") == "leak")
    cards.append(_card("processes", f"{len(procs)}", f"{n_leak} leaking" if procs else "no process report"))
    parts.append('<div class="cards">' + "".join(cards) + "</div>")

    # memory chart
    parts.append("<section><h2>Memory over time</h2>")
    svg = None
    try:
        svg = memory_chart(report)
    except Exception as exc:  # a chart must never cost the page
        parts.append(f'<p class="muted">chart unavailable: {e(exc)}</p>')
    if svg:
        parts.append(svg)
        parts.append(
            '<p class="muted">Thin line: resident memory (RSS). Thick line: its floor (lowest RSS over the '
            "floor window), which a GC sawtooth cannot fake. Dashed red line: the moment the detector declared "
            "the leak.</p>"
        )
    elif _mpl() is None:
        parts.append('<p class="muted">Install <code>otel-leak[html]</code> (matplotlib) for charts.</p>')
    elif not any((p.get("series") or {}).get("t_s") for p in procs):
        parts.append('<p class="muted">No memory series in this report.</p>')
    parts.append("</section>")

    # tasks
    parts.append("<section><h2>Retained memory by task type</h2>")
    try:
        bars, caption = task_bars(report)
    except Exception as exc:
        bars, caption = None, f"chart unavailable: {exc}"
    if bars:
        parts.append(bars)
        parts.append(f'<p class="muted">{e(caption)}. Estimated by regressing window-to-window growth on the '
                     "task mix, confirmed with tracemalloc.</p>")
    else:
        parts.append('<p class="muted">No task type retains memory' + (" (no leak)." if verdict != "leak" else ".") + "</p>")
    if suspects:
        parts.append(_suspect_table(suspects))
    counts = _task_counts(procs)
    if counts:
        parts.append("<details><summary>Tasks observed by type</summary><table><tr><th>task</th><th>calls</th></tr>")
        for task, c in counts[:50]:
            parts.append(f'<tr><td class="mono">{e(task)}</td><td class="n">{c:,}</td></tr>')
        parts.append("</table></details>")
    parts.append("</section>")

    # sites
    parts.append("<section><h2>Top allocation sites of retained memory</h2>")
    if sites:
        parts.append(_sites_table(sites))
    else:
        parts.append('<p class="muted">No allocation sites: tier 2 (tracemalloc) did not run or found nothing retained.</p>')
    parts.append("</section>")

    paths = report.get("retention_paths") or []
    if paths:
        parts.append("<section><h2>Retention paths</h2><p class='muted'>What keeps the top site's objects alive.</p>")
        for rp in paths[:10]:
            parts.append(f'<pre class="rp">{e(_fmt_path(rp))}</pre>')
        parts.append("</section>")

    pat = report.get("pattern") if report.get("verdict") == "leak" else None
    if isinstance(pat, dict) and pat.get("pattern"):
        parts.append(f"<section><h2>Pattern: {e(pat.get('title') or pat['pattern'])}</h2>")
        parts.append(f"<p class='muted'>{e(pat['pattern'])} · confidence {float(pat.get('confidence') or 0):.2f} · "
                     f"{e(pat.get('evidence') or '')}</p><p>{e(pat.get('remedy') or '')}</p></section>")

    parts.append("<section><h2>Processes</h2>")
    parts.append(_process_table(procs) if procs else '<p class="muted">No process wrote a report.</p>')
    parts.append("</section>")

    gen = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    exit_txt = ""
    if report.get("signal"):
        exit_txt = f" · command killed by {e(report['signal'])}"
    elif report.get("exit_code") is not None:
        exit_txt = f" · command exit code {e(report['exit_code'])}"
    parts.append(f"<footer>schema {e(report.get('schema'))} · generated {e(gen)}{exit_txt} · otel-leak</footer>")

    body = "\n".join(parts)
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{e(title or 'otel-leak report')} · {e(label.lower())}</title>"
        f"<style>{CSS}</style></head><body><main>\n{body}\n</main></body></html>\n"
    )


def _suspect_table(suspects: list[dict]) -> str:
    rows = ["<table><tr><th>#</th><th>task</th><th>retained / call</th><th>calls</th><th>confidence</th>"
            "<th>processes</th><th>trace ids</th></tr>"]
    for i, s in enumerate(suspects[:20], 1):
        tids = s.get("trace_ids") or []
        rows.append(
            f'<tr><td>{i}</td><td class="mono">{e(s.get("task"))}</td>'
            f'<td class="n">{e(bytes_h(s.get("retained_bytes_per_call")))}</td>'
            f'<td class="n">{int(s.get("calls") or 0):,}</td><td class="n">{float(s.get("confidence") or 0):.2f}</td>'
            f'<td class="mono">{e(", ".join(str(p) for p in s.get("pids") or []))}</td>'
            f'<td class="mono">{"<br>".join(e(t) for t in tids[:3])}{" …" if len(tids) > 3 else ""}</td></tr>'
        )
    rows.append("</table>")
    return "".join(rows)


def _sites_table(sites: list[dict]) -> str:
    rows = ["<table><tr><th>#</th><th>site</th><th>retained</th><th>blocks</th><th>traceback</th></tr>"]
    for i, s in enumerate(sites[:15], 1):
        tb = s.get("traceback") or []
        tb_html = ""
        if tb:
            items = []
            for fr in tb[:40]:
                f = fr.get("file") if isinstance(fr, dict) else None
                own = isinstance(f, str) and "site-packages" not in f and not f.startswith("<") and "/lib/python" not in f
                items.append(
                    f'<li class="{"own" if own else ""}">{e(short_path(str(f), 80))}:{e(fr.get("line"))}'
                    + (f' <span class="muted">in {e(fr.get("function"))}</span>' if fr.get("function") else "")
                    + "</li>"
                )
            tb_html = (
                f"<details{' open' if i == 1 else ''}><summary>{len(tb)} frames</summary>"
                f'<ol class="tb">{"".join(items)}</ol></details>'
            )
        rows.append(
            f'<tr><td>{i}</td><td class="mono">{e(fmt_site(s))}</td>'
            f'<td class="n">{e(bytes_h(s.get("retained_bytes")))}</td><td class="n">{int(s.get("count") or 0):,}</td>'
            f"<td>{tb_html}</td></tr>"
        )
    rows.append("</table>")
    return "".join(rows)


def _process_table(procs: list[dict]) -> str:
    rows = ["<table><tr><th>pid</th><th>ppid</th><th>role</th><th>verdict</th><th>conf</th><th>tasks</th>"
            "<th>RSS start → end</th><th>floor slope</th><th>top suspect</th><th>command</th></tr>"]
    for p in procs:
        m = p.get("memory") or {}
        top = (p.get("suspects") or [{}])[0].get("task", "")
        argv = " ".join(p.get("argv") or [])
        note = p.get("note") or (p.get("problems") or [None])[0]
        rows.append(
            f'<tr><td class="mono">{e(p.get("pid"))}</td><td class="mono">{e(p.get("ppid"))}</td>'
            f"<td>{e(p.get('role'))}</td><td>{_pill(p.get('verdict', 'inconclusive'))}</td>"
            f'<td class="n">{float(p.get("confidence") or 0):.2f}</td><td class="n">{int(p.get("tasks_observed") or 0):,}</td>'
            f'<td class="n">{e(bytes_h(m.get("rss_start_bytes")))} → {e(bytes_h(m.get("rss_end_bytes")))}</td>'
            f'<td class="n">{e(rate_h(m.get("floor_slope_bytes_per_s")))}</td>'
            f'<td class="mono">{e(top)}</td><td class="mono" title="{e(argv)}">{e(_clip(argv, 48))}'
            + (f'<br><span class="muted">{e(note)}</span>' if note else "")
            + "</td></tr>"
        )
    rows.append("</table>")
    return "".join(rows)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _task_counts(procs: list[dict]) -> list[tuple[str, int]]:
    total: dict[str, int] = {}
    for p in procs:
        for k, v in (p.get("task_counts") or {}).items():
            if isinstance(v, int):
                total[k] = total.get(k, 0) + v
    return sorted(total.items(), key=lambda kv: -kv[1])


def _fmt_path(rp: Any) -> str:
    if isinstance(rp, dict):
        chain = rp.get("path") or rp.get("chain") or rp.get("referrers")
        if isinstance(chain, list):
            head = f"pid {rp['pid']}: " if "pid" in rp else ""
            return head + "\n  ← ".join(str(c if not isinstance(c, dict) else c.get("repr") or c.get("type") or c) for c in chain)
        return "\n".join(f"{k}: {v}" for k, v in rp.items())
    if isinstance(rp, list):
        return "\n  ← ".join(str(c) for c in rp)
    return str(rp)


def _shell_join(cmd: list[str]) -> str:
    import shlex

    return " ".join(shlex.quote(str(c)) for c in cmd)


def write_html(report: dict, path: str | os.PathLike, *, title: str | None = None) -> None:
    """Render and write atomically. Raises OSError when the path cannot be written."""
    atomic_write_text(path, render_html(report, title=title))
