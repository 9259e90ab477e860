"""Which settings change a key (:mod:`pathunlearn.keys`): every field of every study section
moves one, no runtime field moves any (issue 24, item 1).

The walk goes through every field of :class:`ExperimentConfig` (nested sections, every stage,
method and probe set, the optional sections set), changes it to another valid value and plans
again. A field is changed generically by its value (a bool flipped, a number moved, another
member of a Literal, an entry dropped from a list ...) or, where that cannot give a valid
config, by the first valid entry of :data:`ALTERNATIVES`. A field added to the schema is
walked the day it is added: the test fails if it moves no key in a study section (then it is
missing from a key, or is a runtime setting and belongs in ``runtime:``), if it moves one in a
runtime section, or if no valid value can be found for it (then add one here).
"""

from __future__ import annotations

import copy
import json
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import pytest
from pydantic import BaseModel

from pathunlearn.config import ExperimentConfig, dump_config, validate_config
from pathunlearn.errors import ConfigError, UserError
from pathunlearn.files import write_json
from pathunlearn.keys import REPORT_ONLY, RUNTIME_SECTIONS
from pathunlearn.plan import plan_run
from pathunlearn.rundir import unit_dir

QA = [{"q": f"What is {i} + 1?", "a": f"It is {i + 1}.", "q2": f"Add 1 to {i}.",
       "a2": f"{i + 1}."} for i in range(12)]


def base_data(tmp: Path) -> dict[str, Any]:
    """A config that uses every section: three stages (one a question/answer file), two
    methods, a probe set of its own, the matched-start control, relearning, every tracking
    backend. The optional sections are set so the walk reaches their fields."""
    (tmp / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in QA))
    return {
        "name": "walk", "output_dir": str(tmp / "runs"), "seeds": [0, 1],
        "model": {"finetuning": "lora", "max_length": 64},
        "stages": {"a": {"source": "builtin:instructions", "max_examples": 8},
                   "c": {"source": str(tmp / "qa.jsonl"), "question_key": "q",
                         "answer_key": "a", "max_examples": 8},
                   "f": {"source": "builtin:refusals", "max_examples": 8}},
        "paths": {"forget_stage": "f", "order": ["a", "c"], "positions": [1, 3]},
        "unlearning": {"methods": [{"name": "ga"}, {"name": "npo", "beta": 0.5}], "steps": 2,
                       "math": {"questions": 2}},
        "probes": {"prompts": 2, "examples": 2, "heldout": 2,
                   "sets": [{"name": "extra", "source": "builtin:authors", "max_prompts": 3}]},
        "controls": {"matched_start": {}},
        "relearn": {"steps": 2},
        "tracking": {"mlflow": {}, "wandb": {}, "tensorboard": {}},
    }


def model_dir(tmp: Path) -> str:
    path = tmp / "model"
    path.mkdir(exist_ok=True)
    write_json(path / "config.json", {"model_type": "llama"})
    return str(path)


