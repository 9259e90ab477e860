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


def print_results(results, console: Console) -> None:
    """The superficial-forgetting verdicts (``study: superficial``), then the table, its notes
    and the recency verdict, as the end of a run prints them."""
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
