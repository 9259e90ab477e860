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
