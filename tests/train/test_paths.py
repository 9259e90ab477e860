"""Paths as a trie of prefixes: counts, cache keys, training, and resume after a kill."""

from __future__ import annotations

import json

import pytest
import yaml

from pathunlearn.config import load_config, validate_config
from pathunlearn.files import is_done
from pathunlearn.plan import plan_run
from pathunlearn.rundir import unit_dir
from pathunlearn.train.paths import train_paths

STAGES = {name: {"source": f"builtin:{name}", "epochs": 1}
          for name in ("instructions", "authors", "arithmetic", "refusals")}


def config(tmp_path, paths, **extra):
    data = {"name": "t", "output_dir": str(tmp_path), "seeds": [0], "stages": STAGES,
            "paths": paths, **extra}
    return validate_config(data)


POSITIONS = {"forget_stage": "refusals", "order": ["instructions", "authors", "arithmetic"],
             "positions": [1, 2, 3, 4]}


def test_trie_counts(tmp_path):
    # without sharing: the 4 paths (16 stages) and their retrain baseline (3 stages), which
    # is the prefix of the refusals-last path and so costs nothing with sharing
    plan = plan_run(config(tmp_path, POSITIONS))
    assert (len(plan.prefixes), plan.naive_count) == (13, 16 + 3)
    assert plan.retrain_paths == (("instructions", "authors", "arithmetic"),)
    perms = plan_run(config(tmp_path, {"forget_stage": "refusals",
                                       "permutations": list(STAGES)}))
    assert (len(perms.prefixes), perms.naive_count) == (64, 96 + 6 * 3)
    two_seeds = plan_run(config(tmp_path, POSITIONS, seeds=[0, 1]))
    assert (len(two_seeds.prefixes), two_seeds.naive_count) == (26, 2 * (16 + 3))
    shared = plan_run(config(tmp_path, POSITIONS, seeds=[0, 1], training={"seed": 7}))
    assert len(shared.prefixes) == 13  # a fixed training seed: seeds share trained paths
    assert shared.leaf(("refusals", "instructions", "authors", "arithmetic"), 1).seed == 7


def test_parents_come_before_children_and_leaves_are_paths(tmp_path):
    plan = plan_run(config(tmp_path, POSITIONS))
    seen = set()
    for p in plan.prefixes:
        assert p.parent_key is None or p.parent_key in seen
        seen.add(p.key)
    for path in plan.paths:
        assert plan.leaf(path, 0).stages == path


def test_keys_change_exactly_with_what_determines_a_prefix(tmp_path):
    cfg = config(tmp_path, POSITIONS)
    keys = {p.stages: p.key for p in plan_run(cfg).prefixes}
    more_epochs = {p.stages: p.key for p in plan_run(
        config(tmp_path, POSITIONS, stages={**STAGES, "authors": {"source": "builtin:authors",
                                                                  "epochs": 2}})).prefixes}
    for stages, key in keys.items():
        assert (more_epochs[stages] == key) == ("authors" not in stages), stages
    other_lr = plan_run(config(tmp_path, POSITIONS, training={"lr": 0.1})).prefixes
    assert not set(keys.values()) & {p.key for p in other_lr}
    other_dir = plan_run(config(tmp_path / "elsewhere", POSITIONS)).prefixes
    assert {p.key for p in other_dir} == set(keys.values())  # output dir is not part of a key


def test_local_data_file_content_is_part_of_the_key(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "a"},
                                             {"role": "assistant", "content": "b"}]}) + "\n")
    paths = {"forget_stage": "f", "orders": [["f"]]}
    cfg = validate_config({"stages": {"f": {"source": str(data)}}, "paths": paths})
    before = plan_run(cfg).prefixes[0].key
    data.write_text(data.read_text().replace('"b"', '"c"'))
    assert plan_run(cfg).prefixes[0].key != before


def test_the_file_an_adapter_reads_is_part_of_the_key(tmp_path):
    data = tmp_path / "tofu.json"
    data.write_text(json.dumps({"question": "Who wrote it?", "answer": "Ann Bell."}) + "\n")
    paths = {"forget_stage": "f", "orders": [["f"]]}
    cfg = validate_config({"stages": {"f": {"source": f"tofu:{data}"}}, "paths": paths,
                           "probes": {"defaults": False,
                                      "sets": [{"name": "p", "source": "stage:f"}]}})
    before = plan_run(cfg).prefixes[0].key
    data.write_text(data.read_text().replace("Ann Bell", "Bo Lund"))
    assert plan_run(cfg).prefixes[0].key != before


