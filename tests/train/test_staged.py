"""One stage of training: token-weighted accumulation, fresh optimizer, falling loss."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from pathunlearn.config import OptimConfig
from pathunlearn.data.chat import tokenize_conversations
from pathunlearn.data.suite import load_builtin
from pathunlearn.tiny import init_model
from pathunlearn.train import staged
from pathunlearn.train.staged import num_steps, train_stage


@pytest.fixture(scope="module")
def examples(tiny_tokenizer):
    # authors answers and arithmetic solutions: very different target-token counts per example
    convs = load_builtin("authors")[:5] + load_builtin("arithmetic")[:7]
    return tokenize_conversations(tiny_tokenizer, convs, max_length=256)[0]


def one_sgd_step(model, examples, pad_id, micro):
    """Parameters after one SGD step (lr 1, no clip, constant schedule) = params - gradient."""
    optim = OptimConfig(lr=1.0, optimizer="sgd", batch_size=len(examples), micro_batch_size=micro,
                        grad_clip=None, scheduler="constant", warmup=0)
    train_stage(model, examples, optim, epochs=1, seed=0, pad_id=pad_id)
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_token_weighted_accumulation_equals_one_big_batch(tiny_tokenizer, examples):
    torch.manual_seed(0)
    base = init_model(tiny_tokenizer)
    start = {n: p.detach().clone() for n, p in base.named_parameters()}
    pad = tiny_tokenizer.pad_token_id
    big = one_sgd_step(copy.deepcopy(base), examples, pad, micro=len(examples))
    for micro in (1, 5):  # micro-batches of unequal size and token counts
        acc = one_sgd_step(copy.deepcopy(base), examples, pad, micro=micro)
        for n in start:
            g_big, g_acc = start[n] - big[n], start[n] - acc[n]
            assert torch.allclose(g_acc, g_big, atol=1e-6, rtol=0), (micro, n)
    # and it is not the mean of per-micro-batch means
    assert any(not torch.equal(start[n], big[n]) for n in start)


def test_mean_of_micro_batch_means_would_differ(tiny_tokenizer, examples):
    """Guards the test above: the two normalisations give different gradients on this data."""
    from pathunlearn.data.batching import collate
    from pathunlearn.losses import nll_sum

    torch.manual_seed(0)
    model = init_model(tiny_tokenizer)
    a, b = collate(examples[:5], 0), collate(examples[5:], 0)
    with torch.no_grad():
        sa, sb = (nll_sum(model(**x.inputs()).logits, x.labels) for x in (a, b))
    token_mean = (sa + sb) / (a.num_targets + b.num_targets)
    mean_of_means = 0.5 * (sa / a.num_targets + sb / b.num_targets)
    assert abs(float(token_mean) - float(mean_of_means)) > 1e-3


def test_optimizer_is_fresh_at_each_stage(tiny_tokenizer, examples, monkeypatch):
    created = []

    def recording(params, optim):
        opt = make(params, optim)
        created.append(opt)
        states = []
        opt.register_step_pre_hook(lambda o, *_: states.append(len(o.state)))
        opt.first_states = states
        return opt

    make = staged.make_optimizer
    monkeypatch.setattr(staged, "make_optimizer", recording)
    torch.manual_seed(0)
    model = init_model(tiny_tokenizer)
    optim = OptimConfig(lr=1e-3, batch_size=4, micro_batch_size=4)
    for _ in range(2):  # two stages on the same model
        train_stage(model, examples, optim, epochs=1, seed=0, pad_id=0)
    assert len(created) == 2 and created[0] is not created[1]
    for opt in created:
        assert opt.first_states[0] == 0  # no moment buffers before the stage's first step
        assert opt.first_states[1] > 0


def test_metrics_rows_and_loss_falls(tiny_tokenizer, examples, tmp_path):
    torch.manual_seed(0)
    model = init_model(tiny_tokenizer)
    path = tmp_path / "metrics.jsonl"
    optim = OptimConfig(lr=3e-3, batch_size=4, micro_batch_size=2, scheduler="wsd")
    result = train_stage(model, examples, optim, epochs=6, seed=1, pad_id=0, stage="s",
                         metrics_path=path)
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(rows) == result.steps == num_steps(len(examples), 4, 6) == 18
    assert set(rows[0]) == {"stage", "epoch", "step", "loss", "lr", "target_tokens",
                            "tokens_per_s", "grad_norm"}
    assert [r["step"] for r in rows] == list(range(1, 19)) and rows[-1]["epoch"] == 5
    assert rows[0]["lr"] == 0.0 or rows[0]["lr"] <= 3e-3
    assert sum(r["target_tokens"] for r in rows[:3]) == sum(e.num_targets for e in examples)
    assert result.last_loss < result.first_loss - 1.0


def test_fractional_epochs_and_reshuffling(tiny_tokenizer, examples):
    from pathunlearn.data.batching import epoch_order

    assert num_steps(12, 4, 1.5) == 5
    assert epoch_order(12, 0, 0) != epoch_order(12, 0, 1)  # reshuffled every epoch
    assert epoch_order(12, 0, 1) == epoch_order(12, 0, 1)  # from the seed


def test_activation_checkpointing_gives_the_same_step(tiny_tokenizer, examples):
    """Issue 16: runtime.gradient_checkpointing recomputes activations; the step is the same."""
    from pathunlearn.config import LoraConfig
    from pathunlearn.models import apply_lora, checkpoint_activations

    torch.manual_seed(0)
    base = init_model(tiny_tokenizer)
    pad = tiny_tokenizer.pad_token_id
    for wrap in (lambda m: m, lambda m: apply_lora(m, LoraConfig(), seed=0)):
        plain = one_sgd_step(wrap(copy.deepcopy(base)), examples, pad, micro=4)
        model = checkpoint_activations(wrap(copy.deepcopy(base)))
        assert getattr(model, "is_activation_checkpointing", None) or \
            model.is_gradient_checkpointing
        checked = one_sgd_step(model, examples, pad, micro=4)
        assert plain.keys() == checked.keys()
        assert all(torch.allclose(plain[n], checked[n], atol=1e-6, rtol=0) for n in plain)


@pytest.mark.slow
def test_torch_compile_on_cpu_trains_the_same(tiny_tokenizer, examples):
    """Issue 16: ``compile=True`` (``runtime.compile``) through inductor on CPU (~1 min of
    compiling) gives the eager losses up to float rounding."""
    torch.manual_seed(0)
    base = init_model(tiny_tokenizer)
    optim = OptimConfig(lr=1e-3, batch_size=6, micro_batch_size=3, scheduler="constant",
                        warmup=0)
    losses = [train_stage(copy.deepcopy(base), examples, optim, epochs=2, seed=0,
                          pad_id=tiny_tokenizer.pad_token_id, compile=c).last_loss
              for c in (False, True)]
    assert losses[1] == pytest.approx(losses[0], abs=1e-5)


def test_packed_training_takes_the_padded_step(tiny_tokenizer, examples):
    """Issue 16: ``packing=True`` (``runtime.packing``) trains on rows without padding; one
    SGD step moves the weights as the padded micro-batches do."""
    torch.manual_seed(0)
    base = init_model(tiny_tokenizer)
    optim = OptimConfig(lr=1.0, optimizer="sgd", batch_size=len(examples), micro_batch_size=4,
                        grad_clip=None, scheduler="constant", warmup=0)
    after = []
    for packing in (False, True):
        model = copy.deepcopy(base)
        r = train_stage(model, examples, optim, epochs=1, seed=0,
                        pad_id=tiny_tokenizer.pad_token_id, packing=packing)
        after.append((r, {n: p.detach().clone() for n, p in model.named_parameters()}))
    (plain, w_plain), (packed, w_packed) = after
    assert packed.target_tokens == plain.target_tokens
    assert packed.first_loss == pytest.approx(plain.first_loss, abs=1e-6)
    for n in w_plain:
        assert torch.allclose(w_packed[n], w_plain[n], atol=1e-6, rtol=0), n
