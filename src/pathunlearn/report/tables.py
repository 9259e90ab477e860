"""The main table (the paper's Table 1) and the recency verdict, from the cell directories.

Scores of one cell, from its ``metrics.jsonl`` (first row = step 0, before unlearning; last
row = the last eval point, i.e. the end of unlearning). Which scores a run has follows from
its probe sets (RUN_DIR/probes.json, :func:`scores_of`):

- ``forget_score``      = the first ``forget_label`` probe's ``/all_mean`` at step 0 minus at
  the end (by default ``forget_label_id``): how much the average per-token log-probability of
  the unlearn target and its paraphrases fell on held-out forget prompts (positive = forgot;
  the paper's forget score); without a label probe, the drop of the forget response probe;
- ``forget_score_<x>``  the same for every other label probe ``forget_label_<x>`` (by default
  ``forget_score_ood``, out-of-distribution prompts);
- ``<probe>_drop``      the drop of a ``forget_response`` probe (``forget_response_drop``: the
  forget set's own responses);
- ``utility_<probe>``   = 1 - |change| of a ``utility`` probe: ``utility_<stage>_train`` on the
  stage's trained answers (the paper's TOFU utility for the TOFU stage),
  ``utility_<stage>_paraphrased`` on the same facts asked in paraphrase;
- ``<probe>_acc``       a ``choice`` probe's ``/acc`` at the end (its multiple-choice accuracy,
  :mod:`pathunlearn.eval.choice`);
- ``math_utility``      = accuracy after - accuracy before, from ``math_after``/``math_before``
  in the cell's summary.json when the run measured them, else null;
- ``re_distance_to_retrain`` = ``re_retrain/kl`` at the end (distance to the retrain model,
  Definition 2.1), when the run measured it, else null.

A diverged cell (its metrics end with a ``diverged`` row) gets no scores: it is listed as
diverged and left out of every mean, interval and verdict.

Aggregates are per (path, method, swept lr/scheduler) over seeds: the mean and the half-width
of a 95% confidence interval, mean +- t(0.975, n-1) * s / sqrt(n) with s the sample standard
deviation (ddof 1); with one seed there is no interval (null).

The recency verdict, per method (and per swept lr/scheduler): paths are ranked by mean forget
score ascending, so rank 1 forgets least. The recency effect is *observed* when the path(s)
with the forget stage last have a smaller mean forget score than every other path.

The pairwise distances between the unlearned models of different paths, and whether they grow
with the unlearning steps, come from :mod:`pathunlearn.report.pairwise`;
:mod:`pathunlearn.report.results` puts both into results.{json,csv,md}.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field, replace

from pathunlearn import metrics as M
from pathunlearn.plan import position, training_seed
from pathunlearn.report.model import (
    CellRow,
    RankEntry,
    RecencyVerdict,
    Row,
    SeedRank,
    Stat,
    Verdict,
)
from pathunlearn.report.stats import mean_ci
from pathunlearn.rundir import CellRecord, is_number, unit_dir


@dataclass(frozen=True)
class Score:
    """One score of a cell: its key in results, its column header, what it is, and how it is
    computed from the cell (``drop`` or ``utility`` of ``metric``, ``end``: ``metric`` at the
    last eval point, ``ratio``: ``metric`` at the last eval point over step 0's, ``math``,
    ``re``)."""

    key: str
    header: str
    definition: str
    how: str
    metric: str | None = None


MATH = Score("math_utility", "math utility (accuracy)",
             "change of math accuracy by generation (after - before unlearning; the paper's "
             "math utility)", "math")
RE = Score("re_distance_to_retrain", "RE dist. to retrain",
           "re_retrain/kl at the end: distance to the retrain model on the held-out set", "re")


def scores_of(probes: list) -> list[Score]:
    """The scores of a run with these probe sets (``eval.probes.ProbeSet``), in table order
    (the module docstring)."""
    labels = [p for p in probes if p.kind == "forget_label"]
    responses = [p for p in probes if p.kind == "forget_response"]
    out = []
    if labels:
        first = labels[0]
        out.append(Score("forget_score", "forget score", f"drop of {first.name}/all_mean (the "
                         "unlearn target + its paraphrases after held-out forget prompts; the "
                         "paper's forget score)", "drop", M.key(first.name, M.ALL_MEAN)))
    elif responses:
        first = responses.pop(0)
        out.append(Score("forget_score", "forget score", f"drop of {first.name}/"
                         f"{first.reduce} (the forget set's own responses: the run has no "
                         "label probe)", "drop", M.key(first.name, first.reduce)))
    else:
        out.append(Score("forget_score", "forget score", "no forget_label or forget_response "
                         "probe in this run", "drop"))
    for p in labels[1:]:
        x = p.name.removeprefix("forget_label_")
        out.append(Score(f"forget_score_{x}", f"forget ({x})", f"drop of {p.name}/all_mean "
                         f"({p.source})", "drop", M.key(p.name, M.ALL_MEAN)))
    for p in responses:
        header = "forget resp. drop" if p.name == M.FORGET_RESPONSE else f"{p.name} drop"
        out.append(Score(f"{p.name}_drop", header, f"drop of {p.name}/{p.reduce} (the forget "
                         "set's own responses)", "drop", M.key(p.name, p.reduce)))
    for p in (p for p in probes if p.kind == "utility"):
        out.append(Score(f"utility_{p.name}", utility_header(p),
                         f"1 - |change of {p.name}/{p.reduce}| ({p.source})", "utility",
                         M.key(p.name, p.reduce)))
    for p in (p for p in probes if p.kind == "choice"):
        out.append(Score(f"{p.name}_acc", f"{p.name} acc", f"{p.name}/acc at the end: accuracy "
                         "on its multiple-choice questions by each choice's log-likelihood "
                         f"(lm-eval's acc; chance 1/{p.group_size}; {p.source})", "end",
                         M.key(p.name, "acc")))
    return [*out, *field_scores(probes), MATH, RE]


def field_scores(probes: list) -> list[Score]:
    """The field's metrics at the end of unlearning (:mod:`pathunlearn.eval.field`), where the
    run's field sets measure them: forget quality, model utility, privleak (Min-K%, as MUSE)."""
    roles = {p.role: p for p in probes if getattr(p, "metrics", ())}
    out = []
    if "forget" in roles and "truth_ratio" in roles["forget"].metrics:
        name = roles["forget"].name
        out.append(Score("forget_quality", "forget quality", f"{name}/forget_quality at the "
                         "end: the KS-test p-value of the forget set's truth ratios against "
                         "the path's own retrain model's (TOFU; 1 = indistinguishable from "
                         "retraining; needs the path's retrain baseline)", "end",
                         f"{name}/forget_quality"))
    if all(r in roles for r in ("retain", "real_authors", "world_facts")):
        out.append(Score("model_utility", "model utility", "model_utility at the end: the "
                         "harmonic mean of TOFU's nine retain / real-authors / world-facts "
                         "numbers (prob, ROUGE-L, truth ratio)", "end", "model_utility"))
    if all(r in roles and "mia" in roles[r].metrics for r in ("forget", "holdout")):
        out.append(Score("privleak", "privleak (Min-K%)", "mia_min_k/privleak at the end: "
                         "((1 - AUC) - (1 - AUC_retrain)) / (1 - AUC_retrain) x 100 of the "
                         "Min-K% Prob attack (k = 0.4), "
                         "forget vs holdout, against the path's own retrain model (MUSE; 0 = "
                         "like retraining)", "end", "mia_min_k/privleak"))
    return out + muse_scores(roles)


