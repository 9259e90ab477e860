"""Config validation: every bad config is one line naming the key, exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pathunlearn.config import apply_override, builtin_config_path, load_config, validate_config
from pathunlearn.errors import ConfigError

MINIMAL = {
    "stages": {"a": {"source": "builtin:instructions"}, "b": {"source": "builtin:authors"},
               "f": {"source": "builtin:refusals"}},
    "paths": {"forget_stage": "f", "order": ["a", "b"], "positions": [1, 2, 3]},
}


def write(tmp_path, data, name="c.yaml"):
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return p


def with_(**changes):
    data = yaml.safe_load(yaml.safe_dump(MINIMAL))
    for key, value in changes.items():
        apply_override(data, f"{key.replace('__', '.')}={yaml.safe_dump(value).strip()}")
    return data


def test_demo_config_is_valid_and_expands_four_paths():
    cfg = load_config(builtin_config_path("demo"))
    paths = cfg.paths.expand()
    assert len(paths) == 4
    assert paths[0][0] == "refusals" and paths[3][-1] == "refusals"
    assert all(sorted(p) == sorted(cfg.stages) for p in paths)


def test_default_config_is_the_demo():
    assert load_config(None).name == "demo"


def test_overrides_are_parsed_as_yaml_and_validated(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL), ["training.lr=1e-4", "seeds=[1,2,3]",
                                                 "model.lora.mlp=false"])
    assert cfg.training.lr == 1e-4 and cfg.seeds == [1, 2, 3] and cfg.model.lora.mlp is False


def test_path_forms():
    perms = load_config_dict({**MINIMAL, "paths": {"forget_stage": "f", "permutations": ["a", "b", "f"]}})
    assert len(perms.paths.expand()) == 6
    explicit = load_config_dict({**MINIMAL, "paths": {"forget_stage": "f", "orders": [["a", "f"], ["f", "a"]]}})
    assert explicit.paths.expand() == [("a", "f"), ("f", "a")]
    positions = load_config_dict(MINIMAL)
    assert positions.paths.expand() == [("f", "a", "b"), ("a", "f", "b"), ("a", "b", "f")]


def load_config_dict(data):
    from pathunlearn.config import validate_config

    return validate_config(data)


BAD = [
    # (config, words the one-line message must contain)
    (with_(trainig={"lr": 1}), ["trainig", "unknown key"]),
    (with_(training__lr=-1), ["training.lr", "greater than 0"]),
    (with_(training__optimizer="adam"), ["training.optimizer", "adamw"]),
    (with_(training__batch_size=4, training__micro_batch_size=8), ["training", "micro_batch_size"]),
    (with_(paths__positions=[0, 5]), ["paths", "positions"]),
    (with_(paths__order=["a", "zz"]), ["zz", "not defined"]),
    (with_(paths__orders=[["a", "f"]]), ["paths", "exactly one"]),
    (with_(model__lora__rank=0), ["model.lora.rank"]),
    (with_(model__preset=None), ["model", "give one of `preset` and `path`"]),
    (with_(stages__a__epochs="many"), ["stages.a.epochs"]),
    (with_(unlearning__methods=[{"name": " "}]), ["unlearning.methods.0", "empty"]),
    (with_(stages__a__question_key="q"), ["stages.a", "answer_key"]),
    (with_(paths__permutations=None, paths__order=["a", "f"]), ["paths", "leave the forget stage out"]),
    ({"stages": {}}, ["paths", "Field required"]),
    ("just a string", ["top level must be a mapping"]),
    ("stages: [unclosed", ["not valid YAML"]),
]


@pytest.mark.parametrize("data,words", BAD, ids=range(len(BAD)))
def test_bad_config_is_one_line_and_exit_2(tmp_path, cli, data, words):
    path = write(tmp_path, data)
    with pytest.raises(ConfigError):
        load_config(path)
    result = cli("config", "show", path)
    assert result.code == 2
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert str(path) in lines[0]
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert "Traceback" not in result.err and result.out == ""


def test_bad_override_names_the_key(tmp_path, cli):
    path = write(tmp_path, MINIMAL)
    result = cli("config", "show", path, "unlearning.stepz=3")
    assert result.code == 2 and result.err.strip() == (
        "error: unlearning.stepz=3: unknown key; did you mean unlearning.steps?")
    result = cli("config", "show", path, "paths.forget_stage.x=3")
    assert result.code == 2 and "paths.forget_stage is not a section" in result.err


def test_missing_config_file(tmp_path, cli):
    result = cli("config", "show", tmp_path / "nope.yaml")
    assert result.code == 2 and "cannot read config" in result.err


def test_config_show_prints_resolved_defaults(tmp_path, cli):
    result = cli("config", "show", write(tmp_path, MINIMAL), "training.lr=0.5")
    assert result.code == 0
    shown = yaml.safe_load(result.out)
    assert shown["training"]["lr"] == 0.5
    assert shown["training"]["betas"] == [0.9, 0.999]  # a default filled in
    assert shown["unlearning"]["methods"][1]["name"] == "npo"


@pytest.mark.parametrize("change,words", [
    ({"stages": {**MINIMAL["stages"], "my stage": {"source": "builtin:authors"}}}, "stage name 'my stage'"),
    ({"name": "../escape"}, "name '../escape'"),
])
def test_names_that_become_directories_are_checked(change, words):
    from pathunlearn.config import validate_config

    with pytest.raises(ConfigError, match=words):
        validate_config({**MINIMAL, **change})


def test_superficial_config_is_valid_and_lists_the_six_orders():
    cfg = load_config(builtin_config_path("superficial"))
    assert cfg.study == "superficial" and not cfg.probes.defaults
    letters = {"refuse": "R", "comply": "C", "unlearn": "U"}
    assert ["".join(letters[s] for s in p) for p in cfg.paths.expand()] == [
        "RCU", "CRU", "UCR", "URC", "RUC", "CUR"]
    assert [p.reduce for p in cfg.probes.sets] == ["sum"] * 3
    assert cfg.training.optimizer == "sgd" and cfg.training.scheduler == "cosine"


def test_superficial_study_needs_the_r_c_u_probes(tmp_path):
    data = yaml.safe_load(builtin_config_path("superficial").read_text())
    data["probes"]["sets"] = data["probes"]["sets"][:2]
    with pytest.raises(ConfigError, match="study superficial needs probes named R, C and U"):
        validate_config(data)
    data["probes"]["sets"] = []
    with pytest.raises(ConfigError, match="probes.defaults is false and probes.sets is empty"):
        validate_config(data)


# ---------------------------------------------------------------------------- whose mistake


def problems(path, overrides=()) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_config(path, list(overrides))
    return str(e.value).splitlines()


def test_an_override_typo_names_the_override_not_the_packaged_config(tmp_path):
    # the built-in default config (its file is the package's demo.yaml) with a typo typed
    # on the command line: the line names what the user typed
    assert problems(None, ["training.lrr=1e-4"]) == [
        "training.lrr=1e-4: unknown key; did you mean training.lr?"]
    assert problems(None, ["training.lr=fast"]) == [
        "training.lr=fast: Input should be a valid number, unable to parse string as a number"]
    # a section's own check, failed by an override below it (the demo finetunes fully), or
    # by two overrides together (neither fails it alone); a check across sections
    scope = ("model: `lora.scope` is set but `finetuning` is full: no adapter is trained; set "
             "finetuning: lora or drop lora.scope")
    assert problems(None, ["training.lr=0.1", "model.lora.scope=stage"]) == [
        f"model.lora.scope=stage: {scope}"]
    assert problems(write(tmp_path, MINIMAL), [
        "model.lora.scope=stage", "seeds=[1]", "model.finetuning=full"]) == [
        f"model.lora.scope=stage model.finetuning=full: {scope}"]
    assert problems(None, ["model.lora.rank=4", "paths.forget_stage=nosuch"])[0].startswith(
        "paths.forget_stage=nosuch: stage(s) ['nosuch'] not defined under `stages`")
    assert problems(None, ["training.lr=0.1", "seeds=[]", "model.lora.rank=4"]) == [
        "seeds=[]: `seeds` must list at least one seed"]


def test_a_typo_in_the_file_still_names_the_file(tmp_path):
    path = write(tmp_path, {**MINIMAL, "unlearnig": {"lr": 1e-5}})
    assert problems(path, ["training.lr=0.1"]) == [
        f"{path}: unlearnig: unknown key; did you mean unlearning?"]
    # one of each: the file's line names the file, the override's the override
    assert sorted(problems(path, ["training.batchsize=4"])) == sorted([
        f"{path}: unlearnig: unknown key; did you mean unlearning?",
        "training.batchsize=4: unknown key; did you mean training.batch_size?"])
    # an override that replaces the file's bad value fixes it; one that sets a good value
    # beside it leaves the file's problem the file's
    bad = write(tmp_path, {**MINIMAL, "training": {"lr": -1}}, "bad.yaml")
    assert load_config(bad, ["training.lr=0.1"]).training.lr == 0.1
    assert problems(bad, ["training.seed=1"]) == [
        f"{bad}: training.lr: Input should be greater than 0"]


@pytest.mark.parametrize("override,line", [
    ("unlearnig.lr=1", "unlearnig.lr=1: unlearnig: unknown key; did you mean unlearning?"),
    ("stages.a.sourc=x", "stages.a.sourc=x: unknown key; did you mean stages.a.source?"),
    ("unlearning.methods=[{name: ga, betta: 1}]", "unlearning.methods=[{name: ga, betta: 1}]: "
     "unlearning.methods.0.betta: unknown key; did you mean unlearning.methods.0.beta?"),
    ("unlearning.math.sampels=2",
     "unlearning.math.sampels=2: unknown key; did you mean unlearning.math.samples?"),
    ("controls.matched_start={tolerence: 1}", "controls.matched_start={tolerence: 1}: "
     "controls.matched_start.tolerence: unknown key; did you mean "
     "controls.matched_start.tolerance?"),
    ("probes.sets=[{name: x, source: 'stage:a', kinds: track}]",
     "probes.sets=[{name: x, source: 'stage:a', kinds: track}]: probes.sets.0.kinds: unknown "
     "key; did you mean probes.sets.0.kind?"),
    ("training.zzz=1", "training.zzz=1: unknown key"),  # nothing close: no guess
])
def test_unknown_keys_at_every_level_say_what_was_meant(tmp_path, override, line):
    assert problems(write(tmp_path, MINIMAL), [override]) == [line]


def test_validate_config_keeps_its_lines():
    with pytest.raises(ConfigError) as e:
        validate_config({**MINIMAL, "trainig": {}})
    assert str(e.value) == "<config>: trainig: unknown key; did you mean training?"


# ---------------------------------------------------------------------------- relative paths


def study_with_paths(tmp_path):
    """configs/study.yaml naming files beside it (data/, my_method.py, a model directory)."""
    folder = tmp_path / "configs"
    (folder / "data").mkdir(parents=True)
    (folder / "tiny_model").mkdir()
    config = {
        **MINIMAL,
        "stages": {"a": {"source": "data/a.jsonl"}, "b": {"source": "tofu:data/tofu"},
                   "f": {"source": "sorry-bench:../shared/sorry.jsonl:test"}},
        "model": {"preset": None, "path": "tiny_model"},
        "unlearning": {"methods": [{"name": "my_method.py:Mine"}, {"name": "ga"}],
                       "math": {"source": "gsm8k:data/test.jsonl"}},
        "probes": {"sets": [{"name": "p", "source": "data/p.jsonl", "targets": "data/t.jsonl"},
                            {"name": "q", "source": "stage:a", "targets": ["Sure."]},
                            {"name": "h", "source": "hf:org/probes"}]},
        "output_dir": "runs",
    }
    return write(folder, config, "study.yaml")


def test_relative_paths_of_a_config_file_are_its_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    study_with_paths(tmp_path)
    cfg = load_config("configs/study.yaml")
    assert {n: s.source for n, s in cfg.stages.items()} == {
        "a": "configs/data/a.jsonl", "b": "tofu:configs/data/tofu",
        "f": "sorry-bench:shared/sorry.jsonl:test"}  # lexical: configs/../shared = shared
    assert cfg.model.path == "configs/tiny_model"
    assert [m.name for m in cfg.unlearning.methods] == ["configs/my_method.py:Mine", "ga"]
    assert cfg.unlearning.math.source == "gsm8k:configs/data/test.jsonl"
    assert [(p.source, p.targets) for p in cfg.probes.sets] == [
        ("configs/data/p.jsonl", "configs/data/t.jsonl"), ("stage:a", ["Sure."]),
        ("hf:org/probes", None)]
    assert cfg.output_dir == "runs"  # where outputs go: the working directory's
    # the same file from another working directory means the same files
    monkeypatch.chdir(tmp_path / "configs")
    again = load_config("study.yaml")
    assert again.stages["a"].source == "data/a.jsonl" and again.model.path == "tiny_model"
    assert again.stages["f"].source == "sorry-bench:../shared/sorry.jsonl:test"
    absolute = load_config(tmp_path / "configs" / "study.yaml")
    assert absolute.stages["a"].source == str(tmp_path / "configs" / "data" / "a.jsonl")


def test_overrides_paths_are_the_working_directorys(tmp_path, monkeypatch):
    study_with_paths(tmp_path)
    monkeypatch.chdir(tmp_path)
    cfg = load_config("configs/study.yaml", [
        "stages.a.source=data/x.jsonl", "stages.b.source=tofu:data/tofu2",
        "unlearning.methods=[{name: 'm.py:M'}]", "model.path=other_model",
        "stages.f.epochs=2"])  # a setting beside a file's path keeps the path resolved
    assert cfg.stages["a"].source == "data/x.jsonl"
    assert cfg.stages["b"].source == "tofu:data/tofu2"
    assert cfg.unlearning.methods[0].name == "m.py:M" and cfg.model.path == "other_model"
    assert cfg.stages["f"].source == "sorry-bench:shared/sorry.jsonl:test"


def test_what_is_not_a_local_path_is_kept(tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    path = write(folder, {**MINIMAL, "stages": {
        "a": {"source": "builtin:instructions:train"}, "b": {"source": "hf:org/name:sub:train"},
        "f": {"source": "tofu:hf:locuslab/TOFU"}, "g": {"source": str(tmp_path / "abs.json")}},
        "model": {"preset": None, "path": "HuggingFaceTB/SmolLM2-135M-Instruct"},
        "unlearning": {"methods": [{"name": "my_package.losses:Mine"}]}})
    cfg = load_config(path)
    assert [s.source for s in cfg.stages.values()] == [
        "builtin:instructions:train", "hf:org/name:sub:train", "tofu:hf:locuslab/TOFU",
        str(tmp_path / "abs.json")]
    # no such directory beside the file: a hub id (or the working directory's path); one
    # written ./ or ../ is a local path all the same (so a missing one is reported as such)
    assert cfg.model.path == "HuggingFaceTB/SmolLM2-135M-Instruct"
    local = write(folder, {**MINIMAL, "model": {"preset": None, "path": "./missing_model"}},
                  "local.yaml")
    assert load_config(local).model.path == str(folder / "missing_model")
    assert cfg.unlearning.methods[0].name == "my_package.losses:Mine"


def test_packaged_configs_keep_working_directory_paths():
    # the paper configs read `pathunlearn data samples data/paper-samples`'s files where the
    # user ran it, through the package's path and through the repository's configs link
    from pathunlearn.config import is_packaged_config

    packaged = builtin_config_path("paper/smollm2")
    link = Path(__file__).parents[1] / "configs" / "paper" / "smollm2.yaml"
    for path in (packaged, link):
        assert is_packaged_config(path)
        stage_sources = [s.source for s in load_config(path).stages.values()]
        assert all(s.split(":", 1)[1].startswith("data/paper-samples/") for s in stage_sources)
    assert not is_packaged_config(Path(__file__))


def test_a_run_directorys_resolved_config_is_read_as_written(tmp_path, monkeypatch):
    # RUN_DIR/config.yaml holds the paths as resolved (relative to where the run started):
    # read with relative_to_file=False they are not joined to the run directory again
    from pathunlearn.config import dump_config

    study_with_paths(tmp_path)
    monkeypatch.chdir(tmp_path)
    cfg = load_config("configs/study.yaml")
    saved = tmp_path / "runs" / "experiment" / "config.yaml"
    saved.parent.mkdir(parents=True)
    saved.write_text(dump_config(cfg))
    assert load_config(saved, relative_to_file=False) == cfg