SMALL = {
    "name": "small", "seeds": [0],
    "stages": {"instructions": {"source": "builtin:instructions", "epochs": 2, "max_examples": 64},
               "refusals": {"source": "builtin:refusals", "epochs": 2, "max_examples": 64}},
    "paths": {"forget_stage": "refusals", "order": ["instructions"], "positions": [1, 2]},
    "training": {"lr": 3e-3, "batch_size": 8, "micro_batch_size": 4},
}


def write_config(tmp_path, data, out):
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump({**data, "output_dir": str(out)}))
    return path


def test_train_paths_shares_prefixes_and_each_stage_loss_falls(tmp_path):
    cfg = load_config(write_config(tmp_path, SMALL, tmp_path / "runs"))
    plan = train_paths(cfg, log=lambda *_: None)
    assert len(plan.prefixes) == 4  # refusals, refusals>instructions, instructions, instructions>refusals
    for p in plan.prefixes:
        d = unit_dir(cfg.run_dir, p)
        assert is_done(d) and (d / "model.safetensors").is_file() and (d / "config.yaml").is_file()
        assert (d / "adapter" / "adapter_model.safetensors").is_file()
        rows = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
        assert {r["stage"] for r in rows} == {p.stage}
        first, last = rows[0]["loss"], sum(r["loss"] for r in rows[-3:]) / 3
        assert last < first, (p.label, first, last)
    leaf = unit_dir(cfg.run_dir, plan.leaf(("instructions", "refusals"), 0))
    assert json.loads((leaf / "prefix.json").read_text())["stages"] == ["instructions", "refusals"]
    # a second call trains nothing
    logged = []
    train_paths(cfg, log=logged.append)
    assert "4 already done" in logged[0] and len(logged) == 1


def test_cli_plan(tmp_path, cli):
    result = cli("train", write_config(tmp_path, SMALL, tmp_path / "runs"), "--plan")
    assert result.code == 0
    assert ("2 paths x 1 seeds + 1 retrain baseline(s): 4 stage-trainings (5 without "
            "sharing); 6 unlearning cells" in " ".join(result.out.split()))
    assert not (tmp_path / "runs").exists()  # planning writes nothing


@pytest.mark.parametrize("bad", ["paths.positions=[7]", "training.precision=fp8"])
def test_cli_train_bad_config(tmp_path, cli, bad):
    result = cli("train", write_config(tmp_path, SMALL, tmp_path / "runs"), bad)
    assert result.code == 2 and len(result.err.strip().splitlines()) == 1


LORA = {**SMALL, "model": {"finetuning": "lora", "lora": {"rank": 4, "alpha": 8}},
        "paths": {"forget_stage": "refusals", "orders": [["instructions", "refusals"]]},
        "stages": {"instructions": {"source": "builtin:instructions", "epochs": 1,
                                    "max_examples": 16},
                   "refusals": {"source": "builtin:refusals", "epochs": 1, "max_examples": 16}}}


def adapter_weights(directory):
    from safetensors.torch import load_file

    return load_file(str(directory / "adapter" / "adapter_model.safetensors"))


def merged_with(adapter_dir, cfg):
    """The base model with the adapter of ``adapter_dir`` merged: its state dict."""
    from pathunlearn.models import load_adapter, load_model

    base, _ = load_model(cfg.model)
    return load_adapter(base, adapter_dir / "adapter").merge_and_unload().state_dict()