MUSE_CRITERIA = (  # (role, key, header, how, what the score is)
    ("verbmem", "muse_verbmem", "C1 verbmem", "end",
     "ROUGE-L F1 of the continuations of forget-corpus excerpts (MUSE's no verbatim "
     "memorisation; lower = less memorised)"),
    ("knowmem_forget", "muse_knowmem_forget", "C2 knowmem forget", "end",
     "ROUGE-L F1 of the answers to questions on the forget corpus (MUSE's no knowledge "
     "memorisation; lower = less known)"),
    ("knowmem_retain", "muse_knowmem_retain", "C4 knowmem retain (after/before)", "ratio",
     "ROUGE-L F1 of the answers to questions on the retain corpus relative to the path model "
     "before unlearning (MUSE's utility preserved; 1 = kept)"),
)
"""MUSE's criteria C1, C2 and C4 as scores of one probe set's ``rougeL_f1`` each (C3 is the
privleak score)."""


def muse_scores(roles: dict) -> list[Score]:
    """MUSE's criteria C1, C2 and C4 (docs/muse.md), where the run has MUSE's ROUGE sets
    (roles ``verbmem``, ``knowmem_forget``, ``knowmem_retain`` with ``rouge``); C3 is the
    privleak score."""
    out = []
    for role, key, header, how, what in MUSE_CRITERIA:
        if role in roles and "rouge" in roles[role].metrics:
            metric = f"{roles[role].name}/rougeL_f1"
            at = "at the end over its value at step 0" if how == "ratio" else "at the end"
            out.append(Score(key, header, f"{metric} {at}: {what}", how, metric))
    return out


