"""The paper's study shape on files only (issue 13): stages read through the four benchmark
adapters from files in each release's format, probes derived from those files, no built-in
source loaded; and the shipped configs/paper/ configs are valid."""

from __future__ import annotations

import json

import pytest
import yaml

from pathunlearn.config import load_config
from pathunlearn.data import suite
from pathunlearn.data.samples import write_release_samples
from pathunlearn.tiny import tiny_key


def files_config(tmp_path) -> dict:
    files = write_release_samples(tmp_path / "data", n=24)
    return {
        "name": "files", "output_dir": str(tmp_path / "runs"), "seeds": [0],
        "model": {"finetuning": "full"},
        "stages": {
            "instructions": {"source": f"skillmix:{files['skillmix']}", "max_examples": 16,
                             "system": "You are a helpful assistant."},
            "tofu": {"source": f"tofu:{files['tofu']}", "max_examples": 16},
            "math": {"source": f"gsm8k:{files['gsm8k_train']}", "max_examples": 16},
            "safety": {"source": f"sorry-bench:{files['sorry_bench']}"},
        },
        "paths": {"forget_stage": "safety", "order": ["instructions", "tofu", "math"],
                  "positions": [1, 4]},
        "training": {"lr": 5e-4, "batch_size": 8, "micro_batch_size": 8},
        "unlearning": {"methods": [{"name": "ga"}], "lr": 1e-4, "batch_size": 8,
                       "micro_batch_size": 8, "steps": 2, "eval_every": 2,
                       "math": {"questions": 2, "source": f"gsm8k:{files['gsm8k_test']}",
                                "greedy": True, "max_new_tokens": 8}},
        "probes": {"prompts": 3, "examples": 4, "heldout": 3},
    }


def test_a_study_on_benchmark_files_loads_no_builtin_source(tmp_path, cli, monkeypatch):
    config = files_config(tmp_path)
    path = tmp_path / "files.yaml"
    path.write_text(yaml.safe_dump(config))
    tiny_key()  # the preset's own identity hashes the suite it was built from: computed first
    loaded = []

    def no_builtin(name, split="train", seed=0):
        loaded.append(f"builtin:{name}:{split}")
        raise AssertionError(f"builtin:{name}:{split} loaded by a study on files")

    monkeypatch.setattr(suite, "load_builtin", no_builtin)
    result = cli("run", path)
    assert result.code == 0, result.err
    assert loaded == []

    run_dir = tmp_path / "runs" / "files"
    probes = {p["name"]: p for p in json.loads((run_dir / "probes.json").read_text())}
    sorry = config["stages"]["safety"]["source"]
    assert list(probes) == [
        "forget_label_id", "forget_response", "instructions_train", "tofu_train",
        "tofu_paraphrased", "math_train", "heldout_safety", "heldout_instructions",
        "heldout_tofu", "heldout_math"]
    assert probes["forget_label_id"]["source"] == f"{sorry}:test"
    assert probes["tofu_train"]["source"] == "stage:tofu" and probes["tofu_train"]["kind"] == \
        "utility"
    # held out: the items after each stage's max_examples, SORRY-BENCH's test split
    tofu_answers = [r["target"] for r in probes["heldout_tofu"]["rows"]]
    trained = [r["target"] for r in probes["tofu_train"]["rows"]]
    assert len(tofu_answers) == 3 and not set(tofu_answers) & set(trained)
    assert probes["heldout_safety"]["source"] == f"{sorry}:test"

    results = json.loads((run_dir / "results.json").read_text())
    for row in results["rows"]:
        assert row["utility_tofu_train"] is not None  # the TOFU file's trained answers
        assert row["re_distance_to_retrain"] is not None
    metrics = [json.loads(x) for x in
               next(run_dir.glob("cells/*/ga/0/metrics.jsonl")).read_text().splitlines()]
    assert "tofu_train/mean" in metrics[-1] and metrics[-1]["re_retrain/kl"] > 0
    page = (run_dir / "report.html").read_text()
    tracked = page[page.index("<h2>Probes</h2>"):]
    for name in probes:
        assert f">{name}<" in tracked
    assert "authors" not in tracked and "builtin:" not in tracked
    md = (run_dir / "results.md").read_text()
    assert "tofu utility" in md and "tofu utility (paraphrased)" in md


@pytest.mark.parametrize("bad,words", [
    ({"stages": {"tofu": {"source": "tofu:{dir}/broken.json"}}},
     ["broken.json: record 1", "answer"]),
    ({"probes": {"sets": [{"name": "x", "source": "stage:authors"}]}},
     ["probes.sets.0 (x): stage 'authors' not defined"]),
    ({"probes": {"sets": [{"name": "x", "source": "builtin:nope"}]}},
     ["probe x", "unknown built-in source 'nope'"]),
])
def test_bad_files_and_probes_fail_before_any_training(tmp_path, cli, bad, words):
    config = files_config(tmp_path)
    (tmp_path / "data" / "broken.json").write_text(json.dumps({"question": "Who?"}) + "\n")
    for section, value in bad.items():
        if section == "stages":
            for name, stage in value.items():
                config["stages"][name] = {"source": stage["source"].format(
                    dir=tmp_path / "data")}
        else:
            config[section] = {**config[section], **value}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    result = cli("train", path)
    assert result.code == 2, result.out
    assert len(result.err.strip().splitlines()) == 1
    for w in words:
        assert w in result.err, (w, result.err)
    assert not (tmp_path / "runs" / "files" / "prefixes").exists()  # nothing trained