@pytest.mark.parametrize("scope", ["path", "stage"])
def test_lora_scope_path_is_base_plus_one_adapter(tmp_path, scope):
    """Issue 13: with scope path, the model after stage 2 is the base model plus ONE adapter
    trained through both stages; with scope stage, the first stage's adapter is merged into
    the weights the second adapter starts from, so base + the last adapter is not the model."""
    import torch
    from safetensors.torch import load_file

    data = {**LORA, "model": {**LORA["model"], "lora": {**LORA["model"]["lora"], "scope": scope}}}
    cfg = load_config(write_config(tmp_path, data, tmp_path / "runs"))
    plan = train_paths(cfg, log=lambda *_: None)
    first, both = (unit_dir(cfg.run_dir, plan.leaf(p, 0)) for p in
                   [("instructions",), ("instructions", "refusals")])
    a, ab = adapter_weights(first), adapter_weights(both)
    assert a.keys() == ab.keys() and any(not torch.equal(a[k], ab[k]) for k in a)
    saved = load_file(str(both / "model.safetensors"))
    rebuilt = merged_with(both, cfg)
    same = all(torch.allclose(saved[k], rebuilt[k], atol=1e-6) for k in saved)
    assert same == (scope == "path")


def test_lora_path_adapter_continues_byte_identically(tmp_path):
    """The trie trains stage 2 from the stored stage-1 adapter; an uninterrupted in-process
    run (one adapter, stage after stage, fresh optimizer per stage) gives the same bytes."""
    import torch

    from pathunlearn.data.chat import tokenize_conversations
    from pathunlearn.data.sources import load_stage
    from pathunlearn.models import apply_lora, load_model
    from pathunlearn.train.staged import stage_seed, train_stage

    cfg = load_config(write_config(tmp_path, LORA, tmp_path / "runs"))
    plan = train_paths(cfg, log=lambda *_: None)
    stored = adapter_weights(unit_dir(cfg.run_dir, plan.leaf(("instructions", "refusals"), 0)))

    model, tok = load_model(cfg.model)
    tseed = plan.leaf(("instructions",), 0).seed
    model = apply_lora(model, cfg.model.lora, seed=stage_seed(tseed, "instructions"))
    for stage in ("instructions", "refusals"):
        examples, _ = tokenize_conversations(tok, load_stage(cfg.stages[stage]),
                                             cfg.model.max_length)
        train_stage(model, examples, cfg.training, epochs=cfg.stages[stage].epochs,
                    seed=stage_seed(tseed, stage), pad_id=tok.pad_token_id)
    from peft import get_peft_model_state_dict

    live = get_peft_model_state_dict(model)
    assert live.keys() == stored.keys()
    for k in stored:
        assert torch.equal(live[k], stored[k]), k


def test_lora_scope_on_full_finetuning_is_a_config_error(tmp_path, cli):
    data = {**SMALL, "model": {"finetuning": "full", "lora": {"scope": "path"}}}
    result = cli("train", write_config(tmp_path, data, tmp_path / "runs"), "--plan")
    assert result.code == 2 and "model: `lora.scope` is set but `finetuning` is full" in result.err
    assert len(result.err.strip().splitlines()) == 1


def test_vocab_chunks_and_compile_change_no_key_and_train_the_same(tmp_path, monkeypatch):
    """Issue 16: ``runtime.vocab_chunk`` and ``runtime.compile`` change how a stage is
    computed, not what: the same prefix keys, the same losses up to float rounding. (The spy
    stands in for torch.compile, which needs a compiler toolchain and minutes on CPU; compiled
    numbers are checked on CUDA, tests/test_cuda.py.)"""
    import torch

    stages = {name: {"source": f"builtin:{name}", "epochs": 1, "max_examples": 12}
              for name in ("authors", "refusals")}
    paths = {"forget_stage": "refusals", "order": ["authors"], "positions": [2]}
    training = {"batch_size": 4, "micro_batch_size": 2}
    plain = config(tmp_path / "plain", paths, stages=stages, training=training)
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda module: compiled.append(module) or module)
    chunked = config(tmp_path / "chunked", paths, stages=stages, training=training,
                     runtime={"vocab_chunk": 5, "compile": True})
    a, b = plan_run(plain), plan_run(chunked)
    assert [p.key for p in a.prefixes] == [p.key for p in b.prefixes]
    train_paths(plain, a, log=lambda *_: None)
    assert not compiled
    train_paths(chunked, b, log=lambda *_: None)
    assert len(compiled) == len(b.prefixes)
    for p in a.prefixes:
        rows = [[json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
                for d in (unit_dir(plain.run_dir, p), unit_dir(chunked.run_dir, p))]
        assert [r["loss"] for r in rows[1]] == pytest.approx([r["loss"] for r in rows[0]],
                                                             abs=1e-5)
