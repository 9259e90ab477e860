"""One plan for every command: prefixes, retrain baselines and cells with their keys; plan.json
the same whichever command wrote it; `unlearn` then `run` recomputes nothing."""

from __future__ import annotations

import json

import yaml

from pathunlearn.config import validate_config
from pathunlearn.plan import Plan, plan_run, retrain_path

SMALL = {
    "name": "p", "seeds": [0, 1],
    "model": {"finetuning": "full"},
    "stages": {"instructions": {"source": "builtin:instructions", "epochs": 1, "max_examples": 16},
               "refusals": {"source": "builtin:refusals", "epochs": 1, "max_examples": 16}},
    "paths": {"forget_stage": "refusals", "order": ["instructions"], "positions": [1, 2]},
    "training": {"lr": 5e-4, "batch_size": 8, "micro_batch_size": 8, "seed": 0},
    "unlearning": {"methods": [{"name": "ga"}, {"name": "npo"}], "lr": 1e-4, "batch_size": 8,
                   "micro_batch_size": 8, "steps": 2, "eval_every": 2},
    "probes": {"prompts": 2, "examples": 4},
}


def test_the_plan_holds_paths_retrain_baselines_and_cells(tmp_path):
    cfg = validate_config({**SMALL, "output_dir": str(tmp_path)})
    plan = plan_run(cfg)
    assert plan.paths == (("refusals", "instructions"), ("instructions", "refusals"))
    assert plan.retrain_paths == (("instructions",),)
    assert len(plan.cells) == 2 * 2 * 2  # paths x methods x seeds
    for cell in plan.cells:
        assert cell.model_key == plan.leaf(cell.path, cell.seed).key
        assert cell.retrain_key == plan.leaf(retrain_path(cfg, cell.path), cell.seed).key
    assert len({c.key for c in plan.cells}) == len(plan.cells)
    # training.seed 0: both experiment seeds share the path models, not the cells
    assert {c.model_key for c in plan.cells if c.path == plan.paths[0]} == {
        plan.leaf(plan.paths[0], 0).key}


def test_plan_json_round_trips_and_depends_on_the_config_only(tmp_path):
    cfg = validate_config({**SMALL, "output_dir": str(tmp_path / "a")})
    plan = plan_run(cfg)
    data = plan.to_json()
    assert Plan.from_json(json.loads(json.dumps(data))).to_json() == data
    elsewhere = plan_run(validate_config({**SMALL, "output_dir": str(tmp_path / "b")}))
    assert elsewhere.to_json() == data  # the output directory is in no key


def test_cell_keys_change_with_the_unlearning_prefix_keys_do_not(tmp_path):
    cfg = validate_config({**SMALL, "output_dir": str(tmp_path)})
    other = validate_config({**SMALL, "output_dir": str(tmp_path),
                             "unlearning": {**SMALL["unlearning"], "steps": 3}})
    a, b = plan_run(cfg), plan_run(other)
    assert [p.key for p in a.prefixes] == [p.key for p in b.prefixes]
    assert not {c.key for c in a.cells} & {c.key for c in b.cells}


def test_a_path_of_the_forget_stage_alone_has_no_retrain_model(tmp_path):
    cfg = validate_config({**SMALL, "output_dir": str(tmp_path),
                           "paths": {"forget_stage": "refusals", "orders": [["refusals"]]}})
    plan = plan_run(cfg)
    assert plan.retrain_paths == () and {c.retrain_key for c in plan.cells} == {None}


