"""Relearning after unlearning (issue 15): K finetuning steps from the unlearned model, the
forget probes tracked, the model restored exactly afterwards."""

from __future__ import annotations

import pytest
import torch

from pathunlearn.config import validate_config
from pathunlearn.eval.probes import resolve_probes
from pathunlearn.models import load_pretrained
from pathunlearn.tiny import tiny_location
from pathunlearn.train.relearn import relearn
from pathunlearn.train.unlearn import encode_stage

CONFIG = {
    "name": "r", "model": {"finetuning": "full"},
    "stages": {"instructions": {"source": "builtin:instructions", "max_examples": 16},
               "refusals": {"source": "builtin:refusals", "max_examples": 16}},
    "paths": {"forget_stage": "refusals", "order": ["instructions"], "positions": [2]},
    "training": {"lr": 3e-3},
    "probes": {"prompts": 2, "examples": 4},
    "relearn": {"steps": 3, "forget_examples": 8, "batch_size": 4},
}


def test_relearning_brings_the_forget_set_back_and_restores_the_model():
    cfg = validate_config(CONFIG)
    model, tok = load_pretrained(tiny_location())
    probes = resolve_probes(cfg)
    examples = {"retain": encode_stage(cfg, tok, "instructions"),
                "forget": encode_stage(cfg, tok, "refusals")}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(5)
    rng = torch.random.get_rng_state()
    rows = relearn(cfg, model, tok, examples, probes, torch.device("cpu"), seed=0)
    assert [(r["data"], r["step"]) for r in rows] == [
        (d, s) for d in ("retain", "forget") for s in range(4)]
    # only the forget-label probes (the forget score's) are tracked
    assert {k.split("/")[0] for r in rows for k in r if "/" in k} == {
        "forget_label_id", "forget_label_ood"}
    # each run starts from the same (unlearned) model
    assert rows[0]["forget_label_id/all_mean"] == rows[4]["forget_label_id/all_mean"]
    # finetuning on forget examples brings the refusal back
    assert rows[7]["forget_label_id/target"] > rows[4]["forget_label_id/target"] + 0.1
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.random.get_rng_state(), rng)


def test_no_steps_no_rows():
    cfg = validate_config({**CONFIG, "relearn": {"steps": 0}})
    model, tok = load_pretrained(tiny_location())
    assert relearn(cfg, model, tok, {}, resolve_probes(cfg), torch.device("cpu"), 0) == []


def test_empty_data_is_a_config_error():
    from pathunlearn.errors import ConfigError

    with pytest.raises(ConfigError, match="relearn: `data` is empty"):
        validate_config({**CONFIG, "relearn": {"steps": 2, "data": []}})


def test_relearning_on_the_forget_set_reads_only_its_first_forget_examples(monkeypatch):
    from pathunlearn.train import relearn as module

    cfg = validate_config({**CONFIG, "relearn": {"steps": 4, "data": ["forget"],
                                                 "forget_examples": 3, "batch_size": 2}})
    model, tok = load_pretrained(tiny_location())
    forget = encode_stage(cfg, tok, "refusals")
    seen = []
    real_collate = module.collate

    def spy(batch, pad_id):
        seen.extend(forget.index(e) for e in batch)
        return real_collate(batch, pad_id)

    monkeypatch.setattr(module, "collate", spy)
    relearn(cfg, model, tok, {"forget": forget}, resolve_probes(cfg), torch.device("cpu"), 0)
    # 4 steps over an epoch of 3 cut into batches of 2 and 1
    assert len(forget) == 16 and len(seen) == 6 and set(seen) == {0, 1, 2}
