"""Config validation: every bad config is one line naming the key, exit code 2."""

from __future__ import annotations

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
    (with_(model__path="/x"), ["model", "exactly one of `preset` and `path`"]),
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
    assert result.code == 2 and "unlearning.stepz: unknown key" in result.err
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
