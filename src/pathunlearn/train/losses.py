"""Losses as pure functions of tensors. Shapes: B sequences, T tokens, V vocabulary.

Labels use -100 for positions that carry no target (prompt, template, padding). Logits at
position t predict the token at t + 1, so labels are shifted by one inside these functions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pathunlearn.data.chat import IGNORE_INDEX


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
