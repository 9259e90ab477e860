"""Losses as pure functions of tensors. Shapes: B sequences, T tokens, V vocabulary.

Labels use -100 for positions that carry no target (prompt, template, padding). Logits at
position t predict the token at t + 1, so labels are shifted by one inside these functions.

Unlearning losses (all to be *minimised*; log pi(y|x) is the sum of the response tokens'
log-probabilities, as :func:`sequence_logprobs` returns it):

- forget terms: ``ga_loss``, ``npo_loss``, ``simnpo_loss``;
- retain terms of the weakly-local methods: ``retain_nll``, ``kl_to_reference``.

The unlearning methods that combine them (GA, NPO, SimNPO, GradDiff, NPO + retain NLL,
NPO + KL) are objects in :mod:`pathunlearn.methods`.

Micro-batches: every loss takes its divisor explicitly (``num_tokens`` for token means,
``num_sequences`` for sequence means). Pass the count of the whole *effective* batch and the
micro-batch losses add up to the effective batch's loss, as their gradients do.

Vocabulary chunks: :func:`token_logprobs`, :func:`nll_sum` and :func:`retain_nll` take
``chunk`` (the config's ``vocab_chunk``, passed by every caller; None: off): the softmax over
the vocabulary runs ``chunk`` target positions at a time, each chunk recomputed in the backward
pass (activation checkpointing) rather than kept, so the fp32 (N, V) copies of the logits and
of their log-softmax never exist whole, which for a 128k vocabulary is most of a step's memory.
Same values and gradients up to float rounding (tested).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from pathunlearn.data.chat import IGNORE_INDEX


def _pick(rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(rows)[target] per row, in fp32: rows (N, V), targets (N,) -> (N,)."""
    return torch.log_softmax(rows.float(), dim=-1).gather(-1, targets[:, None]).squeeze(-1)


def target_logprobs(rows: torch.Tensor, targets: torch.Tensor,
                    chunk: int | None = None) -> torch.Tensor:
    """:func:`_pick`, ``chunk`` rows at a time and checkpointed when gradients are recorded
    (module docstring); all rows at once when ``chunk`` is None or 0."""
    if not chunk or rows.size(0) <= chunk or not torch.is_grad_enabled():
        return _pick(rows, targets)
    return torch.cat([checkpoint(_pick, rows[i : i + chunk], targets[i : i + chunk],
                                 use_reentrant=False)
                      for i in range(0, rows.size(0), chunk)])


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor,
                   chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of every target token and the target mask.

    logits (B, T, V), labels (B, T) -> logp (B, T-1) with 0 where masked, mask (B, T-1) bool.
    ``chunk``: target positions per softmax (module docstring); None: all at once.
    """
    targets = labels[:, 1:]  # (B, T-1)
    mask = targets != IGNORE_INDEX
    picked = torch.zeros(mask.shape, dtype=torch.float32, device=logits.device)
    if bool(mask.any()):
        # the softmax over the vocabulary only at target positions (a fp32 copy of (N, V)
        # rather than (B, T-1, V)); the same values and gradients, bit for bit
        rows = logits[:, :-1][mask]  # (N, V)
        picked = picked.masked_scatter(mask, target_logprobs(rows, targets[mask], chunk))
    return picked, mask


def sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi(y|x) per sequence: the sum of its target tokens' log-probabilities.

    Returns (sum_logp (B,), num_targets (B,)).
    """
    logp, mask = token_logprobs(logits, labels)
    return logp.sum(-1), mask.sum(-1)


def nll_sum(logits: torch.Tensor, labels: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """Summed negative log-likelihood over all target tokens of the batch (a scalar).

    Divide by the number of target tokens of the whole *effective* batch, not of this
    micro-batch, so accumulated gradients equal those of one big batch. ``chunk``: target
    positions per softmax (module docstring); None: one cross-entropy over every position.
    """
    if chunk:  # the target positions only, a chunk at a time
        logp, mask = token_logprobs(logits, labels, chunk)
        return -logp.sum()
    targets = labels[:, 1:].reshape(-1)
    return F.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.size(-1)), targets,
        ignore_index=IGNORE_INDEX, reduction="sum",
    )


# ---------------------------------------------------------------------------- unlearning

