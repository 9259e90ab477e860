"""The table, intervals and recency verdict, checked against numbers computed here by hand."""

from __future__ import annotations

import csv
import json
import math
import statistics

import pytest

from pathunlearn.errors import ConfigError, UserError
from pathunlearn.report.model import SeedRank
from pathunlearn.report.results import build_results
from pathunlearn.report.stats import mean_ci, t_quantile
from pathunlearn.rundir import load_run

FORGET = "refusals"
T975 = {1: 12.7062, 2: 4.3027}  # t(0.975, df), from a printed table


def recompute(run_dir):
    """The table from the metrics.jsonl files with plain json + arithmetic: (method, path) ->
    {score: (mean, half-width)} over the seeds that did not diverge."""
    per_group: dict[tuple, dict[str, list[float]]] = {}
    for metrics in sorted(run_dir.glob("cells/*/*/*/metrics.jsonl")):
        rows = [json.loads(line) for line in metrics.read_text().splitlines()]
        if rows[-1].get("diverged"):
            continue
        first, last = rows[0], rows[-1]
        path_label, method = metrics.parts[-4], metrics.parts[-3]
        scores = {
            "forget_score": first["forget_label_id/all_mean"] - last["forget_label_id/all_mean"],
            "forget_score_ood": first["forget_label_ood/all_mean"]
            - last["forget_label_ood/all_mean"],
            "forget_response_drop": first["forget_response/mean"] - last["forget_response/mean"],
            **{f"utility_{probe}": 1 - abs(last[f"{probe}/mean"] - first[f"{probe}/mean"])
               for probe in ("instructions_train", "authors_train", "authors_paraphrased",
                             "arithmetic_train")},
        }
        group = per_group.setdefault((method, path_label), {})
        for k, v in scores.items():
            group.setdefault(k, []).append(v)
    out = {}
    for key, scores in per_group.items():
        out[key] = {}
        for k, values in scores.items():
            n = len(values)
            half = T975[n - 1] * statistics.stdev(values) / math.sqrt(n) if n > 1 else None
            out[key][k] = (statistics.mean(values), half)
    return out


def recency(results):
    """The recency verdicts (results.verdicts also holds the pairwise-growth ones)."""
    return [v for v in results.verdicts if v.kind == "recency"]


@pytest.mark.parametrize("seeds", [(0, 1), (0, 1, 2)])
def test_table_matches_independent_recomputation(make_run, seeds):
    run_dir = make_run(seeds=seeds)
    build_results(load_run(run_dir))
    expected = recompute(run_dir)
    written = json.loads((run_dir / "results.json").read_text())
    with (run_dir / "results.csv").open() as f:
        csv_rows = list(csv.DictReader(f))
    assert len(written["rows"]) == len(csv_rows) == len(expected) == 8
    for row, crow in zip(written["rows"], csv_rows, strict=True):
        want = expected[(row["method"], row["path_label"])]
        assert row["n"] == len(seeds) and crow["path_label"] == row["path_label"]
        for score, (mean, half) in want.items():
            assert row[score] == pytest.approx(mean, abs=1e-9)
            assert row[f"{score}_ci95"] == pytest.approx(half, abs=1e-3)
            assert float(crow[score]) == pytest.approx(mean, abs=1e-9)
            assert float(crow[f"{score}_ci95"]) == pytest.approx(half, abs=1e-3)
        assert row["position"] == row["path"].index(FORGET) + 1


