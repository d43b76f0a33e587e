"""Terminal output with rich: the live one-line status of ``otel-leak run`` and the end-of-run summary.

Everything goes to stderr so the command's own stdout stays clean for pipes.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from otel_leak.report.fmt import bytes_h, fmt_site, rate_h, secs_h
from otel_leak.report.schema import is_num

VERDICT_STYLE = {"leak": "bold white on red", "no_leak": "bold white on green", "inconclusive": "bold black on yellow"}
VERDICT_LABEL = {"leak": " LEAK ", "no_leak": " NO LEAK ", "inconclusive": " INCONCLUSIVE "}


def stderr_console() -> Console:
    # Not a terminal (CI logs, captured output): lines as wide as a log viewer shows, not rich's 80 columns.
    width = None if sys.stderr.isatty() or os.environ.get("COLUMNS") else 120
    return Console(file=sys.stderr, highlight=False, soft_wrap=False, width=width)


def status_line(
    *, elapsed: float, processes: int, rss: float | None, tasks: int, verdict: str | None, confidence: float | None,
    suspect: str | None = None,
) -> Text:
    t = Text()
    t.append("otel-leak ", style="bold cyan")
    t.append(f"{secs_h(elapsed):>9}  ", style="dim")
    t.append(f"{processes} proc  ")
    t.append(f"RSS {bytes_h(rss)}  ")
    t.append(f"{tasks:,} tasks  ")
    v = verdict or "waiting"
    style = {"leak": "bold red", "no_leak": "green", "inconclusive": "yellow"}.get(v, "dim")
    t.append(v.replace("_", " "), style=style)
    if confidence is not None and verdict:
        t.append(f" ({confidence:.2f})", style="dim")
    if suspect and verdict == "leak":
        t.append(f"  ← {suspect}", style="red")
    return t


def print_summary(
    console: Console,
    report: dict,
    *,
    report_path: str | None,
    html_path: str | None,
    kept_dir: str | None = None,
) -> None:
    verdict = report.get("verdict") if report.get("verdict") in VERDICT_LABEL else "inconclusive"
    mem = report.get("memory") or {}
    suspects = report.get("suspects") or []
    sites = report.get("allocation_sites") or []
    procs = report.get("processes") or []

    head = Text()
    head.append("otel-leak ", style="bold cyan")
    head.append(VERDICT_LABEL[verdict], style=VERDICT_STYLE[verdict])
    head.append(f"  confidence {float(report.get('confidence') or 0):.2f}", style="bold")
    det = report.get("detected_at_s")
    if verdict == "leak" and det is not None:
        head.append(f"  · declared after {secs_h(det)}", style="dim")
    head.append(
        f"  · {int(report.get('tasks_observed') or 0):,} tasks in {secs_h(report.get('duration_s') or 0)}", style="dim"
    )
    console.print(head)

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="dim", justify="right", no_wrap=True)
    grid.add_column(overflow="fold")

    if suspects:
        s = suspects[0]
        line = Text(str(s.get("task")), style="bold red")
        rpc = s.get("retained_bytes_per_call")
        if rpc is not None:
            line.append(f"  ~{bytes_h(rpc)} retained per call", style="bold")
        line.append(f"  ({int(s.get('calls') or 0):,} calls, confidence {float(s.get('confidence') or 0):.2f})")
        grid.add_row("leaking task", line)
        for other in suspects[1:3]:
            o = Text(str(other.get("task")))
            if other.get("retained_bytes_per_call") is not None:
                o.append(f"  ~{bytes_h(other['retained_bytes_per_call'])}/call", style="dim")
            grid.add_row("also", o)
    if sites:
        s = sites[0]
        line = Text(fmt_site(s), style="bold")
        line.append(f"  {bytes_h(s.get('retained_bytes'))} retained in {int(s.get('count') or 0):,} blocks")
        grid.add_row("allocation site", line)
    if verdict == "leak" and not sites:
        grid.add_row("allocation site", Text("not attributed (tier 2 did not run or found no Python-heap growth)", style="dim"))
    paths = [rp for rp in (report.get("retention_paths") or []) if isinstance(rp, dict) and rp.get("text")]
    if verdict == "leak" and paths:
        grid.add_row("held by", Text(str(paths[0]["text"])))
    pat = report.get("pattern") if verdict == "leak" else None
    if isinstance(pat, dict) and pat.get("pattern"):
        line = Text(str(pat.get("title") or pat["pattern"]), style="bold")
        line.append(f"  (confidence {float(pat.get('confidence') or 0):.2f})", style="dim")
        grid.add_row("pattern", line)
        if pat.get("remedy"):
            grid.add_row("remedy", Text(str(pat["remedy"])))
    rs, re_ = mem.get("rss_start_bytes"), mem.get("rss_end_bytes")
    if rs is not None or re_ is not None or mem.get("floor_slope_bytes_per_s") is not None:
        m = Text(f"RSS {bytes_h(rs)} → {bytes_h(re_)}, floor {rate_h(mem.get('floor_slope_bytes_per_s'))}")
        if mem.get("kind"):
            m.append(f"  ({str(mem['kind']).replace('_', ' ')})", style="dim")
        grid.add_row("memory", m)
    if procs:
        n_leak = [str(p["pid"]) for p in procs if p.get("verdict") == "leak"]
        txt = f"{len(procs)}"
        if n_leak:
            txt += f" ({len(n_leak)} leaking: pid {', '.join(n_leak[:6])}{'…' if len(n_leak) > 6 else ''})"
        grid.add_row("processes", txt)
    for line in guard_lines(procs):
        grid.add_row("guard", line)
    if report.get("signal"):
        grid.add_row("command", Text(f"killed by {report['signal']} (exit {report.get('exit_code')})", style="yellow"))
    elif report.get("exit_code") not in (None, 0):
        grid.add_row("command", Text(f"exited with {report['exit_code']}", style="yellow"))
    if report.get("incomplete"):
        grid.add_row("", Text("incomplete: the report shows what was seen", style="yellow"))
    # Notes carry commands and paths to copy, and the paths below are to open: printed unwrapped (the
    # terminal wraps them), never folded mid-path at the console width as the grid's cells are.
    tail = [("note", Text(str(err), style="yellow")) for err in (report.get("errors") or [])[:4]]
    tail += [(k, Text(str(v))) for k, v in (("report", report_path), ("html", html_path),
                                             ("process files", kept_dir)) if v]
    width = max([len(k) for k, _ in tail] + [len(str(c)) for c in grid.columns[0].cells])
    grid.columns[0].min_width = width
    console.print(grid)
    for label, value in tail:
        console.print(Text(label.rjust(width), style="dim") + Text("  ") + value, soft_wrap=True)


# The memory-budget guard's outcomes the summary shows, most consequential first (otel_leak.guard records them)
GUARD_SHOWN = {
    "recycled": ("recycled", "bold red"),
    "rate_limited": ("NOT recycled, the hourly recycle limit is reached", "bold red"),
    "dry_run": ("would recycle (dry-run)", "bold yellow"),
}
MAX_GUARD_LINES = 6


def guard_lines(procs: list) -> list[Text]:
    """One line per process the guard recycled, would have recycled (dry-run) or was stopped from recycling by
    its hourly limit, from the ``guard`` object each process's report carries; then how many more."""
    lines = []
    for p in procs:
        g = p.get("guard") if isinstance(p, dict) else None
        entries = g.get("entries") if isinstance(g, dict) else None
        shown = [e for e in entries or [] if isinstance(e, dict) and e.get("outcome") in GUARD_SHOWN]
        if not shown:
            continue
        shown.sort(key=lambda e: list(GUARD_SHOWN).index(e["outcome"]))
        e = shown[0]
        label, style = GUARD_SHOWN[e["outcome"]]
        line = Text(f"pid {p.get('pid')} ")
        line.append(label, style=style)
        facts = [str(e["reason"])] if e.get("reason") else []
        if is_num(e.get("floor_bytes")):
            budget = f" ≥ budget {bytes_h(e['budget_bytes'])}" if is_num(e.get("budget_bytes")) else ""
            facts.append(f"floor {bytes_h(e['floor_bytes'])}{budget}")
        if e.get("verdict"):
            facts.append(f"verdict {e['verdict']}")
        if e.get("task"):
            facts.append(f"{'before' if e.get('when') == 'pre_task' else 'after'} task {e['task']}")
        if facts:
            line.append(": " + ", ".join(facts))
        decided = sum(1 + (int(x["repeats"]) if is_num(x.get("repeats")) else 0)
                      for x in shown if x.get("outcome") == e["outcome"])
        if decided > 1:
            line.append(f" (decided {decided} times)", style="dim")
        others = sorted({str(x["outcome"]) for x in shown[1:] if x["outcome"] != e["outcome"]})
        if others:
            line.append(f"; also {', '.join(o.replace('_', ' ') for o in others)}", style="dim")
        lines.append(line)
    if len(lines) > MAX_GUARD_LINES:
        lines = lines[:MAX_GUARD_LINES] + [Text(f"… and {len(lines) - MAX_GUARD_LINES} more processes", style="dim")]
    return lines


