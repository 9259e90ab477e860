"""Pairwise retrain-equivalence distances between the unlearned models of different paths.

Issue 5, item 3. At every eval point a cell stores ``re_tokens``: the log-probability its model
gives each reference token of the fixed held-out set (P positions, the same for every cell of a
run; see :mod:`pathunlearn.eval.divergence`). For every (method, swept lr/scheduler, seed) and
every pair of paths (A, B), at every eval step t both cells reached,

    d_MSE(A_t, B_t) = (1/P) sum_p (log A_t(y_p) - log B_t(y_p))^2,

the paper's Definition 2.1 with the per-token log-probability as the prediction. Theorem 3.1
proves, for the linear model, that the distance between two orders grows geometrically with the
unlearning steps; these numbers say whether it does here.

Aggregates are per (method, sweep, pair, step) over seeds: the mean and the 95% CI half-width of
:func:`pathunlearn.report.stats.mean_ci`. Diverged cells are left out, as in the table. A cell
without ``re_tokens`` (runs from before they were stored) or whose ``re_tokens`` have another
length than the run's is skipped with a note; the rest of the report is unaffected.

The verdict, per method (and sweep value): the mean over pairs and seeds of d_MSE at the first
and the last eval step common to every (pair, seed) series; "grew" when the last is larger.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field, replace

from pathunlearn import metrics as M
from pathunlearn.plan import position
from pathunlearn.report.model import GrowthVerdict
from pathunlearn.report.stats import mean_ci
from pathunlearn.rundir import CellRecord

DISTANCE = ("d_MSE(A_t, B_t) = mean over the P reference tokens of a fixed held-out probe set "
            "(used in no stage's training) of (log p_A(y) - log p_B(y))^2, with log p(y) the "
            "per-token log-probability each unlearned model gives the reference token after "
            "t unlearning steps: the paper's Definition 2.1 with per-token log-probabilities as "
            "the predictions")
THEOREM = ("The paper's Theorem 3.1 proves, for the linear model, that the distance between "
           "the unlearned models of two training orders grows (geometrically) with the "
           "unlearning steps; the verdict says whether it grew here")


@dataclass
class PairwiseTable:
    """d_MSE between the cells of different paths: per seed and aggregated over seeds."""

    forget_stage: str
    series: list[dict]
    """One per (method, sweep, seed, pair): method, sweep, lr, scheduler, seed, path_a, path_b,
    p_a, p_b, steps (the eval steps both cells reached with re_tokens), values (d_MSE)."""
    rows: list[dict]
    """One per (method, sweep, pair, step): the identity as in ``series``, step, mean, ci (95%
    half-width, null with 1 seed), n, seeds."""
    skipped: list[dict] = field(default_factory=list)
    """One per cell left out: method, sweep, note (which cell, why)."""
    verdicts: list[GrowthVerdict] = field(default_factory=list)
    """One per (method, sweep) with finished cells, in table order."""

    def methods(self) -> list[tuple[str, str]]:
        """(method, sweep) groups that have distances, in table order."""
        return list(dict.fromkeys((r["method"], r["sweep"]) for r in self.rows))

    def to_json(self) -> dict[str, list[dict]]:
        """Method -> its aggregated rows (every sweep value, pair and step)."""
        out: dict[str, list[dict]] = {}
        for r in self.rows:
            out.setdefault(r["method"], []).append(r)
        return out

    def notes(self) -> list[str]:
        lines = [DISTANCE + ".", THEOREM + ".",
                 "Values are means over seeds ± the half-width of a 95% t-interval; growth = d "
                 "at the last step / d at the first; diverged cells are left out."]
        first = [r for r in self.rows if r["step"] == 0 and r["n"] > 1]
        if first and all(r["ci"] == 0 for r in first):
            lines.append("At step 0 every seed has the same distance (± 0): the seeds start "
                         "from the same path models and differ only in the unlearning.")
        return lines + [s["note"] for s in self.skipped]

    def markdown(self) -> list[str]:
        """The section of results.md: verdicts, a compact table per method, notes."""
        lines = ["## Pairwise distance between paths", ""]
        lines += [f"- {v.text}" for v in self.verdicts]
        for method, sweep in self.methods():
            summary = pair_summary(self, method, sweep)
            head = ["pair", *summary_headers(summary), "growth", "seeds"]
            lines += ["", f"### {method}" + (f" ({sweep})" if sweep else ""), "",
                      "| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
            lines += ["| " + " | ".join(c.replace("|", "\\|") for c in summary_cells(s, summary))
                      + " |" for s in summary]
        return lines + ["", "Notes:", ""] + [f"- {n}" for n in self.notes()]


def build_pairwise(cells: list[CellRecord], forget_stage: str) -> PairwiseTable:
    """d_MSE between every pair of paths at every common eval step (module docstring)."""
    import torch  # only when a report needs it

    from pathunlearn.eval.divergence import mse_distance

    ok = [c for c in cells if c.diverged_at is None]
    tokens, skipped = _usable_tokens(ok)
    # float64: the stored values have 5 decimals; float32 would add noise at the 1e-7 level
    tokens = {d: {step: torch.tensor(t, dtype=torch.float64) for step, t in steps.items()}
              for d, steps in tokens.items()}
    groups: dict[tuple, list[CellRecord]] = {}
    for c in sorted(ok, key=lambda c: (c.method, c.lr or 0.0, c.sweep_label, c.seed,
                                       position(c.path, forget_stage), c.path_label)):
        if c.directory in tokens:
            groups.setdefault((c.method, c.sweep_label, c.seed), []).append(c)
    series = []
    for (method, sweep, seed), members in groups.items():
        for a, b in itertools.combinations(members, 2):
            ta, tb = tokens[a.directory], tokens[b.directory]
            steps = sorted(set(ta) & set(tb))
            series.append({
                "method": method, "sweep": sweep, "lr": a.lr, "scheduler": a.scheduler,
                "seed": seed, "path_a": a.path_label, "path_b": b.path_label,
                "p_a": position(a.path, forget_stage), "p_b": position(b.path, forget_stage),
                "steps": steps, "values": [mse_distance(ta[s], tb[s]) for s in steps]})
    series.sort(key=lambda s: (s["method"], s["lr"] or 0.0, s["sweep"], s["p_a"], s["p_b"],
                               s["path_a"], s["path_b"], s["seed"]))
    table = PairwiseTable(forget_stage, series, _aggregate(series), skipped)
    groups_of_cells = {(c.method, c.sweep_label): c for c in
                       sorted(ok, key=lambda c: (c.method, c.lr or 0.0, c.sweep_label))}
    table.verdicts = [growth_verdict(table, method, sweep, lr=c.lr, scheduler=c.scheduler)
                      for (method, sweep), c in groups_of_cells.items()]
    return table


def _usable_tokens(cells: list[CellRecord]) -> tuple[dict, list[dict]]:
    """Cell directory -> {step: re_tokens} for cells whose every re_tokens has the run's length
    (the most common one), and a note per cell left out."""
    per_cell = {c.directory: {r[M.STEP]: r[M.RE_TOKENS] for r in c.rows
                              if isinstance(r.get(M.RE_TOKENS), list) and r[M.RE_TOKENS]}
                for c in cells}
    lengths = Counter(len(t) for steps in per_cell.values() for t in steps.values())
    expected = lengths.most_common(1)[0][0] if lengths else None
    usable, skipped = {}, []
    for c in cells:
        name = f"{c.method} {c.sweep_label} {c.path_label} seed {c.seed}".replace("  ", " ")
        steps = per_cell[c.directory]
        odd = sorted({len(t) for t in steps.values()} - {expected})
        if not steps:
            why = "no re_tokens in its metrics.jsonl (a run from before they were stored)"
        elif odd:
            why = (f"re_tokens of length {', '.join(map(str, odd))}, not the run's {expected} "
                   "positions")
        else:
            usable[c.directory] = steps
            continue
        skipped.append({"method": c.method, "sweep": c.sweep_label,
                        "note": f"{name}: {why}; left out of the pairwise distances."})
    return usable, skipped


def _aggregate(series: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for s in series:
        groups.setdefault((s["method"], s["sweep"], s["path_a"], s["path_b"]), []).append(s)
    rows = []
    for members in groups.values():
        by_step: dict[int, list[tuple[int, float]]] = {}
        for s in members:
            for step, v in zip(s["steps"], s["values"], strict=True):
                by_step.setdefault(step, []).append((s["seed"], v))
        ident = {k: members[0][k] for k in ("method", "sweep", "lr", "scheduler", "path_a",
                                            "path_b", "p_a", "p_b")}
        for step in sorted(by_step):
            mean, half = mean_ci([v for _, v in by_step[step]])
            rows.append({**ident, "step": step, "mean": mean, "ci": half,
                         "n": len(by_step[step]), "seeds": [seed for seed, _ in by_step[step]]})
    return rows


# ---------------------------------------------------------------------------- summary


def pair_label(row: dict, rows: list[dict]) -> str:
    """"p1 vs p4", or the two paths when positions do not tell the paths apart."""
    paths_at = {p for r in rows for p in [(r["p_a"], r["path_a"]), (r["p_b"], r["path_b"])]}
    unique = len({p for p, _ in paths_at}) == len(paths_at)
    return (f"p{row['p_a']} vs p{row['p_b']}" if unique
            else f"{row['path_a']} vs {row['path_b']}")


def pair_summary(table: PairwiseTable, method: str, sweep: str) -> list[dict]:
    """Per pair of one (method, sweep): d at the first and at the last step that every seed of
    the pair reached, and the growth factor last / first (null when d was 0 at first)."""
    rows = [r for r in table.rows if r["method"] == method and r["sweep"] == sweep]
    pairs: dict[tuple, list[dict]] = {}
    for r in rows:
        pairs.setdefault((r["path_a"], r["path_b"]), []).append(r)
    out = []
    for members in pairs.values():
        full = [r for r in members if r["n"] == max(m["n"] for m in members)]
        first, last = full[0], full[-1]
        growth = last["mean"] / first["mean"] if first["mean"] > 0 else None
        out.append({"pair": pair_label(first, rows), "path_a": first["path_a"],
                    "path_b": first["path_b"], "first": first, "last": last, "growth": growth,
                    "n": last["n"]})
    return out


def summary_headers(summary: list[dict]) -> list[str]:
    """The two distance columns, naming the step when every pair shares it."""
    heads = []
    for key in ("first", "last"):
        steps = {s[key]["step"] for s in summary}
        heads.append(f"d at step {steps.pop()}" if len(steps) == 1 else f"d ({key} step)")
    return heads


def summary_cells(s: dict, summary: list[dict]) -> list[str]:
    """A row of the compact table: pair, d first, d last, growth, seeds; a distance names its
    step only when the header cannot (the pairs of ``summary`` end at different steps)."""

    def d(key: str) -> str:
        r = s[key]
        text = fmt(r["mean"]) + ("" if r["ci"] is None else f" ± {r['ci']:.2g}")
        same = len({x[key]["step"] for x in summary}) == 1
        return text if same else f"{text} (step {r['step']})"

    growth = "n/a (0 at first step)" if s["growth"] is None else f"×{s['growth']:.2f}"
    return [s["pair"], d("first"), d("last"), growth, str(s["n"])]


def fmt(x: float) -> str:
    """4 significant digits: the distances range from ~1e-4 (synthetic) to tens."""
    return f"{x:.4g}"


# ---------------------------------------------------------------------------- the verdict


def growth_verdict(table: PairwiseTable, method: str, sweep: str, *, lr: float | None = None,
                   scheduler: str | None = None) -> GrowthVerdict:
    """Whether the mean over pairs and seeds of d_MSE grew from the first to the last eval step
    common to every (pair, seed) series of this method (and sweep value)."""
    series = [s for s in table.series if s["method"] == method and s["sweep"] == sweep]
    skipped = sum(1 for s in table.skipped if s["method"] == method and s["sweep"] == sweep)
    name = method + (f" ({sweep})" if sweep else "")
    base = GrowthVerdict(method=method, sweep=sweep, lr=lr, scheduler=scheduler,
                         pairs=len({(s["path_a"], s["path_b"]) for s in series}),
                         seeds=sorted({s["seed"] for s in series}), series=len(series),
                         skipped_cells=skipped)
    left_out = (f" ({_n(skipped, 'cell')} without usable re_tokens left out; see the "
                "notes)") if skipped else ""
    common = sorted(set.intersection(*(set(s["steps"]) for s in series))) if series else []
    if len(common) < 2:
        why = ("no two paths have cells with usable re_tokens" if not series else
               "fewer than two eval steps are common to every pair of paths")
        return replace(base, text=f"{name}: no pairwise distance verdict: {why}{left_out}.")
    t0, t1 = common[0], common[-1]
    at = [dict(zip(s["steps"], s["values"], strict=True)) for s in series]
    x = sum(a[t0] for a in at) / len(at)
    y = sum(a[t1] for a in at) / len(at)
    grew = sum(1 for a in at if a[t1] > a[t0])
    over = f"mean over {_n(base.pairs, 'pair')} and {_n(len(base.seeds), 'seed')}"
    factor = f", ×{y / x:.2f}" if x > 0 else ""
    if y > x:
        text = f"{name}: pairwise distance between paths grew from {fmt(x)} (step {t0}) to " \
               f"{fmt(y)} (step {t1}){factor}, {over}"
    else:
        text = f"{name}: pairwise distance between paths did not grow: {fmt(x)} at step {t0}, " \
               f"{fmt(y)} at step {t1}{factor}, {over}"
    return replace(base, observed=y > x, first_step=t0, last_step=t1, first=x, last=y,
                   growth=y / x if x > 0 else None, series_grew=grew,
                   text=text + f"; it grew in {grew} of {len(series)} (pair, seed) series"
                   + left_out + ".")


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"