def alternatives(tmp: Path) -> dict[str, list[dict[str, Any]]]:
    """Field (``*``: any stage, method or probe set) -> changes to try in turn, each a
    mapping of dotted keys (relative to the field's section) to values, for the fields whose
    value cannot be changed generically (a free string, a field that needs another with it)."""
    other = str(tmp / "elsewhere")
    mcq = tmp / "mcq.jsonl"  # a multiple-choice question in WMDP's schema (invented)
    mcq.write_text(json.dumps({"question": "Which port does [placeholder service] use?",
                               "choices": ["1", "2", "3", "4"], "answer": 1}) + "\n")
    return {
        "name": [{"name": "walk2"}],
        "output_dir": [{"output_dir": other}],
        "model.path": [{"path": model_dir(tmp)}],
        "model.gguf_file": [{"path": model_dir(tmp), "gguf_file": "m.gguf"}],
        "model.attn_implementation": [{"attn_implementation": "eager"}],
        "model.finetuning": [{"finetuning": "full", "lora.scope": None}],
        "stages.*.source": [{"source": "builtin:arithmetic"}],
        "stages.*.split": [{"split": "eval"}],
        "stages.*.question_key": [{"question_key": "q2"}],
        "stages.*.answer_key": [{"answer_key": "a2"}],
        "stages.*.system": [{"system": "Answer briefly."}],
        "stages.*.text_key": [{"kind": "text", "text_key": "q", "question_key": None,
                               "answer_key": None}],
        "paths.forget_stage": [{"forget_stage": "a", "order": ["f", "c"]}],
        "paths.positions": [{"positions": [1, 2, 3]}],
        "paths.orders": [{"order": None, "positions": None,
                          "orders": [["f", "c", "a"], ["c", "a", "f"]]}],
        "paths.permutations": [{"order": None, "positions": None,
                                "permutations": ["a", "c", "f"]}],
        "training.betas": [{"betas": [0.8, 0.99]}],
        "training.seed_of": [{"seed_of": {0: 1, 1: 1}}],
        "unlearning.betas": [{"betas": [0.8, 0.99]}],
        "unlearning.lrs": [{"lrs": [1e-5, 3e-5]}],
        "unlearning.schedulers": [{"schedulers": ["constant", "cosine"]}],
        "unlearning.retain_stages": [{"retain_stages": ["a"]}],
        "unlearning.methods.*.name": [{"name": "simnpo"}, {"name": "npo_kl"}],
        "unlearning.math.source": [{"source": "builtin:arithmetic:train"}],
        "unlearning.math.prompt": [{"prompt": "paper"}],
        "probes.sets.*.name": [{"name": "extra2"}],
        "probes.sets.*.source": [{"source": "builtin:arithmetic"}],
        "probes.sets.*.targets": [{"targets": ["Yes."]}],
        "probes.sets.*.stage": [{"stage": "a"}],
        "probes.sets.*.metrics": [{"metrics": ["prob"], "role": "retain"}],
        "unlearning.lmeval.tasks": [{"tasks": ["arc_easy"]}],
        "unlearning.lmeval.include_path": [{"include_path": ["tasks"]}],
        "probes.sets.*.role": [{"role": "retain", "metrics": ["prob"]}],
        "probes.sets.*.continuation": [{"kind": "choice", "source": f"wmdp:{mcq}",
                                        "continuation": "text"}],
        "controls.matched_start.metric": [{"metric": "forget_label_id/mean"}],
        "runtime.device": [{"device": "cpu"}],
        "executor.address": [{"kind": "ray", "address": "auto"}],
        "tracking.mlflow.tracking_uri": [{"tracking_uri": f"file:{other}"}],
        "tracking.mlflow.experiment": [{"experiment": "e2"}],
        "tracking.wandb.project": [{"project": "p2"}],
        "tracking.wandb.entity": [{"entity": "me"}],
        "tracking.wandb.dir": [{"dir": other}],
        "tracking.tensorboard.log_dir": [{"log_dir": other}],
    }


# ---------------------------------------------------------------------------- the walk


def _members(annotation: Any) -> tuple[Any, ...]:
    return get_args(annotation) if get_origin(annotation) in (Union, types.UnionType) \
        else (annotation,)


def _model_of(annotation: Any) -> type[BaseModel] | None:
    for m in _members(annotation):
        if isinstance(m, type) and issubclass(m, BaseModel):
            return m
    return None


def _item_model(annotation: Any) -> type[BaseModel] | None:
    """The model of a dict's values or a list's items (``stages``, ``methods``, ``sets``)."""
    for m in _members(annotation):
        if get_origin(m) in (dict, list) and get_args(m):
            return _model_of(get_args(m)[-1])
    return None


