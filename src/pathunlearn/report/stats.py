"""Means over seeds and their 95% t-intervals: the statistics every table and figure uses.

mean +- t(0.975, n-1) * s / sqrt(n), s the sample standard deviation (ddof 1); with one value
there is no interval.
"""

from __future__ import annotations

import math

# t(0.975, df) for df = 1..30 (scipy.stats.t.ppf); beyond 30 the normal 1.96
_T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
         2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
         2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)


def mean_ci(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and 95% CI half-width, t(0.975, n-1) * s / sqrt(n); (None, None) for no values,
    (mean, None) for one."""
    n = len(values)
    if n == 0:
        return None, None
    mean = sum(values) / n
    if n == 1:
        return mean, None
    s = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, t_quantile(n - 1) * s / math.sqrt(n)


def mean_over_seeds(series) -> tuple[list[int], list[tuple[float, float | None]]]:
    """Seeds' ``(steps, values)`` series -> the steps any seed has, and at each the mean and
    95% CI half-width (:func:`mean_ci`) over the seeds that have it."""
    by_step: dict[int, list[float]] = {}
    for steps, values in series:
        for s, v in zip(steps, values, strict=False):
            by_step.setdefault(s, []).append(v)
    steps = sorted(by_step)
    return steps, [mean_ci(by_step[s]) for s in steps]


def t_quantile(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom."""
    try:
        from scipy.stats import t
    except ImportError:
        return _T975[df - 1] if df <= len(_T975) else 1.96
    return float(t.ppf(0.975, df))
