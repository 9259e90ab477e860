"""Means over seeds and their 95% t-intervals: the statistics every table and figure uses.

mean +- t(0.975, n-1) * s / sqrt(n), s the sample standard deviation (ddof 1); with one value
there is no interval.
"""

from __future__ import annotations

import math


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
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (scipy, a dependency:
    an interval never depends on what else is installed)."""
    from scipy.stats import t

    return float(t.ppf(0.975, df))