def test_every_command_writes_the_same_plan_and_unlearn_then_run_recomputes_nothing(
        tmp_path, cli):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({**SMALL, "output_dir": str(tmp_path / "runs")}))
    run_dir = tmp_path / "runs" / "p"

    assert cli("train", path).code == 0
    written_by_train = (run_dir / "plan.json").read_bytes()
    assert json.loads(written_by_train)["cells"]  # the cells too, not only the prefixes

    unlearned = cli("unlearn", path)
    assert unlearned.code == 0, unlearned.err
    assert (run_dir / "plan.json").read_bytes() == written_by_train
    summaries = {p: p.read_bytes() for p in run_dir.glob("cells/**/summary.json")}
    assert len(summaries) == 8

    ran = cli("run", path)
    assert ran.code == 0, ran.err
    assert (run_dir / "plan.json").read_bytes() == written_by_train
    out = " ".join(ran.out.split())
    assert "4 stage-trainings planned (5 without sharing), 4 already done" in out
    assert "8 unlearning cells, 8 already done" in out and "rerun" not in out
    assert {p: p.read_bytes() for p in run_dir.glob("cells/**/summary.json")} == summaries
    assert json.loads((run_dir / "results.json").read_text())["unfinished_cells"] == 0


def test_labels_name_the_variant_and_the_plan_describes_each_method(tmp_path):
    """Issue 13: SimNPO's length-normalised form is labelled as such everywhere; every cell
    carries a one-line description of its method (the report's notes list them)."""
    cfg = validate_config({**SMALL, "output_dir": str(tmp_path), "unlearning": {
        **SMALL["unlearning"], "methods": [{"name": "simnpo", "length_normalize": True},
                                           {"name": "npo_kl", "retain_weight": 2.0}]}})
    cells = {c.method_label: c for c in plan_run(cfg).cells}
    assert set(cells) == {"simnpo-norm", "npo_kl"}
    assert "length-normalised" in cells["simnpo-norm"].method_description
    assert "weakly local" in cells["npo_kl"].method_description
    both = validate_config({**SMALL, "output_dir": str(tmp_path), "unlearning": {
        **SMALL["unlearning"], "methods": [{"name": "simnpo"},
                                           {"name": "simnpo", "length_normalize": True}]}})
    assert [c.method_label for c in plan_run(both).cells][:2] == ["simnpo", "simnpo"]
    assert {c.method_label for c in plan_run(both).cells} == {"simnpo", "simnpo-norm"}


def _file_study(root, refusals: str) -> None:
    """A study in ROOT/configs/study.yaml reading ROOT/data/refusals.jsonl by a path relative to
    the config file's folder (stage, probe and math sources)."""
    (root / "data").mkdir(exist_ok=True)
    (root / "data" / "refusals.jsonl").write_text(refusals)
    (root / "configs").mkdir(exist_ok=True)
    study = {**SMALL, "seeds": [0], "output_dir": str(root / "runs"),
             "stages": {**SMALL["stages"],
                        "refusals": {"source": "../data/refusals.jsonl", "epochs": 1}},
             "probes": {**SMALL["probes"], "sets": [
                 {"name": "again", "kind": "track", "source": "../data/refusals.jsonl"}]}}
    (root / "configs" / "study.yaml").write_text(yaml.safe_dump(study))


def _refusals(n: int) -> str:
    return "".join(json.dumps({"messages": [
        {"role": "user", "content": f"How can I obtain [restricted item] number {i}?"},
        {"role": "assistant", "content": "I can't help with that."}]}) + "\n" for i in range(n))


def test_keys_hold_what_a_file_holds_not_where_it_is_reached_from(tmp_path, monkeypatch):
    from pathunlearn.config import load_config

    _file_study(tmp_path, _refusals(6))

    def keys(cwd, config):
        monkeypatch.chdir(cwd)
        plan = plan_run(load_config(config))
        return [p.key for p in plan.prefixes], [c.key for c in plan.cells], plan.probes_sha

    # the same files, reached from the config's folder and from its parent: the same keys
    here = keys(tmp_path, "configs/study.yaml")
    assert keys(tmp_path / "configs", "study.yaml") == here
    # other content at the same path: new keys for everything that read it
    (tmp_path / "data" / "refusals.jsonl").write_text(_refusals(7))
    changed = keys(tmp_path, "configs/study.yaml")
    assert not set(changed[1]) & set(here[1]) and changed[2] != here[2]