def with_lmeval(scores: list[Score], cells: list[CellRecord]) -> list[Score]:
    """``scores`` with, before the math column, one score per lm-eval task metric the cells
    measured (``unlearning.lmeval``): its change, after minus before unlearning."""
    found: dict[tuple[str, str], None] = {}
    for c in cells:
        for task, metrics in (c.summary.get(M.LMEVAL_AFTER) or {}).items():
            for metric in metrics:
                if not metric.endswith("_stderr"):
                    found[(task, metric)] = None
    extra = [Score(f"lmeval_{task}_{metric}", f"{task} {metric} (change)",
                   f"lm-eval {task} {metric} after minus before unlearning", "lmeval",
                   f"{task}/{metric}") for task, metric in found]
    at = next(i for i, s in enumerate(scores) if s.key == MATH.key)
    return [*scores[:at], *extra, *scores[at:]]


def utility_header(probe) -> str:
    """``authors utility`` (trained answers), ``authors utility (paraphrased)``, else the
    probe's name."""
    stage = probe.stage or probe.name
    if probe.name == f"{stage}_train":
        return f"{stage} utility"
    if probe.name == f"{stage}_paraphrased":
        return f"{stage} utility (paraphrased)"
    return f"{probe.name} utility"


SATURATION = ("target_before", M.FORGET_TOKEN_PROB, M.FORGET_GRAD_NORM, M.FIRST_GRAD_NORM)
"""The saturation diagnostics at step 0 (:mod:`pathunlearn.eval.saturation`): the unlearn
target's own per-token log-probability (the label probe's ``/target``), the forget responses'
mean token probability, the gradient norm of their NLL, the first step's gradient norm."""
CONTEXT = ("forget_before", "forget_after", "math_before", "math_after", "math_shuffled",
           "math_no_answer", *SATURATION)
"""Also aggregated, not scores: the forget score's metric before and after unlearning, math
accuracy before and after, the shuffled-answer baseline and the no-answer rate before, the
saturation diagnostics."""

NOT_MEASURED = {
    "math_utility": "math utility: not measured in this run (set unlearning.math.questions "
                    "> 0 to sample answers before and after unlearning)",
    "re_distance_to_retrain": "RE distance to retrain: not measured in this run (its paths "
                              "have no retrain baseline, or it has no heldout probe set)",
}
"""Why a column can be empty, said in the Markdown and the report instead of a number."""

NA = "n/a (not measured)"
SIGNIFICANT = {"forget_quality": 2}
"""Scores shown with this many significant digits rather than 3 decimals (forget quality is a
p-value: TOFU's tables read 1e-5 against 0.5)."""

# ---------------------------------------------------------------------------- scores


