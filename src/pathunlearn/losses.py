"""Losses as pure functions of tensors. Shapes: B sequences, T tokens, V vocabulary.

Labels use -100 for positions that carry no target (prompt, template, padding). Logits at
position t predict the token at t + 1, so labels are shifted by one inside these functions.

Unlearning losses (all to be *minimised*; log pi(y|x) is the sum of the response tokens'
log-probabilities, as :func:`sequence_logprobs` returns it):

- forget terms: ``ga_loss``, ``npo_loss``, ``simnpo_loss``, ``wga_loss``, ``satimp_loss``,
  ``ceu_loss``, ``undial_loss``, ``dpo_loss``, ``logit_margin_loss`` (PDU's),
  ``activation_mse`` (RMU's, against its control vector);
- retain terms of the weakly-local methods: ``retain_nll``, ``kl_to_reference``,
  ``activation_mse`` (RMU's, against the reference's activations).

The unlearning methods that combine them (GA, NPO, SimNPO, GradDiff, NPO + retain NLL,
NPO + KL, WGA, SatImp, CE-U, UNDIAL, DPO, RMU, PDU and their retain variants) are objects in
:mod:`pathunlearn.methods`.

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


def weighted_ga_loss(token_logp: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor,
                     num_tokens: int | torch.Tensor | None = None) -> torch.Tensor:
    """Gradient ascent with a constant (detached) weight per token:
    loss = sum_{b,t} mask * w[b,t] * token_logp[b,t] / N (N as in :func:`ga_loss`)."""
    n = mask.sum() if num_tokens is None else num_tokens
    return (weight.detach() * token_logp * mask).sum() / _at_least_one(n)


def wga_loss(token_logp: torch.Tensor, mask: torch.Tensor, beta: float = 1.0,
             num_tokens: int | torch.Tensor | None = None) -> torch.Tensor:
    """Weighted gradient ascent (WGA; Wang et al. 2025, "Rethinking LLM Unlearning Objectives:
    A Gradient Perspective and Go Beyond", ICLR; OpenUnlearning's ``compute_wga_loss``).

    loss = sum_{b,t} mask * p_t^beta * log p_t / N, p_t = exp(token_logp) detached (a weight,
    not differentiated): tokens the model no longer predicts stop pulling, which slows the
    collapse of plain GA. token_logp, mask (B, T-1) -> scalar; N as in :func:`ga_loss`.
    """
    return weighted_ga_loss(token_logp, mask, token_logp.detach().exp() ** beta, num_tokens)


def satimp_loss(token_logp: torch.Tensor, mask: torch.Tensor, beta1: float = 5.0,
                beta2: float = 1.0, num_tokens: int | torch.Tensor | None = None) -> torch.Tensor:
    """SatImp (Yang et al. 2025, "Exploring Criteria of Loss Reweighting to Enhance LLM
    Unlearning", ICML; OpenUnlearning's ``compute_satimp_loss``): GA with the product of a
    saturation weight p^beta1 and an importance weight (1 - p)^beta2, both detached.

    loss = sum_{b,t} mask * p_t^beta1 * (1 - p_t)^beta2 * log p_t / N.
    """
    p = token_logp.detach().exp()
    return weighted_ga_loss(token_logp, mask, p ** beta1 * (1 - p) ** beta2, num_tokens)


def skip_first_targets(mask: torch.Tensor, n: int) -> torch.Tensor:
    """``mask`` (B, T-1) without the first ``n`` target positions of each row."""
    return mask & (mask.cumsum(-1) > n)


def ceu_loss(logits: torch.Tensor, labels: torch.Tensor,
             num_tokens: int | torch.Tensor | None = None, skip_first: int = 1) -> torch.Tensor:
    """Cross-entropy unlearning (CE-U; Yang et al. 2025, "CE-U: Cross Entropy Unlearning",
    arXiv:2503.01224; OpenUnlearning's ``cross_entropy_unlearning_loss``).

    At each target position t, q_t = softmax(z_t with z_t[y_t] = -inf), detached (the model's
    own distribution with the true token removed), and
        loss = sum_{b,t kept} sum_v -q_t(v) * log softmax(z_t)(v) / N,
    N = ``num_tokens`` or the kept positions' count. The first ``skip_first`` target tokens of
    each response are not kept (the paper's footnote). OpenUnlearning averages over the kept
    positions; a given N (the effective batch's target tokens, skipped ones included) makes
    micro-batches add up instead. logits (B, T, V), labels (B, T) -> scalar.
    """
    targets = labels[:, 1:]
    keep = skip_first_targets(targets != IGNORE_INDEX, skip_first)
    n = keep.sum() if num_tokens is None else num_tokens
    if not bool(keep.any()):
        return logits.sum() * 0.0
    rows = logits[:, :-1][keep].float()  # (N, V)
    masked = rows.detach().scatter(-1, targets[keep][:, None], float("-inf"))
    q = torch.softmax(masked, dim=-1)
    return -(q * torch.log_softmax(rows, dim=-1)).sum() / _at_least_one(n)


def undial_loss(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor,
                beta: float = 10.0, num_tokens: int | torch.Tensor | None = None) -> torch.Tensor:
    """UNDIAL (Dong et al. 2025, "UNDIAL: Self-Distillation with Adjusted Logits for Robust
    Unlearning in Large Language Models", NAACL; OpenUnlearning's ``compute_undial_loss``).

    The teacher is the reference (the path model before unlearning) with the true token's
    logit lowered by ``beta``: q_t = softmax(z_ref,t - beta * onehot(y_t)), and
        loss = sum_{b,t target} sum_v -q_t(v) * log softmax(z_t)(v) / N.
    OpenUnlearning averages over every position of the sequence (prompt included); this
    averages over target positions (N = ``num_tokens`` or their count), like every other
    forget term here. logits, ref_logits (B, T, V), labels (B, T) -> scalar.
    """
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    n = mask.sum() if num_tokens is None else num_tokens
    if not bool(mask.any()):
        return logits.sum() * 0.0
    rows = logits[:, :-1][mask].float()  # (N, V)
    teacher = ref_logits[:, :-1][mask].float().detach()
    teacher = teacher.scatter_add(-1, targets[mask][:, None],
                                  torch.full_like(teacher[:, :1], -beta))
    q = torch.softmax(teacher, dim=-1)
    return -(q * torch.log_softmax(rows, dim=-1)).sum() / _at_least_one(n)


def dpo_loss(win_logp: torch.Tensor, win_ref_logp: torch.Tensor, lose_logp: torch.Tensor,
             lose_ref_logp: torch.Tensor, beta: float = 1.0,
             num_sequences: int | None = None) -> torch.Tensor:
    """DPO as unlearning (Rafailov et al. 2023; as OpenUnlearning's ``compute_dpo_loss`` and
    TOFU's IdkDPO): the alternate answer wins, the forget answer loses.

    loss = -(2/beta) * sum_i log sigmoid(beta * ((w_i - w_ref,i) - (l_i - l_ref,i))) / n,
    w, l (B,): summed log-probabilities of the alternate and the forget response under the
    model, w_ref, l_ref under the reference (the path model); n = ``num_sequences`` or B.
    Equals (2/beta) log 2 while the model is still the reference.

    With K alternates per prompt (AltPO), w and w_ref are (B, K) and every prompt's term is
    the mean of its K pairs, ``(1/K) sum_j log sigmoid(beta ((w_ij - w_ref,ij) - (l_i -
    l_ref,i)))``: the expectation of AltPO's dataset of K pairs per forget example.
    """
    n = lose_logp.numel() if num_sequences is None else num_sequences
    lose = lose_logp - lose_ref_logp.to(lose_logp)
    win = win_logp - win_ref_logp.to(win_logp)
    if win.dim() == 2:  # K alternates per prompt: each prompt's term is the mean of its K
        if win.shape[0] != lose.shape[0]:
            raise ValueError(f"{win.shape[0]} rows of alternates for {lose.shape[0]} prompts")
        per_prompt = F.logsigmoid(beta * (win - lose[:, None])).mean(-1)
    else:
        per_prompt = F.logsigmoid(beta * (win - lose))
    return -(2.0 / beta) * per_prompt.sum() / max(n, 1)


def logit_margin_loss(logits: torch.Tensor, labels: torch.Tensor,
                      num_tokens: int | torch.Tensor | None = None) -> torch.Tensor:
    """PDU's forget term, the logit-margin flattening loss (Entesari et al. 2025, "Constrained
    Entropic Unlearning: A Primal-Dual Framework for Large Language Models",
    arXiv:2506.05314; OpenUnlearning's ``pdu.py``).

    At each target position t (the logits that predict a response token),
        loss = sum_{b,t target} (max_v z_t(v) - mean_v z_t(v))^2 / N,
    N = ``num_tokens`` or the target count: zero exactly when the next-token distribution is
    uniform. OpenUnlearning takes the logits at the positions of the response tokens
    themselves (those predicting the token after each); these are the ones predicting them,
    as every other forget term here. logits (B, T, V), labels (B, T) -> scalar.
    """
    mask = labels[:, 1:] != IGNORE_INDEX
    n = mask.sum() if num_tokens is None else num_tokens
    rows = logits[:, :-1][mask].float()  # (N, V)
    margin = rows.max(dim=-1).values - rows.mean(dim=-1)
    return (margin ** 2).sum() / _at_least_one(n)


def activation_mse(hidden: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                   num_tokens: int | torch.Tensor | None = None) -> torch.Tensor:
    """RMU's terms (Li et al. 2024, "The WMDP Benchmark", ICML; OpenUnlearning's ``rmu.py``
    ``compute_activation_loss``): the squared distance of a layer's activations to a target,
    averaged over the hidden dimension, summed over the positions of ``mask``:
        loss = sum_{b,t in mask} mean_d (h_{b,t,d} - target_{b,t,d})^2 / N.
    ``target`` is (D,) (the forget term: the scaled random control vector, the same at every
    position) or (B, T, D) (the retain term: the reference model's activations, detached);
    N = ``num_tokens`` (the effective batch's target tokens) or the count of ``mask``.
    OpenUnlearning averages per sequence, then over the batch; a token mean makes
    micro-batches add up. hidden (B, T, D), mask (B, T) bool -> scalar.
    """
    n = mask.sum() if num_tokens is None else num_tokens
    squared = (hidden.float() - target.detach().float()) ** 2  # (B, T, D)
    return (squared.mean(-1) * mask).sum() / _at_least_one(n)


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
