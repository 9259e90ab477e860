"""Issue 28: the end-of-run summary fits the terminal: one recency verdict line per method, a
table of method x path whose numbers are never split, the paths' orders listed once."""

from __future__ import annotations

import re

import pytest

NUMBER = re.compile(r"-?\d+\.\d\d(±\d+\.\d\d)?|\d\.\de[-+]\d\d")


@pytest.mark.parametrize("width", [80, 120, 200])
def test_the_summary_fits_its_width_and_splits_no_number(make_run, cli, width):
    run_dir = make_run(seeds=(0, 1))
    result = cli("report", run_dir, "--width", str(width))
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    summary = lines[: next(i for i, line in enumerate(lines) if line.startswith("details:"))]
    assert max(len(line) for line in summary) <= width
    table = [line for line in summary if line.startswith(("ga ", "npo "))]
    assert len(table) == 8  # 2 methods x 4 paths, one row each
    for line in table:  # every cell of a row is a whole number, ± its half-width
        cells = line.split()
        assert re.fullmatch(r"p[1-4]", cells[1]) and cells[-1] == "2"
        assert all(NUMBER.fullmatch(c) for c in cells[2:-1]), line
    assert any(line.startswith("p4: ") for line in summary)  # the orders, once
    assert sum(line.lstrip().startswith(("ga: recency effect", "npo: recency effect"))
               for line in summary) == 2  # one per method
    assert "in short: recency effect observed for 1 of 2 methods" in result.out


def test_details_prints_the_full_verdicts(make_run, cli):
    run_dir = make_run(seeds=(0, 1))
    short = cli("report", run_dir, "--width", "80")
    full = cli("report", run_dir, "--details")
    assert "The 95% intervals" in full.out and "The 95% intervals" not in short.out
    assert "ranks 1 of 4 by mean forget score" in full.out
