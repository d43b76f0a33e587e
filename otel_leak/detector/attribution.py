"""Which task types the growth belongs to: robust regression of memory increments on task counts.

Attribution regresses per-sample memory increments on the per-sample completed-task counts of each task
type (Huber-weighted, nonnegative least squares): neighbours' transient allocations are noise, not signal,
and a GC drop is an outlier, not a negative retention. Tier 1 regresses resident memory (or the
allocator's in-use bytes), tier 2 tracemalloc's traced bytes; both read :class:`Attribution`.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass

from otel_leak.detector import robust

MAX_COLUMNS = 24  # task types in one regression (the rest are pooled)
POOLED = "(other task types)"


@dataclass
class Attribution:
    task: str
    bytes_per_call: float
    calls: int
    confidence: float
    share: float  # share of the explained growth
    t: float = 0.0  # coefficient / its standard error (0 when not identified)

    def significant(self, t_min: float = 3.0, share_min: float = 0.2, min_bytes: float = 64.0) -> bool:
        """A suspect needs a coefficient clearly above its noise *and* a meaningful share of the growth:
        a neighbour that merely touches pages another task's leak left behind, or a column the regression
        cannot tell apart from the leaker's (strictly alternating tasks), does not pass both."""
        return self.t >= t_min and self.share >= share_min and self.bytes_per_call >= min_bytes


def regress(counts: list[dict[str, int]], growth: list[float], min_t: float = 2.0) -> list[Attribution]:
    """Huber nonnegative regression of ``growth[i]`` on ``counts[i]`` (task type -> calls in interval i)."""
    if len(growth) < 4:
        return []
    totals: dict[str, int] = collections.Counter()
    for c in counts:
        totals.update(c)
    names_ = [k for k, _ in sorted(totals.items(), key=lambda kv: -kv[1])]
    cols = names_[:MAX_COLUMNS]
    pooled = names_[MAX_COLUMNS:]
    colnames = cols + ([POOLED] if pooled else [])
    index = {k: i for i, k in enumerate(cols)}
    X = []
    for c in counts:
        row = [0.0] * len(colnames)
        for k, v in c.items():
            i = index.get(k)
            if i is None:
                row[-1] += v
            else:
                row[i] += v
        X.append(row)
    beta, se, _sigma = robust.huber_nnls(X, growth)
    explained = [beta[j] * sum(X[i][j] for i in range(len(X))) for j in range(len(colnames))]
    total_expl = sum(e for e in explained if e > 0)
    out = []
    for j, name in enumerate(colnames):
        if beta[j] <= 0:
            continue
        t = beta[j] / se[j] if se[j] > 0 and math.isfinite(se[j]) else 0.0
        share = explained[j] / total_expl if total_expl > 0 else 0.0
        conf = (t * t / (t * t + 4.0)) * min(1.0, 0.5 + share)
        calls = totals.get(name, 0) if name != POOLED else sum(totals[k] for k in pooled)
        out.append(Attribution(name, beta[j], calls, round(max(0.0, min(0.99, conf)), 3), round(share, 3),
                               round(t, 2) if math.isfinite(t) else 0.0))
    out.sort(key=lambda a: -a.share)
    return out