def ga_loss(token_logp: torch.Tensor, mask: torch.Tensor,
            num_tokens: int | torch.Tensor | None = None) -> torch.Tensor:
    """Gradient ascent: the token-mean log-likelihood of the forget responses (minimise it).

    loss = sum_{b,t} mask[b,t] * token_logp[b,t] / N, N = ``num_tokens`` (target tokens of the
    effective batch) or ``mask.sum()``. Minimising it ascends the token-mean NLL, as the
    paper's code does. token_logp, mask (B, T-1) from :func:`token_logprobs` -> scalar.
    """
    n = mask.sum() if num_tokens is None else num_tokens
    return (token_logp * mask).sum() / _at_least_one(n)


def npo_loss(logp: torch.Tensor, ref_logp: torch.Tensor, beta: float = 0.5,
             num_sequences: int | None = None) -> torch.Tensor:
    """Negative Preference Optimisation (Zhang et al. 2024), averaged over sequences.

    loss = -(2/beta) * sum_i log sigmoid(-beta * (logp_i - ref_logp_i)) / n, n =
    ``num_sequences`` (sequences of the effective batch) or B. logp, ref_logp (B,): summed
    log-probabilities of each response under the model and under the reference (the path
    model before unlearning, cached by ``eval.logprob.reference_logprobs``) -> scalar.
    Equals (2/beta) * log 2 while the model is still the reference.
    """
    n = logp.numel() if num_sequences is None else num_sequences
    ratio = logp - ref_logp.to(logp)  # (B,) log pi_theta / pi_ref
    # logsigmoid stays finite where log(sigmoid(x)) underflows to -inf
    return -(2.0 / beta) * F.logsigmoid(-beta * ratio).sum() / max(n, 1)


def simnpo_loss(logp: torch.Tensor, beta: float = 1.0, lengths: torch.Tensor | None = None,
                gamma: float = 0.0, num_sequences: int | None = None) -> torch.Tensor:
    """SimNPO: NPO without a reference model, averaged over sequences.

    The paper's form (``lengths`` None; its code ignores ``gamma``):
        loss = -(2/beta) * sum_i log sigmoid(-beta * logp_i) / n.
    The SimNPO paper's own form (``lengths`` = |y_i|, the response token counts, (B,)):
        loss = -(2/beta) * sum_i log sigmoid(-(beta / |y_i|) * logp_i - gamma) / n.
    logp (B,) summed log-probabilities; n = ``num_sequences`` or B -> scalar.
    """
    n = logp.numel() if num_sequences is None else num_sequences
    if lengths is None:
        z = -beta * logp
    else:
        z = -beta * logp / lengths.to(logp).clamp_min(1) - gamma
    return -(2.0 / beta) * F.logsigmoid(z).sum() / max(n, 1)


def retain_nll(logits: torch.Tensor, labels: torch.Tensor,
               num_tokens: int | torch.Tensor | None = None,
               chunk: int | None = None) -> torch.Tensor:
    """Token-mean NLL on retain examples (the retain term of GradDiff and NPO + retain NLL).

    loss = nll_sum(logits, labels) / N, N = ``num_tokens`` (target tokens of the effective
    retain batch) or this batch's count; ``chunk`` as in :func:`nll_sum`. logits (B, T, V),
    labels (B, T) -> scalar.
    """
    n = (labels[:, 1:] != IGNORE_INDEX).sum() if num_tokens is None else num_tokens
    return nll_sum(logits, labels, chunk) / _at_least_one(n)


def kl_to_reference(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor,
                    num_tokens: int | torch.Tensor | None = None) -> torch.Tensor:
    """KL(pi_ref || pi_theta) of the next-token distributions at retain target positions.

    loss = sum_{b,t target} sum_v p_ref(v) * (log p_ref(v) - log p_theta(v)) / N, N =
    ``num_tokens`` (target tokens of the effective retain batch) or this batch's count.
    The direction is the one of TOFU's and NPO's code (``F.kl_div(log p_theta, log p_ref)``);
    unlike their ``batchmean`` it averages over target tokens only, not over every position.
    logits, ref_logits (B, T, V) of the model and of the reference, labels (B, T) -> scalar.
    """
    mask = labels[:, 1:] != IGNORE_INDEX  # (B, T-1)
    logq = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, T-1, V) model
    logp = torch.log_softmax(ref_logits[:, :-1].float(), dim=-1)  # (B, T-1, V) reference
    kl = (logp.exp() * (logp - logq)).sum(-1)  # (B, T-1)
    n = mask.sum() if num_tokens is None else num_tokens
    return (kl * mask).sum() / _at_least_one(n)


def _at_least_one(n: int | torch.Tensor) -> int | torch.Tensor:
    # an empty batch gives 0 / 1 = 0 rather than nan
    return n.clamp_min(1) if isinstance(n, torch.Tensor) else max(n, 1)
