"""Figures of a run: probe curves over unlearning steps, one curve per path.

Per method (files ``RUN_DIR/figures/<kind>_<method>.{png,svg}``):

- ``forget_label``: the first label probe's ``/all_mean`` (``forget_label_id``: target +
  paraphrases), its change since step 0 (minus the forget score so far) and ``/target`` vs step
  (the paper's Figures 1 and 3);
- ``utility``: every utility probe's change since step 0 (what its utility scores: the
  ``<stage>_train`` probes are the stages' trained answers);
- ``re_distance``: ``re_retrain/kl`` (and ``/mse``) vs step, when the run measured them;
- ``pairwise``: d_MSE between the unlearned models of every pair of paths vs step (a curve per
  pair, see :mod:`pathunlearn.report.pairwise`), beside d_MSE of each path to its retrain model
  (``re_retrain/mse``, the same distance) when measured; log y when every value is positive.

Each thick curve is the mean over seeds, with a shaded 95% t-interval when there are 2+ seeds
(the paper's Figure 5) and each seed as a thin line; the y-axis spans the seeds' values, since
a t-interval over 2-3 seeds can be many times wider (t(0.975, 1) = 12.7). Diverged cells are
left out, as in the table. When the config sweeps
unlearning learning rates or schedulers, each value gets its own column of panels (the
paper's Figures 6 and 8). ``figures/index.json`` lists the figures with their captions, in the
order the report shows them.

matplotlib's object API on the Agg canvas: no pyplot state, no GUI backend.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from matplotlib import colormaps
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

from pathunlearn import metrics as M
from pathunlearn.figures import save_figure
from pathunlearn.files import write_json
from pathunlearn.plan import position
from pathunlearn.report.pairwise import pair_label
from pathunlearn.report.results import Results
from pathunlearn.report.stats import mean_over_seeds
from pathunlearn.report.tables import utility_header
from pathunlearn.rundir import FIGURE_INDEX, FIGURES, CellRecord


@dataclass(frozen=True)
class Panel:
    """One row of panels: a metric, or its change since step 0 (``delta``)."""

    metric: str
    label: str
    delta: bool = False

    @property
    def ylabel(self) -> str:
        return f"{self.metric} - step 0" if self.delta else self.metric


def kinds(probes: list) -> dict[str, tuple[Panel, ...]]:
    """Figure kind -> its rows of panels, for a run with these probe sets: the first label
    probe (the forget score's), every utility probe's change since step 0, the distances to
    the retrain model."""
    out: dict[str, tuple[Panel, ...]] = {}
    label = next((p for p in probes if p.kind == "forget_label"), None)
    if label is not None:
        all_mean, target = M.key(label.name, M.ALL_MEAN), M.key(label.name, M.TARGET)
        out["forget_label"] = (
            Panel(all_mean, "forget label: target + paraphrases"),
            Panel(all_mean, "change since step 0 (= - forget score)", delta=True),
            Panel(target, "forget label: unlearn target only"))
    utility = [p for p in probes if p.kind == "utility"]
    if utility:
        out["utility"] = tuple(Panel(M.key(p.name, p.reduce), f"{utility_header(p)}: change "
                                     "since step 0 (utility = 1 - |change|)", delta=True)
                               for p in utility)
    out["re_distance"] = (Panel(M.RE_RETRAIN_KL, "KL distance to the retrain model"),
                          Panel(M.RE_RETRAIN_MSE, "MSE distance to the retrain model"))
    return out


CAPTIONS = {
    "forget_label": "Per-token average log-probability of the forget label (unlearn target + "
                    "20 paraphrases, in-distribution prompts) vs unlearning step; higher = still "
                    "refuses. Thick line: mean over seeds; thin lines: each seed; band: 95% "
                    "interval (cut at the range of the seeds' values).",
    "utility": "Change since step 0 of the per-token average log-probability of each retained "
               "stage's answers vs unlearning step (utility = 1 - |change|; the paper's TOFU "
               "utility for the TOFU stage's trained answers). Thick line: mean over seeds; "
               "thin lines: each seed; band: 95% interval (cut at the range of the seeds' "
               "values).",
    "re_distance": "Distance to the retrain model (the path without the forget stage) vs "
                   "unlearning step. Thick line: mean over seeds; thin lines: each seed; band: "
                   "95% interval (cut at the range of the seeds' values).",
    "pairwise": "d_MSE between the unlearned models of two paths (mean over the held-out "
                "reference tokens of the squared difference of their per-token "
                "log-probabilities; Definition 2.1) vs unlearning step, a curve per pair of "
                "paths; Theorem 3.1 predicts growth with the steps (linear model). Beside it, "
                "when measured: the same distance from each path to its retrain model "
                "(re_retrain/mse). Thick line: mean over seeds; thin lines: each seed; band: "
                "95% interval. Log y when every value is positive.",
}


def write_figures(results: Results) -> list[Path]:
    """Every figure of the run as PNG and SVG under RUN_DIR/figures; returns the files."""
    out_dir = results.run_dir / FIGURES
    cells = [c for c in results.cells if c.diverged_at is None]
    stage = results.table.forget_stage
    files, index = [], []
    for method in dict.fromkeys(c.method for c in _sorted(cells, stage)):
        mine = [c for c in cells if c.method == method]
        for kind, panels in kinds(results.run.probes).items():
            panels = tuple(p for p in panels if any(c.series(p.metric)[0] for c in mine))
            if not panels:
                continue
            fig = curves_figure(mine, panels, stage, title=f"{method}: {kind.replace('_', ' ')}")
            out_dir.mkdir(parents=True, exist_ok=True)
            written = save_figure(fig, out_dir, f"{kind}_{_safe(method)}")
            files += written
            diverged = sum(1 for c in results.cells if c.method == method and c.diverged_at)
            caption = CAPTIONS[kind] + (f" {diverged} diverged cell(s) left out."
                                        if diverged else "")
            index.append({"method": method, "kind": kind, "caption": caption,
                          "files": [p.name for p in written]})
        series = [s for s in (results.pairwise.series if results.pairwise else [])
                  if s["method"] == method]
        if series:
            fig = pairwise_figure(series, mine, stage, title=f"{method}: pairwise d_MSE")
            out_dir.mkdir(parents=True, exist_ok=True)
            written = save_figure(fig, out_dir, f"pairwise_{_safe(method)}")
            files += written
            index.append({"method": method, "kind": "pairwise", "caption": CAPTIONS["pairwise"],
                          "files": [p.name for p in written]})
    write_json(out_dir / FIGURE_INDEX, index)
    return files


def curves_figure(cells: list[CellRecord], panels: tuple[Panel, ...], forget_stage: str,
                  title: str = "") -> Figure:
    """Rows = ``panels``; columns = sweep values (lr / scheduler); a curve per path."""
    ordered = _sorted(cells, forget_stage)
    sweeps = list(dict.fromkeys(c.sweep_label for c in ordered))
    paths = list(dict.fromkeys(c.path for c in ordered))
    colors = {p: f"C{i % 10}" for i, p in enumerate(paths)}
    fig = Figure(figsize=(5.2 * len(sweeps), 3.0 * len(panels) + 1.0), layout="constrained")
    axes = fig.subplots(len(panels), len(sweeps), squeeze=False, sharex=True)
    for i, panel in enumerate(panels):
        for j, sweep in enumerate(sweeps):
            ax = axes[i][j]
            values = []
            for path in paths:
                group = [c for c in cells if c.path == path and c.sweep_label == sweep]
                values += _draw(ax, group, panel, colors[path], path, forget_stage)
            _fit_ylim(ax, values)
            ax.set_title(panel.label + (f" — {sweep}" if sweep else ""), fontsize=10)
            ax.set_ylabel(panel.ylabel, fontsize=9)
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if i == len(panels) - 1:
                ax.set_xlabel("unlearning step")
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=1 if len(sweeps) == 1 else 2,
                   fontsize=9, frameon=False)
    seeds = len({c.seed for c in cells})
    note = f"mean of {seeds} seeds, 95% band" if seeds > 1 else "1 seed: no band"
    fig.suptitle(f"{title} ({note})" if title else note, fontsize=11)
    return fig


def pairwise_figure(series: list[dict], cells: list[CellRecord], forget_stage: str,
                    title: str = "") -> Figure:
    """Rows = sweep values; left: d_MSE vs step, a curve per pair of paths (``series`` from
    :func:`pathunlearn.report.pairwise.build_pairwise`); right, when the cells measured it:
    d_MSE of each path to its retrain model. The two share the y-axis (the same distance);
    log scale when every value of the row is positive."""
    sweeps = list(dict.fromkeys(s["sweep"] for s in series))
    ordered = _sorted(cells, forget_stage)
    paths = list(dict.fromkeys(c.path for c in ordered))
    retrain = Panel(M.RE_RETRAIN_MSE, "d_MSE to the retrain model, per path")
    beside = any(c.series(retrain.metric)[0] for c in cells)
    fig = Figure(figsize=(5.6 * (1 + beside), 3.6 * len(sweeps) + 1.4), layout="constrained")
    axes = fig.subplots(len(sweeps), 1 + beside, squeeze=False, sharex=True, sharey="row")
    for i, sweep in enumerate(sweeps):
        mine = [s for s in series if s["sweep"] == sweep]
        pairs = list(dict.fromkeys((s["path_a"], s["path_b"]) for s in mine))
        values = []
        pair_colors = colormaps["Dark2"].colors  # not the C0-C3 of the paths beside
        for k, pair in enumerate(pairs):
            group = [s for s in mine if (s["path_a"], s["path_b"]) == pair]
            values += _draw_seeds(axes[i][0], [(s["steps"], s["values"]) for s in group],
                                  pair_colors[k % len(pair_colors)], pair_label(group[0], mine))
        if beside:
            for j, path in enumerate(paths):
                group = [c for c in ordered if c.path == path and c.sweep_label == sweep]
                values += _draw(axes[i][1], group, retrain, f"C{j % 10}", path, forget_stage)
        log = bool(values) and min(values) > 0
        titles = ["d_MSE between the unlearned models of two paths", retrain.label]
        for j, ax in enumerate(axes[i]):
            if log:
                ax.set_yscale("log")
                ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                # minor ticks labelled only within one decade (else their labels overlap)
                ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}") if
                                             max(values) < 10 * min(values) else NullFormatter())
            _fit_ylim(ax, values, log)
            ax.set_title(titles[j] + (f" — {sweep}" if sweep else ""), fontsize=10)
            ax.set_ylabel("d_MSE" + (" (log scale)" if log else ""), fontsize=9)
            ax.grid(alpha=0.3, which="both" if log else "major")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if i == len(sweeps) - 1:
                ax.set_xlabel("unlearning step")
                ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), fontsize=9,
                          ncol=2 if j == 0 else 1, frameon=False)
    seeds = len({s["seed"] for s in series})
    note = f"mean of {seeds} seeds, 95% band" if seeds > 1 else "1 seed: no band"
    fig.suptitle(f"{title} ({note})" if title else note, fontsize=11)
    return fig


def main_series(results: Results) -> list[dict]:
    """The numbers of the report's first-screen figure (the paper's Figure 1): per method (and
    swept value), the first label probe's ``/all_mean`` at every eval step, per path (in the
    figures' order and colours) the mean over seeds and its 95% half-width, and each seed's
    value (None where a path has no value at a step). Diverged cells are left out."""
    label = next((p for p in results.run.probes if p.kind == "forget_label"), None)
    if label is None:
        return []
    metric, stage = M.key(label.name, M.ALL_MEAN), results.table.forget_stage
    cells = _sorted([c for c in results.cells if c.diverged_at is None], stage)
    out = []
    for method, sweep in dict.fromkeys((c.method, c.sweep_label) for c in cells):
        mine = [c for c in cells if c.method == method]
        paths = list(dict.fromkeys(c.path for c in mine))
        rows = []
        for i, path in enumerate(paths):
            group = [c for c in mine if c.path == path and c.sweep_label == sweep]
            series = [c.series(metric) for c in group]
            if group and any(steps for steps, _ in series):
                rows.append((i, path, series))
        if not rows:
            continue
        steps = sorted({s for _, _, series in rows for st, _ in series for s in st})
        out.append({"method": method, "sweep": sweep, "metric": metric, "steps": steps,
                    "paths": [_main_path(i, path, series, steps, stage)
                              for i, path, series in rows]})
    return out


def _main_path(i: int, path: tuple[str, ...], series: list, steps: list[int],
               stage: str) -> dict:
    """One path's curve of :func:`main_series`."""
    at, stats = mean_over_seeds(series)
    by_step = dict(zip(at, stats, strict=True))
    p = position(path, stage)
    return {"label": "-".join(path), "position": p, "last": p == len(path),
            "color": to_hex(f"C{i % 10}"),
            "mean": [by_step[s][0] if s in by_step else None for s in steps],
            "half": [by_step[s][1] if s in by_step else None for s in steps],
            "seeds": [[dict(zip(st, v, strict=True)).get(s) for s in steps] for st, v in series]}


