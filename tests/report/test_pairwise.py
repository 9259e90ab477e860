"""Pairwise d_MSE between the unlearned models of different paths, checked against numbers
computed here from metrics.jsonl with plain json + arithmetic."""

from __future__ import annotations

import itertools
import json
import math
import statistics

import pytest

from pathunlearn.report.html import write_report
from pathunlearn.report.plots import pairwise_figure, write_figures
from pathunlearn.report.results import build_results
from pathunlearn.rundir import load_run

FORGET = "refusals"
T975 = {1: 12.7062, 2: 4.3027}  # t(0.975, df), from a printed table


def position_of(path_label: str) -> int:
    return path_label.split("-").index(FORGET) + 1


def recompute(run_dir) -> dict[tuple, tuple[float, float | None, int]]:
    """(method, path_a, path_b, step) -> (mean over seeds, 95% half-width, n), path_a having
    the forget stage earlier; diverged cells and cells without re_tokens left out."""
    cells: dict[tuple, dict[str, dict[int, list[float]]]] = {}
    for metrics in sorted(run_dir.glob("cells/*/*/*/metrics.jsonl")):
        rows = [json.loads(line) for line in metrics.read_text().splitlines()]
        tokens = {r["step"]: r["re_tokens"] for r in rows if "re_tokens" in r}
        if rows[-1].get("diverged") or not tokens or {len(t) for t in tokens.values()} != {3}:
            continue
        path_label, method, seed = metrics.parts[-4:-1]
        cells.setdefault((method, seed), {})[path_label] = tokens
    per_seed: dict[tuple, list[float]] = {}
    for (method, _), paths in cells.items():
        for a, b in itertools.combinations(sorted(paths, key=position_of), 2):
            for step in sorted(paths[a].keys() & paths[b].keys()):
                ta, tb = paths[a][step], paths[b][step]
                d = sum((x - y) ** 2 for x, y in zip(ta, tb, strict=True)) / len(ta)
                per_seed.setdefault((method, a, b, step), []).append(d)
    out = {}
    for key, values in per_seed.items():
        n = len(values)
        half = T975[n - 1] * statistics.stdev(values) / math.sqrt(n) if n > 1 else None
        out[key] = (statistics.mean(values), half, n)
    return out


def written_rows(run_dir) -> dict[tuple, dict]:
    pairwise = json.loads((run_dir / "results.json").read_text())["pairwise"]
    return {(method, r["path_a"], r["path_b"], r["step"]): r
            for method, rows in pairwise.items() for r in rows}


@pytest.mark.parametrize("seeds", [(0, 1), (0, 1, 2)])
def test_pairwise_matches_independent_recomputation(make_run, seeds):
    run_dir = make_run(seeds=seeds)
    build_results(load_run(run_dir))
    expected, written = recompute(run_dir), written_rows(run_dir)
    assert written.keys() == expected.keys()
    assert len(written) == 2 * 6 * 3  # methods x pairs of 4 paths x eval steps 0, 2, 4
    for key, (mean, half, n) in expected.items():
        row = written[key]
        assert row["mean"] == pytest.approx(mean, abs=1e-12) and row["n"] == n
        assert row["ci"] == pytest.approx(half, rel=1e-3)
        assert (row["p_a"], row["p_b"]) == (position_of(key[1]), position_of(key[2]))


def test_pairwise_by_hand(make_run, path_at):
    run_dir = make_run(seeds=(0,), methods=("ga",))
    build_results(load_run(run_dir))
    rows = written_rows(run_dir)
    p1, p4 = "-".join(path_at(1)), "-".join(path_at(4))
    # re_tokens_at: p1 and p4 start 0.1 * 3 apart at every position -> d = 0.09
    assert rows[("ga", p1, p4, 0)]["mean"] == pytest.approx(0.09)
    # at the end position j is 0.3 + 0.2 * 3 * (j + 1) apart: 0.9, 1.5, 2.1
    assert rows[("ga", p1, p4, 4)]["mean"] == pytest.approx((0.81 + 2.25 + 4.41) / 3)
    assert rows[("ga", p1, p4, 4)]["ci"] is None  # 1 seed: no interval


def test_growth_verdict_and_table(make_run):
    results = build_results(load_run(make_run(seeds=(0, 1))))
    pairwise = [v for v in results.verdicts if v.kind == "pairwise"]
    assert [v.method for v in pairwise] == ["ga", "npo"]
    ga = pairwise[0]
    assert ga.observed is True and (ga.first_step, ga.last_step) == (0, 4)
    assert ga.series == 12 and ga.series_grew == 12 and ga.pairs == 6
    assert ga.text.startswith("ga: pairwise distance between paths grew from ")
    assert "mean over 6 pairs and 2 seeds" in ga.text
    md = (results.run_dir / "results.md").read_text()
    section = md.split("## Pairwise distance between paths")[1]
    assert "| pair | d at step 0 | d at step 4 | growth | seeds |" in section
    assert "| p1 vs p4 | 0.09 ± 0 |" in section and "Theorem 3.1" in section
    assert "the same distance (± 0)" in section  # the seeds share step 0
    assert "pairwise distance between paths grew" not in md.split("## Pairwise")[0]


