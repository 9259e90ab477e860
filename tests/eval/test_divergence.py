"""Retrain-equivalence distances: hand-computed values and self-distance zero."""

from __future__ import annotations

import math

import pytest
import torch

from pathunlearn.eval.divergence import (
    Reference,
    heldout_examples,
    kl_distance,
    mse_distance,
    position_logprobs,
    token_logprobs_of,
)
from pathunlearn.tiny import init_model


def ref(probs, tokens):
    return Reference(torch.log(torch.tensor(probs)), torch.tensor(tokens))


def test_kl_and_mse_by_hand():
    a = ref([[0.5, 0.5], [0.9, 0.1]], [0, 1])
    b = ref([[0.25, 0.75], [0.9, 0.1]], [0, 1])
    # KL(b || a) at position 0: 0.25 ln(0.25/0.5) + 0.75 ln(0.75/0.5); position 1: 0
    expected = (0.25 * math.log(0.5) + 0.75 * math.log(1.5)) / 2
    assert kl_distance(a, b) == pytest.approx(expected)
    assert kl_distance(a, a) == 0.0
    # reference tokens: a gives ln 0.5 and ln 0.1, b gives ln 0.25 and ln 0.1
    assert mse_distance(token_logprobs_of(a), token_logprobs_of(b)) == pytest.approx(
        (math.log(0.5) - math.log(0.25)) ** 2 / 2)


def test_positions_are_the_target_tokens(tiny_tokenizer):
    torch.manual_seed(0)
    model = init_model(tiny_tokenizer)
    from pathunlearn.data.sources import load_source

    conversations = [c for s in ("builtin:refusals:test", "builtin:authors:eval")
                     for c in load_source(s, max_examples=4)]
    examples = heldout_examples(tiny_tokenizer, 256, conversations)
    assert len(examples) == 8
    r = position_logprobs(model, examples, tiny_tokenizer.pad_token_id, batch_size=3)
    n_targets = sum(e.num_targets for e in examples)
    assert r.logp.shape == (n_targets, len(tiny_tokenizer)) and r.tokens.shape == (n_targets,)
    assert torch.allclose(r.logp.exp().sum(-1), torch.ones(n_targets), atol=1e-5)
    alone = position_logprobs(model, examples[:1], tiny_tokenizer.pad_token_id)
    assert torch.allclose(alone.logp, r.logp[: examples[0].num_targets], atol=1e-5)
    assert kl_distance(r, r) == 0.0


def test_mse_distance_of_stored_lists():
    # the report calls it on the re_tokens lists of metrics.jsonl, not on tensors
    assert mse_distance([-1.0, -2.0, -0.5], [-1.0, -1.0, -2.5]) == pytest.approx((0 + 1 + 4) / 3)
    assert mse_distance([-0.3, -7.0], [-0.3, -7.0]) == 0.0
