"""Relearning curves per path: how much of the forgotten likelihood returns after unlearning.

For every (method, sweep, path, relearning data) the cells' relearn.jsonl rows
(:mod:`pathunlearn.train.relearn`) are read on the forget score's metric (e.g.
``forget_label_id/all_mean``) and averaged over seeds at every relearning step. Three levels
are compared: *before* (the path model, the cell's first row), *unlearned* (relearning step 0)
and *relearned* (the last relearning step); ``recovered`` = (relearned - unlearned) / (before -
unlearned) is the fraction of what unlearning removed that K finetuning steps brought back (1:
all of it; above 1: more than was removed; null when unlearning removed nothing).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pathunlearn import metrics as M
from pathunlearn.figures import save_figure
from pathunlearn.plan import position
from pathunlearn.report.stats import mean_over_seeds
from pathunlearn.rundir import CellRecord, is_number

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MIN_REMOVED = 1e-6
"""Below this drop (nats) unlearning removed nothing and ``recovered`` is null."""


def relearn_curves(cells: list[CellRecord], metric: str, forget_stage: str) -> list[dict]:
    """One entry per (method, sweep, path, data) with relearning rows (module docstring)."""
    groups: dict[tuple, list[CellRecord]] = {}
    for c in cells:
        if c.relearn and c.diverged_at is None:
            for kind in dict.fromkeys(r[M.RELEARN_DATA] for r in c.relearn):
                groups.setdefault((c.method, c.sweep_label, c.path, kind), []).append(c)
    entries = []
    for (method, sweep, path, kind), group in groups.items():
        series = [_series(c, kind, metric) for c in group]
        steps, stats = mean_over_seeds(s for s in series if s[0])
        if not steps:
            continue
        values = [mean for mean, _ in stats]
        befores = [c.rows[0].get(metric) for c in group]
        before = (sum(befores) / len(befores) if all(is_number(b) for b in befores) else None)
        removed = None if before is None else before - values[0]
        recovered = (values[-1] - values[0]) / removed if removed is not None and \
            removed > MIN_REMOVED else None
        entries.append({"method": method, "sweep": sweep, "path": list(path),
                        "path_label": "-".join(path), "position": position(path, forget_stage),
                        "data": kind, "metric": metric, "steps": steps, "values": values,
                        "before": before, "unlearned": values[0], "relearned": values[-1],
                        "recovered": recovered, "seeds": len(group)})
    entries.sort(key=lambda e: (e["method"], e["sweep"], e["data"], e["position"]))
    return entries


def _series(cell: CellRecord, kind: str, metric: str) -> tuple[list[int], list[float]]:
    rows = [r for r in cell.relearn if r[M.RELEARN_DATA] == kind and is_number(r.get(metric))]
    return [r[M.STEP] for r in rows], [float(r[metric]) for r in rows]


def relearn_figure(entries: list[dict], title: str) -> Figure:
    """One panel per relearning data (retain, forget): the forget metric vs relearning step, a
    line per path, its level before unlearning dotted."""
    from matplotlib.figure import Figure

    kinds = list(dict.fromkeys(e["data"] for e in entries))
    fig = Figure(figsize=(5.2 * len(kinds), 3.6), layout="constrained")
    axes = fig.subplots(1, len(kinds), squeeze=False)[0]
    for ax, kind in zip(axes, kinds, strict=True):
        for i, e in enumerate(x for x in entries if x["data"] == kind):
            color = f"C{i % 10}"
            ax.plot(e["steps"], e["values"], marker="o", ms=2.5, lw=1.6, color=color,
                    label=f"p={e['position']} {e['path_label']}")
            if e["before"] is not None:
                ax.axhline(e["before"], color=color, lw=0.8, ls=":")
        ax.set_title(f"relearning on {kind} data", fontsize=10)
        ax.set_xlabel("relearning step", fontsize=8)
        ax.set_ylabel(entries[0]["metric"], fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, frameon=False)
    fig.suptitle(title, fontsize=11)
    return fig


def figure_stem(method: str, sweep: str) -> str:
    """``relearn_<method>[_<sweep>]``, file-name safe."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in
                   f"relearn_{method}{'_' + sweep if sweep else ''}")


def write_relearn_figures(entries: list[dict], out_dir: Path) -> list[Path]:
    """A figure per method (and sweep): RUN_DIR/figures/relearn_<method>.{png,svg}."""
    files = []
    for method, sweep in dict.fromkeys((e["method"], e["sweep"]) for e in entries):
        mine = [e for e in entries if e["method"] == method and e["sweep"] == sweep]
        name = figure_stem(method, sweep)
        title = (f"{method}{' ' + sweep if sweep else ''}: relearning after unlearning "
                 f"(mean of {max(e['seeds'] for e in mine)} seed(s); dotted: before unlearning)")
        out_dir.mkdir(parents=True, exist_ok=True)
        files += save_figure(relearn_figure(mine, title), out_dir, name)
    return files