def test_shrinking_distance_is_reported_as_not_grown(make_run):
    run_dir = make_run(seeds=(0,), methods=("ga",))
    for metrics in run_dir.glob("cells/**/metrics.jsonl"):  # play unlearning backwards
        rows = [json.loads(line) for line in metrics.read_text().splitlines()]
        for row, tokens in zip(rows, reversed([r["re_tokens"] for r in rows]), strict=True):
            row["re_tokens"] = tokens
        metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (verdict,) = [v for v in build_results(load_run(run_dir)).verdicts if v.kind == "pairwise"]
    assert verdict.observed is False and verdict.series_grew == 0
    assert "did not grow" in verdict.text


def test_missing_and_odd_re_tokens_are_skipped_with_a_note(make_run, write_cell, path_at):
    run_dir = make_run(seeds=(0, 1), methods=("ga",))
    write_cell(run_dir, path_at(1), "ga", 2, 1.0, re_tokens=False)  # an older cell
    write_cell(run_dir, path_at(2), "ga", 2, 1.0, re_tokens=5)  # another held-out set
    write_cell(run_dir, path_at(3), "ga", 2, 1.0)
    write_cell(run_dir, path_at(4), "ga", 2, 1.0)
    results = build_results(load_run(run_dir))
    written = written_rows(run_dir)
    assert written.keys() == recompute(run_dir).keys()
    assert {r["n"] for k, r in written.items() if (r["p_a"], r["p_b"]) == (3, 4)} == {3}
    assert {r["n"] for k, r in written.items() if (r["p_a"], r["p_b"]) != (3, 4)} == {2}
    notes = json.loads((run_dir / "results.json").read_text())["pairwise_notes"]
    assert any("seed 2: no re_tokens" in n for n in notes)
    assert any("seed 2: re_tokens of length 5, not the run's 3 positions" in n for n in notes)
    (verdict,) = [v for v in results.verdicts if v.kind == "pairwise"]
    assert verdict.skipped_cells == 2 and "2 cells without usable re_tokens" in verdict.text
    assert "seed 2: no re_tokens" in (run_dir / "results.md").read_text()


def test_run_without_re_tokens(make_run):
    run_dir = make_run(seeds=(0,), methods=("ga",), re_tokens=False)
    results = build_results(load_run(run_dir))
    assert json.loads((run_dir / "results.json").read_text())["pairwise"] == {}
    (verdict,) = [v for v in results.verdicts if v.kind == "pairwise"]
    assert verdict.observed is None and "no two paths have cells with usable" in verdict.text
    files = write_figures(results)
    assert files and not any(f.name.startswith("pairwise") for f in files)


def test_pairwise_figure_is_written_on_log_scale(make_run):
    run_dir = make_run(seeds=(0, 1), methods=("ga",), re=True)
    results = build_results(load_run(run_dir), write=False)
    files = write_figures(results)
    assert {f.name for f in files} >= {"pairwise_ga.png", "pairwise_ga.svg"}
    assert (run_dir / "figures" / "pairwise_ga.png").read_bytes().startswith(b"\x89PNG")
    index = json.loads((run_dir / "figures" / "index.json").read_text())
    assert [e["kind"] for e in index if e["method"] == "ga"][-1] == "pairwise"
    fig = pairwise_figure(results.pairwise.series, results.cells, FORGET)
    pairs_ax, retrain_ax = fig.get_axes()
    assert pairs_ax.get_yscale() == retrain_ax.get_yscale() == "log"
    labels = pairs_ax.get_legend_handles_labels()[1]
    assert labels == ["p1 vs p2", "p1 vs p3", "p1 vs p4", "p2 vs p3", "p2 vs p4", "p3 vs p4"]
    assert len(pairs_ax.get_lines()) == 6 * 3  # per pair: 2 seeds thin + the mean
    assert len(retrain_ax.get_legend_handles_labels()[1]) == 4  # re_retrain/mse per path


def test_zero_distance_gives_a_linear_axis_and_no_growth_factor(make_run):
    run_dir = make_run(seeds=(0,), methods=("ga",))
    for metrics in run_dir.glob("cells/**/metrics.jsonl"):  # every path starts identical
        rows = [json.loads(line) for line in metrics.read_text().splitlines()]
        rows[0]["re_tokens"] = [-1.0, -1.0, -1.0]
        metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    results = build_results(load_run(run_dir))
    (ax,) = pairwise_figure(results.pairwise.series, results.cells, FORGET).get_axes()
    assert ax.get_yscale() == "linear"
    assert "| p1 vs p2 | 0 | " in (run_dir / "results.md").read_text()
    assert "n/a (0 at first step)" in (run_dir / "results.md").read_text()


def test_report_has_the_pairwise_section(make_run):
    run_dir = make_run(seeds=(0, 1), methods=("ga",))
    results = build_results(load_run(run_dir))
    write_figures(results)
    page = write_report(results, probes=[]).read_text()
    section = page.split("<h2>Pairwise distance between paths</h2>")[1].split("<h2>")[0]
    assert "pairwise distance between paths grew from" in section
    assert "<td class=\"text\">p1 vs p4</td>" in section and "Theorem 3.1" in section
    assert 'alt="pairwise_ga"' in page
    recency = page.split("<h2>Recency verdicts in full</h2>")[1].split("<h2>")[0]
    assert "pairwise" not in recency