def leaves(model: type[BaseModel], prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted field, annotation) of every value field under ``model``; a mapping or list of
    sections is walked as ``NAME.*.FIELD``."""
    out = []
    for name, field in model.model_fields.items():
        path = prefix + name
        if (inner := _model_of(field.annotation)) is not None:
            out += leaves(inner, path + ".")
        elif (item := _item_model(field.annotation)) is not None:
            out += leaves(item, path + ".*.")
        else:
            out.append((path, field.annotation))
    return out


def generic(value: Any, annotation: Any) -> list[Any]:
    """Other values of a field, guessed from its value and type."""
    literal = [a for m in _members(annotation) if get_origin(m) is Literal for a in get_args(m)]
    if literal:
        return [v for v in literal if v != value]
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [value + 1, value + 2, value - 1]
    if isinstance(value, float):
        return [value * 2, value / 2] if value else [0.1, 1.0]
    if isinstance(value, list):
        return ([value[:-1]] if len(value) > 1 else []) + [value[::-1]]
    if isinstance(value, dict):
        return [{**value, "walked": 1}]
    if value is None:
        types_ = {m for m in _members(annotation) if m is not type(None)}
        return [2] if int in types_ else [0.5] if float in types_ else []
    return []


def at(data: Any, parts: list[str]) -> Any:
    for p in parts:
        data = data[int(p)] if isinstance(data, list) else data[p]
    return data


def changed(data: dict, section: list[str], updates: dict[str, Any]) -> dict:
    out = copy.deepcopy(data)
    node: Any = out
    for p in section:  # a section the config leaves to its defaults is created
        node = node[int(p)] if isinstance(node, list) else node.setdefault(p, {})
    for key, value in updates.items():
        *above, last = key.split(".")
        target = node
        for p in above:
            target = target.setdefault(p, {})
        target[last] = value
    return out


def keys_of(cfg: ExperimentConfig) -> set[str]:
    """Every key the plan of ``cfg`` holds: prefixes, matched-start models, cells."""
    plan = plan_run(cfg, check=False)
    return ({p.key for p in plan.prefixes} | {m.key for m in plan.matched}
            | {c.key for c in plan.cells})


def entries(data: dict, path: str) -> list[tuple[list[str], str]]:
    """The concrete (section, field) pairs a dotted field with ``*`` names in ``data``."""
    found: list[tuple[list[str], str]] = [([], path)]
    while any("*" in rest for _, rest in found):
        out = []
        for section, rest in found:
            if "*" not in rest:
                out.append((section, rest))
                continue
            head, _, tail = rest.partition(".*.")
            container = at(data, section + head.split("."))
            names = range(len(container)) if isinstance(container, list) else container
            out += [(section + head.split(".") + [str(n)], tail) for n in names]
        found = out
    return [(section + rest.split(".")[:-1], rest.split(".")[-1]) for section, rest in found]


def walk(tmp: Path) -> tuple[list[str], list[str]]:
    """(fields that behave wrongly, a line each; fields walked)."""
    data = base_data(tmp)
    cfg = validate_config(copy.deepcopy(data))
    before, resolved = keys_of(cfg), cfg.model_dump(mode="json")
    table = alternatives(tmp)
    wrong, walked = [], []
    for path, annotation in leaves(ExperimentConfig):
        top = path.split(".")[0]
        if top in REPORT_ONLY:
            continue
        runtime = top in RUNTIME_SECTIONS
        change = None  # (where, updates, keys after): the first valid change of any entry
        for section, name in entries(resolved, path):
            value = at(resolved, section)[name]
            for updates in table.get(path, []) + [{name: v} for v in generic(value, annotation)]:
                try:
                    change = (".".join(section + [name]), updates,
                              keys_of(validate_config(changed(data, section, updates))))
                    break
                except UserError:  # not valid, or names data that is not there
                    continue
            if change is not None:
                break  # one stage / method / probe set per field is enough
        if change is None:
            wrong.append(f"{path}: no valid other value found; add one to ALTERNATIVES "
                         "(tests/test_keys.py)")
            continue
        where, updates, after = change
        walked.append(where)
        if runtime and after != before:
            wrong.append(f"{where}: a runtime setting, but {updates} moved a key")
        if not runtime and after == before:
            wrong.append(f"{where}: a study setting, but {updates} moved no key")
    return wrong, walked


def test_every_study_field_moves_a_key_and_no_runtime_field_does(tmp_path):
    wrong, walked = walk(tmp_path)
    assert not wrong, "\n".join(wrong)
    # the walk reached every kind of section, including the optional ones
    for field in ("training.lr", "stages.a.epochs", "unlearning.methods.0.beta",
                  "unlearning.math.questions", "probes.examples", "probes.sets.0.offset",
                  "controls.matched_start.tolerance", "relearn.forget_examples",
                  "model.lora.rank", "runtime.packing", "tracking.wandb.mode", "executor.kind"):
        assert field in walked, field


def test_the_walk_notices_a_field_that_no_key_reads(tmp_path, monkeypatch):
    """The walk is not vacuous: a key that leaves out a study field is caught."""
    from pathunlearn import keys

    real = keys.unlearning_of

    def without_eval_every(*args, **kwargs):
        section = real(*args, **kwargs)
        section.pop("eval_every")
        return section

    monkeypatch.setattr(keys, "unlearning_of", without_eval_every)
    wrong, _ = walk(tmp_path)
    assert wrong == ["unlearning.eval_every: a study setting, but {'eval_every': 2} moved no "
                     "key"]


def test_every_top_level_section_is_study_or_runtime():
    study = set(ExperimentConfig.model_fields) - set(RUNTIME_SECTIONS)
    assert set(RUNTIME_SECTIONS) <= set(ExperimentConfig.model_fields)
    assert study >= set(REPORT_ONLY)
    assert {"runtime", "distributed", "executor", "tracking", "name", "output_dir"} == set(
        RUNTIME_SECTIONS)


def test_study_changes_the_report_not_a_key(tmp_path):
    """``study`` (recency or superficial) picks what the report leads with: no prefix or
    cell is computed differently; the report's key hashes the whole config, which differs."""
    data = base_data(tmp_path)
    data["probes"]["sets"] += [{"name": n, "source": "builtin:refusals", "reduce": "sum"}
                               for n in ("R", "C", "U")]
    recency = validate_config(copy.deepcopy(data))
    superficial = validate_config({**copy.deepcopy(data), "study": "superficial"})
    assert keys_of(recency) == keys_of(superficial)
    assert dump_config(recency) != dump_config(superficial)


