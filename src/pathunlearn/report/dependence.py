"""Which methods are path-dependent here: the methods of a run ranked by how much their
outcome depends on the order the stages were learned in.

Per method (and swept value), over the paths of the run:

- **forget spread**: per seed, the highest minus the lowest forget score across the paths
  (every path of that seed finished), then the mean and 95% t-interval over seeds
  (:func:`pathunlearn.report.stats.mean_ci`). The forget score is the drop of the same forget
  metric for every method, so spreads compare across methods.
- **path effect**: a one-way ANOVA of the cells' forget scores with the path as the factor and
  the seeds as replicates (``scipy.stats.f_oneway``): its p-value says whether the paths differ
  by more than the seeds do. It needs two seeds per path; with one seed there is only the
  spread. *Path-dependent* means p < 0.05.
- **forget-quality spread**: orders of magnitude between the lowest and the highest path mean of
  forget quality (log10 of their ratio), where the run measured it (TOFU's KS test against each
  path's own retrain model).
- **pairwise growth**: per seed, the mean over pairs of paths of d_MSE at the last common eval
  step minus at the first (:mod:`pathunlearn.report.pairwise`), mean and interval over seeds.
- **recency**: the method's recency verdict (``observed`` / ``not observed``).

Methods are ranked by their mean forget spread, largest first.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from pathunlearn.report.model import CellRow, GrowthVerdict, RecencyVerdict, Stat
from pathunlearn.report.stats import mean_ci

ALPHA = 0.05
"""The ANOVA's level: a method is path-dependent when the path effect's p-value is below it."""


@dataclass(frozen=True)
class Dependence:
    """How path-dependent one method (and swept value) is in this run (module docstring)."""

    rank: int
    method: str
    sweep: str
    local: bool
    n_paths: int
    seeds: list[int]
    forget_spread: Stat
    path_effect_p: float | None
    """The one-way ANOVA's p-value (None: fewer than two seeds on some path, or no variance)."""
    forget_quality_orders: float | None
    growth: Stat
    recency_observed: bool | None

    @property
    def path_dependent(self) -> bool | None:
        return None if self.path_effect_p is None else self.path_effect_p < ALPHA

    @property
    def name(self) -> str:
        return self.method + (f" ({self.sweep})" if self.sweep else "")

    def to_json(self) -> dict:
        out = asdict(self)
        for key in ("forget_spread", "growth"):
            stat = out.pop(key)
            out[key], out[f"{key}_ci95"] = stat["mean"], stat["ci95"]
        return {**out, "path_dependent": self.path_dependent}


def path_dependence(cells: list[CellRow], recency: list[RecencyVerdict],
                    growth: list[GrowthVerdict], pairwise_series: list[dict],
                    score: str = "forget_score") -> list[Dependence]:
    """Every method (and swept value) with two or more scored paths, ranked by forget spread."""
    groups: dict[tuple[str, str], list[CellRow]] = {}
    for c in cells:
        if c.values.get(score) is not None:
            groups.setdefault((c.method, c.sweep), []).append(c)
    out = []
    for (method, sweep), group in groups.items():
        paths = sorted({c.path_label for c in group})
        if len(paths) < 2:
            continue
        rec = next((v for v in recency if (v.method, v.sweep) == (method, sweep)), None)
        grew = next((v for v in growth if (v.method, v.sweep) == (method, sweep)), None)
        series = [s for s in pairwise_series if (s["method"], s["sweep"]) == (method, sweep)]
        out.append(Dependence(
            rank=0, method=method, sweep=sweep, local=all(c.local for c in group),
            n_paths=len(paths), seeds=sorted({c.seed for c in group}),
            forget_spread=Stat(*mean_ci(seed_spreads(group, paths, score))),
            path_effect_p=path_effect(group, paths, score),
            forget_quality_orders=quality_orders(group),
            growth=Stat(*mean_ci(seed_growths(series, grew))),
            recency_observed=None if rec is None else rec.observed))
    out.sort(key=lambda d: -(d.forget_spread.mean if d.forget_spread.mean is not None
                             else -math.inf))
    return [replace(d, rank=i) for i, d in enumerate(out, 1)]


