"""Unlearning losses against values computed by hand, micro-batch accumulation, gradient signs."""

from __future__ import annotations

import math

import pytest
import torch

from pathunlearn.config import MethodConfig
from pathunlearn.data.batching import collate
from pathunlearn.data.chat import IGNORE_INDEX, encode_conversation
from pathunlearn.data.sources import load_source
from pathunlearn.losses import (
    ga_loss,
    kl_to_reference,
    npo_loss,
    retain_nll,
    sequence_logprobs,
    simnpo_loss,
    token_logprobs,
)
from pathunlearn.methods import (
    BUILTIN_METHODS,
    ForgetBatch,
    RetainBatch,
    make_method,
)

LN3 = math.log(3.0)


def log1pexp(x: float) -> float:
    """log(1 + e^x) = -log sigmoid(-x), written out by hand."""
    return math.log(1.0 + math.exp(x))


# ---------------------------------------------------------------------------- hand values


def test_ga_loss_is_token_mean_log_likelihood():
    token_logp = torch.tensor([[-1.0, -2.0, 0.0], [-3.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    assert ga_loss(token_logp, mask).item() == pytest.approx((-1 - 2 - 3) / 3)
    # the effective batch's token count divides, not this micro-batch's
    assert ga_loss(token_logp, mask, num_tokens=6).item() == pytest.approx(-6 / 6)


def test_npo_loss_by_hand():
    logp, ref = torch.tensor([-2.0, -4.0]), torch.tensor([-3.0, -3.0])
    # ratios +1, -1; -(2/beta) * mean log sigmoid(-beta * ratio), log sigmoid(-x) = -log1pexp(x)
    expected = (2 / 0.5) * (log1pexp(0.5 * 1) + log1pexp(0.5 * -1)) / 2
    assert npo_loss(logp, ref, beta=0.5).item() == pytest.approx(expected, rel=1e-6)


def test_npo_loss_at_the_reference_is_2_log2_over_beta():
    logp = torch.tensor([-5.0, -17.0, -1.0])
    for beta in (0.5, 1.0, 2.0):
        assert npo_loss(logp, logp.clone(), beta).item() == pytest.approx(2 / beta * math.log(2))


def test_npo_loss_is_finite_far_from_the_reference():
    loss = npo_loss(torch.tensor([-1e4]), torch.tensor([0.0]), beta=0.5)
    assert torch.isfinite(loss) and loss.item() >= 0


def test_simnpo_paper_form_by_hand():
    logp = torch.tensor([-2.0, -4.0])
    expected = (2 / 1.0) * (log1pexp(-2.0) + log1pexp(-4.0)) / 2
    assert simnpo_loss(logp, beta=1.0).item() == pytest.approx(expected, rel=1e-6)
    # the paper's form ignores the margin
    assert simnpo_loss(logp, beta=1.0, gamma=3.0).item() == pytest.approx(expected, rel=1e-6)


def test_simnpo_original_form_by_hand():
    logp, lengths = torch.tensor([-2.0, -4.0]), torch.tensor([2, 8])
    beta, gamma = 2.0, 0.5
    # z = -(beta / |y|) * logp - gamma = [2 - 0.5, 1 - 0.5]; loss = (2/beta) * mean log1pexp(-z)
    expected = (2 / beta) * (log1pexp(-1.5) + log1pexp(-0.5)) / 2
    got = simnpo_loss(logp, beta=beta, lengths=lengths, gamma=gamma)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def two_token_logits(*rows: tuple[float, float]) -> torch.Tensor:
    """(1, T, 2) logits from (logit of token 0, logit of token 1) pairs."""
    return torch.tensor([list(rows)])


def test_retain_nll_by_hand():
    # position 0 predicts label 1 with p = 3/4, position 1 predicts label 0 with p = 1/2
    logits = two_token_logits((0.0, LN3), (0.0, 0.0), (5.0, -5.0))
    labels = torch.tensor([[IGNORE_INDEX, 1, 0]])
    expected = (-math.log(3 / 4) - math.log(1 / 2)) / 2
    assert retain_nll(logits, labels).item() == pytest.approx(expected, rel=1e-6)
    assert retain_nll(logits, labels, num_tokens=4).item() == pytest.approx(expected / 2, rel=1e-6)


def test_kl_to_reference_by_hand_on_two_tokens():
    # target position 0: p_ref = (1/2, 1/2), p_theta = (1/4, 3/4); position 1 is not a target
    logits = two_token_logits((0.0, LN3), (9.0, 0.0), (0.0, 0.0))
    ref_logits = two_token_logits((0.0, 0.0), (0.0, 9.0), (0.0, 0.0))
    labels = torch.tensor([[IGNORE_INDEX, 1, IGNORE_INDEX]])
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)  # KL(ref || theta)
    assert kl_to_reference(logits, ref_logits, labels).item() == pytest.approx(expected, rel=1e-6)
    reverse = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)  # KL(theta || ref)
    assert expected != pytest.approx(reverse)
    assert kl_to_reference(logits, logits, labels).item() == pytest.approx(0.0, abs=1e-7)


# ---------------------------------------------------------------------------- accumulation


def test_micro_batch_losses_add_up_to_the_effective_batch_loss():
    g = torch.Generator().manual_seed(0)
    logp, ref = -10 * torch.rand(6, generator=g), -10 * torch.rand(6, generator=g)
    lengths = torch.tensor([3, 5, 2, 7, 4, 1])
    halves = (slice(0, 4), slice(4, 6))
    for loss in (lambda s, n: npo_loss(logp[s], ref[s], 0.5, num_sequences=n),
                 lambda s, n: simnpo_loss(logp[s], 1.0, num_sequences=n),
                 lambda s, n: simnpo_loss(logp[s], 2.0, lengths[s], 0.3, num_sequences=n)):
        full = loss(slice(None), None)
        assert sum(loss(s, 6) for s in halves).item() == pytest.approx(full.item(), rel=1e-6)


def test_token_mean_losses_accumulate_over_micro_batches():
    g = torch.Generator().manual_seed(1)
    logits, ref_logits = torch.randn(4, 6, 5, generator=g), torch.randn(4, 6, 5, generator=g)
    labels = torch.randint(0, 5, (4, 6), generator=g)
    labels[:, :2] = IGNORE_INDEX
    labels[1, 4:] = IGNORE_INDEX  # a shorter sequence: micro-batches hold unequal token counts
    token_logp, mask = token_logprobs(logits, labels)
    n = int(mask.sum())
    halves = (slice(0, 1), slice(1, 4))
    parts = [
        (ga_loss(token_logp, mask), [ga_loss(token_logp[s], mask[s], n) for s in halves]),
        (retain_nll(logits, labels), [retain_nll(logits[s], labels[s], n) for s in halves]),
        (kl_to_reference(logits, ref_logits, labels),
         [kl_to_reference(logits[s], ref_logits[s], labels[s], n) for s in halves]),
    ]
    for full, pieces in parts:
        assert sum(pieces).item() == pytest.approx(full.item(), rel=1e-6)


# ---------------------------------------------------------------------------- methods


def forget_loss(method: MethodConfig, token_logp, mask, ref_logp=None, *, num_tokens=None,
                num_sequences=None):
    """The forget term of the configured method on one batch (the divisors default to the
    batch's own counts)."""
    batch = ForgetBatch(token_logp, mask, int(mask.sum()) if num_tokens is None else num_tokens,
                        mask.size(0) if num_sequences is None else num_sequences, ref_logp)
    return make_method(method).forget_loss(batch)


def retain_loss(method: MethodConfig, logits, labels, ref_logits=None):
    n = int((labels[:, 1:] != IGNORE_INDEX).sum())
    return make_method(method).retain_loss(RetainBatch(logits, labels, n, ref_logits))


def test_method_objects_cover_every_built_in_method():
    names = set(BUILTIN_METHODS)
    local = {n for n, m in BUILTIN_METHODS.items() if m.local}
    assert local == {"ga", "npo", "simnpo", "weighted_ga", "satimp", "ceu", "undial", "dpo",
                     "altpo", "rmu"}
    assert names - local == {"graddiff", "npo_retain", "npo_kl", "weighted_ga_retain",
                             "satimp_retain", "undial_retain", "dpo_retain", "altpo_retain",
                             "rmu_retain", "pdu"}
    assert BUILTIN_METHODS["npo"].default_beta == 0.5
    assert BUILTIN_METHODS["simnpo"].default_beta == 1.0
    assert make_method(MethodConfig(name="npo")).beta == 0.5
    assert make_method(MethodConfig(name="npo", beta=0.1)).beta == 0.1
    assert make_method(MethodConfig(name="ga")).beta is None
    needs_ref = {n for n, m in BUILTIN_METHODS.items() if m.needs_reference}
    assert needs_ref == {"npo", "npo_retain", "npo_kl", "dpo", "dpo_retain", "altpo",
                         "altpo_retain"}
    assert {n for n, m in BUILTIN_METHODS.items() if m.needs_reference_model} == {"npo_kl"}


def test_forget_loss_dispatches_to_the_pure_losses():
    token_logp = torch.tensor([[-1.0, -2.0, 0.0], [-3.0, -1.0, -1.0]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    logp, lengths = torch.tensor([-3.0, -5.0]), torch.tensor([2, 3])
    ref = torch.tensor([-4.0, -4.0])
    cases = {
        MethodConfig(name="graddiff"): ga_loss(token_logp, mask, 10),
        MethodConfig(name="npo"): npo_loss(logp, ref, 0.5, 4),
        MethodConfig(name="npo_kl", beta=0.2): npo_loss(logp, ref, 0.2, 4),
        MethodConfig(name="simnpo"): simnpo_loss(logp, 1.0, num_sequences=4),
        MethodConfig(name="simnpo", length_normalize=True, gamma=0.5):
            simnpo_loss(logp, 1.0, lengths, 0.5, num_sequences=4),
    }
    for method, expected in cases.items():
        got = forget_loss(method, token_logp, mask, ref, num_tokens=10, num_sequences=4)
        assert got.item() == pytest.approx(expected.item(), rel=1e-6), method.name
    with pytest.raises(ValueError, match="ref_logp"):
        forget_loss(MethodConfig(name="npo"), token_logp, mask)


def test_retain_loss_is_weighted_retain_term():
    logits = two_token_logits((0.0, LN3), (0.0, 0.0), (0.0, 0.0))
    ref_logits = torch.zeros_like(logits)
    labels = torch.tensor([[IGNORE_INDEX, 1, 0]])
    nll = retain_loss(MethodConfig(name="graddiff", retain_weight=2.0), logits, labels)
    assert nll.item() == pytest.approx(2.0 * retain_nll(logits, labels).item())
    kl = retain_loss(MethodConfig(name="npo_kl", retain_weight=0.5), logits, labels, ref_logits)
    assert kl.item() == pytest.approx(0.5 * kl_to_reference(logits, ref_logits, labels).item())
    with pytest.raises(ValueError, match="ref_logits"):
        retain_loss(MethodConfig(name="npo_kl"), logits, labels)
    with pytest.raises(NotImplementedError, match="local"):
        retain_loss(MethodConfig(name="ga"), logits, labels)


# ---------------------------------------------------------------------------- gradient sign


@pytest.fixture(scope="module")
def forget_batch(tiny_tokenizer):
    convs = load_source("builtin:refusals:train", max_examples=2)
    examples = [encode_conversation(tiny_tokenizer, c.messages, 128) for c in convs]
    return collate(examples, tiny_tokenizer.pad_token_id)


# SimNPO's paper form saturates at a random model's log pi(y|x) of about -200 (gradient
# ~ sigmoid(-200)), hence a small beta there
@pytest.mark.parametrize("method", [
    MethodConfig(name="ga"), MethodConfig(name="npo"), MethodConfig(name="simnpo", beta=0.01),
    MethodConfig(name="simnpo", length_normalize=True, gamma=0.5)], ids=lambda m: m.name)
def test_one_sgd_step_on_a_local_loss_lowers_the_forget_log_likelihood(
        method, tiny_tokenizer, forget_batch):
    from pathunlearn.tiny import init_model

    model = init_model(tiny_tokenizer)
    with torch.no_grad():
        before, _ = sequence_logprobs(model(**forget_batch.inputs()).logits, forget_batch.labels)
    token_logp, mask = token_logprobs(model(**forget_batch.inputs()).logits, forget_batch.labels)
    loss = forget_loss(method, token_logp, mask, before)
    loss.backward()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    optimizer.step()
    with torch.no_grad():
        after, _ = sequence_logprobs(model(**forget_batch.inputs()).logits, forget_batch.labels)
    assert after.sum() < before.sum()


def test_token_logprobs_only_at_targets_equal_the_full_softmax():
    """Issue 16: the softmax is taken only where a target is read; values and gradients are
    those of the full (B, T-1, V) log-softmax, bit for bit."""
    torch.manual_seed(0)
    logits = torch.randn(3, 12, 50, requires_grad=True)
    labels = torch.randint(0, 50, (3, 12))
    labels[:, :5] = -100
    labels[2] = -100  # a row without any target
    picked, mask = token_logprobs(logits, labels)
    full = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    reference = full.gather(-1, labels[:, 1:].clamp_min(0).unsqueeze(-1)).squeeze(-1) * mask
    assert torch.equal(picked, reference)
    g1 = torch.autograd.grad(picked.sum(), logits)[0]
    g2 = torch.autograd.grad(reference.sum(), logits)[0]
    assert torch.equal(g1, g2)
    none = torch.full((1, 4), -100)
    assert token_logprobs(torch.randn(1, 4, 50), none)[0].abs().sum() == 0


@pytest.mark.parametrize("chunk", [1, 3, 1000])
def test_vocab_chunks_give_the_same_losses_and_gradients(chunk):
    """Issue 16: the chunked, checkpointed softmax over the vocabulary (``chunk``, for 128k
    vocabularies) changes neither the NLL, the token log-probabilities nor the gradients
    (float rounding apart). Issue 24: the chunking is an argument, not a context around the
    call."""
    from pathunlearn.losses import nll_sum, token_logprobs

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 50, generator=g)
    labels = torch.randint(0, 50, (3, 7), generator=g)
    labels[0, :3] = IGNORE_INDEX
    labels[2, 5:] = IGNORE_INDEX

    def losses(chunk: int | None):
        x = logits.clone().requires_grad_(True)
        nll = nll_sum(x, labels, chunk)
        logp, mask = token_logprobs(x, labels, chunk)
        (nll + 0.5 * logp.sum()).backward()
        return nll.detach(), logp.detach(), mask, x.grad

    nll, logp, mask, grad = losses(None)
    c_nll, c_logp, c_mask, c_grad = losses(chunk)
    assert torch.equal(mask, c_mask)
    assert torch.allclose(c_nll, nll, rtol=1e-6, atol=0)
    assert torch.allclose(c_logp, logp, atol=1e-6, rtol=0)
    assert torch.allclose(c_grad, grad, atol=1e-7, rtol=0)
    with torch.no_grad():  # without gradients nothing is checkpointed: same values
        assert torch.allclose(nll_sum(logits, labels, chunk), nll, rtol=1e-6, atol=0)
    assert torch.equal(nll_sum(logits, labels), nll)  # no chunk: the plain cross-entropy
    assert torch.equal(nll_sum(logits, labels, 0), nll)  # 0 is off, as vocab_chunk: 0
    n = int((labels[:, 1:] != IGNORE_INDEX).sum())
    assert torch.allclose(retain_nll(logits, labels, n, chunk), nll / n, rtol=1e-6, atol=0)