def test_probe_examples_move_every_cell_key_with_explicit_probe_sets(tmp_path):
    """The issue's case: with `probes.defaults: false` the resolved probe rows do not depend
    on `probes.examples`, but the step-0 saturation diagnostics read it; it was in no key,
    so a rerun with examples 2 reported the cells computed with 32."""
    data = base_data(tmp_path)
    data["probes"] = {"defaults": False, "sets": [
        {"name": "forget_label_id", "kind": "forget_label", "source": "builtin:refusals:test"},
        {"name": "heldout", "kind": "heldout", "source": "builtin:authors"}]}
    a = plan_run(validate_config(data), check=False)
    data["probes"]["examples"] = 2
    b = plan_run(validate_config(data), check=False)
    assert a.probes_sha != b.probes_sha
    assert not {c.key for c in a.cells} & {c.key for c in b.cells}
    assert [p.key for p in a.prefixes] == [p.key for p in b.prefixes]


def test_runtime_settings_keep_every_key(tmp_path):
    data = base_data(tmp_path)
    a = plan_run(validate_config(data), check=False)
    fast = {**data, "runtime": {"device": "cpu", "compile": True, "packing": True,
                                "vocab_chunk": 16, "gradient_checkpointing": True},
            "executor": {"kind": "ray", "num_cpus": 4}, "distributed": {"strategy": "fsdp"},
            "name": "elsewhere", "output_dir": str(tmp_path / "other")}
    b = plan_run(validate_config(fast), check=False)
    assert a.to_json() == b.to_json()