def cell_scores(cell: CellRecord, scores: list[Score]) -> dict[str, float | None]:
    """The ``scores`` of one cell (see the module docstring); all null for a diverged cell."""
    if cell.diverged_at is not None:
        return dict.fromkeys([*(s.key for s in scores), *CONTEXT])
    first, last = cell.rows[0], cell.rows[-1]
    before, after = cell.summary.get(M.MATH_BEFORE), cell.summary.get(M.MATH_AFTER)

    def value(score: Score) -> float | None:
        if score.how == "math":
            return after - before if is_number(before) and is_number(after) else None
        if score.how == "re":
            return _num(last.get(M.RE_RETRAIN_KL))
        if score.how == "end":
            return _num(last.get(score.metric))
        if score.how == "lmeval":
            task, metric = score.metric.split("/", 1)
            a, b = (((cell.summary.get(k) or {}).get(task) or {}).get(metric)
                    for k in (M.LMEVAL_AFTER, M.LMEVAL_BEFORE))
            return a - b if is_number(a) and is_number(b) else None
        a, b = first.get(score.metric), last.get(score.metric)
        if not (is_number(a) and is_number(b)):
            return None
        if score.how == "ratio":  # undefined where step 0 scores nothing
            return b / a if a > 0 else None
        return a - b if score.how == "drop" else 1.0 - abs(a - b)

    forget = next(s for s in scores if s.key == "forget_score").metric
    saturation = cell.summary.get(M.SATURATION) or {}
    return {**{s.key: value(s) for s in scores},
            "target_before": None if forget is None else _num(
                first.get(M.key(forget.rsplit("/", 1)[0], M.TARGET))),
            **{k: _num(saturation.get(k)) for k in SATURATION[1:]},
            "forget_before": _num(first.get(forget)), "forget_after": _num(last.get(forget)),
            "math_before": _num(before), "math_after": _num(after),
            "math_shuffled": _num(cell.summary.get(M.MATH_SHUFFLED)),
            "math_no_answer": _num(cell.summary.get(M.MATH_NO_ANSWER_BEFORE))}


def _num(v) -> float | None:
    return float(v) if is_number(v) else None


# ---------------------------------------------------------------------------- the table


@dataclass
class ResultTable:
    """Per-cell scores and their aggregates over seeds."""

    forget_stage: str
    rows: list[Row]
    """One per (method, sweep, path), over its seeds: the identity, then per score and context
    key its :class:`~pathunlearn.report.model.Stat` (mean, 95% half-width: None with fewer
    than 2 seeds or no values)."""
    cells: list[CellRow]
    """One per cell: identity, status (``ok`` or ``diverged at step k``) and its scores."""
    scores: list[Score] = field(default_factory=list)
    """The scores of this run, in table order (:func:`scores_of`)."""
    swept: bool = False
    """Whether cells differ in lr or scheduler (then the sweep is a column and a panel)."""
    measured: dict[str, bool] = field(default_factory=dict)
    """Per score: whether any cell has a value."""


def build_table(cells: list[CellRecord], forget_stage: str, probes: list,
                training_seeds: dict[int, int] | None = None) -> ResultTable:
    """Score every cell (the scores its run's ``probes`` give, :func:`scores_of`) and
    aggregate over seeds per (method, sweep, path). ``training_seeds`` (experiment seed ->
    the training seed of its path models): when several training seeds each hold several
    experiment seeds, every row also gives each score's spread across training seeds and
    within one (:func:`seed_spread`)."""
    scores = with_lmeval(scores_of(probes), cells)
    training_seeds = training_seeds or {}
    per_cell = [CellRow(
        method=c.method, sweep=c.sweep_label, lr=c.lr, scheduler=c.scheduler, seed=c.seed,
        training_seed=training_seeds.get(c.seed), path=list(c.path), path_label=c.path_label,
        position=position(c.path, forget_stage), local=c.local,
        steps=c.summary.get("steps"), steps_done=c.summary.get("steps_done"),
        diverged_at=c.diverged_at,
        status="ok" if c.diverged_at is None else (c.diverged_reason or "diverged"),
        directory=str(unit_dir("", c.cell)),  # relative: the run directory can move
        values=cell_scores(c, scores)) for c in cells]
    per_cell.sort(key=_order)
    groups: dict[tuple, list[CellRow]] = {}
    for row in per_cell:
        groups.setdefault((row.method, row.sweep, row.path_label), []).append(row)
    keys = [s.key for s in scores]
    rows = [_aggregate(members, keys) for members in groups.values()]
    return ResultTable(
        forget_stage=forget_stage, rows=rows, cells=per_cell, scores=scores,
        swept=any(c.sweep for c in cells),
        measured={k: any(r.values[k] is not None for r in per_cell) for k in keys},
    )


def _order(row: CellRow) -> tuple:
    return (row.method, row.lr or 0.0, row.sweep, row.position, row.path_label, row.seed)


