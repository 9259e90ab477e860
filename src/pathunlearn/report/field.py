"""The report's TOFU view: retrain equivalence in the field's metrics, per path and method.

Forget quality (the KS-test p-value of the forget set's truth ratios against the path's *own*
retrain model), model utility and privleak at the end of unlearning, from the table's rows
(:func:`pathunlearn.report.tables.field_scores`), with their 95% intervals over seeds; and per
method the spread of forget quality across paths: how far the field's test of retrain
equivalence depends on the order the stages were learned in. No other tool has a retrain model
per path, so this spread is what pathunlearn adds to a TOFU table.
"""

from __future__ import annotations

from dataclasses import dataclass

from pathunlearn.report.model import Row
from pathunlearn.report.tables import ResultTable, display_value

FIELD_KEYS = ("forget_quality", "model_utility", "privleak")
"""The table's scores the view shows, where the run measured them."""


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


def field_columns(table: ResultTable) -> list[tuple[str, str]]:
    """(key, header) of the view's columns: the field scores the run measured."""
    return [(s.key, s.header) for s in table.scores
            if s.key in FIELD_KEYS and table.measured.get(s.key)]


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
    """The view as a section of results.md (empty without field scores)."""
    cols = field_columns(table)
    if not cols:
        return []
    head = ["method", "p", "path", *(h for _, h in cols), "seeds"]
    lines = ["## Retrain equivalence in the field's metrics (TOFU view)", "",
             "Each path against its own retrain model (the path without the forget stage), "
             "at the end of unlearning; means over seeds ± 95% half-width.", "",
             "| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in table.rows:
        cells = [r.method + (f" ({r.sweep})" if r.sweep else ""), display_value(r, "position"),
                 r.path_label, *(display_value(r, k) for k, _ in cols), display_value(r, "n")]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines += [""] + [f"- {s.text}" for s in spreads(table)]
    return lines
