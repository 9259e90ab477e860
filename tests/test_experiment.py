"""The main job end to end on a reduced config: train, retrain baseline, unlearn, report."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from pathunlearn.config import builtin_config_path, load_config
from pathunlearn.plan import plan_run
from pathunlearn.rundir import unit_dir
from pathunlearn.timing import CELL_PHASES

REDUCED = {
    "name": "e2e", "seeds": [0, 1],
    "model": {"finetuning": "full"},
    "stages": {"instructions": {"source": "builtin:instructions", "epochs": 1, "max_examples": 32},
               "authors": {"source": "builtin:authors", "epochs": 1, "max_examples": 32},
               "refusals": {"source": "builtin:refusals", "epochs": 2, "max_examples": 32}},
    "paths": {"forget_stage": "refusals", "order": ["instructions", "authors"],
              "positions": [1, 3]},
    "training": {"lr": 5e-4, "batch_size": 8, "micro_batch_size": 8, "seed": 0},
    "unlearning": {"methods": [{"name": "ga"}, {"name": "npo"}], "lr": 1e-4, "batch_size": 8,
                   "micro_batch_size": 8, "steps": 3, "eval_every": 3,
                   "math": {"questions": 3, "samples": 2, "max_new_tokens": 8}},
    "probes": {"prompts": 2, "examples": 4},
    "relearn": {"steps": 2, "forget_examples": 4},
}


def test_plan_includes_the_retrain_baseline(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(REDUCED))
    plan = plan_run(load_config(path))
    assert plan.retrain_paths == (("instructions", "authors"),)  # the forget stage removed
    # r, r>i, r>i>a, i, i>a, i>a>r: the retrain model i>a is a prefix of p=3 and costs nothing
    assert len(plan.prefixes) == 6
    assert plan.leaf(("instructions", "authors"), 1).key == plan.leaf(
        ("instructions", "authors", "refusals"), 1).parent_key


def test_run_end_to_end_then_rerun_skips_everything(tmp_path, cli):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({**REDUCED, "output_dir": str(tmp_path / "runs")}))
    first = cli("run", path)
    assert first.code == 0, first.err
    run_dir = tmp_path / "runs" / "e2e"
    for name in ("config.yaml", "plan.json", "results.json", "results.csv", "results.md",
                 "report.html", "phases.json"):
        assert (run_dir / name).is_file(), name
    assert "recency verdict" in first.out and "report:" in first.out
    # issue 28: each finished cell's line says how long the rest should take, the last none
    cell_lines = [x for x in first.out.splitlines()
                  if re.match(r"\[\d+/\d+\] \S+ \S+ seed \d+: \d+ steps", x)]
    assert len(cell_lines) >= 4
    assert all(re.search(r"; ~\d+(s| min) left$", x) for x in cell_lines[:-1])
    assert "left" not in cell_lines[-1]
    results = json.loads((run_dir / "results.json").read_text())
    rows = results["rows"] if "rows" in results else results["table"]
    assert len(rows) == 4  # 2 paths x 2 methods
    metrics = [json.loads(x) for x in (next(run_dir.glob("cells/*/ga/0/metrics.jsonl")))
               .read_text().splitlines()]
    assert metrics[-1]["re_retrain/kl"] > 0
    assert list((run_dir / "figures").glob("*.png"))
    summary = json.loads(next(run_dir.glob("cells/*/npo/1/summary.json")).read_text())
    assert 0 <= summary["math_before"] <= 1 and 0 <= summary["math_after"] <= 1
    # issue 29: seconds per phase in every cell, and in phases.json their sums over the cells
    assert set(summary["phases"]) == set(CELL_PHASES)
    assert all(v >= 0 for v in summary["phases"].values()) and summary["phases"]["steps"] > 0
    # relearning's optimizer steps apart from its evaluations (both measured: 2 runs of 2)
    assert summary["phases"]["relearn_steps"] > 0 and summary["phases"]["relearn"] > 0
    summaries = [json.loads(p.read_text()) for p in run_dir.glob("cells/**/summary.json")]
    cells = json.loads((run_dir / "phases.json").read_text())["cells"]
    assert cells == pytest.approx({k: sum(s["phases"][k] for s in summaries) for k in cells})
    assert all(r["math_utility"] is not None for r in rows)
    # relearning (issue 15): per cell a retain and a forget run of 2 steps, forget probes only
    relearn = [json.loads(x) for x in next(run_dir.glob("cells/*/ga/0/relearn.jsonl"))
               .read_text().splitlines()]
    assert [(r["data"], r["step"]) for r in relearn] == [("retain", 0), ("retain", 1),
                                                          ("retain", 2), ("forget", 0),
                                                          ("forget", 1), ("forget", 2)]
    # the same model (scored as another set of tries: fp32 rounding apart)
    assert relearn[0]["forget_label_id/all_mean"] == pytest.approx(
        metrics[-1]["forget_label_id/all_mean"], abs=1e-5)
    assert not any(k.startswith("authors_train") for k in relearn[0])
    entries = results["relearn"]
    assert len(entries) == 8  # 2 paths x 2 methods x (retain, forget)
    for e in entries:
        assert e["steps"] == [0, 1, 2] and e["seeds"] == 2
        assert e["recovered"] is None or e["recovered"] == pytest.approx(
            (e["relearned"] - e["unlearned"]) / (e["before"] - e["unlearned"]))
    assert "Relearning after unlearning" in (run_dir / "report.html").read_text()
    assert list((run_dir / "figures").glob("relearn_ga.png"))
    page = (run_dir / "report.html").stat().st_mtime_ns
    second = cli("run", path)
    assert second.code == 0
    assert "already done" in second.out and "0 already done" not in second.out
    # issue 16: nothing changed, so the report is not rebuilt, but its verdicts are printed
    assert "report up to date" in second.out and "recency verdict" in second.out
    assert (run_dir / "report.html").stat().st_mtime_ns == page
    history = json.loads((run_dir / "phases_history.json").read_text())
    assert len(history) == 2 and history[0]["seconds"]["unlearn"] > history[1]["seconds"]["unlearn"]


def test_superficial_study_end_to_end(tmp_path, cli):
    # the shipped superficial config, reduced: 2 orders (theta_1, theta_3), 1 epoch per stage,
    # 2 unlearning epochs of the 40 U examples at batch 8
    cfg = yaml.safe_load(builtin_config_path("superficial").read_text())
    cfg |= {"name": "sup", "output_dir": str(tmp_path / "runs"), "seeds": [0]}
    cfg["paths"]["orders"] = [["refuse", "comply", "unlearn"], ["unlearn", "comply", "refuse"]]
    for stage in cfg["stages"].values():
        stage["epochs"] = 1
    cfg["unlearning"] |= {"steps": 10, "eval_every": 5}
    path = tmp_path / "sup.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = cli("run", path)
    assert result.code == 0, result.err
    assert "superficial vs deep forgetting" in result.out
    assert result.out.count("θ1 R→C→U (refuse-comply-unlearn): ") == 1
    assert "θ2 U→C→R (unlearn-comply-refuse): " in result.out
    run_dir = tmp_path / "runs" / "sup"
    assert (run_dir / "figures" / "superficial.png").is_file()
    assert (run_dir / "figures" / "superficial.svg").is_file()
    summary = json.loads((run_dir / "superficial.json").read_text())
    assert [e["epochs"] for e in summary["paths"]] == [[0.0, 1.0, 2.0]] * 2
    assert {e["verdict"] for e in summary["paths"]} <= {"deep", "superficial", "neither"}
    page = (run_dir / "report.html").read_text()
    assert page.index("Superficial vs deep forgetting") < page.index("Recency verdict")
    assert "θ1: R→C→U" in page and "drop_U &gt; 1" in page
    assert 'alt="superficial"' in page
    metrics = json.loads(next(run_dir.glob("cells/*/ga/0/metrics.jsonl")).open().readline())
    assert {"R/sum", "C/sum", "U/sum"} <= set(metrics)
    assert not any(k.startswith("forget_label") for k in metrics)  # probes.defaults: false


def test_matched_start_control_end_to_end(tmp_path, cli):
    """Issue 15: the forget-last path's last stage is trained again and stopped where the
    unlearn target reaches the other paths' starting level; its cells unlearn from there and
    the report gives the verdict with and without the control."""
    from test_resilience import REDUCED as SMALL

    data = {**SMALL, "output_dir": str(tmp_path / "runs"),
            "stages": {k: {**v, "epochs": 2} for k, v in SMALL["stages"].items()},
            "controls": {"matched_start": {"tolerance": 0.05}}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    cfg = load_config(path)
    plan = plan_run(cfg)
    (matched,) = plan.matched
    assert matched.path == ("instructions", "refusals")
    controls = [c for c in plan.cells if c.control]
    assert [c.path for c in controls] == [("instructions", "refusals")]
    # the study's cells keep their keys: turning the control on recomputes none of them
    plain = plan_run(load_config(path, ["controls.matched_start=null"]))
    assert [c.key for c in plain.cells] == [c.key for c in plan.cells if not c.control]

    result = cli("run", path)
    assert result.code == 0, result.err
    run_dir = tmp_path / "runs" / "small"
    info = json.loads((unit_dir(run_dir, matched) / "prefix.json").read_text())
    leaf = json.loads((run_dir / "prefixes" / matched.leaf_key / "prefix.json").read_text())
    assert info["control"] == "matched_start" and info["metric"] == "forget_label_id/target"
    assert info["reached"] and info["trace"][-1]["value"] >= info["level"] - 0.05
    assert all(t["value"] < info["level"] - 0.05 for t in info["trace"][:-1])
    assert info["steps"] == info["stopped_at"] < leaf["steps"]
    # the stopped stage took the same steps as the full one, up to where it stopped
    rows = [json.loads(x) for x in (unit_dir(run_dir, matched) / "metrics.jsonl")
            .read_text().splitlines()]
    full = [json.loads(x) for x in (run_dir / "prefixes" / matched.leaf_key / "metrics.jsonl")
            .read_text().splitlines()]
    assert [(r["loss"], r["lr"]) for r in rows] == [(r["loss"], r["lr"]) for r in
                                                    full[:len(rows)]]
    cell = json.loads((run_dir / "cells" / "instructions-refusals@matched_start" / "npo" / "0"
                       / "metrics.jsonl").read_text().splitlines()[0])
    assert cell["forget_label_id/target"] == pytest.approx(info["trace"][-1]["value"], abs=1e-5)
    # phases.json's cells are every cell's phases added up, the control's included
    steps = sum(json.loads(f.read_text())["phases"]["steps"]
                for f in run_dir.glob("cells/**/summary.json"))
    summed = json.loads((run_dir / "phases.json").read_text())["cells"]["steps"]
    assert summed == pytest.approx(steps, abs=1e-3)
    results = json.loads((run_dir / "results.json").read_text())
    control = results["matched_start"]
    assert control["models"][0]["stopped_at"] == info["stopped_at"]
    (verdict,) = control["verdicts"]
    assert verdict["kind"] == "recency_matched" and verdict["text"].startswith(
        "With the matched-start control: npo:")
    assert len(results["rows"]) == 2  # the study's table keeps its own cells
    assert "recency verdict with the matched-start control" in result.out
    # issue 28: the control's cells are labelled as such in the progress lines
    assert "instructions-refusals npo seed 0 (matched-start control): " in result.out
    assert "Recency verdict with the matched-start control" in (run_dir / "report.html"
                                                                ).read_text()


def test_a_phase_timed_apart_leaves_out_what_it_times_inside(monkeypatch):
    """Phases.apart: the outer phase gets the block's time less its inner phases', which
    are phases of their own (a fake clock: 10 s in all, 3 + 2 s inside)."""
    import pathunlearn.timing as timing

    clock = iter([0.0, 1.0, 4.0, 5.0, 7.0, 10.0])
    monkeypatch.setattr(timing.time, "perf_counter", lambda: next(clock))
    phases = timing.Phases()
    with phases.apart("relearn") as inner:
        with inner.time("relearn_steps"):
            pass
        with inner.time("relearn_steps"):
            pass
    assert phases.seconds == {"relearn": 5.0, "relearn_steps": 5.0}