def _aggregate(members: list[CellRow], keys: list[str]) -> Row:
    ok = [m for m in members if m.diverged_at is None]
    first = members[0]
    stats = {}
    for score in [*keys, *CONTEXT]:
        mean, half = mean_ci([m.values[score] for m in ok if m.values[score] is not None])
        spread = seed_spread([(m.training_seed, m.values[score]) for m in ok
                              if m.values[score] is not None and m.training_seed is not None]
                             ) if score in keys else None
        stats[score] = Stat(mean, half, *(spread or (None, None)))
    return Row(method=first.method, sweep=first.sweep, lr=first.lr, scheduler=first.scheduler,
               path=first.path, path_label=first.path_label, position=first.position,
               forget_last=first.forget_last, n=len(ok), seeds=[m.seed for m in ok],
               diverged_seeds=[m.seed for m in members if m.diverged_at is not None],
               stats=stats)


def training_seeds(cfg) -> dict[int, int]:
    """Experiment seed -> the training seed of its path models (:func:`pathunlearn.plan.
    training_seed`)."""
    return {s: training_seed(cfg, s) for s in cfg.seeds}


def seed_spread(values: list[tuple[int, float]]) -> tuple[float, float] | None:
    """(sd across training seeds, sd within a training seed) of ``(training seed, value)``
    pairs: the standard deviation (ddof 1) of the per-training-seed means, and the square root
    of the mean within-seed variance (ddof 1, over training seeds with >= 2 values: what the
    unlearning's randomness alone spreads). None unless there are >= 2 training seeds and one
    of them has >= 2 values."""
    import statistics

    groups: dict[int, list[float]] = {}
    for t, v in values:
        groups.setdefault(t, []).append(v)
    within = [statistics.variance(g) for g in groups.values() if len(g) >= 2]
    if len(groups) < 2 or not within:
        return None
    between = statistics.stdev([statistics.fmean(g) for g in groups.values()])
    return between, (sum(within) / len(within)) ** 0.5


# ---------------------------------------------------------------------------- the verdict


def recency_verdicts(table: ResultTable, score: str = "forget_score") -> list[RecencyVerdict]:
    """Per method (and sweep value): the ranking of paths by mean ``score`` ascending (rank 1
    forgets least) and whether the forget-stage-last path(s) rank first (see the module
    docstring); the CI comparison is with the closest competitor: the other path of lowest
    mean."""
    groups: dict[tuple, list[Row]] = {}
    for row in table.rows:
        groups.setdefault((row.method, row.sweep), []).append(row)
    return [_verdict(table, method, sweep, rows, score) for (method, sweep), rows in groups.items()]


def _verdict(table: ResultTable, method: str, sweep: str, rows: list[Row],
             score: str) -> RecencyVerdict:
    scored = sorted((r for r in rows if r.mean(score) is not None), key=lambda r: r.mean(score))
    ranking = [RankEntry(rank=i, path_label=r.path_label, position=r.position,
                         forget_last=r.forget_last, mean=r.mean(score), ci95=r.stats[score].ci95,
                         ci_low=r.stats[score].ci_low, ci_high=r.stats[score].ci_high, n=r.n,
                         forget_before=r.mean("forget_before"),
                         saturation={k: r.mean(k) for k in SATURATION})
               for i, r in enumerate(scored, 1)]
    last = [e for e in ranking if e.forget_last]
    others = [e for e in ranking if not e.forget_last]
    observed = compared_with = ci_overlap = forgot = None
    if last and others:
        worst_last, best_other = last[-1], others[0]
        observed = worst_last.mean < best_other.mean
        compared_with = best_other.path_label
        forgot = worst_last.mean > 0 and (worst_last.ci_low is None or worst_last.ci_low > 0)
        if worst_last.ci95 is not None and best_other.ci95 is not None:
            ci_overlap = (worst_last.ci_high >= best_other.ci_low
                          and best_other.ci_high >= worst_last.ci_low)
    verdict = RecencyVerdict(
        method=method, sweep=sweep, lr=rows[0].lr, scheduler=rows[0].scheduler, score=score,
        forget_metric=next((s.metric for s in table.scores if s.key == "forget_score"), None),
        forget_stage=table.forget_stage, ranking=ranking,
        unscored_paths=[r.path_label for r in rows if r.mean(score) is None],
        forget_last_paths=[e.path_label for e in last],
        forget_last_ranks=[e.rank for e in last], n_paths=len(ranking), observed=observed,
        compared_with=compared_with, ci_overlap=ci_overlap,
        per_seed=_per_seed(table, method, sweep, score), forget_last_forgot=forgot)
    return replace(verdict, text=verdict_text(verdict))