def seed_spreads(cells: list[CellRow], paths: list[str], score: str) -> list[float]:
    """Per seed whose every path has a score: the highest minus the lowest across paths."""
    by_seed: dict[int, dict[str, float]] = {}
    for c in cells:
        by_seed.setdefault(c.seed, {})[c.path_label] = c.values[score]
    return [max(v.values()) - min(v.values()) for v in by_seed.values() if len(v) == len(paths)]


def path_effect(cells: list[CellRow], paths: list[str], score: str) -> float | None:
    """The one-way ANOVA p-value of the scores grouped by path (None when a path has fewer
    than two seeds, or every group is constant: the F statistic is undefined)."""
    from scipy.stats import f_oneway

    groups = [[c.values[score] for c in cells if c.path_label == p] for p in paths]
    if min(len(g) for g in groups) < 2:
        return None
    within = sum(sum((x - sum(g) / len(g)) ** 2 for x in g) for g in groups)
    if within == 0:
        return None
    p = float(f_oneway(*groups).pvalue)
    return p if math.isfinite(p) else None


def quality_orders(cells: list[CellRow]) -> float | None:
    """log10(highest / lowest) of the paths' mean forget quality (None without it, or with a
    path at 0)."""
    by_path: dict[str, list[float]] = {}
    for c in cells:
        if c.values.get("forget_quality") is not None:
            by_path.setdefault(c.path_label, []).append(c.values["forget_quality"])
    means = [sum(v) / len(v) for v in by_path.values()]
    if len(means) < 2 or min(means) <= 0:
        return None
    return math.log10(max(means) / min(means))


def seed_growths(series: list[dict], verdict: GrowthVerdict | None) -> list[float]:
    """Per seed: the mean over pairs of d_MSE at the verdict's last common step minus at its
    first (the steps every series of the method has)."""
    if verdict is None or verdict.first_step is None or verdict.last_step is None:
        return []
    by_seed: dict[int, list[float]] = {}
    for s in series:
        at = dict(zip(s["steps"], s["values"], strict=True))
        if verdict.first_step in at and verdict.last_step in at:
            by_seed.setdefault(s["seed"], []).append(at[verdict.last_step]
                                                     - at[verdict.first_step])
    return [sum(v) / len(v) for v in by_seed.values()]


def dependence_rows(entries: list[Dependence]) -> list[list[str]]:
    """The ranking as text cells: rank, method, local, forget spread, path effect, forget
    quality spread, pairwise growth, recency, path-dependent."""
    return [[str(d.rank), d.name, "yes" if d.local else "no", _pm(d.forget_spread),
             "n/a" if d.path_effect_p is None else f"{d.path_effect_p:.2g}",
             "n/a" if d.forget_quality_orders is None else f"{d.forget_quality_orders:.1f}",
             _pm(d.growth), {True: "yes", False: "no", None: "n/a"}[d.recency_observed],
             {True: "yes", False: "not shown", None: "one seed"}[d.path_dependent]]
            for d in entries]


DEPENDENCE_HEADERS = ["#", "method", "local", "forget spread", "path p", "FQ orders",
                      "d_MSE growth", "recency", "path-dependent"]
DEPENDENCE_LEGEND = ("forget spread = highest minus lowest forget score across paths, per "
                     "seed, mean ± 95% half-width; path p = one-way ANOVA of the forget scores "
                     "by path (seeds as replicates); FQ orders = log10 of the highest over the "
                     "lowest path's forget quality; d_MSE growth = pairwise distance at the "
                     "last minus the first common eval step; path-dependent = path p < 0.05.")


def dependence_markdown(entries: list[Dependence]) -> list[str]:
    """The ranking as a section of results.md (empty with fewer than two methods)."""
    if len(entries) < 2:
        return []
    lines = ["## Which methods are path-dependent here?", "",
             "| " + " | ".join(DEPENDENCE_HEADERS) + " |",
             "|" + "|".join("---" for _ in DEPENDENCE_HEADERS) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |"
              for row in dependence_rows(entries)]
    return lines + ["", DEPENDENCE_LEGEND]


def _pm(stat: Stat) -> str:
    if stat.mean is None:
        return "n/a"
    return f"{stat.mean:.2f}" + ("" if stat.ci95 is None else f" ± {stat.ci95:.2f}")
