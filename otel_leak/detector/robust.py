"""Small robust statistics in pure Python (no numpy: the detector runs inside any worker).

Everything here is O(n^2) at most on n <= a few hundred points, called once per detector window.
"""

from __future__ import annotations

import math
from typing import Sequence


def median(xs: Sequence[float]) -> float:
    s = sorted(xs)
    n = len(s)
    if n == 0:
        return 0.0
    m = n // 2
    return float(s[m]) if n % 2 else (s[m - 1] + s[m]) / 2.0


def mad(xs: Sequence[float]) -> float:
    """Median absolute deviation, scaled to a normal sigma."""
    if not xs:
        return 0.0
    m = median(xs)
    return 1.4826 * median([abs(x - m) for x in xs])


def theil_sen(ts: Sequence[float], ys: Sequence[float]) -> float:
    """Theil–Sen slope: median of pairwise slopes (0 with fewer than two distinct times)."""
    slopes = []
    n = len(ts)
    for i in range(n):
        ti, yi = ts[i], ys[i]
        for j in range(i + 1, n):
            dt = ts[j] - ti
            if dt > 0:
                slopes.append((ys[j] - yi) / dt)
    return median(slopes) if slopes else 0.0


def siegel(ts: Sequence[float], ys: Sequence[float]) -> float:
    """Siegel repeated-median slope (breakdown point 50 %)."""
    n = len(ts)
    inner = []
    for i in range(n):
        s = [(ys[j] - ys[i]) / (ts[j] - ts[i]) for j in range(n) if j != i and ts[j] != ts[i]]
        if s:
            inner.append(median(s))
    return median(inner) if inner else 0.0


def mann_kendall(ys: Sequence[float], tol: float = 0.0) -> tuple[float, float]:
    """Mann–Kendall trend test: (tau in [-1, 1], one-sided z score for an increasing trend).

    Differences within ``tol`` count as ties (page-granular resident memory often does not move).
    """
    n = len(ys)
    if n < 3:
        return 0.0, 0.0
    s = 0
    for i in range(n):
        yi = ys[i]
        for j in range(i + 1, n):
            d = ys[j] - yi
            if d > tol:
                s += 1
            elif d < -tol:
                s -= 1
    pairs = n * (n - 1) / 2
    var = n * (n - 1) * (2 * n + 5) / 18.0
    if s > 0:
        z = (s - 1) / math.sqrt(var)
    elif s < 0:
        z = (s + 1) / math.sqrt(var)
    else:
        z = 0.0
    return s / pairs, z


# ----------------------------------------------------------------------------------------------------
# Linear algebra for tiny systems


def _solve(a: list[list[float]], b: list[float]) -> list[float] | None:
    """Gaussian elimination with partial pivoting; None if singular."""
    n = len(b)
    m = [row[:] + [b[i]] for i, row in enumerate(a)]
    for c in range(n):
        p = max(range(c, n), key=lambda r: abs(m[r][c]))
        if abs(m[p][c]) < 1e-12:
            return None
        m[c], m[p] = m[p], m[c]
        piv = m[c][c]
        for r in range(c + 1, n):
            f = m[r][c] / piv
            if f:
                row_r, row_c = m[r], m[c]
                for k in range(c, n + 1):
                    row_r[k] -= f * row_c[k]
    x = [0.0] * n
    for r in range(n - 1, -1, -1):
        acc = m[r][n] - sum(m[r][k] * x[k] for k in range(r + 1, n))
        x[r] = acc / m[r][r]
    return x


def _normal(X: list[list[float]], y: list[float], w: list[float], cols: list[int], ridge: float):
    k = len(cols)
    a = [[0.0] * k for _ in range(k)]
    b = [0.0] * k
    for row, yi, wi in zip(X, y, w):
        if wi <= 0:
            continue
        v = [row[c] for c in cols]
        for i in range(k):
            vi = v[i] * wi
            if vi == 0.0:
                continue
            b[i] += vi * yi
            ai = a[i]
            for j in range(i, k):
                ai[j] += vi * v[j]
    for i in range(k):
        for j in range(i):
            a[i][j] = a[j][i]
        a[i][i] += ridge * (a[i][i] + 1e-9)
    return a, b