def _per_seed(table: ResultTable, method: str, sweep: str, score: str) -> dict[int, SeedRank]:
    """Seed -> rank of the (best-ranked) forget-last path among that seed's paths."""
    by_seed: dict[int, list[CellRow]] = {}
    for c in table.cells:
        if c.method == method and c.sweep == sweep and c.values[score] is not None:
            by_seed.setdefault(c.seed, []).append(c)
    ranks = {}
    for seed, cells in sorted(by_seed.items()):
        ordered = sorted(cells, key=lambda c: c.values[score])
        last = [i for i, c in enumerate(ordered, 1) if c.forget_last]
        if last and len(ordered) > 1:
            ranks[seed] = SeedRank(rank=last[0], of=len(ordered))
    return ranks


def verdict_text(v: RecencyVerdict) -> str:
    """One paragraph saying what was measured, including when the effect does not appear."""
    name = v.method + (f" ({v.sweep})" if v.sweep else "")
    stage = v.forget_stage
    if not v.forget_last_paths:
        return (f"{name}: no path with {stage} last has a forget score, so there is no recency "
                "verdict.")
    if v.observed is None:
        return f"{name}: fewer than two paths have a forget score; no recency verdict."
    by_label = {e.path_label: e for e in v.ranking}
    last = [by_label[p] for p in v.forget_last_paths]
    other = by_label[v.compared_with]
    who = (f"the path with {stage} last (p={last[0].position}, {last[0].path_label})"
           if len(last) == 1 else f"the {len(last)} paths with {stage} last")
    ranks = ", ".join(str(r) for r in v.forget_last_ranks)
    n = min(e.n for e in v.ranking)
    text = (f"{name}: {who} ranks {ranks} of {v.n_paths} by mean forget score "
            f"(1 = forgets least; {_fmt(last[-1].mean)} vs {_fmt(other.mean)} for "
            f"p={other.position}, {other.path_label}, over {_seeds(n)}): recency effect "
            + ("observed" if v.observed else "NOT observed") + ". ")
    if v.forget_last_forgot is False:
        worst = last[-1]
        why = (f"its forget score {_fmt(worst.mean)} is not above 0 (the forget metric did not "
               "fall)" if worst.mean <= 0 else
               f"its forget score {_fmt(worst.mean)} ± {_fmt(worst.ci95)} is within the seeds' "
               "noise of 0")
        text += (f"The {stage}-last path did not forget: {why}; it ranks first by not "
                 "forgetting, not by forgetting less. ")
    if (last[-1].forget_before is not None and other.forget_before is not None
            and v.forget_metric):
        text += (f"Before unlearning, {v.forget_metric} was "
                 f"{_fmt(last[-1].forget_before)} vs {_fmt(other.forget_before)}. ")
    text += saturation_text(last[-1].saturation, other.saturation)
    if v.ci_overlap is None:
        text += "1 seed: no interval." if n < 2 else "No interval to compare."
    else:
        text += (f"The 95% intervals [{_fmt(last[-1].ci_low)}, {_fmt(last[-1].ci_high)}] "
                 f"and [{_fmt(other.ci_low)}, {_fmt(other.ci_high)}] "
                 + ("overlap: the difference is within seed noise."
                    if v.ci_overlap else "do not overlap."))
    seeds = v.per_seed
    if len(seeds) > 1:
        first = sum(1 for r in seeds.values() if r.rank == 1)
        text += f" Per seed, the {stage}-last path ranks first in {first} of {len(seeds)} seeds."
    if v.unscored_paths:
        text += f" Without a score (all seeds diverged): {', '.join(v.unscored_paths)}."
    return text


SATURATED_RATIO = 0.5
"""A forget-last path whose forget NLL gradient at step 0 is below this fraction of the
compared path's is flagged ..."""
SATURATED_MARGIN = 0.1
"""... as starting saturated when its forget-token probability is also higher by more than
this; as starting with a smaller push at a comparable likelihood otherwise."""


