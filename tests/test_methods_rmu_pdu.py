"""RMU and PDU (OpenUnlearning's representation misdirection and primal-dual unlearning):
their losses against values computed by hand, RMU's control vector and layer restriction, PDU's
dual variable, and both through a cell's machinery (the layer hook, the frozen parameters)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from pathunlearn.config import MethodConfig, validate_config
from pathunlearn.errors import ConfigError
from pathunlearn.losses import activation_mse, logit_margin_loss
from pathunlearn.methods import ForgetBatch, RetainBatch, make_method

pytestmark = pytest.mark.usefixtures("one_thread")


def fake_model(layers: int = 8, hidden: int = 4):
    return SimpleNamespace(config=SimpleNamespace(num_hidden_layers=layers, hidden_size=hidden))


# ---------------------------------------------------------------------------- losses


def test_logit_margin_is_the_squared_gap_of_max_and_mean_logit():
    # position 0 predicts the target at 1: logits [1, 2, 3] -> max 3, mean 2, gap 1;
    # position 1 predicts the target at 2: [0, 0, 4] -> gap 4 - 4/3 = 8/3; position 2 has none
    logits = torch.tensor([[[1.0, 2.0, 3.0], [0.0, 0.0, 4.0], [9.0, 0.0, 0.0]]])
    labels = torch.tensor([[-100, 1, 2]])
    assert logit_margin_loss(logits, labels).item() == pytest.approx((1 + 64 / 9) / 2)
    assert logit_margin_loss(logits, labels, 4).item() == pytest.approx((1 + 64 / 9) / 4)
    uniform = torch.full((1, 3, 3), 0.7)
    assert logit_margin_loss(uniform, labels).item() == 0.0  # a flat distribution


def test_activation_mse_averages_the_hidden_dimension_and_sums_the_positions():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    target = torch.tensor([1.0, 0.0])
    # position 0: diffs (0, 2) -> mean 2; position 1: (2, 4) -> (4 + 16) / 2 = 10
    assert activation_mse(hidden, target, torch.tensor([[True, False]])).item() == 2.0
    assert activation_mse(hidden, target, torch.tensor([[True, True]])).item() == 6.0
    assert activation_mse(hidden, target, torch.tensor([[True, True]]), 4).item() == 3.0
    same = activation_mse(hidden, hidden.clone(), torch.tensor([[True, True]]))
    assert same.item() == 0.0


# ---------------------------------------------------------------------------- RMU


def test_rmu_control_vector_is_a_seeded_random_direction_of_the_steering_length():
    method = make_method(MethodConfig(name="rmu", options={"steering_coeff": 2.0}))
    method.prepare(fake_model(hidden=4), seed=3)
    u = method.control
    assert u.shape == (4,) and u.norm().item() == pytest.approx(2.0)
    assert bool((u >= 0).all())  # uniform on [0, 1)^D before normalising, as RMU draws it
    again = make_method(MethodConfig(name="rmu", options={"steering_coeff": 2.0}))
    again.prepare(fake_model(hidden=4), seed=3)
    other = make_method(MethodConfig(name="rmu", options={"steering_coeff": 2.0}))
    other.prepare(fake_model(hidden=4), seed=4)
    assert torch.equal(u, again.control) and not torch.equal(u, other.control)


def test_rmu_forget_loss_is_the_distance_of_the_response_activations_to_the_control():
    method = make_method(MethodConfig(name="rmu", options={"steering_coeff": 2.0}))
    method.prepare(fake_model(hidden=4), seed=0)
    labels = torch.tensor([[-100, 5, 6], [-100, 7, -100]])  # 3 response positions
    hidden = torch.zeros(2, 3, 4, requires_grad=True)
    batch = ForgetBatch(torch.zeros(2, 2), labels[:, 1:] != -100, 3, 2, labels=labels,
                        hidden=hidden)
    # at zero activations each position is mean_d (c u_d)^2 = c^2 / D = 4 / 4 = 1
    loss = method.forget_loss(batch)
    assert loss.item() == pytest.approx(1.0)
    loss.backward()  # d/dh = -2 (c u) / D / N at the 3 response positions, 0 elsewhere
    assert torch.allclose(hidden.grad[0, 1], -2 * method.control / 4 / 3)
    assert hidden.grad[0, 0].abs().sum() == 0 and hidden.grad[1, 2].abs().sum() == 0


def test_rmu_retain_term_is_the_distance_to_the_reference_activations():
    method = make_method(MethodConfig(name="rmu_retain", retain_weight=10.0))
    labels = torch.tensor([[-100, 5, 6]])
    hidden = torch.tensor([[[0.0, 0.0], [1.0, 1.0], [3.0, 1.0]]])
    ref = torch.zeros(1, 3, 2)
    batch = RetainBatch(torch.zeros(1, 3, 2), labels, 2, hidden=hidden, ref_hidden=ref)
    # positions 1, 2: mean_d h^2 = 1 and (9 + 1) / 2 = 5 -> (1 + 5) / 2 = 3, times lambda 10
    assert method.retain_loss(batch).item() == pytest.approx(30.0)
    assert not method.local and make_method(MethodConfig(name="rmu")).local


@pytest.mark.parametrize("options,name,updated", [
    ({}, "model.layers.5.mlp.down_proj.weight", True),
    ({}, "model.layers.7.self_attn.q_proj.weight", True),
    ({}, "model.layers.4.mlp.down_proj.weight", False),
    ({}, "model.layers.17.mlp.down_proj.weight", False),  # not layer 7
    ({}, "model.embed_tokens.weight", False),
    ({"update_params": r"mlp\.down_proj"}, "model.layers.7.self_attn.q_proj.weight", False),
    ({"update_params": r"mlp\.down_proj"}, "model.layers.6.mlp.down_proj.weight", True),
    ({"layer": 1, "update_layers": "0"}, "model.layers.0.mlp.up_proj.weight", True),
    ({"layer": 1, "update_layers": "0"}, "model.layers.1.mlp.up_proj.weight", False),
    ({"layer": 1}, "model.layers.0.mlp.up_proj.weight", True),  # layer-2 .. layer, from 0
    ({}, "base_model.model.model.layers.6.self_attn.v_proj.lora_A.default.weight", True),
])
def test_rmu_updates_only_the_parameters_of_its_layers(options, name, updated):
    assert make_method(MethodConfig(name="rmu", options=options)).trainable(name) is updated


@pytest.mark.parametrize("options,words", [
    ({"layer": 1.5}, "option layer must be a layer's index"),
    ({"layer": -1}, "option layer must be a layer's index"),
    ({"update_layers": "5,x"}, "option update_layers must be layer indices"),
    ({"update_params": "mlp(["}, "option update_params is not a regular expression"),
])
def test_rmu_bad_options_are_config_errors(options, words):
    with pytest.raises(ConfigError, match=words):
        make_method(MethodConfig(name="rmu", options=options))


def test_rmu_on_a_model_with_fewer_layers_names_them():
    method = make_method(MethodConfig(name="rmu"))
    with pytest.raises(ConfigError, match=r"method 'rmu': layer 7, but the model has 4 layers "
                                          r"\(0\.\.3\): set its options layer / update_layers"):
        method.prepare(fake_model(layers=4), seed=0)


# ---------------------------------------------------------------------------- PDU


def retain_batch_with_nll(nll: float) -> RetainBatch:
    """One target whose probability is exp(-nll) under a two-token vocabulary."""
    p = math.exp(-nll)
    logits = torch.tensor([[[math.log(p), math.log(1 - p)], [0.0, 0.0]]])
    return RetainBatch(logits, torch.tensor([[-100, 0]]), 1)


def test_pdu_forget_term_is_gamma_times_the_logit_margin():
    logits = torch.tensor([[[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]])
    labels = torch.tensor([[-100, 1]])
    batch = ForgetBatch(torch.zeros(1, 1), labels[:, 1:] != -100, 1, 1, logits=logits,
                        labels=labels)
    pdu = make_method(MethodConfig(name="pdu", options={"gamma": 3.0}))
    assert pdu.forget_loss(batch).item() == pytest.approx(3.0)  # 3 * (3 - 2)^2


def test_pdu_dual_variable_rises_with_the_retain_loss_over_its_bound_per_step():
    pdu = make_method(MethodConfig(name="pdu", retain_weight=2.0,
                                   options={"retain_eps": 0.5, "dual_step": 3.0}))
    assert pdu.retain_loss(retain_batch_with_nll(1.5)).item() == pytest.approx(2.0 * 1.5)
    logged = pdu.after_step(1, 4, lambda x: x)
    assert logged == {"dual": pytest.approx(2.0 + 3.0 * (1.5 - 0.5)),
                      "retain_nll": pytest.approx(1.5)}
    # the retain term now weighs by the new dual, 5; a loss under the bound lowers it
    assert pdu.retain_loss(retain_batch_with_nll(0.25)).item() == pytest.approx(5.0 * 0.25)
    assert pdu.after_step(2, 4, lambda x: x)["dual"] == pytest.approx(5.0 + 3.0 * -0.25)
    pdu.retain_loss(retain_batch_with_nll(0.1))
    pdu.after_step(3, 4, lambda x: x)
    pdu.retain_loss(retain_batch_with_nll(0.1))
    # never below 0: 4.25 - 1.2 = 3.05, then 3.05 - 1.2 = 1.85 ...
    assert pdu.after_step(4, 4, lambda x: x)["dual"] == pytest.approx(4.25 - 2 * 1.2)
    for step in range(5, 9):
        pdu.retain_loss(retain_batch_with_nll(0.1))
        dual = pdu.after_step(step, 4, lambda x: x)["dual"]
    assert dual == 0.0


def test_pdu_per_epoch_update_uses_the_epochs_mean_and_waits_for_the_warm_up():
    pdu = make_method(MethodConfig(name="pdu", retain_weight=1.0, options={
        "dual_update": "epoch", "dual_warmup_epochs": 1, "retain_eps": 0.0}))
    for step, nll in zip(range(1, 5), (1.0, 3.0, 0.5, 1.5), strict=True):
        pdu.retain_loss(retain_batch_with_nll(nll))
        dual = pdu.after_step(step, 2, lambda x: x)["dual"]
        # epochs of 2 steps; the first epoch's end (step 2) is the warm-up's end: it updates
        expected = {1: 1.0, 2: 1.0 + 2.0, 3: 3.0, 4: 3.0 + 1.0}[step]
        assert dual == pytest.approx(expected), step
    step_mode = make_method(MethodConfig(name="pdu", options={"dual_warmup_epochs": 1}))
    step_mode.retain_loss(retain_batch_with_nll(1.0))
    assert step_mode.after_step(2, 2, lambda x: x)["dual"] == 1.0  # still warming up
    step_mode.retain_loss(retain_batch_with_nll(1.0))
    assert step_mode.after_step(3, 2, lambda x: x)["dual"] == 2.0


def test_pdu_reduces_the_step_loss_across_ranks_and_checks_its_update_rule():
    pdu = make_method(MethodConfig(name="pdu"))
    pdu.retain_loss(retain_batch_with_nll(0.5))
    assert pdu.after_step(1, 1, lambda x: 2 * x)["retain_nll"] == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="option dual_update must be 'step' or 'epoch'"):
        make_method(MethodConfig(name="pdu", options={"dual_update": "batch"}))


# ---------------------------------------------------------------------------- in a cell


def test_rmu_in_a_cell_hooks_its_layer_and_trains_only_its_layers(tmp_path):
    from pathunlearn.data.batching import collate
    from pathunlearn.models import load_model
    from pathunlearn.plan import plan_run
    from pathunlearn.train.unlearn import CellData, encode_stage, forget_batch, fresh_steps

    cfg = validate_config({
        "name": "rmu", "output_dir": str(tmp_path), "seeds": [0],
        "model": {"finetuning": "full"},
        "stages": {"refusals": {"source": "builtin:refusals", "max_examples": 4}},
        "paths": {"forget_stage": "refusals", "orders": [["refusals"]]},
        "unlearning": {"methods": [{"name": "rmu", "options": {"layer": 2,
                                                               "update_layers": "1,2"}}],
                       "batch_size": 4, "micro_batch_size": 4, "steps": 1},
    })
    cell = plan_run(cfg).cells[0]
    method = make_method(cell.method)
    model, tok = load_model(cfg.model)
    data = CellData(forget=encode_stage(cfg, tok, "refusals"), retain=[],
                    pad_id=tok.pad_token_id)
    steps = fresh_steps(cfg, cell, model, data, torch.device("cpu"), method)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all(".layers.1." in n or ".layers.2." in n for n in names)
    assert len(steps.params) == len(names)
    assert method.control is not None and method.control.shape == (model.config.hidden_size,)
    idx = list(range(len(data.forget)))
    n = sum(e.num_targets for e in data.forget)
    batch = forget_batch(method, model, data, idx, torch.device("cpu"), "fp32", (n, len(idx)))
    with torch.no_grad():  # the hook's tensor is the output of decoder layer 2
        out = model(**collate(data.forget, data.pad_id).inputs(), output_hidden_states=True)
    assert torch.allclose(batch.hidden, out.hidden_states[3], atol=1e-6)
    expected = activation_mse(out.hidden_states[3], method.control,
                              batch.labels != -100, n)
    assert method.forget_loss(batch).item() == pytest.approx(expected.item(), rel=1e-5)


def test_rmu_whose_layers_have_no_trainable_parameter_is_refused(tmp_path):
    from pathunlearn.models import load_model
    from pathunlearn.plan import plan_run
    from pathunlearn.train.unlearn import CellData, fresh_steps

    cfg = validate_config({
        "name": "rmu", "output_dir": str(tmp_path), "seeds": [0],
        "model": {"finetuning": "full"},
        "stages": {"refusals": {"source": "builtin:refusals", "max_examples": 4}},
        "paths": {"forget_stage": "refusals", "orders": [["refusals"]]},
        "unlearning": {"methods": [{"name": "rmu", "options": {
            "layer": 1, "update_params": "no_such_weight"}}], "steps": 1},
    })
    cell = plan_run(cfg).cells[0]
    model, tok = load_model(cfg.model)
    data = CellData(forget=[], retain=[], pad_id=tok.pad_token_id)
    with pytest.raises(ConfigError, match="method 'rmu': no trainable parameter is one it "
                                          "updates"):
        fresh_steps(cfg, cell, model, data, torch.device("cpu"), make_method(cell.method))
