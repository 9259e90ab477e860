"""The report's TOFU and MUSE views: retrain equivalence in the field's metrics, per path and
method.

Forget quality (the KS-test p-value of the forget set's truth ratios against the path's *own*
retrain model), model utility and privleak at the end of unlearning, from the table's rows
(:func:`pathunlearn.report.tables.field_scores`), with their 95% intervals over seeds; and per
method the spread of forget quality across paths: how far the field's test of retrain
equivalence depends on the order the stages were learned in. No other tool has a retrain model
per path, so this spread is what pathunlearn adds to a TOFU table.

The MUSE view (docs/muse.md): MUSE's four measurable criteria per path and method at the end of
unlearning, each a score of the table (:func:`pathunlearn.report.tables.muse_scores`) computed
from the cells' metrics.jsonl: C1 verbmem ROUGE-L F1, C2 knowmem-forget ROUGE-L F1, C3 privleak
against the path's own retrain model, C4 knowmem-retain ROUGE-L F1 over the path model's
before unlearning; and per method each criterion's range across paths.
"""

from __future__ import annotations

from dataclasses import dataclass

from pathunlearn.report.model import Row
from pathunlearn.report.tables import ResultTable, display_value

FIELD_KEYS = ("forget_quality", "model_utility", "privleak")
"""The table's scores the view shows, where the run measured them."""
MUSE_KEYS = ("muse_verbmem", "muse_knowmem_forget", "privleak", "muse_knowmem_retain")
"""MUSE's criteria C1-C4 as the table's scores, in MUSE's order; the view is shown where the
run measured one of C1, C2 or C4 (privleak alone is the TOFU view's)."""


@dataclass(frozen=True)
class Spread:
    """Forget quality across the paths of one method (and sweep value): the lowest and the
    highest path mean."""

    method: str
    sweep: str
    low: Row
    high: Row
    n_paths: int

    @property
    def text(self) -> str:
        name = self.method + (f" ({self.sweep})" if self.sweep else "")
        lo, hi = self.low.mean("forget_quality"), self.high.mean("forget_quality")
        return (f"{name}: forget quality against each path's own retrain model ranges from "
                f"{lo:.3g} (p={self.low.position}, {self.low.path_label}) to {hi:.3g} "
                f"(p={self.high.position}, {self.high.path_label}) across {self.n_paths} "
                f"paths (x{hi / lo:.3g})." if lo > 0 else
                f"{name}: forget quality against each path's own retrain model ranges from "
                f"{lo:.3g} (p={self.low.position}, {self.low.path_label}) to {hi:.3g} "
                f"(p={self.high.position}, {self.high.path_label}) across {self.n_paths} "
                "paths.")


def field_columns(table: ResultTable, keys: tuple[str, ...] = FIELD_KEYS
                  ) -> list[tuple[str, str]]:
    """(key, header) of the view's columns: the field scores (of ``keys``) the run measured,
    in ``keys``' order."""
    measured = {s.key: s.header for s in table.scores if table.measured.get(s.key)}
    return [(k, measured[k]) for k in keys if k in measured]


def spreads(table: ResultTable) -> list[Spread]:
    """Per method (and sweep value) with forget quality on two or more paths: its lowest and
    highest path mean."""
    if not table.measured.get("forget_quality"):
        return []
    groups: dict[tuple[str, str], list[Row]] = {}
    for row in table.rows:
        if row.mean("forget_quality") is not None:
            groups.setdefault((row.method, row.sweep), []).append(row)
    out = []
    for (method, sweep), rows in groups.items():
        if len(rows) >= 2:
            ordered = sorted(rows, key=lambda r: r.mean("forget_quality"))
            out.append(Spread(method, sweep, ordered[0], ordered[-1], len(rows)))
    return out


def field_markdown(table: ResultTable) -> list[str]:
    """The views as sections of results.md: TOFU's, then MUSE's (empty without field
    scores)."""
    cols = field_columns(table)
    if not cols:
        return muse_markdown(table)
    lines = ["## Retrain equivalence in the field's metrics (TOFU view)", "",
             "Each path against its own retrain model (the path without the forget stage), "
             "at the end of unlearning; means over seeds ± 95% half-width.", "",
             *_table_lines(table, cols)]
    lines += [""] + [f"- {s.text}" for s in spreads(table)]
    muse = muse_markdown(table)
    return lines + ([""] + muse if muse else [])


