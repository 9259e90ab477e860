"""The report's data model: the table's rows and cells, and the verdicts, as typed records.

Every renderer (Markdown, CSV, terminal, HTML) and results.json read these; a row or verdict
is built in one place (:mod:`pathunlearn.report.tables`, :mod:`pathunlearn.report.pairwise`)
and never assembled as a loose dict elsewhere. ``to_json`` gives results.json's flat shape
(``<score>``, ``<score>_ci95``, ...), which readers of earlier runs' files already know.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields


@dataclass(frozen=True)
class Stat:
    """One value of a table row aggregated over seeds: the mean, the half-width of its 95%
    t-interval (None with fewer than two values), and, when several training seeds each hold
    several experiment seeds, the spread across training seeds and within one."""

    mean: float | None
    ci95: float | None = None
    sd_training: float | None = None
    sd_unlearning: float | None = None

    @property
    def ci_low(self) -> float | None:
        return None if self.mean is None or self.ci95 is None else self.mean - self.ci95

    @property
    def ci_high(self) -> float | None:
        return None if self.mean is None or self.ci95 is None else self.mean + self.ci95


@dataclass(frozen=True)
class CellRow:
    """One finished cell in the table: its identity, status and its scores (None where not
    measured, and all None for a diverged cell)."""

    method: str
    sweep: str
    lr: float | None
    scheduler: str | None
    seed: int
    training_seed: int | None
    path: list[str]
    path_label: str
    position: int
    local: bool
    steps: int | None
    steps_done: int | None
    diverged_at: int | None
    status: str
    """``ok``, or why it diverged."""
    directory: str
    """Relative to the run directory (the run directory can move)."""
    values: dict[str, float | None]
    """Score key (and context key) -> the cell's value."""

    @property
    def forget_last(self) -> bool:
        return self.position == len(self.path)

    def flat(self, key: str):
        """A column by its name: a score (or context) key, else an identity field."""
        return self.values[key] if key in self.values else getattr(self, key)

    def to_json(self) -> dict:
        ident = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "values"}
        return {**ident, **self.values}


@dataclass(frozen=True)
class Row:
    """One row of the table: a (method, sweep, path) over its seeds."""

    method: str
    sweep: str
    lr: float | None
    scheduler: str | None
    path: list[str]
    path_label: str
    position: int
    forget_last: bool
    n: int
    """Seeds that finished without diverging (the ones every mean is over)."""
    seeds: list[int]
    diverged_seeds: list[int]
    stats: dict[str, Stat]
    """Score key (then the context keys) -> its aggregate, in table order."""

    def mean(self, key: str) -> float | None:
        return self.stats[key].mean

    def to_json(self) -> dict:
        """results.json's row: identity, ``<key>`` and ``<key>_ci95`` per score and context
        key, then ``<key>_sd_training`` / ``_sd_unlearning`` where a spread was measured."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "stats"}
        for key, s in self.stats.items():
            out[key], out[f"{key}_ci95"] = s.mean, s.ci95
        for key, s in self.stats.items():
            if s.sd_training is not None:
                out[f"{key}_sd_training"], out[f"{key}_sd_unlearning"] = (s.sd_training,
                                                                          s.sd_unlearning)
        return out

    def flat(self, key: str):
        """A column of results.csv by its name: an identity field, ``<key>`` or
        ``<key>_ci95``."""
        if key in self.stats:
            return self.stats[key].mean
        if key.endswith("_ci95") and key.removesuffix("_ci95") in self.stats:
            return self.stats[key.removesuffix("_ci95")].ci95
        return getattr(self, key)


@dataclass(frozen=True)
class RankEntry:
    """One path in a recency verdict's ranking (rank 1 = forgets least)."""

    rank: int
    path_label: str
    position: int
    forget_last: bool
    mean: float
    ci95: float | None
    ci_low: float | None
    ci_high: float | None
    n: int
    forget_before: float | None
    saturation: dict[str, float | None]
    """The saturation diagnostics at step 0 (``tables.SATURATION``), mean over seeds."""

    def to_json(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "saturation"}
        return {**out, **self.saturation}


@dataclass(frozen=True)
class SeedRank:
    """Where the forget-last path ranks among one seed's paths."""

    rank: int
    of: int


@dataclass(frozen=True)
class RecencyVerdict:
    """Whether the path(s) that learned the forget stage last forget least, for one method
    (and swept value) (:func:`pathunlearn.report.tables.recency_verdicts`)."""

    method: str
    sweep: str
    lr: float | None
    scheduler: str | None
    score: str
    """The table score the ranking is by (``forget_score``)."""
    forget_metric: str | None
    """The metric that score is the drop of (e.g. ``forget_label_id/all_mean``)."""
    forget_stage: str
    ranking: list[RankEntry]
    unscored_paths: list[str]
    forget_last_paths: list[str]
    forget_last_ranks: list[int]
    n_paths: int
    observed: bool | None
    """None: no verdict (fewer than two scored paths, or none with the stage last)."""
    compared_with: str | None
    ci_overlap: bool | None
    per_seed: dict[int, SeedRank]
    forget_last_forgot: bool | None = None
    """Whether the worst-ranked forget-last path forgot at all: its mean forget score above 0
    and, with an interval, its interval above 0 (None: no verdict). A path can "forget least"
    because it did not forget: the text says which."""
    text: str = ""
    kind: str = "recency"
    """``recency``, or ``recency_matched`` under the matched-start control."""

    def to_json(self) -> dict:
        out = {"kind": self.kind}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "ranking":
                value = [e.to_json() for e in value]
            elif f.name == "per_seed":
                value = {s: asdict(r) for s, r in value.items()}
            out[f.name] = value
        return out


@dataclass(frozen=True)
class GrowthVerdict:
    """Whether the mean pairwise distance between paths grew from the first to the last
    common eval step, for one method (and swept value)
    (:func:`pathunlearn.report.pairwise.growth_verdict`)."""

    method: str
    sweep: str
    lr: float | None = None
    scheduler: str | None = None
    observed: bool | None = None
    first_step: int | None = None
    last_step: int | None = None
    first: float | None = None
    last: float | None = None
    growth: float | None = None
    pairs: int = 0
    seeds: list[int] = field(default_factory=list)
    series: int = 0
    series_grew: int | None = None
    skipped_cells: int = 0
    text: str = ""
    kind: str = "pairwise"

    def to_json(self) -> dict:
        return {"kind": self.kind, **asdict(self)}


Verdict = RecencyVerdict | GrowthVerdict


def observed_count(verdicts: list[RecencyVerdict]) -> str:
    """``k of m methods``: of the recency verdicts that judged, how many observed the effect."""
    judged = [v for v in verdicts if v.observed is not None]
    return f"{sum(bool(v.observed) for v in judged)} of {len(judged)} methods"
