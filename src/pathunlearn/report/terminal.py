"""What a run prints on the terminal: the plan (the trie of prefixes, what is trained) and the
results (the table, its notes, the verdicts), beside the other renderers of the report
(``results.md`` in :mod:`pathunlearn.report.results`, ``report.html`` in
:mod:`pathunlearn.report.html`). ``pathunlearn`` commands call these with their console."""

from __future__ import annotations

from rich.console import Console


def print_plan(plan, cfg, console: Console) -> None:
    """The trie of prefixes per training seed, with what is already trained, and the cells."""
    from rich.markup import escape
    from rich.tree import Tree

    from pathunlearn.files import is_done
    from pathunlearn.rundir import unit_dir

    base = "tiny preset (pretrained on builtin:general)" if cfg.model.preset == "tiny" else (
        cfg.model.preset or cfg.model.path)
    retrain = set(plan.retrain_paths) - set(plan.paths)
    for tseed in dict.fromkeys(p.seed for p in plan.prefixes):
        tree = Tree(f"[bold]training seed {tseed}[/]: {escape(base)}")
        nodes = {None: tree}
        for p in (p for p in plan.prefixes if p.seed == tseed):
            done = " [green](done)[/]" if is_done(unit_dir(cfg.run_dir, p)) else ""
            note = " [cyan](retrain baseline)[/]" if p.stages in retrain else ""
            nodes[p.key] = nodes[p.parent_key].add(f"{p.stage} [dim]{p.key}[/]{note}{done}")
        console.print(tree)
    extra = f" + {len(retrain)} retrain baseline(s)" if retrain else ""
    controls = sum(1 for c in plan.cells if c.control)
    console.print(f"{len(plan.paths)} paths x {len(plan.seeds)} seeds{extra}: "
                  f"{len(plan.prefixes)} stage-trainings ({plan.naive_count} without sharing); "
                  f"{len(plan.cells) - controls} unlearning cells")
    if plan.matched:
        done = sum(is_done(unit_dir(cfg.run_dir, m)) for m in plan.matched)
        console.print(f"matched-start control: {len(plan.matched)} model(s) ({done} done), the "
                      f"last stage of {', '.join(sorted({'-'.join(m.path) for m in plan.matched}))}"
                      f" again, stopped at the other paths' starting level; {controls} control "
                      "cells")


def print_results(results, console: Console, details: bool = False,
                  width: int | None = None) -> None:
    """What the end of a run prints: the summary (:func:`summary_lines`: one verdict line per
    method, a table that fits the terminal) or, with ``details``, the superficial-forgetting
    verdicts, the whole table, its notes and the verdicts in full."""
    if not details:
        if results.superficial is not None:
            from pathunlearn.report.superficial import verdict_lines

            console.rule("superficial vs deep forgetting")
            for line in verdict_lines(results.superficial):
                console.print(line, highlight=False, markup=False, soft_wrap=True)
        for line in summary_lines(results, width or console.width):
            console.print(line, highlight=False, markup=False, soft_wrap=True)
        return
    print_details(results, console)


def print_details(results, console: Console) -> None:
    """The superficial-forgetting verdicts (``study: superficial``), then the table, its notes
    and the recency verdict in full (``--details``)."""
    from rich.markup import escape

    from pathunlearn.report.tables import format_table

    if results.superficial is not None:
        from pathunlearn.report.superficial import RULE, verdict_lines

        console.rule("superficial vs deep forgetting")
        console.print(f"[dim]{escape(RULE)}[/]", highlight=False, soft_wrap=True)
        for line in verdict_lines(results.superficial):
            console.print(escape(line), highlight=False, soft_wrap=True)
    console.print(format_table(results.table))
    for line in results.notes():
        console.print(f"[dim]{escape(line)}[/]", highlight=False, soft_wrap=True)
    for kind, title in (("recency", "recency verdict"),
                        ("pairwise", "distance between paths under unlearning")):
        console.rule(title)
        for v in (v for v in results.verdicts if v.kind == kind):
            console.print(escape(v.text), highlight=False, soft_wrap=True)
    if results.matched is not None:
        from pathunlearn.report.controls import model_lines

        console.rule("recency verdict with the matched-start control")
        for line in [*model_lines(results.matched),
                     *(v.text for v in results.matched.verdicts)]:
            console.print(escape(line), highlight=False, soft_wrap=True)
    console.rule()