def _table_lines(table: ResultTable, cols: list[tuple[str, str]]) -> list[str]:
    head = ["method", "p", "path", *(h for _, h in cols), "seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in table.rows:
        cells = [r.method + (f" ({r.sweep})" if r.sweep else ""), display_value(r, "position"),
                 r.path_label, *(display_value(r, k) for k, _ in cols), display_value(r, "n")]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return lines


MUSE_NOTE = ("At the end of unlearning; means over seeds ± 95% half-width. C1 no verbatim "
             "memorisation (verbmem ROUGE-L F1, lower = better), C2 no knowledge memorisation "
             "(knowmem forget ROUGE-L F1, lower = better), C3 no privacy leak (privleak, Min-K% "
             "AUC against the path's own retrain model, 0 = like retraining), C4 utility "
             "preserved (knowmem retain ROUGE-L F1 over the path model's before unlearning, "
             "1 = kept); docs/muse.md.")
"""What the MUSE view's columns are, under its table in results.md and report.html."""


def muse_columns(table: ResultTable) -> list[tuple[str, str]]:
    """(key, header) of the MUSE view's columns, C1-C4 where measured; none without one of
    MUSE's ROUGE sets (privleak alone is the TOFU view's)."""
    cols = [(k, "C3 " + h if k == "privleak" else h)
            for k, h in field_columns(table, MUSE_KEYS)]
    return cols if any(k != "privleak" for k, _ in cols) else []


def muse_markdown(table: ResultTable) -> list[str]:
    """The MUSE view as a section of results.md: the criteria per path and method, then per
    method each criterion's range across paths (empty without MUSE's ROUGE sets)."""
    cols = muse_columns(table)
    if not cols:
        return []
    lines = ["## MUSE's criteria per path", "", MUSE_NOTE, "", *_table_lines(table, cols), ""]
    return lines + [f"- {t}" for t in criterion_ranges(table, cols)]


def criterion_ranges(table: ResultTable, cols: list[tuple[str, str]]) -> list[str]:
    """Per method (and sweep value) and criterion measured on two or more paths: its lowest
    and highest path mean."""
    out = []
    for method, sweep in dict.fromkeys((r.method, r.sweep) for r in table.rows):
        rows = [r for r in table.rows if (r.method, r.sweep) == (method, sweep)]
        parts = []
        for key, header in cols:
            have = sorted((r for r in rows if r.mean(key) is not None), key=lambda r: r.mean(key))
            if len(have) >= 2 and have[0].mean(key) == have[-1].mean(key):
                parts.append(f"{header} {have[0].mean(key):.3g} on all {len(have)} paths")
            elif len(have) >= 2:
                lo, hi = have[0], have[-1]
                parts.append(f"{header} {lo.mean(key):.3g} (p={lo.position}, {lo.path_label}) "
                             f"to {hi.mean(key):.3g} (p={hi.position}, {hi.path_label})")
        if parts:
            name = method + (f" ({sweep})" if sweep else "")
            out.append(f"{name} across {len(rows)} paths: " + "; ".join(parts) + ".")
    return out


# ---------------------------------------------------------------------------- another reference


@dataclass(frozen=True)
class Against:
    """One finished cell's forget quality at its last eval point against its own path's
    retrain model (as the cell measured it) and against a reference model given afterwards."""

    method: str
    sweep: str
    seed: int
    position: int
    path_label: str
    own: float | None
    reference: float | None

    def to_json(self) -> dict:
        return {"method": self.method, "sweep": self.sweep, "seed": self.seed,
                "position": self.position, "path_label": self.path_label,
                "forget_quality_own_retrain": self.own,
                "forget_quality_reference": self.reference}


def against_reference(run, reference_ratios: list[float]) -> list[Against]:
    """Per finished cell of ``run`` (a :class:`pathunlearn.rundir.Run`), forget quality
    recomputed from its items.jsonl at its last eval point against ``reference_ratios`` (a
    reference model's per-item truth ratios on the run's forget set, in item order), beside the
    value against its own retrain model. A UserError when the run has no forget field set with
    a truth ratio."""
    from pathunlearn.errors import UserError
    from pathunlearn.eval import tofu
    from pathunlearn.plan import position
    from pathunlearn.rundir import read_items

    forget = next((p for p in run.probes if p.role == "forget" and "truth_ratio" in p.metrics),
                  None)
    if forget is None:
        raise UserError(f"{run.run_dir}: no probe set with role forget and metrics "
                        "truth_ratio; forget quality needs one (docs/metrics.md)")
    out = []
    for c in run.cells:
        if c.diverged_at is not None:
            continue
        items = [r for r in read_items(c.directory) if r["probe"] == forget.name]
        last = max((r["step"] for r in items), default=None)
        ratios = [r["truth_ratio"] for r in sorted(items, key=lambda r: r["item"])
                  if r["step"] == last]
        out.append(Against(c.method, c.sweep_label, c.seed, position(c.path, run.forget_stage),
                           c.path_label, c.rows[-1].get(f"{forget.name}/forget_quality"),
                           tofu.forget_quality(ratios, reference_ratios) if ratios else None))
    return out


def against_lines(rows: list[Against]) -> list[str]:
    """The comparison as lines: per cell, then per method the spread across paths of each."""
    lines = [f"{r.method}{' ' + r.sweep if r.sweep else ''} p={r.position} {r.path_label} "
             f"seed {r.seed}: forget quality {_p(r.own)} against its own retrain model, "
             f"{_p(r.reference)} against the reference" for r in rows]
    for method in dict.fromkeys(r.method for r in rows):
        own = [r.own for r in rows if r.method == method and r.own is not None]
        ref = [r.reference for r in rows if r.method == method and r.reference is not None]
        if len(own) > 1 and len(ref) > 1:
            lines.append(f"{method}: across cells, forget quality ranges {_p(min(own))} to "
                         f"{_p(max(own))} against each path's own retrain model and "
                         f"{_p(min(ref))} to {_p(max(ref))} against the one reference")
    return lines


def _p(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"
