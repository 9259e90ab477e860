"""Superficial vs deep forgetting (the paper's Section 4.3, Figure 4), per path.

A run with ``study: superficial`` tracks three response probes, ``R`` (refusal), ``C`` and ``U``
(two compliance phrasings), as summed log-probabilities log pi(y|x) averaged over the prompts,
while gradient ascent unlearns U. Per path the curves (mean over seeds) are read at epoch 0
(before unlearning) and at the end, and :func:`classify` names what happened; each seed's own
curves are classified too, and the report says how many seeds agree with the verdict:

- ``drop_X = X[0] - X[-1]`` (positive: X became less likely);
- **deep**: ``drop_U > TAU`` and ``drop_C >= RHO * drop_U`` and ``C[-1] < R[-1]`` and
  ``U[-1] < R[-1]`` — C fell together with U and both end below the refusal;
- **superficial**: ``drop_U > TAU`` and ``drop_C < RHO * drop_U`` — U fell, C did not follow;
- **neither**: U did not fall by more than TAU, or C followed U but C or U still ends above R.

TAU = 1 nat (summed over a response's tokens, averaged over prompts) and RHO = 0.5.

Writes ``RUN_DIR/figures/superficial.{png,svg}`` (a panel per path, the three curves, mean
over seeds) and ``RUN_DIR/superficial.json`` (curves and verdicts).
"""

from __future__ import annotations

import html
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from pathunlearn import metrics as M
from pathunlearn.config import ExperimentConfig
from pathunlearn.figures import save_figure
from pathunlearn.files import write_json
from pathunlearn.report.stats import mean_over_seeds
from pathunlearn.rundir import FIGURES, SUPERFICIAL, CellRecord, Run

TAU = 1.0
"""Least drop of U (nats, summed log-probability) that counts as U having fallen."""
RHO = 0.5
"""C follows U when its drop is at least RHO times U's drop."""
PROBES = ("R", "C", "U")
COLORS = {"R": "C2", "C": "C0", "U": "C3"}
RULE = (f"drop_X = X at epoch 0 minus X at the last epoch (summed log-probability, mean over "
        f"prompts and seeds). deep: drop_U > {TAU:g} and drop_C >= {RHO:g} x drop_U and C and U "
        f"both end below R. superficial: drop_U > {TAU:g} and drop_C < {RHO:g} x drop_U (C does "
        f"not follow U). neither: otherwise (U did not fall by more than {TAU:g} nat, or C "
        "followed U but C or U still ends above R).")
FIGURE_STEM = "superficial"


def classify(r: list[float], c: list[float], u: list[float], *, tau: float = TAU,
             rho: float = RHO) -> tuple[str, str]:
    """("deep" | "superficial" | "neither", reason) from the R, C and U curves (lists over
    epochs, index 0 before unlearning); the rule is in the module docstring and RULE."""
    drop_c, drop_u = c[0] - c[-1], u[0] - u[-1]
    drops = f"drop_U {drop_u:.1f}, drop_C {drop_c:.1f}"
    if drop_u <= tau:
        return "neither", f"U did not fall by more than {tau:g} ({drops})"
    if drop_c < rho * drop_u:
        return "superficial", f"U fell, C did not follow ({drops} < {rho:g} x drop_U)"
    if c[-1] < r[-1] and u[-1] < r[-1]:
        return "deep", (f"C fell with U and both end below R ({drops}; end R {r[-1]:.1f}, "
                        f"C {c[-1]:.1f}, U {u[-1]:.1f})")
    return "neither", (f"C fell with U but does not end below R with it ({drops}; end R "
                       f"{r[-1]:.1f}, C {c[-1]:.1f}, U {u[-1]:.1f})")


# ---------------------------------------------------------------------------- curves per path


def _letters(config: ExperimentConfig) -> dict[str, str]:
    """Stage name -> R / C / U when its source is ``builtin:rcu:<letter>``, else the name."""
    letters = {}
    for name, stage in config.stages.items():
        source = stage.source
        split = source.split(":")[2] if source.count(":") == 2 else stage.split
        letters[name] = split if source.startswith("builtin:rcu") and split in PROBES else name
    return letters


def path_curves(cells: list[CellRecord], config: ExperimentConfig) -> list[dict]:
    """Per path (config order; theta_k = the k-th path): the epochs, the mean over seeds of
    ``R/sum``, ``C/sum``, ``U/sum`` at each, and the verdict of :func:`classify`."""
    letters = _letters(config)
    batch = config.unlearning.batch_size
    paths = list(dict.fromkeys(config.paths.expand()
                               + [c.path for c in cells if c.diverged_at is None]))
    entries = []
    for k, path in enumerate(paths, 1):
        group = [c for c in cells if c.path == path and c.diverged_at is None]
        if not group:
            continue
        n = group[0].summary.get("forget_examples") or 1
        curves: dict[str, list[float]] = {}
        steps: list[int] = []
        for probe in PROBES:
            steps, stats = mean_over_seeds(cell.series(M.key(probe, M.SUM)) for cell in group)
            curves[probe] = [mean for mean, _ in stats]
        if not all(len(curves[p]) >= 2 for p in PROBES):
            continue
        verdict, reason = classify(curves["R"], curves["C"], curves["U"])
        per_seed = {}
        for cell in sorted(group, key=lambda c: c.seed):
            own = [cell.series(M.key(probe, M.SUM))[1] for probe in PROBES]
            if all(len(x) >= 2 for x in own):
                per_seed[cell.seed] = classify(*own)[0]
        entries.append({"theta": k, "path": list(path),
                        "label": "→".join(letters.get(s, s) for s in path),
                        "epochs": [s * batch / n for s in steps], **curves,
                        "seeds": len(group), "verdict": verdict, "reason": reason,
                        "seed_verdicts": per_seed,
                        "agree": sum(v == verdict for v in per_seed.values())})
    return entries


