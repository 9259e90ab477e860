"""Tables, verdicts, figures and the HTML report of a loaded run (:func:`pathunlearn.rundir.load_run`).

``results`` scores the cells (``tables``: the table and the recency verdict; ``pairwise``: the
distances between paths) and writes results.{json,csv,md}; ``plots`` draws the figures;
``html`` puts everything into one self-contained report.html. :func:`make_report` does all of
it, as ``pathunlearn report RUN_DIR`` and the end of ``pathunlearn run`` do; for a run with
``study: superficial`` it also classifies every path (:mod:`pathunlearn.report.superficial`)
and puts that section first.
"""

from __future__ import annotations

import json
from pathlib import Path

from pathunlearn.files import sha256_file
from pathunlearn.rundir import (
    CONFIG,
    FIGURES,
    PLAN,
    PREFIX_JSON,
    REPORT_HTML,
    REPORT_KEY,
    RESULTS,
    Run,
    prefix_dir,
    unit_dir,
)

# RUN_DIR/report.key: the fingerprint of what the written report was built from, and the
# sha256 of every file it vouches for (JSON). It is removed before the first file of a new
# report is written and written after the last, so a report interrupted half-way (kill -9) is
# never taken for up to date: the report and its key are one unit (issue 24).


def report_fingerprint(run: Run) -> str:
    """A hash of everything the report is made of: the package version and the report code,
    the run's config and plan, the finished cells (directory, key and the sha256 of the files
    the report reads: a cell computed again under the same key, after the model it started
    from was set aside, may hold other numbers) and the matched-start models. Equal
    fingerprints mean an equal report (its wall times aside)."""
    import hashlib
    from importlib import metadata
    from pathlib import Path

    from pathunlearn.keys import stable_hash

    code = hashlib.sha256()
    for source in sorted(Path(__file__).parent.glob("*.py")):
        code.update(source.read_bytes())
    try:
        version = metadata.version("pathunlearn")
    except metadata.PackageNotFoundError:
        version = "unknown"
    matched = [(prefix_dir(run.run_dir, m.key) / PREFIX_JSON) for m in run.plan.matched]
    return stable_hash(version, code.hexdigest(), (run.run_dir / CONFIG).read_text(),
                       (run.run_dir / PLAN).read_text(),
                       [(str(unit_dir("", c.cell)), c.cell.key, _cell_files(run, c.cell))
                        for c in run.cells + run.controls],
                       [p.read_text() if p.is_file() else None for p in matched])


def _cell_files(run: Run, cell) -> dict[str, str]:
    """The sha256 of every file directly in ``cell``'s directory (not its saved model/)."""
    directory = unit_dir(run.run_dir, cell)
    return {f.name: sha256_file(f) for f in sorted(directory.iterdir()) if f.is_file()}


def make_report(run: Run, *, phases: dict[str, float] | None = None, extra: dict | None = None,
                reuse: bool = False, log=None, figures: bool = True):
    """Score ``run``'s finished cells, write results.{json,csv,md}, the figures and
    report.html; returns ``(results, figure_files, report_path)``. ``reuse``: when the files
    on disk were built from the same run state (:func:`report_fingerprint`), score the run
    without writing anything (a rerun of a finished run takes seconds, not a report's
    worth of figures). ``figures=False`` (``--no-figures``): the tables and report.html
    without figures, the figures of an earlier report removed (none is left beside results
    it was not drawn from); a later report with figures is not vouched for by this one."""
    # imported here: `import pathunlearn.report` must not pull in matplotlib
    from pathunlearn.files import write_text
    from pathunlearn.report.results import build_results

    key_file = run.run_dir / REPORT_KEY
    fingerprint = report_fingerprint(run) + ("" if figures else "-no-figures")
    page = run.run_dir / REPORT_HTML
    vouched = _vouched(key_file, fingerprint) if reuse else None
    if vouched is not None:
        results = build_results(run, write=False)
        results.files = [run.run_dir / name for name in RESULTS]
        kept = sorted(f for f in vouched if f.parent.name == FIGURES)
        if run.config.study == "superficial":
            from pathunlearn.report.superficial import path_curves

            results.superficial = path_curves(run.cells, run.config)
        if log is not None:
            log(f"report up to date ({page}): nothing changed since it was written")
        return results, kept, page
    key_file.unlink(missing_ok=True)  # from here until the new key, no report is up to date
    made = _make_report(run, phases=phases, extra=extra, figures=figures)
    results, drawn, report = made
    files = [*results.files, *drawn, report]
    write_text(key_file, json.dumps({"fingerprint": fingerprint, "files": {
        str(f.relative_to(run.run_dir)): sha256_file(f) for f in files}}, indent=1) + "\n")
    return made


def _vouched(key_file: Path, fingerprint: str) -> list[Path] | None:
    """The files of the report ``key_file`` vouches for, when it was built from
    ``fingerprint`` and every one of them is on disk as written; else None (rebuild). A key
    in the older one-line form vouches for nothing: the report is rebuilt once."""
    try:
        key = json.loads(key_file.read_text())
        if key["fingerprint"] != fingerprint:
            return None
        files = {key_file.parent / name: sha for name, sha in key["files"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if not {key_file.parent / n for n in (*RESULTS, REPORT_HTML)} <= set(files):
        return None
    if any(not f.is_file() or sha256_file(f) != sha for f, sha in files.items()):
        return None
    return list(files)


def _make_report(run: Run, *, phases: dict[str, float] | None = None,
                 extra: dict | None = None, figures: bool = True):
    from pathunlearn.report.html import write_report
    from pathunlearn.report.plots import write_figures
    from pathunlearn.report.results import build_results

    results = build_results(run)
    if figures:
        drawn = write_figures(results)
        if results.relearn:
            from pathunlearn.report.relearn import write_relearn_figures

            drawn += write_relearn_figures(results.relearn, run.run_dir / FIGURES)
    else:
        import shutil

        shutil.rmtree(run.run_dir / FIGURES, ignore_errors=True)  # the report's own files
        drawn = []
    lead = []
    if run.config.study == "superficial":
        from pathunlearn.report.superficial import superficial_html, write_superficial

        results.superficial = write_superficial(run, figure=figures)
        drawn += sorted((run.run_dir / FIGURES).glob("superficial.*"))
        lead.append(superficial_html(run.run_dir, results.superficial))
    report = write_report(results, phases=phases, extra=extra, lead=lead, drawn=figures)
    return results, drawn, report