def test_mean_ci_by_hand():
    assert mean_ci([]) == (None, None)
    assert mean_ci([0.7]) == (0.7, None)
    # 2 seeds: s = sqrt(2), half = 12.7062 * sqrt(2) / sqrt(2)
    mean, half = mean_ci([1.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(12.7062, abs=1e-4)
    # 3 seeds: mean 7/3, s^2 = ((4/3)^2 + (1/3)^2 + (5/3)^2) / 2 = 7/3
    mean, half = mean_ci([1.0, 2.0, 4.0])
    assert mean == pytest.approx(7 / 3)
    assert half == pytest.approx(4.3027 * math.sqrt(7 / 3) / math.sqrt(3), abs=1e-4)


def test_t_quantiles_are_students():
    # t(0.975, df) from tables: 12.7062 (1), 4.3027 (2), 2.2281 (10); the normal's 1.96 far out
    assert [round(t_quantile(df), 4) for df in (1, 2, 10)] == [12.7062, 4.3027, 2.2281]
    assert t_quantile(10_000) == pytest.approx(1.96, abs=1e-3)


def test_recency_verdict_observed_and_not(make_run, path_at):
    results = build_results(load_run(make_run(seeds=(0, 1))))
    by_method = {v.method: v for v in recency(results)}
    ga, npo = by_method["ga"], by_method["npo"]
    # GA drops 3.0/2.0/2.5/0.5 by position: p=4 forgets least
    assert ga.observed is True and ga.forget_last_ranks == [1]
    assert [e.position for e in ga.ranking] == [4, 2, 3, 1]
    assert ga.compared_with == "-".join(path_at(2))
    assert ga.ci_overlap is False  # 0.55 ± 0.635 vs 2.05 ± 0.635
    assert "recency effect observed" in ga.text and "do not overlap" in ga.text
    assert ga.per_seed == {0: SeedRank(rank=1, of=4), 1: SeedRank(rank=1, of=4)}
    # NPO drops 1.2/0.4/0.9/0.8: p=2 forgets least, p=4 ranks 2nd
    assert npo.observed is False and npo.forget_last_ranks == [2]
    assert npo.ci_overlap is True
    assert "recency effect NOT observed" in npo.text
    md = (results.run_dir / "results.md").read_text()
    assert "recency effect NOT observed" in md and "recency effect observed" in md


def test_one_seed_has_no_interval(make_run):
    results = build_results(load_run(make_run(seeds=(0,))))
    assert all(r.stats["forget_score"].ci95 is None for r in results.table.rows)
    assert all("1 seed: no interval" in v.text for v in recency(results))
    assert all(v.ci_overlap is None for v in recency(results))
    md = (results.run_dir / "results.md").read_text()
    assert "±" not in md.split("## Recency")[0].split("|---")[1]


def test_diverged_cell_is_reported_and_left_out(make_run, write_cell, path_at):
    run_dir = make_run(seeds=(0, 1))
    write_cell(run_dir, path_at(4), "ga", 2, 99.0, diverge_at=4)  # 99 would dominate the mean if counted
    results = build_results(load_run(run_dir))
    cell = next(c for c in results.table.cells if c.seed == 2)
    assert cell.diverged_at == 4 and cell.status == "diverged at step 4"
    assert cell.values["forget_score"] is None
    row = next(r for r in results.table.rows if r.method == "ga" and r.position == 4)
    assert row.n == 2 and row.seeds == [0, 1] and row.diverged_seeds == [2]
    assert row.mean("forget_score") == pytest.approx((0.5 + 0.6) / 2)  # seeds 0 and 1 only
    md = (run_dir / "results.md").read_text()
    assert "2 (+1 diverged)" in md and "1 diverged cell(s), left out of every mean" in md


def test_math_and_re_columns(make_run, tmp_path):
    plain = build_results(load_run(make_run(seeds=(0,), name="plain")))
    row = plain.table.rows[0]
    assert row.mean("math_utility") is None and row.mean("re_distance_to_retrain") is None
    md = (plain.run_dir / "results.md").read_text()
    assert "n/a (not measured)" in md and "math.questions" in md and "retrain baseline" in md
    csv_row = next(csv.DictReader((plain.run_dir / "results.csv").open()))
    assert csv_row["math_utility"] == "" and csv_row["re_distance_to_retrain"] == ""

    measured = build_results(load_run(make_run(seeds=(0, 1), name="measured", math=(0.6, 0.45),
                                               re=True)))
    row = next(r for r in measured.table.rows if r.method == "ga" and r.position == 2)
    assert row.mean("math_utility") == pytest.approx(-0.15)
    assert row.mean("re_distance_to_retrain") == pytest.approx(0.1 * 2 + 0.005)  # seeds add 0, 0.01
    md = (measured.run_dir / "results.md").read_text()
    assert "not measured" not in md
    # the accuracy before, which the utility is a change of, is in the notes and the CSV
    assert row.mean("math_before") == pytest.approx(0.6) and row.mean("math_after") == pytest.approx(0.45)
    assert "accuracy before unlearning: p=1 0.600 (shuffled 0.020)" in md
    assert "p=4 0.600 (shuffled 0.020; no answer 10%)" in md
    csv_row = next(csv.DictReader((measured.run_dir / "results.csv").open()))
    assert float(csv_row["math_before"]) == pytest.approx(0.6)


def test_unfinished_cells_are_ignored_and_none_is_an_error(tmp_path, write_cell, path_at):
    write_cell(tmp_path / "run", path_at(1), "ga", 0, 1.0, done=False)
    assert load_run(tmp_path / "run").cells == []
    with pytest.raises(UserError, match="no finished cells"):
        build_results(load_run(tmp_path / "run"))


def test_the_report_reads_the_run_config_and_plan(make_run, tmp_path):
    run_dir = make_run(seeds=(0,))
    assert load_run(run_dir).forget_stage == FORGET  # from the validated config.yaml
    (run_dir / "plan.json").unlink()
    with pytest.raises(UserError, match="plan.json: missing"):
        load_run(run_dir)
    (run_dir / "config.yaml").write_text("name: x\n")  # not a valid config
    with pytest.raises(ConfigError, match="config.yaml: stages: Field required"):
        load_run(run_dir)
    with pytest.raises(UserError, match="no config.yaml"):
        load_run(run_dir / "cells")


def test_cells_of_the_plan_only_with_their_key(make_run):
    """A cell directory finished under other settings (another key) is stale: not in the
    table, said in the notes; a planned cell not written yet is pending."""
    run_dir = make_run(seeds=(0, 1), methods=("ga",))
    run = load_run(run_dir)
    stale = run.cells[0]
    summary = json.loads((stale.directory / "summary.json").read_text())
    (stale.directory / "summary.json").write_text(json.dumps({**summary, "key": "other"}))
    import shutil

    shutil.rmtree(run.cells[1].directory)
    run = load_run(run_dir)
    assert len(run.cells) == 6 and len(run.stale) == 1 and len(run.pending) == 1
    md = (build_results(run).run_dir / "results.md").read_text()
    assert "1 of 8 planned cells are not finished yet" in md
    assert "1 cell directories hold cells finished under other settings" in md


def test_sweep_gets_its_own_rows_and_verdicts(tmp_path, write_cell, path_at):
    run_dir = tmp_path / "run"
    for lr, drops in ((1e-5, (2.0, 2.0, 2.0, 1.0)), (5e-5, (2.0, 1.0, 2.0, 3.0))):
        for p, drop in enumerate(drops, 1):
            write_cell(run_dir, path_at(p), "ga", 0, drop, sweep=(f"lr{lr:g}",), lr=lr)
    results = build_results(load_run(run_dir))
    assert results.table.swept
    verdicts = {v.sweep: v.observed for v in recency(results)}
    assert verdicts == {"lr1e-05": True, "lr5e-05": False}
    assert "| sweep |" in (run_dir / "results.md").read_text()


def test_cli_report(cli, make_run, tmp_path, write_cell, path_at):
    run_dir = make_run(seeds=(0, 1), methods=("ga",))
    result = cli("report", str(run_dir))
    assert result.code == 0, result.err
    assert "recency effect observed" in result.out
    assert (run_dir / "report.html").is_file() and (run_dir / "results.csv").is_file()
    write_cell(tmp_path / "empty", path_at(1), "ga", 0, 1.0, done=False)
    empty = cli("report", str(tmp_path / "empty"))
    assert empty.code == 2 and "no finished cells" in empty.err
    assert len(empty.err.strip().splitlines()) == 1


def test_path_with_every_seed_diverged_has_no_score(tmp_path, write_cell, path_at):
    run_dir = tmp_path / "run"
    for p, drop in ((1, 2.0), (2, 1.5), (3, 1.0), (4, 0.5)):
        write_cell(run_dir, path_at(p), "ga", 0, drop, diverge_at=2 if p == 1 else None)
    results = build_results(load_run(run_dir))
    row = results.table.rows[0]
    assert row.position == 1 and row.n == 0 and row.mean("forget_score") is None
    (verdict,) = recency(results)
    assert verdict.observed is True and verdict.n_paths == 3
    assert "Without a score (all seeds diverged): " + "-".join(path_at(1)) in verdict.text
    assert "| 1 | " + "-".join(path_at(1)) + " | diverged |" in (run_dir / "results.md").read_text()


def test_notes_say_what_ran_and_what_the_interval_covers(make_run):
    shared = make_run(seeds=(0, 1), methods=("ga",), name="shared",
                      config={"training": {"seed": 0}})
    md = (build_results(load_run(shared)).run_dir / "results.md").read_text()
    assert "Methods: ga = GA: gradient ascent" in md
    assert "The seeds share the path models (training.seed: 0)" in md
    own = make_run(seeds=(0, 1), methods=("ga",), name="own")
    md = (build_results(load_run(own)).run_dir / "results.md").read_text()
    assert "share the path models" not in md
    assert "Every seed trains its own path models (training.seed: null)" in md
    one = make_run(seeds=(0,), methods=("ga",), name="one")
    assert "One seed: no interval" in (build_results(load_run(one)).run_dir
                                        / "results.md").read_text()


def test_the_verdict_says_where_each_path_starts_and_flags_saturation(make_run):
    """Issue 15: the unlearn target's own log-probability, the forget-token probability and
    the NLL gradient norm at step 0, per path, beside the verdict; a forget-last path that
    starts with under half the gradient is flagged."""
    from pathunlearn.report.results import build_results
    from pathunlearn.rundir import load_run

    results = build_results(load_run(make_run(seeds=(0, 1), methods=("ga",))), write=False)
    verdict = next(v for v in results.verdicts if v.kind == "recency")
    p4 = next(e for e in verdict.ranking if e.position == 4)
    assert p4.saturation["target_before"] == pytest.approx(-0.1)
    assert p4.saturation["forget_token_prob"] == pytest.approx(0.9)
    assert p4.saturation["forget_grad_norm"] == pytest.approx(0.1)
    assert p4.saturation["first_step_grad_norm"] == pytest.approx(0.2)
    # compared with p=2 (ga forgets least after p=4 there), which starts at -1.2 / 0.4 / 1.2
    assert ("At step 0: the unlearn target's log-probability -0.100 vs -1.200; forget-token "
            "probability 0.900 vs 0.400; forget NLL gradient norm 0.1000 vs 1.2000. The "
            "forget-last path starts closer to probability 1 with less than 0.5x the gradient"
            ) in verdict.text
    row = next(r for r in results.table.rows if r.position == 1)
    assert row.mean("forget_grad_norm") == pytest.approx(1.1) and row.mean("target_before") == \
        pytest.approx(-1.1)


def test_seed_spread_separates_training_from_unlearning():
    from pathunlearn.report.tables import seed_spread

    # training seed 0: 1.0, 3.0 (mean 2, var 2); training seed 1: 5.0, 7.0 (mean 6, var 2)
    between, within = seed_spread([(0, 1.0), (0, 3.0), (1, 5.0), (1, 7.0)])
    assert between == pytest.approx(8 ** 0.5) and within == pytest.approx(2 ** 0.5)
    assert seed_spread([(0, 1.0), (1, 2.0)]) is None  # no training seed with two values
    assert seed_spread([(0, 1.0), (0, 2.0)]) is None  # one training seed


def test_crossed_seeds_give_both_spreads(make_run):
    """Issue 15: seeds 0, 1 share training seed 0, seed 2 its own; the notes and every row
    give the spread across training seeds and within one."""
    run_dir = make_run(seeds=(0, 1, 2), methods=("ga",), name="crossed",
                       config={"training": {"seed_of": {0: 0, 1: 0, 2: 1}}})
    results = build_results(load_run(run_dir))
    row = next(r for r in results.table.rows if r.position == 1)
    # forget score = DROPS + SEED_OFFSET: seeds 0, 1 -> 3.0, 3.1 (training seed 0), 2 -> 2.7
    assert row.stats["forget_score"].sd_unlearning == pytest.approx((0.005) ** 0.5, rel=1e-3)
    assert row.stats["forget_score"].sd_training == pytest.approx(abs(3.05 - 2.7) / 2 ** 0.5, rel=1e-3)
    notes = " ".join(results.notes())
    assert "seeds 0, 1 share the path models of training seed 0; seed 2 has the path models" in notes
    assert "sd across training seeds" in notes


def test_the_verdict_names_the_metric_the_forget_score_uses(make_run):
    """Issue 24: 'Before unlearning, <metric> was ...' names the metric behind the forget
    score; with no label probe that is the forget set's own responses, not forget_label_id
    (the text used to hard-code it whatever the score read)."""
    only_responses = {"probes": {"defaults": False, "sets": [
        {"name": "forget_response", "kind": "forget_response", "source": "stage:refusals"}]}}
    results = build_results(load_run(make_run(seeds=(0,), methods=("ga",),
                                              config=only_responses)), write=False)
    verdict = next(v for v in results.verdicts if v.kind == "recency")
    assert verdict.forget_metric == "forget_response/mean"
    assert "Before unlearning, forget_response/mean was -0.800 vs -0.800" in verdict.text
    assert "forget_label_id" not in verdict.text
    default = build_results(load_run(make_run(seeds=(0,), methods=("ga",), name="default")),
                            write=False)
    text = next(v for v in default.verdicts if v.kind == "recency").text
    assert "Before unlearning, forget_label_id/all_mean was" in text


def test_a_forget_last_path_that_did_not_forget_is_said_so(tmp_path, write_cell, path_at):
    """Issue 28: ranking first because the forget metric did not fall is not 'forgetting
    least'; the verdict says which (and results.json keeps it as forget_last_forgot)."""
    run_dir = tmp_path / "run"
    for p, drop in ((1, 2.0), (2, 1.5), (3, 1.0), (4, -0.2)):
        write_cell(run_dir, path_at(p), "ga", 0, drop)
    (verdict,) = recency(build_results(load_run(run_dir)))
    assert verdict.observed is True and verdict.forget_last_forgot is False
    assert "did not forget: its forget score -0.200 is not above 0" in verdict.text
    written = json.loads((run_dir / "results.json").read_text())
    assert written["verdicts"][0]["forget_last_forgot"] is False
    other = tmp_path / "other"
    for p, drop in ((1, 2.0), (2, 1.5), (3, 1.0), (4, 0.4)):
        write_cell(other, path_at(p), "ga", 0, drop)
    (verdict,) = recency(build_results(load_run(other)))
    assert verdict.forget_last_forgot is True and "did not forget" not in verdict.text