# ---------------------------------------------------------------------------- the summary

SUMMARY_COLUMNS = (
    ("forget_score", "forget"), ("forget_quality", "FQ"), ("model_utility", "MU"),
    ("math_utility", "math"), ("re_distance_to_retrain", "RE"), ("forget_score_ood", "ood"),
    ("privleak", "leak"))
"""The summary table's score columns, most wanted first: a narrow terminal drops them from
the end (results.md and the report have every column)."""


def summary_lines(results, width: int = 80) -> list[str]:
    """The result in lines of at most ``width`` characters (numbers never split): per method
    one recency verdict line, the control's, then a table of method x path with the columns
    of :data:`SUMMARY_COLUMNS` that fit, the paths' orders listed once as p1..pN, and where
    the rest is."""
    from pathunlearn.report.model import observed_count

    width = max(width, 60)
    table = results.table
    lines = [_fit("recency verdict (p = the forget stage's position; forget = the drop of "
                  "the forget metric, mean ± 95% half-width over seeds):", width, wrap=True)]
    recency = [v for v in results.verdicts if v.kind == "recency"]
    lines += [_fit(verdict_line(v), width, wrap=True, indent=4) for v in recency]
    overall = [observed_count(recency)]
    if results.matched is not None:
        lines.append("recency verdict with the matched-start control:")
        lines += [_fit(verdict_line(v), width, wrap=True, indent=4)
                  for v in results.matched.verdicts]
        overall.append(f"with the matched-start control {observed_count(results.matched.verdicts)}")
    lines.append(_fit("in short: recency effect observed for " + "; ".join(overall), width,
                      wrap=True))
    lines.append("")
    lines += summary_table(table, width)
    lines += dependence_table(results.dependence, width)
    lines.append(_fit("details: pathunlearn report RUN --details; every column and note: "
                      "results.md, report.html", width, wrap=True))
    return lines


def verdict_line(v) -> str:
    """One recency verdict in one line: observed or not, the forget-last path's score against
    the closest other path's, and whether the forget-last path forgot at all."""
    name = v.method + (f" ({v.sweep})" if v.sweep else "")
    if v.observed is None:
        return f"  {name}: no verdict ({'no forget-last path scored' if not v.forget_last_paths else 'fewer than two paths scored'})"
    by = {e.path_label: e for e in v.ranking}
    last = by[v.forget_last_paths[-1]]
    other = by[v.compared_with]
    n = min(e.n for e in v.ranking)
    text = (f"  {name}: recency effect {'observed' if v.observed else 'NOT observed'}: "
            f"p{last.position} {_pm(last.mean, last.ci95)} vs p{other.position} "
            f"{_pm(other.mean, other.ci95)} ({n} seed{'s' if n != 1 else ''})")
    if v.forget_last_forgot is False:
        text += f"; p{last.position} did not forget"
    return text


def summary_table(table, width: int) -> list[str]:
    """Method x path rows with the score columns that fit ``width``; paths as p1..pN (their
    orders below) when positions tell them apart."""
    keys = [(k, h) for k, h in SUMMARY_COLUMNS
            if any(s.key == k for s in table.scores) and table.measured.get(k, True)
            and any(r.mean(k) is not None for r in table.rows)]
    positions = {r.position for r in table.rows}
    by_position = len(positions) == len({(r.position, r.path_label) for r in table.rows})
    rows = [[r.method + (f" {r.sweep}" if r.sweep else ""),
             f"p{r.position}" if by_position else r.path_label,
             *(_cell(r, k) for k, _ in keys), str(r.n)] for r in table.rows]
    head = ["method", "path", *(h for _, h in keys), "n"]
    out, head, dropped = _columns(head, rows, width)  # the last score column first; "n" stays
    legend = dict(SUMMARY_COLUMNS)
    shown = [h for h in head[2:-1]]
    names = {h: k for k, h in legend.items()}
    out.append(_fit("columns: " + "; ".join(f"{h} = {_header(table, names[h])}" for h in shown)
                    + "; n = seeds", width, wrap=True))
    if by_position:
        out += [_fit(f"p{p}: {label}", width) for p, label in
                sorted({(r.position, r.path_label) for r in table.rows})]
    if dropped:
        out.append(_fit(f"not shown at {width} columns: {', '.join(reversed(dropped))}", width))
    return out


