"""Losses as pure functions of tensors. Shapes: B sequences, T tokens, V vocabulary.

Labels use -100 for positions that carry no target (prompt, template, padding). Logits at
position t predict the token at t + 1, so labels are shifted by one inside these functions.

Unlearning losses (all to be *minimised*; log pi(y|x) is the sum of the response tokens'
log-probabilities, as :func:`sequence_logprobs` returns it):

- local (gradients from the forget set only): ``ga_loss``, ``npo_loss``, ``simnpo_loss``;
- weakly local (also use retain data; marked non-local in every output): GradDiff = GA +
  lambda * ``retain_nll``, NPO + lambda * ``retain_nll``, NPO + lambda * ``kl_to_reference``.

Micro-batches: every loss takes its divisor explicitly (``num_tokens`` for token means,
``num_sequences`` for sequence means). Pass the count of the whole *effective* batch and the
micro-batch losses add up to the effective batch's loss, as their gradients do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from pathunlearn.data.chat import IGNORE_INDEX

if TYPE_CHECKING:
    from pathunlearn.config import MethodConfig


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of every target token and the target mask.

    logits (B, T, V), labels (B, T) -> logp (B, T-1) with 0 where masked, mask (B, T-1) bool.
    """
    targets = labels[:, 1:]  # (B, T-1)
    mask = targets != IGNORE_INDEX
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, T-1, V)
    picked = logp.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return picked * mask, mask


def sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi(y|x) per sequence: the sum of its target tokens' log-probabilities.

    Returns (sum_logp (B,), num_targets (B,)).
    """
    logp, mask = token_logprobs(logits, labels)
    return logp.sum(-1), mask.sum(-1)


def nll_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed negative log-likelihood over all target tokens of the batch (a scalar).

    Divide by the number of target tokens of the whole *effective* batch, not of this
    micro-batch, so accumulated gradients equal those of one big batch.
    """
    targets = labels[:, 1:].reshape(-1)
    return F.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.size(-1)), targets,
        ignore_index=IGNORE_INDEX, reduction="sum",
    )


# ---------------------------------------------------------------------------- unlearning

LOCAL_METHODS = frozenset({"ga", "npo", "simnpo"})
WEAKLY_LOCAL_METHODS = frozenset({"graddiff", "npo_retain", "npo_kl"})
DEFAULT_BETA = {"npo": 0.5, "simnpo": 1.0, "npo_retain": 0.5, "npo_kl": 0.5}
"""beta when MethodConfig.beta is null (the paper: NPO 0.5, SimNPO 1.0); GA has none."""
FORGET_TERM = {"ga": "ga", "npo": "npo", "simnpo": "simnpo",
               "graddiff": "ga", "npo_retain": "npo", "npo_kl": "npo"}
"""The forget-set loss of each method."""
RETAIN_TERM = {"graddiff": "nll", "npo_retain": "nll", "npo_kl": "kl"}
"""The retain-set term of each weakly-local method (weighted by MethodConfig.retain_weight)."""


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
               num_tokens: int | torch.Tensor | None = None) -> torch.Tensor:
    """Token-mean NLL on retain examples (the retain term of GradDiff and NPO + retain NLL).

    loss = nll_sum(logits, labels) / N, N = ``num_tokens`` (target tokens of the effective
    retain batch) or this batch's count. logits (B, T, V), labels (B, T) -> scalar.
    """
    n = (labels[:, 1:] != IGNORE_INDEX).sum() if num_tokens is None else num_tokens
    return nll_sum(logits, labels) / _at_least_one(n)


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


def method_beta(method: MethodConfig) -> float | None:
    """The beta a method uses: its own, else DEFAULT_BETA (None for GA and GradDiff)."""
    return method.beta if method.beta is not None else DEFAULT_BETA.get(method.name)


def forget_loss(method: MethodConfig, token_logp: torch.Tensor, mask: torch.Tensor,
                ref_logp: torch.Tensor | None = None, *,
                num_tokens: int | torch.Tensor | None = None,
                num_sequences: int | None = None) -> torch.Tensor:
    """The forget-set term of ``method`` on one micro-batch (see FORGET_TERM).

    token_logp, mask (B, T-1) from :func:`token_logprobs`; ref_logp (B,) the cached reference
    log-probabilities of these sequences (NPO forms only). Divisors as in the losses above.
    """
    term = FORGET_TERM[method.name]
    if term == "ga":
        return ga_loss(token_logp, mask, num_tokens)
    logp = (token_logp * mask).sum(-1)  # (B,) log pi(y|x)
    if term == "npo":
        if ref_logp is None:
            raise ValueError(f"{method.name} needs the reference log-probabilities ref_logp")
        return npo_loss(logp, ref_logp, method_beta(method), num_sequences)
    lengths = mask.sum(-1) if method.length_normalize else None
    return simnpo_loss(logp, method_beta(method), lengths, method.gamma, num_sequences)


def retain_loss(method: MethodConfig, logits: torch.Tensor, labels: torch.Tensor,
                ref_logits: torch.Tensor | None = None, *,
                num_tokens: int | torch.Tensor | None = None) -> torch.Tensor:
    """lambda * the retain term of a weakly-local ``method`` (see RETAIN_TERM) on a retain
    micro-batch; ``ref_logits`` (the reference model's logits) for ``npo_kl`` only."""
    term = RETAIN_TERM[method.name]  # KeyError for local methods: they have no retain term
    if term == "nll":
        value = retain_nll(logits, labels, num_tokens)
    elif ref_logits is None:
        raise ValueError(f"{method.name} needs the reference model's logits ref_logits")
    else:
        value = kl_to_reference(logits, ref_logits, labels, num_tokens)
    return method.retain_weight * value


def _at_least_one(n: int | torch.Tensor) -> int | torch.Tensor:
    # an empty batch gives 0 / 1 = 0 rather than nan
    return n.clamp_min(1) if isinstance(n, torch.Tensor) else max(n, 1)
