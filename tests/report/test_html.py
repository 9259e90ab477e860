"""report.html: self-contained, and every dataset string escaped."""

from __future__ import annotations

import re

from pathunlearn.eval.probes import label_probe
from pathunlearn.report.html import write_report
from pathunlearn.report.plots import write_figures
from pathunlearn.report.results import build_results
from pathunlearn.rundir import load_run

FORGET = "refusals"

SCRIPT = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"


def test_report_escapes_prompts_and_config(make_run):
    run_dir = make_run(seeds=(0, 1), config={"stages": {
        "instructions": {"source": "builtin:instructions", "system": SCRIPT}}})
    results = build_results(load_run(run_dir))
    write_figures(results)
    probe = label_probe("forget_label_id", [[{"role": "user", "content": f"How? {SCRIPT}"}]],
                        ["Sorry, I can not assist you", f"No {SCRIPT}"])
    page = write_report(results, phases={"train": 12.5, "unlearn": 3.0},
                        extra={"device": f"cpu {SCRIPT}"}, probes=[probe]).read_text()
    assert "<script" not in page.lower()
    assert page.count(ESCAPED) == 4  # the prompt, a target, the config, the device
    # self-contained: figures inline, nothing fetched from elsewhere
    # forget_label, utility, pairwise per method (no re_retrain: no re_distance)
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', page)) == 6
    assert not re.search(r'(src|href)="(https?:)?//', page)
    for text in ("recency effect observed", "n/a (not measured)", "transformers", "unlearn",
                 "15.5", "Sorry, I can not assist you"):
        assert text in page


def test_report_without_figures_or_phases(make_run):
    run_dir = make_run(seeds=(0,), methods=("ga",))
    page = write_report(build_results(load_run(run_dir), write=False),
                        probes=[label_probe("p", [[{"role": "user", "content": "q"}]],
                                                     ["t"])]).read_text()
    assert "No figures were written" in page and "not recorded" in page
    assert "1 seed: no interval" in page


def test_no_figures_writes_the_tables_and_page_without_figures_and_removes_old_ones(
        make_run, cli):
    """``--no-figures``: the same results, a page that says how to draw the figures, no
    figure of an earlier report left beside them; a later report with figures draws them
    again (one without them vouches for no report with them)."""
    import json

    from pathunlearn.report import make_report
    from pathunlearn.rundir import FIGURES, REPORT_HTML

    run_dir = make_run(seeds=(0, 1))
    drawn = cli("report", run_dir, "--quiet")
    assert drawn.code == 0, drawn.err
    assert list((run_dir / FIGURES).glob("*.png"))
    with_figures = json.loads((run_dir / "results.json").read_text())
    bare = cli("report", run_dir, "--no-figures")
    assert bare.code == 0, bare.err
    assert "0 figure files" in " ".join(bare.out.split())
    assert not (run_dir / FIGURES).exists()
    assert json.loads((run_dir / "results.json").read_text()) == with_figures
    page = (run_dir / REPORT_HTML).read_text()
    assert "The figures were not drawn (--no-figures)" in page and "<img" not in page
    assert "<svg" in page  # the first screen's figure is drawn from the results, inline
    # a run's report with figures is not vouched for by the one without: drawn again
    _, figures, _ = make_report(load_run(run_dir), reuse=True)
    assert figures and all(f.is_file() for f in figures)
    _, again, _ = make_report(load_run(run_dir), reuse=True)  # and now it is up to date
    assert sorted(again) == sorted(figures)
