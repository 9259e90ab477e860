"""Sampling: the pure filtering / sampling functions by hand, then the KV-cache loop on a
random tiny Llama (greedy against a cache-free argmax, left padding, stop tokens, seeds)."""

from __future__ import annotations

import math

import pytest
import torch

from pathunlearn.data.chat import encode_prompt
from pathunlearn.eval.generate import (
    apply_temperature,
    generate,
    next_tokens,
    sample_from_probs,
    stop_token_ids,
    top_p_filter,
)

SHORT = [{"role": "user", "content": "Hi"}]
LONG = [{"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Tom has 3 boxes with 4 apples in each box. How many?"}]

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------
# pure functions


def test_temperature_by_hand():
    logits = torch.tensor([[0.0, math.log(2)]])
    assert torch.softmax(apply_temperature(logits, 1.0), -1).tolist()[0] == pytest.approx(
        [1 / 3, 2 / 3])
    assert torch.softmax(apply_temperature(logits, 0.5), -1).tolist()[0] == pytest.approx(
        [1 / 5, 4 / 5])
    s = math.sqrt(2)
    assert torch.softmax(apply_temperature(logits, 2.0), -1).tolist()[0] == pytest.approx(
        [1 / (1 + s), s / (1 + s)])
    with pytest.raises(ValueError):
        apply_temperature(logits, 0.0)


@pytest.mark.parametrize(("top_p", "kept"), [(0.4, 1), (0.7, 2), (0.8, 3), (0.9, 4), (1.0, 4)])
def test_top_p_by_hand(top_p, kept):
    # probabilities 0.125, 0.5, 0.125, 0.25 (unsorted on purpose): ranked 0.5, 0.25, 0.125, 0.125
    probs = torch.tensor([[0.125, 0.5, 0.125, 0.25]])
    out = top_p_filter(probs.log(), top_p)
    expected_kept = [1, 3, 0, 2][:kept]  # ties (0.125) ranked by token id
    assert torch.isfinite(out[0]).nonzero().flatten().sort().values.tolist() == sorted(
        expected_kept)
    assert torch.equal(out[0, expected_kept], probs.log()[0, expected_kept])  # kept: unchanged


def test_top_p_rows_are_independent_and_rejects_bad_values():
    logits = torch.tensor([[5.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    out = top_p_filter(logits, 0.5)
    assert torch.isfinite(out).sum(-1).tolist() == [1, 2]  # uniform row: 1/3 < 0.5, 2/3 >= 0.5
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError):
            top_p_filter(logits, bad)


def test_sample_from_probs_is_the_inverse_cdf():
    probs = torch.tensor([[0.2, 0.3, 0.5]] * 5)
    u = torch.tensor([0.0, 0.1, 0.25, 0.55, 0.99])
    assert sample_from_probs(probs, u).tolist() == [0, 0, 1, 2, 2]
    gaps = torch.tensor([[0.0, 0.5, 0.0, 0.5, 0.0]] * 4)  # zero-probability tokens never drawn
    assert sample_from_probs(gaps, torch.tensor([0.0, 0.49, 0.5, 1.0])).tolist() == [1, 1, 3, 3]
    unnormalised = torch.tensor([[2.0, 6.0]])
    assert sample_from_probs(unnormalised, torch.tensor([0.3])).tolist() == [1]


def test_next_tokens_greedy_and_sampled():
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 1.0]])
    assert next_tokens(logits, None, temperature=1.0, top_p=1.0).tolist() == [1, 0]
    # top_p small: only the argmax survives, whatever the uniform number
    u = torch.tensor([0.99, 0.99])
    assert next_tokens(logits, u, temperature=1.0, top_p=0.01).tolist() == [1, 0]


# ---------------------------------------------------------------------------------------------
# the loop on a random tiny model


@pytest.fixture(scope="module")
def model(tiny_tokenizer):
    """The tiny preset's architecture, randomly initialised with larger weights so that its
    outputs depend on the context (the default init gives nearly uniform logits)."""
    from pathunlearn.tiny import init_model

    model = init_model(tiny_tokenizer)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.15)
    return model


def _argmax_without_cache(model, ids: list[int], steps: int, stops: set[int]) -> list[int]:
    out = []
    with torch.no_grad():
        for _ in range(steps):
            logits = model(torch.tensor([ids + out]), use_cache=False).logits[0, -1]
            token = int(logits.argmax())
            if token in stops:
                break
            out.append(token)
    return out