def wnnls(
    X: list[list[float]], y: list[float], w: list[float], free: frozenset[int] = frozenset(), ridge: float = 1e-6
) -> list[float]:
    """Weighted least squares with every coefficient >= 0 except those in ``free``.

    A small active-set loop (Lawson–Hanson style): fit, drop the most negative constrained coefficient,
    refit. Tiny systems only (a few dozen columns).
    """
    p = len(X[0]) if X else 0
    active = list(range(p))
    for _ in range(p + 1):
        if not active:
            return [0.0] * p
        a, b = _normal(X, y, w, active, ridge)
        sol = _solve(a, b)
        if sol is None:
            # Drop the column with the least signal and retry.
            active.pop()
            continue
        worst, worst_v = None, 0.0
        for c, v in zip(active, sol):
            if c not in free and v < worst_v:
                worst, worst_v = c, v
        if worst is None:
            out = [0.0] * p
            for c, v in zip(active, sol):
                out[c] = v
            return out
        active.remove(worst)
    return [0.0] * p


def huber_nnls(
    X: list[list[float]],
    y: list[float],
    free: frozenset[int] = frozenset(),
    c: float = 1.345,
    iterations: int = 8,
) -> tuple[list[float], list[float], float]:
    """Huber-robust nonnegative regression by iteratively reweighted least squares.

    Returns ``(coefficients, standard_errors, sigma)``: sigma is the robust (MAD) residual scale,
    standard errors are from the final weighted normal equations (large when a column is not identified).
    """
    n = len(y)
    p = len(X[0]) if X else 0
    if n == 0 or p == 0:
        return [0.0] * p, [math.inf] * p, 0.0
    w = [1.0] * n
    beta = [0.0] * p
    sigma = 0.0
    for _ in range(iterations):
        beta = wnnls(X, y, w, free)
        res = [yi - sum(b * x for b, x in zip(beta, row)) for row, yi in zip(X, y)]
        sigma = mad(res)
        if sigma <= 0:
            sigma = (sum(r * r for r in res) / max(1, n)) ** 0.5 or 1.0
        k = c * sigma
        new_w = [1.0 if abs(r) <= k else k / abs(r) for r in res]
        if max(abs(a - b) for a, b in zip(w, new_w)) < 1e-3:
            w = new_w
            break
        w = new_w
    # Standard errors on the columns that are in use (positive or free).
    cols = [j for j in range(p) if beta[j] > 0 or j in free]
    se = [math.inf] * p
    if cols:
        a, _ = _normal(X, y, w, cols, 1e-9)
        dof = max(1, n - len(cols))
        res = [yi - sum(b * x for b, x in zip(beta, row)) for row, yi in zip(X, y)]
        s2 = sum(wi * r * r for wi, r in zip(w, res)) / dof
        k = len(cols)
        for i, col in enumerate(cols):
            e = [0.0] * k
            e[i] = 1.0
            inv = _solve(a, e)
            if inv is not None and inv[i] > 0:
                se[col] = math.sqrt(s2 * inv[i])
    return beta, se, sigma