@pytest.mark.parametrize("name", ["llama-3.2-1b", "qwen2.5-1.5b", "smollm2"])
def test_paper_configs_are_valid(name):
    from pathunlearn.config import builtin_config_path

    cfg = load_config(builtin_config_path(f"paper/{name}"))
    assert cfg.paths.forget_stage == "safety"
    assert [len(p) for p in cfg.paths.expand()] == [4, 4, 4, 4]
    assert cfg.training.grad_clip is None and cfg.model.finetuning == "lora"
    assert cfg.model.lora.scope == "path"
    assert cfg.unlearning.math.samples == 5 or name == "smollm2"


# --- issue 23: the paper's config on the releases' real-format files --------------------------

FAST = ["model.preset=tiny", "paths.positions=[1,4]", "unlearning.steps=2",
        "unlearning.methods=[{name: ga}]",
        *(f"stages.{s}.max_examples=8" for s in ("instructions", "tofu", "math", "safety")),
        *(f"stages.{s}.epochs=1" for s in ("instructions", "tofu", "safety"))]
"""configs/paper/smollm2.yaml on the tiny preset, small enough for the suite (8 s on 2 cores)."""


def real_format_samples(root, subsets=("full.json", "forget10_perturbed.json")):
    """`pathunlearn data samples` at the paper config's data/paper-samples under ``root``,
    TOFU cut to ``subsets`` (the release's own files)."""
    files = write_release_samples(root / "data" / "paper-samples", n=24)
    for f in files["tofu"].iterdir():
        if f.name not in subsets:
            f.unlink()
    return files


def test_the_paper_config_runs_on_the_releases_real_format_files(tmp_path, cli, monkeypatch):
    """The must-show study: TOFU `full` (question/answer only) plus `forget10_perturbed`, the
    SORRY-BENCH directory, GSM8K and Instruct-SkillMix, as they ship; configs/paper/smollm2.yaml
    (its sources relative to the working directory) passes `config check` and runs."""
    from pathunlearn.config import builtin_config_path

    monkeypatch.chdir(tmp_path)
    files = real_format_samples(tmp_path)
    full = [json.loads(x) for x in (files["tofu"] / "full.json").read_text().splitlines()]
    assert all(set(r) == {"question", "answer"} for r in full)
    config = builtin_config_path("paper/smollm2")
    check = cli("config", "check", config, "model.preset=tiny")
    assert check.code == 0, check.err
    result = cli("run", config, *FAST)
    assert result.code == 0, result.err
    run_dir = tmp_path / "runs" / "paper-smollm2"
    probes = {p["name"]: p for p in json.loads((run_dir / "probes.json").read_text())}
    perturbed = [json.loads(x) for x in
                 (files["tofu"] / "forget10_perturbed.json").read_text().splitlines()]
    assert probes["tofu_paraphrased"]["source"] == "tofu:data/paper-samples/TOFU:paraphrased"
    assert [r["prompt"][-1]["content"] for r in probes["tofu_paraphrased"]["rows"]] == \
        [r["paraphrased_question"] for r in perturbed]
    assert probes["heldout_safety"]["source"] == "sorry-bench:data/paper-samples/sorry-bench:test"
    assert json.loads((run_dir / "plan.json").read_text())["probe_notes"] == []
    rows = json.loads((run_dir / "results.json").read_text())["rows"]
    assert len(rows) == 2 and all(r["utility_tofu_paraphrased"] is not None for r in rows)
    assert (run_dir / "report.html").is_file()


def test_full_alone_passes_the_check_its_paraphrased_probe_left_out_with_a_note(tmp_path, cli,
                                                                               monkeypatch):
    """Issue 23's reproduction: a real-format full.json alone stopped `config check` with
    "probe tofu_paraphrased: full.json: record 1: missing field 'paraphrased_question'"."""
    from pathunlearn.config import builtin_config_path
    from pathunlearn.plan import plan_run
    from pathunlearn.report.html import _probe_section

    monkeypatch.chdir(tmp_path)
    real_format_samples(tmp_path, subsets=("full.json",))
    config = builtin_config_path("paper/smollm2")
    check = cli("config", "check", config, "model.preset=tiny")
    assert check.code == 0, check.err
    plan = plan_run(load_config(config, ["model.preset=tiny"]))
    assert "tofu_paraphrased" not in [p.name for p in plan.probes]
    assert len(plan.probe_notes) == 1
    note = plan.probe_notes[0]
    assert note.startswith("tofu_paraphrased: left out: data/paper-samples/TOFU/full.json has "
                           "no 'paraphrased_question'")
    assert "forget10_perturbed.json" in note and "retain_perturbed.json" in note
    page = _probe_section(list(plan.probes), plan.probe_notes)
    assert "Default probe sets left out" in page and "tofu_paraphrased: left out" in page
