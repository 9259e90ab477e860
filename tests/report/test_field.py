"""The report's MUSE view (pathunlearn.report.field, its scores in pathunlearn.report.tables):
which criteria a run's probe sets give, and each criterion of one cell from its metric rows, by
hand. tests/data/test_muse.py runs the view end to end on a reduced MUSE-News study."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from pathunlearn.report.tables import cell_scores, field_scores, scores_of


def probe(name: str, role: str, metrics: tuple[str, ...]) -> SimpleNamespace:
    return SimpleNamespace(name=name, role=role, metrics=metrics, kind="track")


MUSE_SETS = [probe("pl_forget", "forget", ("mia",)), probe("pl_holdout", "holdout", ("mia",)),
             probe("vm", "verbmem", ("rouge",)), probe("km_f", "knowmem_forget", ("rouge",)),
             probe("km_r", "knowmem_retain", ("rouge",))]


def test_muses_roles_give_the_four_criteria_as_scores():
    scores = {s.key: s for s in field_scores(MUSE_SETS)}
    assert list(scores) == ["privleak", "muse_verbmem", "muse_knowmem_forget",
                            "muse_knowmem_retain"]
    assert [(s.how, s.metric) for s in scores.values()] == [
        ("end", "mia_min_k/privleak"), ("end", "vm/rougeL_f1"), ("end", "km_f/rougeL_f1"),
        ("ratio", "km_r/rougeL_f1")]
    # a set without rouge scores nothing; TOFU's sets give none of MUSE's criteria
    assert [s.key for s in field_scores(MUSE_SETS[:2] + [probe("vm", "verbmem", ("prob",))])] \
        == ["privleak"]
    tofu = [probe("f", "forget", ("prob", "truth_ratio", "rouge")), probe("r", "retain",
                                                                           ("rouge",))]
    assert not [s for s in field_scores(tofu) if s.key.startswith("muse_")]


def test_a_cells_criteria_are_its_last_rows_metrics_and_c4_is_after_over_before():
    scores = scores_of(MUSE_SETS)  # every score of such a run (forget score, math: None)
    start = {"step": 0, "vm/rougeL_f1": 0.6, "km_f/rougeL_f1": 0.5, "km_r/rougeL_f1": 0.5,
             "mia_min_k/privleak": 10.0}
    end = {"step": 4, "vm/rougeL_f1": 0.25, "km_f/rougeL_f1": 0.125, "km_r/rougeL_f1": 0.4,
           "mia_min_k/privleak": -30.0}
    cell = SimpleNamespace(diverged_at=None, summary={}, rows=[start, {"step": 2}, end])
    got = cell_scores(cell, scores)
    assert got["muse_verbmem"] == 0.25 and got["muse_knowmem_forget"] == 0.125
    assert got["privleak"] == -30.0
    assert got["muse_knowmem_retain"] == pytest.approx(0.8)  # 0.4 / 0.5
    # a path model that answered nothing right before unlearning: C4 is undefined, not inf
    cell.rows[0] = {**start, "km_r/rougeL_f1": 0.0}
    assert cell_scores(cell, scores)["muse_knowmem_retain"] is None