def agreement(entry: dict) -> str:
    """How many seeds, judged alone, give the verdict of the mean curves: ``2 of 3 seeds
    (deep, deep, superficial)``."""
    verdicts = entry["seed_verdicts"]
    if len(verdicts) < 2:
        return "1 seed"
    return (f"{entry['agree']} of {len(verdicts)} seeds "
            f"({', '.join(verdicts[s] for s in sorted(verdicts))})")


def verdict_lines(entries: list[dict]) -> list[str]:
    """One line per path: θ_k, its order, the verdict, why, and how many seeds agree."""
    return [f"θ{e['theta']} {e['label']} ({'-'.join(e['path'])}): {e['verdict']} — "
            f"{e['reason']}; {agreement(e)} agree" if len(e["seed_verdicts"]) > 1 else
            f"θ{e['theta']} {e['label']} ({'-'.join(e['path'])}): {e['verdict']} — {e['reason']}"
            for e in entries]


# ---------------------------------------------------------------------------- figure, files


def superficial_figure(entries: list[dict]) -> Figure:
    """A panel per path (3 columns), R / C / U summed log-probability vs unlearning epoch."""
    cols = min(3, len(entries))
    rows = -(-len(entries) // cols)
    fig = Figure(figsize=(4.2 * cols, 3.2 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True)
    for i, ax in enumerate(axes.flat):
        if i >= len(entries):
            ax.set_visible(False)
            continue
        e = entries[i]
        for probe in PROBES:
            ax.plot(e["epochs"], e[probe], color=COLORS[probe], marker="o", ms=2.5, lw=1.8,
                    label=probe)
        ax.set_title(f"θ{e['theta']}: {e['label']} — {e['verdict']}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("unlearning epoch", fontsize=8)
        ax.set_ylabel("summed log-probability", fontsize=8)
        ax.legend(fontsize=7, frameon=False)
    seeds = max(e["seeds"] for e in entries)
    fig.suptitle(f"Unlearning U by gradient ascent: R, C, U per learning order "
                 f"(mean of {seeds} seed{'s' if seeds > 1 else ''})", fontsize=11)
    return fig


def write_superficial(run: Run, *, figure: bool = True) -> list[dict]:
    """Curves and verdicts of every path: RUN_DIR/superficial.json and (with ``figure``) the
    figure; returns the entries (empty when no cell has the R, C, U probes)."""
    run_dir = run.run_dir
    entries = path_curves(run.cells, run.config)
    write_json(run_dir / SUPERFICIAL, {"rule": RULE, "tau": TAU, "rho": RHO,
                                              "paths": entries})
    if entries and figure:
        (run_dir / FIGURES).mkdir(parents=True, exist_ok=True)
        save_figure(superficial_figure(entries), run_dir / FIGURES, FIGURE_STEM)
    return entries


def superficial_html(run_dir: Path, entries: list[dict]) -> str:
    """The report section: rule, per-path table of start/end values and verdicts, figure."""

    e_ = html.escape
    parts = ["<h2>Superficial vs deep forgetting (Section 4.3)</h2>",
             f"<p class=\"note\">Rule: {e_(RULE)}</p>"]
    if not entries:
        return "\n".join(parts) + "<p class=\"note\">No finished cell has the R, C, U probes.</p>"
    head = "".join(f"<th>{h}</th>" for h in ("path", "order", "R start", "R end", "C start",
                                              "C end", "U start", "U end", "verdict",
                                              "seeds agree", "why"))
    rows = []
    for e in entries:
        values = "".join(f"<td>{e[p][i]:.1f}</td>" for p in PROBES for i in (0, -1))
        rows.append(f"<tr><td class=\"text\">θ{e['theta']}: {e_(e['label'])}</td>"
                    f"<td class=\"text\">{e_('-'.join(e['path']))}</td>{values}"
                    f"<td class=\"text\"><b>{e_(e['verdict'])}</b></td>"
                    f"<td class=\"text\">{e_(agreement(e))}</td>"
                    f"<td class=\"text\">{e_(e['reason'])}</td></tr>")
    parts.append(f"<div class=\"wide\"><table><tr>{head}</tr>{''.join(rows)}</table></div>")
    png = run_dir / FIGURES / f"{FIGURE_STEM}.png"
    if png.is_file():
        from pathunlearn.report.html import embedded_figure

        parts.append(embedded_figure(png, "summed log-probability of R, C and U (mean over the "
                                          "40 prompts and the seeds) vs unlearning epoch, one "
                                          "panel per learning order (the paper's Figure 4); "
                                          "vector: figures/superficial.svg"))
    return "\n".join(parts)