def _fit_ylim(ax, values: list[float], log: bool = False) -> None:
    """Keep the axis on the seeds' values: the band of 2-3 seeds can be many times wider."""
    if not values:
        return
    lo, hi = min(values), max(values)
    if log:
        ax.set_ylim(lo / 1.15, hi * 1.15)
        return
    pad = 0.08 * (hi - lo) or 0.05 * max(abs(hi), 1e-3)
    ax.set_ylim(lo - pad, hi + pad)


def _draw(ax, group: list[CellRecord], panel: Panel, color: str, path: tuple[str, ...],
          forget_stage: str) -> list[float]:
    """The curve of one path: ``panel``'s metric of each seed's cell (see :func:`_draw_seeds`)."""
    series = []
    for c in group:
        steps, values = c.series(panel.metric)
        if panel.delta and values:
            values = [v - values[0] for v in values] if steps[0] == 0 else []
        series.append((steps, values))
    p = position(path, forget_stage)
    last = p == len(path)
    return _draw_seeds(ax, series, color, f"p={p}{' (last)' if last else ''}: {'-'.join(path)}",
                       lw=2.4 if last else 1.6)


def _draw_seeds(ax, series: list[tuple[list[int], list[float]]], color: str, label: str,
                lw: float = 1.6) -> list[float]:
    """Each seed's (steps, values) thin, the mean over seeds thick, the 95% band where n >= 2;
    returns the seeds' values drawn."""
    drawn = []
    for steps, values in series:
        if len(series) > 1 and values:
            ax.plot(steps, values, color=color, lw=0.7, alpha=0.45)
        drawn += values
    steps, stats = mean_over_seeds(series)
    if not steps:
        return drawn
    ax.plot(steps, [m for m, _ in stats], color=color, lw=lw, marker="o", ms=2.5, label=label)
    banded = [(s, m, h) for s, (m, h) in zip(steps, stats, strict=True) if h is not None]
    if banded:
        ax.fill_between([s for s, _, _ in banded], [m - h for _, m, h in banded],
                        [m + h for _, m, h in banded], color=color, alpha=0.12, lw=0)
    return drawn


def _sorted(cells: list[CellRecord], forget_stage: str) -> list[CellRecord]:
    return sorted(cells, key=lambda c: (c.method, c.lr or 0.0, c.sweep_label,
                                        position(c.path, forget_stage), c.path_label))


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)