def saturation_text(last: dict[str, float | None], other: dict[str, float | None]) -> str:
    """Where the two paths start unlearning from (their :data:`SATURATION` values): the
    unlearn target's own log-probability, the forget tokens' probability and the forget NLL's
    gradient norm, and a warning when the forget-last path starts with much less gradient
    (slower forgetting may then be saturation, not the order as such)."""
    parts = []
    if last["target_before"] is not None and other["target_before"] is not None:
        parts.append(f"the unlearn target's log-probability {_fmt(last['target_before'])} vs "
                     f"{_fmt(other['target_before'])}")
    prob, grad = M.FORGET_TOKEN_PROB, M.FORGET_GRAD_NORM
    if last[prob] is not None and other[prob] is not None:
        parts.append(f"forget-token probability {_fmt(last[prob])} vs {_fmt(other[prob])}")
    if last[grad] is not None and other[grad] is not None:
        parts.append(f"forget NLL gradient norm {_fmt(last[grad], 4)} vs {_fmt(other[grad], 4)}")
    if not parts:
        return ""
    text = f"At step 0: {'; '.join(parts)}. "
    if (last[grad] is not None and other[grad] is not None
            and last[grad] < SATURATED_RATIO * other[grad]):
        closer = last[prob] is not None and other[prob] is not None and \
            last[prob] > other[prob] + SATURATED_MARGIN
        text += (f"The forget-last path starts closer to probability 1 with less than "
                 f"{SATURATED_RATIO:g}x the gradient: its slower forgetting may be saturation "
                 "rather than the order as such (the matched-start control tests this). "
                 if closer else
                 f"The forget-last path starts with less than {SATURATED_RATIO:g}x the "
                 "gradient at a comparable forget-token probability: the smaller push is not "
                 "explained by a higher starting likelihood. ")
    return text


def _seeds(n: int) -> str:
    return "1 seed" if n == 1 else f"{n} seeds"


def _fmt(x: float | None, digits: int = 3) -> str:
    return NA if x is None else f"{x:.{digits}f}"


# ---------------------------------------------------------------------------- outputs


def csv_columns(table: ResultTable) -> list[str]:
    ident = ["method", "sweep", "lr", "scheduler", "position", "path_label", "forget_last", "n",
             "seeds", "diverged_seeds"]
    keys = [s.key for s in table.scores]
    return ident + [k for s in [*keys, *CONTEXT] for k in (s, f"{s}_ci95")]


