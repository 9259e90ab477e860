"""What the report is built from, computed from a loaded run: the table and recency verdicts
(:mod:`~pathunlearn.report.tables`), the pairwise distances between paths and their growth
verdicts (:mod:`~pathunlearn.report.pairwise`), written as results.{json,csv,md}.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pathunlearn.config import ExperimentConfig
from pathunlearn.errors import UserError
from pathunlearn.files import write_json, write_text
from pathunlearn.report.controls import MatchedStart, matched_start, model_lines
from pathunlearn.report.dependence import Dependence, dependence_markdown, path_dependence
from pathunlearn.report.field import field_markdown
from pathunlearn.report.model import Verdict
from pathunlearn.report.pairwise import PairwiseTable, build_pairwise
from pathunlearn.report.relearn import relearn_curves
from pathunlearn.report.tables import (
    NOT_MEASURED,
    ResultTable,
    build_table,
    display_columns,
    display_value,
    markdown_text,
    notes,
    recency_verdicts,
    results_csv,
    training_seeds,
)
from pathunlearn.rundir import RESULTS, CellRecord, Run


@dataclass
class Results:
    """The scored run: its cells, the table, the pairwise distances and the verdicts."""

    run: Run
    table: ResultTable
    verdicts: list[Verdict]
    """The recency verdicts (``kind`` "recency"), then the pairwise-growth ones ("pairwise")."""
    files: list[Path] = field(default_factory=list)
    pairwise: PairwiseTable | None = None
    relearn: list[dict] = field(default_factory=list)
    """Relearning curves per (method, sweep, path, data) (:mod:`pathunlearn.report.relearn`);
    empty without relearning."""
    matched: MatchedStart | None = None
    """The matched-start control's models, table and verdicts (None without the control)."""
    superficial: list[dict] | None = None
    """Per-path R/C/U curves and verdicts of a ``study: superficial`` run
    (:func:`pathunlearn.report.superficial.path_curves`); None for other studies."""
    dependence: list[Dependence] = field(default_factory=list)
    """The methods ranked by how path-dependent they are (:mod:`pathunlearn.report.dependence`)."""

    @property
    def run_dir(self) -> Path:
        return self.run.run_dir

    @property
    def cells(self) -> list[CellRecord]:
        return self.run.cells

    @property
    def config(self) -> ExperimentConfig:
        return self.run.config

    def notes(self) -> list[str]:
        """The table's notes, and what the run has not finished yet."""
        return notes(self.table) + run_notes(self.run)


def build_results(run: Run, *, write: bool = True) -> Results:
    """Score the finished cells of ``run``, aggregate, judge recency, compute the pairwise
    distances between paths and (with ``write``) write results.{json,csv,md}. A run without
    a finished cell is a UserError."""
    if not run.cells:
        raise UserError(f"{run.run_dir}: no finished cells under {run.run_dir / 'cells'} (a "
                        "cell is finished once its DONE marker exists); run `pathunlearn "
                        "unlearn` first")
    table = build_table(run.cells, run.forget_stage, run.probes, training_seeds(run.config))
    pairwise = build_pairwise(run.cells, run.forget_stage)
    verdicts = recency_verdicts(table) + pairwise.verdicts
    forget_metric = next(s.metric for s in table.scores if s.key == "forget_score")
    relearn = relearn_curves(run.cells, forget_metric, run.forget_stage) if forget_metric \
        else []
    results = Results(run, table, verdicts, [], pairwise, relearn, matched_start(run))
    results.dependence = path_dependence(
        table.cells, [v for v in verdicts if v.kind == "recency"], pairwise.verdicts,
        pairwise.series)
    if write:
        results.files = write_results(results)
    return results