def dependence_table(entries, width: int) -> list[str]:
    """The methods ranked by path dependence (:mod:`pathunlearn.report.dependence`) in
    ``width`` columns: score columns dropped from the right until it fits, the verdict kept;
    nothing with fewer than two methods."""
    from pathunlearn.report.dependence import dependence_rows

    if len(entries) < 2:
        return []
    head = ["#", "method", "local", "spread", "path p", "FQ orders", "growth", "recency",
            "dependent"]
    rows = [[x.replace(" ± ", "±") for x in r] for r in dependence_rows(entries)]
    empty = [i for i in range(3, len(head) - 1) if all(r[i] == "n/a" for r in rows)]
    head = [h for i, h in enumerate(head) if i not in empty]
    rows = [[x for i, x in enumerate(r) if i not in empty] for r in rows]
    lines, _, dropped = _columns(head, rows, width)  # the verdict column stays
    out = ["", "which methods are path-dependent here (ranked by forget spread):", *lines]
    out.append(_fit("spread = highest minus lowest forget score across paths (per seed, mean "
                    "± 95% half-width); path p = one-way ANOVA by path; FQ orders = log10 "
                    "range of forget quality; growth = d_MSE last minus first step; "
                    "dependent = path p < 0.05", width, wrap=True))
    if dropped:
        out.append(_fit(f"not shown at {width} columns: {', '.join(reversed(dropped))}", width))
    return out + [""]


def _columns(head: list[str], rows: list[list[str]], width: int
             ) -> tuple[list[str], list[str], list[str]]:
    """``head`` and ``rows`` as aligned lines (the first two columns left-aligned, the rest
    right-aligned, two spaces apart) within ``width``: the next-to-last column is dropped
    until they fit or four columns are left. Returns (lines, the head shown, the headers
    dropped, in the order dropped)."""
    head, dropped = list(head), []
    while True:
        widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=True)]
        if sum(widths) + 2 * (len(widths) - 1) <= width or len(head) <= 4:
            break
        dropped.append(head.pop(-2))
        rows = [r[:-2] + r[-1:] for r in rows]
    lines = ["  ".join(x.rjust(w) if i > 1 else x.ljust(w) for i, (x, w) in
                       enumerate(zip(line, widths, strict=True))).rstrip()
             for line in [head, *rows]]
    return lines, head, dropped


def _header(table, key: str) -> str:
    return next(s.header for s in table.scores if s.key == key)


def _cell(row, key: str) -> str:
    stat = row.stats[key]
    if stat.mean is None:
        return "n/a" if row.n else "diverged"
    if key == "forget_quality":
        return f"{stat.mean:.1e}"
    return _pm(stat.mean, stat.ci95)


def _pm(mean: float, half: float | None) -> str:
    return f"{mean:.2f}" + ("" if half is None else f"±{half:.2f}")


def _fit(text: str, width: int, wrap: bool = False, indent: int = 2) -> str:
    """``text`` within ``width`` characters: cut at a word with an ellipsis, or with ``wrap``
    broken at spaces onto lines indented by ``indent`` (a number is never split)."""
    if len(text) <= width:
        return text
    if not wrap:
        cut = text[: width - 1].rsplit(" ", 1)[0]
        return cut + "…"
    lead = len(text) - len(text.lstrip(" "))
    words, lines, line = text.split(" ")[lead:], [], " " * lead
    for w in words:
        if line.strip() and len(line) + 1 + len(w) > width:
            lines.append(line)
            line = " " * indent + w
        else:
            line = f"{line} {w}" if line.strip() else line + w
    return "\n".join([*lines, line])


def methods_lines(rows: list[dict], width: int = 80) -> list[str]:
    """``pathunlearn methods`` in ``width`` columns: per method its name and locality, then
    what it is, its settings and what a cell caches for it, wrapped at spaces."""
    width = max(width, 40)
    out = []
    for r in rows:
        settings = " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                            for k, v in r["settings"].items()) or "-"
        out.append(f"{r['name']}  ({'local' if r['local'] else 'weakly local'})")
        out += [_fit(f"    {text}", width, wrap=True, indent=6) for text in (
            r["about"], f"settings: {settings}",
            f"caches: {', '.join(r['caches']) or 'nothing'}")]
    return out