def saturation(ts: Sequence[float], ys: Sequence[float], grid: int = 16) -> tuple[float, float]:
    """Does a bounded fill explain ``ys`` better than a straight line?

    Fits ``y = a + b t`` and, for time constants ``tau`` from a sixteenth of the span to four spans,
    ``y = a + c (1 - exp(-(t - t0) / tau))`` (both least squares, ``c >= 0``). Returns ``(ratio, tau)``: the
    saturating fit's residual sum of squares over the line's, and its best ``tau``. A cache filling with
    random keys grows ever slower as it fills (a ratio well below 1 with ``tau`` inside the span); a leak
    grows steadily, and its best bounded curve is one with a ``tau`` beyond the span, close to the line.
    """
    n = len(ts)
    if n < 5:
        return 1.0, math.inf
    t0 = ts[0]
    span = ts[-1] - t0
    if span <= 0:
        return 1.0, math.inf

    def fit(xs: Sequence[float]) -> float:
        mx = sum(xs) / n
        my = sum(ys) / n
        sxx = sum((x - mx) ** 2 for x in xs)
        b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx > 0 else 0.0
        b = max(0.0, b)
        a = my - b * mx
        return sum((y - a - b * x) ** 2 for x, y in zip(xs, ys))

    sse_lin = fit([t - t0 for t in ts])
    if sse_lin <= 0:
        return 1.0, math.inf
    best, best_tau = math.inf, math.inf
    for k in range(grid):
        tau = span / 16 * (64 ** (k / (grid - 1)))
        sse = fit([1.0 - math.exp(-(t - t0) / tau) for t in ts])
        if sse < best:
            best, best_tau = sse, tau
    return best / sse_lin, best_tau


def curvature(ts: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Is the growth of ``ys`` slowing down? Fits ``y = a + b x + c x^2`` (``x``: ``ts`` centred on their
    midpoint, least squares) and returns ``(ratio, t)``: the fitted slope at the last point over the slope
    at the first (1.0 for a steady climb, below 1 for a fill that slows, 0 when it stopped), and ``c``'s
    t statistic (negative: decelerating) from the residuals, allowing for their autocorrelation.
    ``(1.0, 0.0)`` when it cannot tell."""
    n = len(ts)
    if n < 6:
        return 1.0, 0.0
    mid = (ts[0] + ts[-1]) / 2
    xs = [t - mid for t in ts]
    half = (ts[-1] - ts[0]) / 2
    if half <= 0:
        return 1.0, 0.0
    # Normal equations of the quadratic, on x scaled to [-1, 1] for conditioning.
    us = [x / half for x in xs]
    s = [sum(u ** k for u in us) for k in range(5)]
    a = [[s[0], s[1], s[2]], [s[1], s[2], s[3]], [s[2], s[3], s[4]]]
    rhs = [sum(y for y in ys), sum(u * y for u, y in zip(us, ys)), sum(u * u * y for u, y in zip(us, ys))]
    coef = _solve([row[:] for row in a], rhs[:])
    if coef is None:
        return 1.0, 0.0
    c0, c1, c2 = coef
    sse = sum((y - c0 - c1 * u - c2 * u * u) ** 2 for u, y in zip(us, ys))
    sigma2 = sse / (n - 3)
    # Variance of c2: sigma^2 times the (2, 2) element of the inverse of the normal matrix.
    e2 = _solve([row[:] for row in a], [0.0, 0.0, 1.0])
    if e2 is None:
        return 1.0, 0.0
    # Neighbouring windows' residuals move together when the pace wanders (a mix that changes every few
    # seconds): the variance is inflated by the residuals' lag-1 autocorrelation, as for an AR(1) series,
    # so a wandering pace is not mistaken for a slowing one.
    res = [y - c0 - c1 * u - c2 * u * u for u, y in zip(us, ys)]
    rho = sum(a_ * b_ for a_, b_ in zip(res, res[1:])) / sse if sse > 0 else 0.0
    rho = min(0.9, max(0.0, rho))
    var = sigma2 * e2[2] * (1 + rho) / (1 - rho)
    start, end = c1 - 2 * c2, c1 + 2 * c2  # dy/du at u = -1 and u = +1
    ratio = end / start if start > 0 else 1.0
    if var <= 0:
        return ratio, (-math.inf if c2 < 0 else math.inf) if c2 else 0.0
    return ratio, c2 / math.sqrt(var)
