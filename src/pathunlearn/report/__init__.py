"""Tables, recency verdict, figures and the HTML report of a run directory.

``tables`` reads the cell directories and scores them; ``plots`` draws the probe curves;
``html`` puts everything into one self-contained report.html. :func:`make_report` does all
three, as ``pathunlearn report RUN_DIR`` and the end of ``pathunlearn run`` do; for a run with
``study: superficial`` it also classifies every path (:mod:`pathunlearn.report.superficial`)
and puts that section first.
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
    lead = []
    config = _run_config(Path(run_dir))
    if config.get("study") == "superficial":
        from pathunlearn.report.superficial import superficial_html, write_superficial

        results.superficial = write_superficial(run_dir, results.cells, config)
        figures += sorted(Path(run_dir, "figures").glob("superficial.*"))
        lead.append(superficial_html(Path(run_dir), results.superficial))
    report = write_report(run_dir, results, phases=phases, extra=extra, lead=lead)
    return results, figures, report


def _run_config(run_dir: Path) -> dict:
    """RUN_DIR/config.yaml as a dict ({} when missing or unreadable)."""
    import yaml

    try:
        data = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}
