"""Issue 28: the end-of-run summary fits the terminal: one recency verdict line per method, a
table of method x path whose numbers are never split, the paths' orders listed once."""

from __future__ import annotations

import io
import re

from rich.console import Console

from pathunlearn.report.results import build_results
from pathunlearn.report.terminal import print_results, summary_lines
from pathunlearn.rundir import load_run

NUMBER = re.compile(r"-?\d+\.\d\d(±\d+\.\d\d)?|\d\.\de[-+]\d\d")


def check_summary(lines: list[str], width: int) -> None:
    assert max(len(line) for line in lines) <= width
    table = [line for line in lines if line.startswith(("ga ", "npo "))]
    assert len(table) == 8  # 2 methods x 4 paths, one row each
    for line in table:  # every cell of a row is a whole number, ± its half-width
        cells = line.split()
        assert re.fullmatch(r"p[1-4]", cells[1]) and cells[-1] == "2"
        assert all(NUMBER.fullmatch(c) for c in cells[2:-1]), line
    assert any(line.startswith("p4: ") for line in lines)  # the orders, once
    assert sum(line.lstrip().startswith(("ga: recency effect", "npo: recency effect"))
               for line in lines) == 2  # one per method
    assert any("in short: recency effect observed for 1 of 2 methods" in line for line in lines)


def test_the_summary_fits_its_width_and_splits_no_number(make_run, cli):
    run_dir = make_run(seeds=(0, 1))
    result = cli("report", run_dir, "--width", "80")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    check_summary(lines[: next(i for i, x in enumerate(lines) if x.startswith("details:"))], 80)
    results = build_results(load_run(run_dir), write=False)
    for width in (120, 200):
        check_summary([x for line in summary_lines(results, width)
                       for x in line.splitlines()], width)
    full = io.StringIO()
    print_results(results, Console(file=full, width=200), details=True)
    assert "The 95% intervals" in full.getvalue() and "The 95% intervals" not in result.out
    assert "ranks 1 of 4 by mean forget score" in full.getvalue()