def test_older_keys_are_said_once(tmp_path):
    """A run directory from before key format 2: its finished cells (under the same
    directory, another key) and prefixes (other keys) are not reused, and one line says so;
    a run directory of this version says nothing."""
    import yaml

    from pathunlearn.executors import older_keys_line
    from pathunlearn.files import atomic_dir

    cfg = validate_config(base_data(tmp_path))
    plan = plan_run(cfg, check=False)
    run_dir = Path(cfg.run_dir)
    old_config = {k: v for k, v in cfg.model_dump(mode="json").items() if k != "runtime"}
    old_config["training"]["device"] = "auto"
    for cell in plan.cells[:3]:
        with atomic_dir(unit_dir(run_dir, cell)) as tmp:
            write_json(tmp / "summary.json", {"key": "0" * 20})
            (tmp / "config.yaml").write_text(yaml.safe_dump(old_config))
    with atomic_dir(run_dir / "prefixes" / ("1" * 20)) as tmp:
        (tmp / "config.yaml").write_text(yaml.safe_dump(old_config))
    line = older_keys_line(plan, run_dir)
    assert line is not None and line.startswith("3 cells and 1 prefixes from an older "
                                                "pathunlearn are not reused (keys changed")
    assert "recomputed" in line
    # the same directories written by this version (config.yaml with `runtime`): another
    # config's leftovers, nothing to say about versions
    for d in [unit_dir(run_dir, c) for c in plan.cells[:3]] + [run_dir / "prefixes" / ("1" * 20)]:
        (d / "config.yaml").write_text(dump_config(cfg))
    assert older_keys_line(plan, run_dir) is None


@pytest.mark.parametrize("moved", ["device", "compile", "packing", "vocab_chunk",
                                   "gradient_checkpointing"])
def test_a_moved_training_key_names_its_new_place(moved, tmp_path):
    data = base_data(tmp_path)
    data["training"] = {moved: None}
    with pytest.raises(ConfigError) as e:
        validate_config(data, source="old.yaml")
    assert str(e.value) == f"old.yaml: training.{moved}: unknown key; did you mean runtime.{moved}?"


def test_a_probe_set_keys_as_before_choice_probes_existed(tmp_path, monkeypatch):
    """`continuation` (choice probes, issue 27) at its default is left out of the probes'
    identity, so the cells and matched-start models of earlier runs keep their keys; set, it
    is in it."""
    from pathunlearn import keys

    hashed = []
    real = keys.stable_hash
    monkeypatch.setattr(keys, "stable_hash", lambda *a: hashed.append(a) or real(*a))
    data = base_data(tmp_path)
    cfg = validate_config(data)
    keys.probes_key(cfg, [])
    (_, section, _), = [a for a in hashed if a and a[0] == "probes"]
    assert section["sets"] and all("continuation" not in s for s in section["sets"])
    mcq = tmp_path / "mcq.jsonl"
    mcq.write_text(json.dumps({"question": "Which port does [placeholder service] use?",
                               "choices": ["1", "2", "3", "4"], "answer": 1}) + "\n")
    data["probes"]["sets"] = [{"name": "mcq", "kind": "choice", "source": f"wmdp:{mcq}",
                               "continuation": "text"}]
    hashed.clear()
    keys.probes_key(validate_config(data), [])
    (_, section, _), = [a for a in hashed if a and a[0] == "probes"]
    assert section["sets"][0]["continuation"] == "text"


def test_probe_precision_keys_as_before_it_existed(tmp_path, monkeypatch):
    """`probes.precision` (issue 29) at its default, fp32, is left out of the probes'
    identity, so earlier runs keep their keys; bf16 is in it (the walk above checks that it
    moves every cell's key)."""
    from pathunlearn import keys

    hashed = []
    real = keys.stable_hash
    monkeypatch.setattr(keys, "stable_hash", lambda *a: hashed.append(a) or real(*a))
    data = base_data(tmp_path)
    keys.probes_key(validate_config(data), [])
    (_, section, _), = [a for a in hashed if a and a[0] == "probes"]
    assert "precision" not in section
    data["probes"]["precision"] = "bf16"
    hashed.clear()
    keys.probes_key(validate_config(data), [])
    (_, section, _), = [a for a in hashed if a and a[0] == "probes"]
    assert section["precision"] == "bf16"
