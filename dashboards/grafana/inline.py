"""Recording rules inlined into the expressions that read them, for Grafana-managed alert rules.

A Grafana-managed rule only sends its queries to the Prometheus data source; whether Prometheus also evaluates
otel-leak's recording rules is not Grafana's to know. So each Grafana query carries the recording rules it
reads as PromQL of its own, generated from the same rule list ``dashboards.rules`` writes:

* a bare reference ``record`` becomes ``(expr)``;
* a range ``record[w]`` becomes the subquery ``(expr)[w:step]``, ``step`` the rule group's interval (the
  resolution at which Prometheus would have recorded ``record``);
* a recording rule reading other recording rules is inlined first, in the rules' order.

The result differs from the recorded series only by where the points fall: Prometheus records at its group's
evaluation times, a subquery steps at multiples of ``step`` since the epoch.
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping

# A PromQL metric name may contain colons; a reference is delimited by anything else.
_NAME_CHARS = r"[A-Za-z0-9_:]"


def _pattern(names: Iterable[str]) -> re.Pattern[str]:
    alternatives = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    return re.compile(rf"(?<!{_NAME_CHARS})({alternatives})(?!{_NAME_CHARS})(\s*\{{)?(\[[^\]:]+\])?")


def substitute(expr: str, inlined: Mapping[str, str], step: str) -> str:
    """``expr`` with every reference to a name of ``inlined`` replaced by its (already inlined) expression."""
    if not inlined:
        return expr
    pattern = _pattern(inlined)

    def repl(m: re.Match[str]) -> str:
        name, matchers, window = m.group(1), m.group(2), m.group(3)
        if matchers:
            raise ValueError(f"cannot inline {name}{{...}}: label matchers on a recording rule")
        body = f"({inlined[name]})"
        return f"{body}[{window[1:-1]}:{step}]" if window else body

    return pattern.sub(repl, expr)


def inline_all(recording: Iterable[Mapping[str, str]], step: str) -> dict[str, str]:
    """``record -> expr`` with every recording rule's own references inlined, in the rules' order."""
    out: dict[str, str] = {}
    for rule in recording:
        out[rule["record"]] = substitute(rule["expr"], out, step)
    return out


def inline(expr: str, recording: Iterable[Mapping[str, str]], step: str) -> str:
    """``expr`` (an alert's) reading no recording rule of ``recording`` any more."""
    return substitute(expr, inline_all(recording, step), step)
