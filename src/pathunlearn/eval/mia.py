"""Membership-inference attacks on the forget set against a holdout set, their AUCs and
privleak, as OpenUnlearning computes them (``locuslab/open-unlearning``,
``src/evals/metrics/mia/``: ``loss.py``, ``zlib.py``, ``min_k.py``, ``min_k_plus_plus.py``,
``reference.py``, ``gradnorm.py``, ``utils.py: mia_auc``; ``src/evals/metrics/privacy.py:
privleak``) and MUSE (Shi et al., 2024) reports them.

Each attack gives every item a score where *higher means "not a member"* (more loss):

- ``loss``: the item's mean token NLL (Yeom et al., 2018);
- ``zlib``: the mean token NLL divided by the length in bytes of the zlib-compressed answer
  text (Carlini et al., 2021);
- ``min_k``: minus the mean of the lowest ``k`` fraction of the item's token log-probabilities
  (at least one token; Shi et al., 2024, Min-K% Prob; ``k`` = 0.4 by default here, as in
  OpenUnlearning's MUSE configs);
- ``min_k_plus_plus``: the same over token scores ``(log p(x_t) - mu_t) / sigma_t``, with
  ``mu_t`` and ``sigma_t^2`` the mean and variance of ``log p`` under the model's own
  next-token distribution at ``t`` (``sigma^2`` clamped at 1e-6; Zhang et al., 2024);
- ``reference``: the item's mean NLL minus a reference model's (pathunlearn: the path's
  retrain model; Carlini et al., 2022);
- ``gradnorm``: the mean over parameter tensors of the p-norm of the gradient of the item's
  mean NLL (Wang et al., 2024).

``auc``: the area under the ROC curve with forget items labelled 0 and holdout items 1 and the
attack score as the decision value (sklearn's ``roc_auc_score``, computed here as the
Mann-Whitney statistic: the probability that a random holdout item scores above a random
forget item, ties counted half). AUC near 1: the forget set is recognisably a member set;
0.5: indistinguishable from unseen data.

``privleak = ((1 - AUC) - (1 - AUC_ref)) / (1 - AUC_ref + 1e-10) * 100`` (MUSE's sign
convention, as OpenUnlearning writes it), with ``AUC_ref`` the same attack's AUC on the
reference model. OpenUnlearning's reference is a retain model downloaded with the
benchmark; pathunlearn's is the retrain model of the same path. Near 0: as private as
retraining; strongly negative: the forget set still leaks; positive: over-unlearned.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence

import torch

EPS = 1e-10
ATTACKS = ("loss", "zlib", "min_k", "min_k_plus_plus", "reference", "gradnorm")
DEFAULT_K = 0.4


def loss_score(nll: float) -> float:
    """The LOSS attack's score: the mean token NLL."""
    return float(nll)


def zlib_score(nll: float, text: str) -> float:
    """The ZLib attack's score: mean token NLL / zlib-compressed byte length of ``text``."""
    return float(nll) / max(len(zlib.compress(text.encode("utf-8"))), 1)


def _lowest_mean(values: Sequence[float], k: float) -> float:
    if not 0 < k <= 1:
        raise ValueError(f"min-k: k must be in (0, 1], got {k}")
    if not len(values):
        return 0.0  # no target token: OpenUnlearning scores 0
    n = max(1, int(len(values) * k))
    return sum(sorted(float(v) for v in values)[:n]) / n


def min_k_score(token_logprobs: Sequence[float], k: float = DEFAULT_K) -> float:
    """The Min-K% attack's score: minus the mean of the lowest ``k`` fraction of the token
    log-probabilities (``int(n * k)`` tokens, at least one)."""
    return -_lowest_mean(token_logprobs, k)


def min_k_plus_plus_score(token_logprobs: torch.Tensor, vocab_logprobs: torch.Tensor,
                          k: float = DEFAULT_K) -> float:
    """The Min-K%++ attack's score. ``token_logprobs``: (T,) log p of each target token;
    ``vocab_logprobs``: (T, V) the model's log-softmax at the same positions."""
    lp = vocab_logprobs.float()
    p = lp.exp()
    mu = (p * lp).sum(-1)
    sigma = ((p * lp.square()).sum(-1) - mu.square()).clamp(min=1e-6).sqrt()
    scores = ((token_logprobs.float() - mu) / sigma).tolist()
    return -_lowest_mean(scores, k)


def reference_score(nll: float, reference_nll: float) -> float:
    """The Reference attack's score: the item's mean NLL minus the reference model's."""
    return float(nll) - float(reference_nll)


def gradnorm_score(model: torch.nn.Module, nll: torch.Tensor, p: float = 2.0) -> float:
    """The GradNorm attack's score: the mean over the model's parameter tensors that get a
    gradient of ``||d nll / d theta||_p``; ``nll`` a scalar tensor with a graph. The
    gradients are computed without touching any ``.grad`` the model holds."""
    if p not in (1, 2, math.inf):
        raise ValueError(f"gradnorm: p must be 1, 2 or inf, got {p}")
    params = [q for q in model.parameters() if q.requires_grad]
    grads = torch.autograd.grad(nll, params, allow_unused=True)
    norms = [g.detach().norm(p=p) for g in grads if g is not None]
    if not norms:
        raise ValueError("gradnorm: no parameter of the model gets a gradient")
    return float(torch.stack(norms).mean())


def auc(forget_scores: Sequence[float], holdout_scores: Sequence[float]) -> float:
    """ROC AUC with forget = 0, holdout = 1 and the score as decision value: the fraction of
    (forget, holdout) pairs where the holdout item scores higher, ties counted half."""
    f, h = [float(v) for v in forget_scores], [float(v) for v in holdout_scores]
    if not f or not h:
        raise ValueError("auc: both the forget and the holdout set need items")
    if not all(math.isfinite(v) for v in f + h):
        raise ValueError("auc: every score must be finite")
    # rank-sum form of the Mann-Whitney statistic: O(n log n), ties get their average rank
    pooled = sorted([(v, 1) for v in h] + [(v, 0) for v in f])
    rank_sum, i = 0.0, 0
    while i < len(pooled):
        j = i
        while j < len(pooled) and pooled[j][0] == pooled[i][0]:
            j += 1
        average = (i + 1 + j) / 2  # ranks i+1 .. j
        rank_sum += average * sum(label for _, label in pooled[i:j])
        i = j
    return (rank_sum - len(h) * (len(h) + 1) / 2) / (len(f) * len(h))


def privleak(auc_model: float, auc_reference: float) -> float:
    """MUSE's privleak in percent: ``((1 - AUC) - (1 - AUC_ref)) / (1 - AUC_ref + 1e-10) *
    100``."""
    score, ref = 1 - float(auc_model), 1 - float(auc_reference)
    return (score - ref) / (ref + EPS) * 100