def results_csv(table: ResultTable) -> str:
    """Aggregates, one row per (method, sweep, path); null as an empty field; lists as
    space-separated seeds."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    columns = csv_columns(table)
    writer.writerow(columns)
    for row in table.rows:
        writer.writerow([_csv_value(row.flat(c)) for c in columns])
    return buf.getvalue()


def _csv_value(v) -> str:
    if v is None:
        return ""
    if isinstance(v, list):
        return " ".join(str(x) for x in v)
    if isinstance(v, float):
        return repr(v)
    return str(v)


def display_columns(table: ResultTable) -> list[tuple[str, str]]:
    """(key, header) of the human-readable table (Markdown, terminal, HTML)."""
    cols = [("method", "method")]
    if table.swept:
        cols.append(("sweep", "sweep"))
    return cols + [("position", "p"), ("path_label", "path"),
                   *((s.key, s.header) for s in table.scores), ("n", "seeds")]


def display_value(row: Row, key: str, na: str = NA) -> str:
    """A cell of the human-readable table: ``mean ± half-width``, or ``na`` (not measured)."""
    if key in row.stats:  # a score
        stat = row.stats[key]
        if stat.mean is None:
            return na if row.n else "diverged"
        if key in SIGNIFICANT:  # a p-value: small values are the point
            return f"{stat.mean:.{SIGNIFICANT[key]}g}" + (
                "" if stat.ci95 is None else f" ± {stat.ci95:.{SIGNIFICANT[key]}g}")
        return _fmt(stat.mean) + ("" if stat.ci95 is None else f" ± {_fmt(stat.ci95)}")
    v = getattr(row, key)
    if key == "n":
        return str(v) + (f" (+{len(row.diverged_seeds)} diverged)" if row.diverged_seeds else "")
    if key == "position" and row.forget_last:
        return f"{v} (last)"
    return str(v)


def notes(table: ResultTable) -> list[str]:
    """What the reader must know to read the table: the scores, the interval, missing columns
    and diverged cells."""
    lines = [f"Forget stage: {table.forget_stage}; p = its 1-based position in the path.",
             "; ".join(f"{s.header} = {s.definition}" for s in table.scores
                       if s.how in ("drop", "utility", "end", "ratio", "lmeval"))
             + " (drops: before minus after "
             "unlearning, positive = fell; utilities: 1 = unchanged).",
             "Values are means over seeds ± the half-width of a 95% t-interval; a value without "
             "± has 1 seed: no interval."]
    lines += [NOT_MEASURED[k] + "." for k in NOT_MEASURED if not table.measured.get(k)]
    if table.measured.get("math_utility"):
        lines.append(math_note(table))
    spread = [r.stats["forget_score"] for r in table.rows
              if r.stats["forget_score"].sd_training is not None]
    if spread:
        between = sum(s.sd_training for s in spread) / len(spread)
        within = sum(s.sd_unlearning for s in spread) / len(spread)
        lines.append(f"Where the seed spread comes from (forget score, mean over {len(spread)} "
                     f"rows): sd across training seeds {between:.3f} (of the per-training-seed "
                     f"means), sd within a training seed {within:.3f} (the unlearning alone); "
                     "every score's in results.json (<score>_sd_training, _sd_unlearning).")
    diverged = [c for c in table.cells if c.diverged_at is not None]
    if diverged:
        lines.append(f"{len(diverged)} diverged cell(s), left out of every mean, interval and "
                     "verdict: " + "; ".join(f"{c.method} {c.sweep} {c.path_label} seed "
                                            f"{c.seed} ({c.status})".replace("  ", " ")
                                            for c in diverged) + ".")
    return lines


def math_note(table: ResultTable) -> str:
    """Math accuracy before unlearning per path (what the math utility is a change of), beside
    its shuffled-answer baseline (the same answers scored against other questions' gold) and
    the share of answers without a ``####`` line when there are any."""
    per_path: dict[tuple[int, str], list[Row]] = {}
    for row in table.rows:
        if row.mean("math_before") is not None:
            per_path.setdefault((row.position, row.path_label), []).append(row)
    positions = [p for p, _ in per_path]
    parts = []
    for (p, path_label), rows in sorted(per_path.items()):
        # "p=2" names the path unless several paths share that position
        label = f"p={p}" if positions.count(p) == 1 else f"p={p} {path_label}"
        before = sum(r.mean("math_before") for r in rows) / len(rows)
        shuffled = [r.mean("math_shuffled") for r in rows if r.mean("math_shuffled") is not None]
        extra = [f"shuffled {_fmt(sum(shuffled) / len(shuffled))}"] if shuffled else []
        silent = [r.mean("math_no_answer") for r in rows
                  if r.mean("math_no_answer") is not None]
        if silent and sum(silent) > 0:
            extra.append(f"no answer {sum(silent) / len(silent):.0%}")
        parts.append(f"{label} {_fmt(before)}" + (f" ({'; '.join(extra)})" if extra else ""))
    return ("math utility = math accuracy after minus before unlearning; accuracy before "
            "unlearning: " + ", ".join(parts))


def markdown_text(text: str) -> str:
    """``text`` safe inside a Markdown table cell or list item."""
    return text.replace("|", "\\|").replace("\n", " ")


def format_table(table: ResultTable):
    """The table as a rich Table for the terminal: narrower than the Markdown one (no
    response-drop column; paths listed in the caption when their position tells them apart)."""
    from rich.markup import escape
    from rich.table import Table

    paths = dict.fromkeys((r.position, r.path_label) for r in table.rows)
    by_position = len({p for p, _ in paths}) == len(paths)
    # the terminal is narrow: no response drops, no paraphrased utilities (results.md has all)
    skip = {s.key for s in table.scores if s.key.endswith("_drop")
            or s.key.endswith("_paraphrased")} | ({"path_label"} if by_position else set())
    columns = [(k, h) for k, h in display_columns(table) if k not in skip]
    out = Table(title=f"Forget and utility scores (forget stage: {escape(table.forget_stage)})",
                caption=escape("; ".join(f"p={p}: {label}" for p, label in sorted(paths))
                               + ". n/a = not measured.") if by_position else None)
    for key, header in columns:
        out.add_column(header, justify="left" if key in ("method", "sweep", "path_label")
                       else "right", overflow="fold")
    for row in table.rows:
        out.add_row(*(escape(display_value(row, k, na="n/a")) for k, _ in columns))
    return out


def format_verdicts(verdicts: list[Verdict]) -> list[str]:
    """The verdict sentences: recency, then pairwise growth, one per method (and sweep)."""
    return [v.text for v in verdicts]
