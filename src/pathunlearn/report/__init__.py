"""Tables, recency verdict, figures and the HTML report of a run directory.

``tables`` reads the cell directories and scores them; ``plots`` draws the probe curves;
``html`` puts everything into one self-contained report.html. :func:`make_report` does all
three, as ``pathunlearn report RUN_DIR`` and the end of ``pathunlearn run`` do.
"""

from __future__ import annotations

from pathlib import Path


def make_report(run_dir: str | Path, forget_stage: str | None = None, *,
                phases: dict[str, float] | None = None, extra: dict | None = None):
    """Recompute the table and verdict from RUN_DIR's finished cells, write results.{json,csv,
    md}, the figures and report.html; returns ``(results, figure_files, report_path)``."""
    # imported here: `import pathunlearn.report.tables` must not pull in matplotlib
    from pathunlearn.report.html import write_report
    from pathunlearn.report.plots import write_figures
    from pathunlearn.report.tables import build_results

    results = build_results(run_dir, forget_stage)
    figures = write_figures(run_dir, results)
    report = write_report(run_dir, results, phases=phases, extra=extra)
    return results, figures, report
