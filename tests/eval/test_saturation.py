"""Saturation diagnostics (issue 15): a sequence at probability ~1 gives (almost) no gradient."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from pathunlearn.data.chat import IGNORE_INDEX, EncodedExample
from pathunlearn.eval.saturation import GRAD_NORM, LOGP, TOKEN_PROB, saturation

VOCAB = 11


class Peeking(torch.nn.Module):
    """A hand-built causal LM: at every position the logit of the true next token is
    ``scale`` and every other logit 0, so each target token has probability
    e^s / (e^s + V - 1); ``scale`` is its one trainable parameter."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(float(scale)))

    def forward(self, input_ids, attention_mask=None):
        nxt = torch.roll(input_ids, -1, dims=1)
        onehot = torch.nn.functional.one_hot(nxt, VOCAB).float()
        return SimpleNamespace(logits=self.scale * onehot)


EXAMPLES = [EncodedExample([1, 2, 3, 4, 5], [IGNORE_INDEX, IGNORE_INDEX, 3, 4, 5]),
            EncodedExample([1, 6, 7, 8], [IGNORE_INDEX, 6, 7, 8])]


def expected(scale: float) -> tuple[float, float]:
    """(token probability, |d NLL / d scale|) of the Peeking model, by hand."""
    p = torch.exp(torch.tensor(scale)) / (torch.exp(torch.tensor(scale)) + VOCAB - 1)
    return float(p), float(1 - p)  # d(-log p)/ds = -(1 - p)


@pytest.mark.parametrize("scale", [0.0, 2.0, 20.0])
def test_diagnostics_equal_the_hand_computed_values(scale):
    out = saturation(Peeking(scale), EXAMPLES, pad_id=0, micro_batch_size=1)
    p, grad = expected(scale)
    assert out[TOKEN_PROB] == pytest.approx(p, rel=1e-5)
    assert out[LOGP] == pytest.approx(float(torch.log(torch.tensor(p))), rel=1e-5, abs=1e-7)
    assert out[GRAD_NORM] == pytest.approx(grad, rel=1e-4, abs=1e-9)


def test_a_target_at_probability_one_has_a_vanishing_gradient():
    far, near = (saturation(Peeking(s), EXAMPLES, pad_id=0)[GRAD_NORM] for s in (0.0, 20.0))
    assert far > 0.9 and near < 1e-7


def test_it_changes_nothing_in_the_model_or_the_random_state():
    model = Peeking(1.5)
    torch.manual_seed(3)
    before = torch.random.get_rng_state()
    saturation(model, EXAMPLES, pad_id=0)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert model.scale.grad is None and float(model.scale.detach()) == 1.5
