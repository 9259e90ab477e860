"""Issue 27 item 6: methods ranked by how path-dependent they are, each number checked against
a hand computation on constructed cells."""

from __future__ import annotations

import json
import math

import pytest

from pathunlearn.report.dependence import path_dependence, path_effect, seed_growths
from pathunlearn.report.model import CellRow, GrowthVerdict


def cell(method: str, path: str, seed: int, score: float, fq: float | None = None) -> CellRow:
    return CellRow(method=method, sweep="", lr=None, scheduler=None, seed=seed,
                   training_seed=None, path=[path], path_label=path, position=1, local=True,
                   steps=4, steps_done=4, diverged_at=None, status="ok", directory="x",
                   values={"forget_score": score, "forget_quality": fq})


def test_spread_anova_and_quality_orders_equal_a_hand_computation():
    # path a: 1.0, 1.2; path b: 0.2, 0.4 (seeds 0, 1). Per seed the spread is 0.8 both times:
    # mean 0.8, half-width 0. Group means 1.1 and 0.3, grand mean 0.7: SSB = 4 * 0.4^2 = 0.64,
    # SSW = 4 * 0.1^2 = 0.04; F = (0.64 / 1) / (0.04 / 2) = 32 on (1, 2) df. F(1, 2) is t_2
    # squared and P(|t_2| > t) = 1 - t / sqrt(t^2 + 2): p = 1 - sqrt(32 / 34).
    cells = [cell("ga", "a", 0, 1.0, 1e-1), cell("ga", "a", 1, 1.2, 1e-1),
             cell("ga", "b", 0, 0.2, 1e-3), cell("ga", "b", 1, 0.4, 1e-3),
             # npo: the paths differ by less than the seeds do
             cell("npo", "a", 0, 0.5), cell("npo", "a", 1, 0.1),
             cell("npo", "b", 0, 0.2), cell("npo", "b", 1, 0.6)]
    ga, npo = path_dependence(cells, [], [], [])
    assert (ga.rank, ga.method, npo.rank) == (1, "ga", 2)
    assert ga.forget_spread.mean == pytest.approx(0.8) and ga.forget_spread.ci95 == \
        pytest.approx(0.0, abs=1e-12)
    assert ga.path_effect_p == pytest.approx(1 - math.sqrt(32 / 34), rel=1e-9)
    assert ga.path_dependent is True
    assert ga.forget_quality_orders == pytest.approx(2.0)
    # npo: spreads |0.5 - 0.2| = 0.3 and |0.1 - 0.6| = 0.5, mean 0.4; t(0.975, 1) = 12.706,
    # s = 0.1414: half-width 12.706 * 0.1414 / sqrt(2) = 1.2706. Means 0.3 and 0.4: SSB =
    # 4 * 0.05^2 = 0.01, SSW = 2 * 0.2^2 + 2 * 0.2^2 = 0.16, F = 0.01 / 0.08 = 0.125.
    assert npo.forget_spread.mean == pytest.approx(0.4)
    assert npo.forget_spread.ci95 == pytest.approx(12.7062047 * math.sqrt(0.02) / math.sqrt(2),
                                                   rel=1e-6)
    assert npo.path_effect_p == pytest.approx(1 - math.sqrt(0.125 / 2.125), rel=1e-9)
    assert npo.path_dependent is False and npo.forget_quality_orders is None
    json.dumps([ga.to_json(), npo.to_json()])  # results.json can hold it


def test_one_seed_gives_a_spread_but_no_test():
    cells = [cell("ga", "a", 0, 1.0), cell("ga", "b", 0, 0.25), cell("ga", "c", 0, 0.5)]
    (ga,) = path_dependence(cells, [], [], [])
    assert ga.forget_spread.mean == pytest.approx(0.75) and ga.forget_spread.ci95 is None
    assert ga.path_effect_p is None and ga.path_dependent is None
    assert path_effect(cells, ["a", "b", "c"], "forget_score") is None
    # constant groups: the F statistic is undefined, no p-value
    same = [cell("ga", p, s, 1.0) for p in "ab" for s in (0, 1)]
    assert path_effect(same, ["a", "b"], "forget_score") is None


def test_pairwise_growth_per_seed_is_last_minus_first_common_step():
    verdict = GrowthVerdict(method="ga", sweep="", first_step=0, last_step=8)
    series = [  # seed 0: pairs grew by 3 and 5 (mean 4); seed 1: by 1 and 3 (mean 2)
        {"method": "ga", "sweep": "", "seed": 0, "steps": [0, 4, 8], "values": [1, 2, 4]},
        {"method": "ga", "sweep": "", "seed": 0, "steps": [0, 4, 8], "values": [0, 9, 5]},
        {"method": "ga", "sweep": "", "seed": 1, "steps": [0, 8], "values": [2, 3]},
        {"method": "ga", "sweep": "", "seed": 1, "steps": [0, 8], "values": [1, 4]}]
    assert sorted(seed_growths(series, verdict)) == [2.0, 4.0]
    cells = [cell("ga", p, s, x) for p, s, x in
             [("a", 0, 1.0), ("a", 1, 1.1), ("b", 0, 0.0), ("b", 1, 0.2)]]
    (ga,) = path_dependence(cells, [], [verdict], series)
    assert ga.growth.mean == pytest.approx(3.0)
    assert ga.growth.ci95 == pytest.approx(12.7062047 * math.sqrt(2) / math.sqrt(2), rel=1e-6)


def test_the_report_ranks_the_methods_of_a_run(make_run, cli):
    run_dir = make_run(seeds=(0, 1))
    result = cli("report", run_dir, "--width", "80")
    assert result.code == 0, result.err
    out = result.out.splitlines()
    start = out.index("which methods are path-dependent here (ranked by forget spread):")
    # the summary fits 80 columns; the closing "wrote ... in DIR" line names paths whole (never
    # split, so they can be copied), whatever their length
    summary = [line for line in out if not line.startswith("wrote ")]
    assert all(len(line) <= 80 for line in summary), [s for s in summary if len(s) > 80]
    assert out[start + 1].split()[:2] == ["#", "method"]
    assert {out[start + 2].split()[1], out[start + 3].split()[1]} == {"ga", "npo"}
    data = json.loads((run_dir / "results.json").read_text())
    assert [d["rank"] for d in data["path_dependence"]] == [1, 2]
    assert "## Which methods are path-dependent here?" in (run_dir / "results.md").read_text()
