"""Tables, verdicts, figures and the HTML report of a loaded run (:func:`pathunlearn.rundir.load_run`).

``results`` scores the cells (``tables``: the table and the recency verdict; ``pairwise``: the
distances between paths) and writes results.{json,csv,md}; ``plots`` draws the figures;
``html`` puts everything into one self-contained report.html. :func:`make_report` does all of
it, as ``pathunlearn report RUN_DIR`` and the end of ``pathunlearn run`` do; for a run with
``study: superficial`` it also classifies every path (:mod:`pathunlearn.report.superficial`)
and puts that section first.
"""

from __future__ import annotations

from pathunlearn.rundir import Run


def make_report(run: Run, *, phases: dict[str, float] | None = None, extra: dict | None = None):
    """Score ``run``'s finished cells, write results.{json,csv,md}, the figures and
    report.html; returns ``(results, figure_files, report_path)``."""
    # imported here: `import pathunlearn.report` must not pull in matplotlib
    from pathunlearn.report.html import write_report
    from pathunlearn.report.plots import write_figures
    from pathunlearn.report.results import build_results

    results = build_results(run)
    figures = write_figures(results)
    if results.relearn:
        from pathunlearn.report.relearn import write_relearn_figures

        figures += write_relearn_figures(results.relearn, run.run_dir / "figures")
    lead = []
    if run.config.study == "superficial":
        from pathunlearn.report.superficial import superficial_html, write_superficial

        results.superficial = write_superficial(run)
        figures += sorted((run.run_dir / "figures").glob("superficial.*"))
        lead.append(superficial_html(run.run_dir, results.superficial))
    report = write_report(results, phases=phases, extra=extra, lead=lead)
    return results, figures, report