def test_greedy_matches_cache_free_argmax(model, tiny_tokenizer):
    stops = stop_token_ids(tiny_tokenizer, model)
    for prompt in (SHORT, LONG):
        expected = _argmax_without_cache(model, encode_prompt(tiny_tokenizer, prompt), 8, stops)
        got = generate(model, tiny_tokenizer, [prompt], greedy=True, max_new_tokens=8)
        assert got == [[tiny_tokenizer.decode(expected, skip_special_tokens=True)]]
        assert len(expected) > 3 and len(set(expected)) > 2  # a real, varied generation


def test_left_padded_batch_equals_each_prompt_alone(model, tiny_tokenizer):
    kwargs = {"greedy": True, "max_new_tokens": 8}
    together = generate(model, tiny_tokenizer, [SHORT, LONG], **kwargs)
    alone = (generate(model, tiny_tokenizer, [SHORT], **kwargs)
             + generate(model, tiny_tokenizer, [LONG], **kwargs))
    assert together == alone
    assert together[0] != together[1]


def test_greedy_repeats_its_one_answer(model, tiny_tokenizer):
    out = generate(model, tiny_tokenizer, [SHORT], n=3, greedy=True, max_new_tokens=5)
    assert len(out[0]) == 3 and len(set(out[0])) == 1


def test_same_seed_same_samples_different_seed_different(model, tiny_tokenizer):
    kwargs = {"n": 2, "max_new_tokens": 6, "temperature": 1.0}
    torch.manual_seed(123)  # the global RNG must not matter
    first = generate(model, tiny_tokenizer, [SHORT, LONG], seed=7, **kwargs)
    torch.manual_seed(456)
    again = generate(model, tiny_tokenizer, [SHORT, LONG], seed=7, batch_size=2, **kwargs)
    assert first == again
    assert len({s for samples in first for s in samples}) == 4  # samples differ from each other
    other = generate(model, tiny_tokenizer, [SHORT, LONG], seed=8, **kwargs)
    assert other != first
    # sample j of prompt i depends on (seed, i, j) only, not on the prompts after it
    assert generate(model, tiny_tokenizer, [SHORT], seed=7, **kwargs) == first[:1]


class _EosAfter(torch.nn.Module):
    """Wraps a model; from the ``k``-th generated token on, EOS is the overwhelming choice."""

    def __init__(self, model, eos_id: int, prompt_len: int, k: int):
        super().__init__()
        self.inner, self.eos_id, self.limit, self.calls = model, eos_id, prompt_len + k, 0

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None,
                use_cache=None, logits_to_keep=0):
        self.calls += 1
        out = self.inner(input_ids=input_ids, attention_mask=attention_mask,
                         position_ids=position_ids, cache=cache, use_cache=use_cache,
                         logits_to_keep=logits_to_keep)
        if attention_mask.shape[1] >= self.limit:
            out.logits[..., self.eos_id] = 1e4
        return out


def test_stops_at_eos_and_drops_everything_after(model, tiny_tokenizer):
    width = len(encode_prompt(tiny_tokenizer, LONG))  # the padded width of the batch
    wrapped = _EosAfter(model, tiny_tokenizer.eos_token_id, width, k=2)
    out = generate(wrapped, tiny_tokenizer, [SHORT, LONG], n=2, max_new_tokens=20, seed=1)
    two_tokens = generate(model, tiny_tokenizer, [SHORT, LONG], n=2, max_new_tokens=2, seed=1)
    assert out == two_tokens
    assert all(s and "<|im_end|>" not in s for samples in out for s in samples)
    assert wrapped.calls == 3  # prefill, one decode step, the EOS step; then the batch ends


def test_stop_tokens_of_the_tiny_tokenizer(tiny_tokenizer):
    vocab = tiny_tokenizer.get_vocab()
    assert stop_token_ids(tiny_tokenizer) == {vocab["<|im_end|>"], vocab["<|endoftext|>"]}


def test_restores_training_mode(model, tiny_tokenizer):
    model.train()
    generate(model, tiny_tokenizer, [SHORT], greedy=True, max_new_tokens=2)
    assert model.training
    model.eval()
    generate(model, tiny_tokenizer, [SHORT], greedy=True, max_new_tokens=2)
    assert not model.training


def test_progress_reports_the_rows_done_after_every_batch(model, tiny_tokenizer):
    prompts = [[{"role": "user", "content": f"What is {i} plus {i}?"}] for i in range(5)]
    calls = []
    generate(model, tiny_tokenizer, prompts, n=1, greedy=True, max_new_tokens=2, batch_size=2,
             progress=lambda done, total: calls.append((done, total)))
    assert calls == [(2, 5), (4, 5), (5, 5)]
