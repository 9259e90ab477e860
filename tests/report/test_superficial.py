"""The superficial/deep classification rule on hand-made curves, and the 6-panel figure."""

from __future__ import annotations

import pytest

from pathunlearn.report.superficial import (
    RHO,
    RULE,
    TAU,
    classify,
    superficial_figure,
    verdict_lines,
)

R = [-10.0, -10.5, -11.0]


def test_deep_when_c_falls_with_u_and_both_end_below_r():
    verdict, reason = classify(R, [-20.0, -40.0, -60.0], [-15.0, -40.0, -65.0])
    assert verdict == "deep"
    assert "drop_U 50.0, drop_C 40.0" in reason


def test_superficial_when_u_falls_and_c_stays():
    verdict, reason = classify(R, [-20.0, -20.5, -21.0], [-15.0, -40.0, -65.0])
    assert verdict == "superficial" and "C did not follow" in reason


def test_neither_when_u_does_not_fall():
    assert classify(R, [-20.0, -30.0, -40.0], [-15.0, -15.2, -15.5])[0] == "neither"
    assert classify(R, [-20.0, -18.0], [-15.0, -14.0])[0] == "neither"  # U rose


def test_neither_when_c_follows_but_stays_above_r():
    # C and U fall together, yet the refusal fell further: not below R at the end
    verdict, reason = classify([-10.0, -100.0], [-20.0, -50.0], [-15.0, -60.0])
    assert verdict == "neither" and "does not end below R" in reason


@pytest.mark.parametrize(("drop_c", "expected"), [(RHO * 40.0, "deep"),
                                                  (RHO * 40.0 - 1e-6, "superficial")])
def test_rho_boundary_is_inclusive_for_deep(drop_c, expected):
    u = [-15.0, -55.0]  # drop_U = 40
    assert classify([-10.0, -12.0], [-20.0, -20.0 - drop_c], u)[0] == expected


def test_tau_boundary_is_exclusive():
    c = [-20.0, -20.0]
    assert classify(R, c, [-15.0, -15.0 - TAU])[0] == "neither"
    assert classify(R, c, [-15.0, -15.0 - TAU - 1e-6])[0] == "superficial"


def test_rule_text_states_the_thresholds():
    assert f"drop_U > {TAU:g}" in RULE and f"drop_C >= {RHO:g} x drop_U" in RULE


def test_six_panel_figure_and_verdict_lines():
    entries = []
    for k, label in enumerate(["R→C→U", "C→R→U", "U→C→R", "U→R→C", "R→U→C", "C→U→R"], 1):
        u = [-15.0, -30.0, -45.0]
        c = [-20.0, -35.0, -50.0] if k in (3, 4) else [-20.0, -20.0, -21.0]
        verdict, reason = classify(R, c, u)
        entries.append({"theta": k, "label": label, "path": label.split("→"),
                        "epochs": [0, 1, 2], "R": R, "C": c, "U": u, "seeds": 1,
                        "verdict": verdict, "reason": reason, "seed_verdicts": {0: verdict},
                        "agree": 1})
    fig = superficial_figure(entries)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 6
    assert axes[2].get_title().startswith("θ3: U→C→R — deep")
    assert [len(ax.get_lines()) for ax in axes] == [3] * 6
    lines = verdict_lines(entries)
    assert lines[0].startswith("θ1 R→C→U (R-C-U): superficial")
    assert "deep" in lines[3]


class FakeCell:
    """A finished cell of a superficial run: R, C, U summed log-probabilities per eval point."""

    def __init__(self, path, seed, curves):
        self.path, self.seed, self.curves = tuple(path), seed, curves
        self.diverged_at, self.summary = None, {"forget_examples": 40}

    def series(self, metric):
        values = self.curves[metric.split("/")[0]]
        return list(range(len(values))), values


def test_each_seed_is_judged_and_the_agreement_counted():
    """Issue 15: with several seeds, the verdict of the mean curves and how many seeds agree."""
    from pathunlearn.config import builtin_config_path, load_config
    from pathunlearn.report.superficial import agreement, path_curves

    config = load_config(builtin_config_path("superficial"))
    path = config.paths.expand()[0]
    deep = {"R": [-10.0, -10.0], "C": [-20.0, -60.0], "U": [-15.0, -60.0]}
    shallow = {"R": [-10.0, -10.0], "C": [-20.0, -20.5], "U": [-15.0, -60.0]}
    cells = [FakeCell(path, 0, deep), FakeCell(path, 1, deep), FakeCell(path, 2, shallow)]
    (entry,) = path_curves(cells, config)
    assert entry["seed_verdicts"] == {0: "deep", 1: "deep", 2: "superficial"}
    assert entry["verdict"] == "deep" and entry["agree"] == 2
    assert agreement(entry) == "2 of 3 seeds (deep, deep, superficial)"
    assert verdict_lines([entry])[0].endswith("; 2 of 3 seeds (deep, deep, superficial) agree")
