"""Unlearning methods as plug-ins: resolution by name / import path / file / entry point, the
contract a user's class must keep, and a user's method through `pathunlearn run`."""

from __future__ import annotations

import json
import shutil
from importlib import metadata
from pathlib import Path

import pytest
import torch
import yaml

from pathunlearn import methods
from pathunlearn.config import MethodConfig, validate_config
from pathunlearn.errors import ConfigError
from pathunlearn.losses import ga_loss
from pathunlearn.methods import (
    BUILTIN_METHODS,
    ForgetBatch,
    Method,
    make_method,
    method_identity,
    resolve_method,
)
from pathunlearn.plan import plan_run

EXAMPLE = Path(__file__).parents[1] / "examples" / "custom_method.py"

USER_MODULE = '''
import torch
from pathunlearn.methods import ForgetBatch, Method


class HalfGA(Method):
    name = "half_ga"

    def forget_loss(self, batch: ForgetBatch) -> torch.Tensor:
        return 0.5 * (batch.token_logp * batch.mask).sum() / batch.num_tokens
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A module `user_losses` in a temp directory on sys.path (outside the package)."""
    (tmp_path / "user_losses.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path / "user_losses.py"


def batch() -> ForgetBatch:
    token_logp = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, -1.0, -3.0]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    return ForgetBatch(token_logp, mask, num_tokens=5, num_sequences=2)


def test_built_in_names_resolve_to_their_classes():
    for name, cls in BUILTIN_METHODS.items():
        assert resolve_method(name) is cls and cls.name == name
        assert method_identity(cls) == {"name": name}


def test_import_path_and_file_resolve_a_users_class(user_module):
    by_module = resolve_method("user_losses:HalfGA")
    assert by_module.name == "half_ga" and by_module.local
    by_file = resolve_method(f"{user_module}:HalfGA")
    assert by_file.name == "half_ga"
    assert resolve_method(f"{user_module}:HalfGA") is by_file  # one module per file
    loss = make_method(MethodConfig(name="user_losses:HalfGA")).forget_loss(batch())
    assert loss.item() == pytest.approx(0.5 * -7.5 / 5)


def test_entry_point_resolves(user_module, monkeypatch):
    ep = metadata.EntryPoint(name="half", value="user_losses:HalfGA",
                             group=methods.ENTRY_POINT_GROUP)
    monkeypatch.setattr(methods.metadata, "entry_points",
                        lambda group: [ep] if group == methods.ENTRY_POINT_GROUP else [])
    assert resolve_method("half").name == "half_ga"


def test_user_method_identity_hashes_its_file(user_module):
    ident = method_identity(resolve_method(f"{user_module}:HalfGA"))
    assert ident["name"] == "half_ga" and len(ident["source_sha"]) == 64


@pytest.mark.parametrize("spec,words", [
    ("sgd_ascent", "method 'sgd_ascent' is unknown: give a built-in method"),
    ("no_such_module_xyz:Thing", "cannot import no_such_module_xyz"),
    ("user_losses:Missing", "has no attribute 'Missing'"),
    ("missing_dir/f.py:Thing", "no such file"),
])
def test_unknown_methods_are_one_line_config_errors(user_module, spec, words):
    with pytest.raises(ConfigError, match=words) as e:
        resolve_method(spec)
    assert "\n" not in str(e.value)


class NotAMethod:
    name = "x"


class NoLoss(Method):
    name = "noloss"


class LocalWithRetain(Method):
    name = "lwr"

    def forget_loss(self, batch):
        return batch.token_logp.sum()

    def retain_loss(self, batch):
        return batch.logits.sum()


class WeakWithoutRetain(LocalWithRetain):
    name = "wwr"
    local = False
    retain_loss = Method.retain_loss


class Clash(LocalWithRetain):
    name = "ga"
    retain_loss = Method.retain_loss


class BadName(Clash):
    name = "a/b"


@pytest.mark.parametrize("cls,words", [
    (NotAMethod, "not a subclass of pathunlearn.methods.Method"),
    (NoLoss, "defines no forget_loss"),
    (LocalWithRetain, "a local method uses only forget-set gradients"),
    (WeakWithoutRetain, "`local = False` but no retain_loss"),
    (Clash, "is the built-in method's"),
    (BadName, "`name` must be"),
])
def test_the_method_contract_is_checked(cls, words):
    with pytest.raises(ConfigError, match=words):
        methods.check_method(cls, "spec")


def test_the_example_method_is_ga_reweighted():
    wga = resolve_method(f"{EXAMPLE}:WeightedGA")
    assert wga.name == "wga" and wga.local
    b = batch()
    plain = ga_loss(b.token_logp, b.mask, b.num_tokens)
    alpha0 = make_method(MethodConfig(name=f"{EXAMPLE}:WeightedGA", options={"alpha": 0.0}))
    assert alpha0.forget_loss(b).item() == pytest.approx(plain.item())
    # alpha 1: each token weighted by its probability: sum(p log p) / N
    alpha1 = make_method(MethodConfig(name=f"{EXAMPLE}:WeightedGA", options={"alpha": 1.0}))
    p = b.token_logp.exp() * b.mask
    assert alpha1.forget_loss(b).item() == pytest.approx((p * b.token_logp).sum().item() / 5)


def test_plan_names_the_bad_method_and_the_cli_exits_2(tmp_path, cli):
    data = {"stages": {"f": {"source": "builtin:refusals"}},
            "paths": {"forget_stage": "f", "orders": [["f"]]},
            "unlearning": {"methods": [{"name": "ga"}, {"name": "gradient_ascentt"}]}}
    with pytest.raises(ConfigError, match="unlearning.methods.1.name: method 'gradient_ascentt'"):
        plan_run(validate_config(data))
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({**data, "output_dir": str(tmp_path / "runs")}))
    result = cli("train", path, "--plan")
    assert result.code == 2 and len(result.err.strip().splitlines()) == 1
    assert "gradient_ascentt" in result.err and not (tmp_path / "runs").exists()


def test_methods_of_one_class_are_told_apart_by_their_options(tmp_path):
    spec = f"{EXAMPLE}:WeightedGA"
    data = {"stages": {"f": {"source": "builtin:refusals"}},
            "paths": {"forget_stage": "f", "orders": [["f"]]},
            "unlearning": {"methods": [{"name": spec, "options": {"alpha": 1.0}},
                                       {"name": spec, "options": {"alpha": 0.5}}]}}
    labels = [c.method_label for c in plan_run(validate_config(data)).cells]
    assert labels == ["wga-opt-alpha1", "wga-opt-alpha0.5"]


def test_a_users_method_runs_through_pathunlearn_run(tmp_path, cli, monkeypatch):
    """The issue's example, copied outside the package, named by file and by module."""
    shutil.copy(EXAMPLE, tmp_path / "my_unlearning.py")
    monkeypatch.syspath_prepend(str(tmp_path))
    config = {
        "name": "custom", "output_dir": str(tmp_path / "runs"), "seeds": [0],
        "model": {"finetuning": "full"},
        "stages": {"instructions": {"source": "builtin:instructions", "epochs": 1,
                                    "max_examples": 16},
                   "refusals": {"source": "builtin:refusals", "epochs": 1, "max_examples": 16}},
        "paths": {"forget_stage": "refusals", "order": ["instructions"], "positions": [1, 2]},
        "training": {"lr": 5e-4, "batch_size": 8, "micro_batch_size": 8},
        "unlearning": {"methods": [{"name": "ga"},
                                   {"name": f"{tmp_path / 'my_unlearning.py'}:WeightedGA",
                                    "options": {"alpha": 1.0}},
                                   {"name": "my_unlearning:WeightedGA",
                                    "options": {"alpha": 0.0}}],
                       "lr": 1e-4, "batch_size": 8, "micro_batch_size": 8, "steps": 2,
                       "eval_every": 2},
        "probes": {"prompts": 2, "examples": 4},
    }
    path = tmp_path / "custom.yaml"
    path.write_text(yaml.safe_dump(config))
    result = cli("run", path)
    assert result.code == 0, result.err
    run_dir = tmp_path / "runs" / "custom"
    rows = json.loads((run_dir / "results.json").read_text())["rows"]
    methods_in_table = {r["method"] for r in rows}
    assert methods_in_table == {"ga", "wga-opt-alpha1", "wga-opt-alpha0"}
    assert all(r["forget_score"] is not None for r in rows)
    # alpha 0 is plain GA: the same cells, the same numbers
    ga = {r["path_label"]: r["forget_score"] for r in rows if r["method"] == "ga"}
    wga0 = {r["path_label"]: r["forget_score"] for r in rows if r["method"] == "wga-opt-alpha0"}
    assert wga0 == pytest.approx(ga, abs=1e-5)
    assert "wga-opt-alpha1" in (run_dir / "results.md").read_text()
    cells = json.loads((run_dir / "plan.json").read_text())["cells"]
    assert {c["local"] for c in cells} == {True}


@pytest.mark.parametrize("typo,meant", [("gaa", "ga"), ("simnpo_norm", "simnpo-norm"),
                                        ("npoo_kl", "npo_kl"), ("grad_diff", "graddiff")])
def test_an_unknown_method_name_says_which_one_was_meant(typo, meant):
    with pytest.raises(ConfigError, match=f"method '{typo}' is unknown \\(did you mean "
                                          f"{meant}\\?\\)"):
        resolve_method(typo)


def test_a_missing_class_of_a_users_file_says_which_one_was_meant(user_module):
    with pytest.raises(ConfigError, match="has no attribute 'HalfG' \\(did you mean HalfGA\\?\\)"):
        resolve_method(f"{user_module}:HalfG")


def test_the_config_knows_the_built_in_names():
    from pathunlearn.config import BUILTIN_METHOD_NAMES

    assert BUILTIN_METHOD_NAMES == tuple(BUILTIN_METHODS)


# every label the table prints for built-in methods, with the settings it stands for
LABELLED = [
    [{"name": "simnpo"}, {"name": "simnpo", "length_normalize": True}],
    [{"name": "simnpo", "length_normalize": True, "gamma": 0.5},
     {"name": "simnpo", "length_normalize": True, "gamma": 0.0}],
    [{"name": "npo", "beta": 0.5}, {"name": "npo", "beta": 1.0}, {"name": "npo"}],
    [{"name": "graddiff", "retain_weight": 2.0}, {"name": "graddiff", "retain_weight": 0.5}],
    [{"name": "npo_kl", "beta": 1e-05}, {"name": "npo_kl", "beta": 2.5}],
]


@pytest.mark.parametrize("methods_", LABELLED)
def test_a_label_from_the_table_names_the_method_it_labels(methods_):
    # the labels pathunlearn.plan makes, read back as names: the same methods, the same
    # labels again (so a label copied from the table into a config runs that method)
    from pathunlearn.plan import method_labels

    configs = [MethodConfig(**m) for m in methods_]
    labels = method_labels(configs, [c.name for c in configs],
                           [make_method(c).variant() for c in configs])
    assert len(set(labels)) == len(labels) and any("-" in label for label in labels)
    again = [MethodConfig(name=label) for label in labels]
    assert again == configs
    assert method_labels(again, [c.name for c in again],
                         [make_method(c).variant() for c in again]) == labels


def test_a_label_agrees_with_what_the_config_says_or_is_an_error():
    assert MethodConfig(name="simnpo-norm", length_normalize=True) == MethodConfig(
        name="simnpo", length_normalize=True)
    with pytest.raises(ValueError, match="name 'simnpo-norm' means length_normalize: True, "
                                         "but length_normalize is False"):
        MethodConfig(name="simnpo-norm", length_normalize=False)
    # not a built-in label: a name left for the entry points (an unknown one says so)
    assert MethodConfig(name="my-method").name == "my-method"
    assert MethodConfig(name="npo-opt-alpha1").name == "npo-opt-alpha1"


def test_simnpo_norm_runs_as_simnpo_with_length_normalisation():
    data = {"stages": {"f": {"source": "builtin:refusals"}},
            "paths": {"forget_stage": "f", "orders": [["f"]]},
            "unlearning": {"methods": [{"name": "simnpo"}, {"name": "simnpo-norm"}]}}
    plan = plan_run(validate_config(data), check=False)
    assert [c.method_label for c in plan.cells] == ["simnpo", "simnpo-norm"]
    assert [c.method.length_normalize for c in plan.cells] == [False, True]
    written = validate_config({**data, "unlearning": {"methods": [
        {"name": "simnpo"}, {"name": "simnpo", "length_normalize": True}]}})
    assert [c.key for c in plan_run(written, check=False).cells] == [c.key for c in plan.cells]