def run_notes(run: Run) -> list[str]:
    """What ran (each method in one line), what the seed interval covers, and the cells of
    the plan the table does not hold yet (said rather than silently missing)."""
    methods = dict.fromkeys((c.method_label, c.method_description) for c in run.plan.cells)
    lines = ["Methods: " + "; ".join(f"{label} = {text}" if text else label
                                    for label, text in methods) + "."]
    cfg = run.config
    if len(cfg.seeds) < 2:
        lines.append("One seed: no interval; the table's numbers are one run's.")
    elif cfg.training.seed is not None:
        lines.append(f"The seeds share the path models (training.seed: {cfg.training.seed}): "
                     "the 95% intervals cover the unlearning's batch order and adapter "
                     "initialisation only, not the finetuning. Set training.seed: null to "
                     "train every path per seed.")
    elif cfg.training.seed_of is not None:
        groups: dict[int, list[int]] = {}
        for seed in cfg.seeds:
            groups.setdefault(cfg.training.seed_of[seed], []).append(seed)
        shared = "; ".join(f"seed{'s' * (len(m) > 1)} {', '.join(map(str, m))} "
                           f"{'share' if len(m) > 1 else 'has'} the path models of training "
                           f"seed {t}" for t, m in groups.items())
        lines.append(f"training.seed_of: {shared}. The 95% intervals cover the finetuning's "
                     "and the unlearning's randomness together; the spread across training "
                     "seeds and within one is given separately.")
    else:
        lines.append("Every seed trains its own path models (training.seed: null): the 95% "
                     "intervals cover the finetuning's data order and adapter initialisation "
                     "and the unlearning's batch order and adapter initialisation together.")
    for note in run.plan.probe_notes:  # a default probe set its data cannot make
        lines.append(f"Probe {note}")
    if run.pending:
        lines.append(f"{len(run.pending)} of {len(run.plan.cells)} planned cells are not "
                     "finished yet and are not in the table.")
    if run.stale:
        lines.append(f"{len(run.stale)} cell directories hold cells finished under other "
                     "settings (another key); they are not in the table and are recomputed "
                     "by the next `pathunlearn unlearn` or `run`.")
    return lines


def write_results(results: Results) -> list[Path]:
    """RUN_DIR/results.json (everything), results.csv (aggregates), results.md (table,
    verdicts, pairwise distances, notes); each written atomically."""
    out = [results.run_dir / name for name in RESULTS]
    write_json(out[0], results_json(results))
    write_text(out[1], results_csv(results.table))
    write_text(out[2], results_markdown(results))
    return out


def results_json(results: Results) -> dict:
    table, pairwise = results.table, results.pairwise
    pairs = {} if pairwise is None else {"pairwise": pairwise.to_json(),
                                         "pairwise_notes": pairwise.notes()}
    return {
        "forget_stage": table.forget_stage,
        "scores": {sc.key: f"{sc.header}: {sc.definition}" for sc in table.scores},
        "interval": "95% CI half-width over seeds: t(0.975, n-1) * s / sqrt(n), s with ddof 1",
        "diverged": "diverged cells have null scores and are left out of every aggregate",
        "not_measured": {k: v for k, v in NOT_MEASURED.items() if not table.measured.get(k)},
        "rows": [r.to_json() for r in table.rows],
        "verdicts": [v.to_json() for v in results.verdicts],
        **pairs,
        "relearn": results.relearn,
        "matched_start": None if results.matched is None else results.matched.to_json(),
        "path_dependence": [d.to_json() for d in results.dependence],
        "cells": [c.to_json() for c in table.cells],
        "unfinished_cells": len(results.run.pending),
        "stale_cells": len(results.run.stale),
    }


def results_markdown(results: Results) -> str:
    table = results.table
    cols = display_columns(table)
    lines = ["# Results", "", "| " + " | ".join(h for _, h in cols) + " |",
             "|" + "|".join("---" for _ in cols) + "|"]
    for row in table.rows:
        lines.append("| " + " | ".join(markdown_text(display_value(row, k)) for k, _ in cols)
                     + " |")
    lines += ["", "## Recency verdict", ""] + [f"- {markdown_text(v.text)}"
                                               for v in results.verdicts
                                               if v.kind != "pairwise"]
    if results.matched is not None:
        lines += ["", "## Recency verdict with the matched-start control", ""]
        lines += [f"- {markdown_text(t)}" for t in model_lines(results.matched)]
        lines += [f"- {markdown_text(v.text)}" for v in results.matched.verdicts]
    dependence = dependence_markdown(results.dependence)
    lines += ([""] + dependence) if dependence else []
    field = field_markdown(table)
    lines += ([""] + field) if field else []
    lines += ["", "## Notes", ""] + [f"- {markdown_text(n)}" for n in results.notes()]
    if results.pairwise is not None:
        lines += [""] + results.pairwise.markdown()
    return "\n".join(lines) + "\n"