def error(console: Console, msg: str) -> None:
    console.print(Text("otel-leak: ", style="bold red") + Text(msg))


def summary_text(report: dict, **kw: Any) -> str:
    """The summary as plain text (tests, logs)."""
    import io

    buf = io.StringIO()
    c = Console(file=buf, width=120, color_system=None, highlight=False)
    print_summary(c, report, **kw)
    return buf.getvalue()


class BottomStatus:
    """A status line pinned to the terminal's last row while the command writes above it.

    The command shares the terminal, so a status line redrawn in place would be torn apart by its output.
    Like apt's progress bar, this sets the scrolling region to all rows but the last (DECSTBM) and draws
    the status in the last row; the command's output scrolls above it untouched. ``stop`` restores the
    full scrolling region and clears the row. Any failure disables the status, never the run.
    """

    def __init__(self, console: Console) -> None:
        self.console = console
        self.fd = console.file
        self.rows = 0
        self.active = False

    def _size(self) -> tuple[int, int]:
        size = os.get_terminal_size(self.fd.fileno())
        return size.lines, size.columns

    def _write(self, s: str) -> None:
        self.fd.write(s)
        self.fd.flush()

    def _region(self, rows: int) -> None:
        # scroll one line first so the shrinking region does not hide the last line of output
        self._write(f"\n\0337\033[1;{rows - 1}r\0338\033[1A")

    def start(self) -> bool:
        try:
            rows, _ = self._size()
            if rows < 4:
                return False
            self.rows = rows
            self._region(rows)
            self.active = True
        except (OSError, ValueError, AttributeError):
            self.active = False
        return self.active

    def update(self, text: Text) -> None:
        if not self.active:
            return
        try:
            rows, cols = self._size()
            if rows != self.rows and rows >= 4:  # the terminal was resized
                self._write(f"\0337\033[{self.rows};1f\033[2K\0338")
                self.rows = rows
                self._region(rows)
            with self.console.capture() as cap:
                self.console.print(text, end="", no_wrap=True, overflow="ellipsis", crop=True, width=max(10, cols - 1))
            line = cap.get().replace("\n", " ")
            self._write(f"\0337\033[{self.rows};1f\033[2K{line}\0338")
        except (OSError, ValueError):
            self.stop()

    def stop(self) -> None:
        if not self.active:
            return
        self.active = False
        try:
            self._write(f"\0337\033[r\033[{self.rows};1f\033[2K\0338")
        except (OSError, ValueError):
            pass
