"""Figures: PNG + SVG per method and kind, one panel column per swept value."""

from __future__ import annotations

import json

from pathunlearn.report.plots import Panel, curves_figure, write_figures
from pathunlearn.report.results import build_results
from pathunlearn.rundir import load_run

FORGET = "refusals"


def test_figures_written_as_png_and_svg(make_run):
    run_dir = make_run(seeds=(0, 1), methods=("ga",), re=True)
    files = write_figures(build_results(load_run(run_dir), write=False))
    names = sorted(f.name for f in files)
    kinds = ("forget_label", "utility", "re_distance", "pairwise")
    assert names == sorted(f"{k}_ga.{ext}" for k in kinds for ext in ("png", "svg"))
    for f in files:
        head = f.read_bytes()[:64]
        assert head.startswith(b"\x89PNG") if f.suffix == ".png" else b"<svg" in f.read_bytes()
    index = json.loads((run_dir / "figures" / "index.json").read_text())
    assert [e["kind"] for e in index] == list(kinds)


def test_sweep_gets_one_panel_column_per_value(tmp_path, write_cell, path_at):
    for lr in (1e-5, 5e-5):
        for p in (1, 4):
            write_cell(tmp_path / "run", path_at(p), "ga", 0, 1.0, sweep=(f"lr{lr:g}",), lr=lr)
    panels = (Panel("forget_label_id/all_mean", "x"), Panel("forget_label_id/target", "y"))
    fig = curves_figure(load_run(tmp_path / "run").cells, panels, FORGET)
    axes = fig.get_axes()
    assert len(axes) == 4 and {a.get_title() for a in axes} >= {"x — lr1e-05", "x — lr5e-05"}
    assert len(axes[0].get_lines()) == 2  # a curve per path
