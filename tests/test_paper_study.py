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
