"""The TOFU family of metrics, from per-item mean token NLLs and generations.

Defined exactly as TOFU (Maini et al., 2024) and OpenUnlearning compute them
(``locuslab/open-unlearning``, ``src/evals/metrics/memorization.py``: ``probability``,
``probability_w_options``, ``rouge``, ``truth_ratio``; ``src/evals/metrics/privacy.py``:
``ks_test``; ``src/evals/metrics/utility.py``: ``hm_aggregate``). Every function here takes
numbers a model produced (the mean negative log-likelihood per answer token of each answer, or
a generated text) and returns per-item values and their aggregate, so that a reader of
``items.jsonl`` can recompute every aggregate; scoring a model is the caller's.

Per item ``i`` with answer NLL ``l_i`` (the mean over the answer's tokens of ``-log p``):

- ``prob_i = exp(-l_i)``; the metric is the mean over items.
- ``prob_normalised_i = prob_i / (prob_i + sum_j exp(-l_ij) + 1e-10)`` over the item's wrong
  options ``j`` (TOFU's real-authors and world-facts sets, ``probability_w_options``).
- ``truth_ratio_i = exp(-mean_j l_ij) / (exp(-l_i) + 1e-10)``: ``l_ij`` the NLLs of the
  item's perturbed (wrong) answers, averaged *before* the exponential; ``l_i`` the NLL of the
  paraphrased answer (TOFU's forget and retain sets) or of the answer itself (real authors,
  world facts). Aggregated as ``mean(min(TR, 1 / (TR + 1e-10)))`` on the forget set
  (``closer_to_1_better``: a model that never learned the item finds true and false answers
  equally likely) and ``mean(max(0, 1 - TR))`` elsewhere (``true_better``).
- ``rouge``: ROUGE-1 and ROUGE-L *recall* of the greedy generation against the answer,
  ``rouge_score.rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)``,
  ``score(target=answer, prediction=generation)``; beside them MUSE's ROUGE-L *F1*
  (``swj0419/muse_bench``: ``verbmem/get_rouge.py``, ``knowmem/get_rouge_qa.py``: the
  ``fmeasure`` of a scorer *without* stemming), ``2 LCS / (len(answer) + len(generation))``
  in tokens (lower-cased, split at every non-alphanumeric character).
- ``forget_quality``: the p-value of the two-sample Kolmogorov-Smirnov test
  (``scipy.stats.ks_2samp``, its default exact/asymptotic choice) between the unlearned
  model's per-item forget truth ratios (the raw ``TR_i``, not the aggregate) and a reference
  model's on the same items. OpenUnlearning's reference is one retain model downloaded for the
  benchmark; pathunlearn's default reference is the retrain model *of the same path* (the
  path's other stages, without the forget stage, in the same order).
- ``model_utility``: the harmonic mean (``scipy.stats.hmean``) of TOFU's nine numbers: on the
  retain set prob, ROUGE-L recall and truth ratio (``true_better``); on real authors and on
  world facts the normalised prob, ROUGE-L recall and truth ratio.
- ``exact_memorization`` (OpenUnlearning's ``memorization.py: exact_memorization``, Tirumala
  et al., 2022): the fraction of the answer's tokens that are the model's most likely next
  token, teacher-forced; ``extraction_strength`` (``extraction_strength``, Carlini et al.,
  2021): ``1 - k / n`` with ``k`` the shortest prefix of the answer's ``n`` tokens after which
  every prediction is right (teacher-forced). Where no suffix is predicted, ``k = n`` and the
  strength is 0 (OpenUnlearning's loop stops at ``k = n - 1`` there, giving ``1 / n``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

EPS = 1e-10
"""OpenUnlearning's guard against division by zero (kept: it changes the value slightly
where a probability underflows, and a table must match theirs)."""

UTILITY_PARTS = ("retain_prob", "retain_rouge", "retain_truth_ratio",
                 "real_authors_prob", "real_authors_rouge", "real_authors_truth_ratio",
                 "world_facts_prob", "world_facts_rouge", "world_facts_truth_ratio")
"""The nine numbers of TOFU's model utility (``prob`` normalised over the options for real
authors and world facts)."""


def _finite(values: Sequence[float], what: str) -> list[float]:
    out = [float(v) for v in values]
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"{what}: every value must be finite")
    return out


def _mean(values: Sequence[float], what: str) -> float:
    if not values:
        raise ValueError(f"{what}: no items")
    return sum(values) / len(values)


def probs(nlls: Sequence[float]) -> list[float]:
    """Per item ``exp(-NLL)``: the geometric mean probability of the answer's tokens."""
    return [math.exp(-v) for v in _finite(nlls, "answer NLLs")]


def prob(nlls: Sequence[float]) -> float:
    """TOFU's ``prob``: the mean over items of ``exp(-NLL)``."""
    return _mean(probs(nlls), "prob")


def normalised_probs(nlls: Sequence[float], wrong_nlls: Sequence[Sequence[float]]) -> list[float]:
    """Per item ``p / (p + sum of the wrong options' p + 1e-10)``."""
    if len(nlls) != len(wrong_nlls):
        raise ValueError("normalised prob: one list of wrong-option NLLs per item")
    out = []
    for right, wrong in zip(probs(nlls), wrong_nlls, strict=True):
        if not wrong:
            raise ValueError("normalised prob: an item has no wrong options")
        out.append(right / (right + sum(probs(wrong)) + EPS))
    return out


def truth_ratios(true_nlls: Sequence[float],
                 false_nlls: Sequence[Sequence[float]]) -> list[float]:
    """Per item ``exp(-mean of the false answers' NLLs) / (exp(-true NLL) + 1e-10)``."""
    if len(true_nlls) != len(false_nlls):
        raise ValueError("truth ratio: one list of perturbed-answer NLLs per item")
    out = []
    for true, false in zip(_finite(true_nlls, "true NLLs"), false_nlls, strict=True):
        if not false:
            raise ValueError("truth ratio: an item has no perturbed answers")
        wrong = _mean(_finite(false, "perturbed NLLs"), "perturbed NLLs")
        out.append(math.exp(-wrong) / (math.exp(-true) + EPS))
    return out


def truth_ratio(ratios: Sequence[float], forget: bool) -> float:
    """The aggregate of per-item truth ratios: ``mean(min(TR, 1/(TR + 1e-10)))`` on the
    forget set (``forget=True``), ``mean(max(0, 1 - TR))`` elsewhere."""
    ratios = _finite(ratios, "truth ratios")
    if forget:
        return _mean([min(r, 1 / (r + EPS)) for r in ratios], "truth ratio")
    return _mean([max(0.0, 1 - r) for r in ratios], "truth ratio")


@dataclass(frozen=True)
class Rouge:
    """ROUGE of one generation against its answer: TOFU's recalls and MUSE's ROUGE-L F1."""

    rouge1: float
    rougeL: float  # noqa: N815 - the name every TOFU table uses
    rougeL_f1: float  # noqa: N815 - MUSE's (no stemming)


def rouge_scores(answers: Sequence[str], generations: Sequence[str]) -> list[Rouge]:
    """Per item ROUGE-1 and ROUGE-L recall of ``generations[i]`` against ``answers[i]``, with
    Porter stemming, as TOFU scores it, and ROUGE-L F1 without stemming, as MUSE scores it."""
    from rouge_score import rouge_scorer

    if len(answers) != len(generations):
        raise ValueError("rouge: one generation per answer")
    tofu = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
    muse = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    out = []
    for answer, generation in zip(answers, generations, strict=True):
        s = tofu.score(answer, generation)
        f1 = muse.score(answer, generation)["rougeL"].fmeasure
        out.append(Rouge(s["rouge1"].recall, s["rougeL"].recall, f1))
    return out


def forget_quality(ratios: Sequence[float], reference_ratios: Sequence[float]) -> float:
    """The p-value of the two-sample KS test between per-item forget truth ratios of the
    unlearned model and of the reference model (high: indistinguishable from the reference)."""
    from scipy.stats import ks_2samp

    a, b = _finite(ratios, "truth ratios"), _finite(reference_ratios, "reference truth ratios")
    if not a or not b:
        raise ValueError("forget quality: both samples need items")
    return float(ks_2samp(a, b).pvalue)


def model_utility(parts: dict[str, float]) -> float:
    """The harmonic mean of the nine :data:`UTILITY_PARTS`; a missing part is an error (a
    utility over fewer numbers is not TOFU's), a zero part makes it 0."""
    missing = [p for p in UTILITY_PARTS if p not in parts]
    if missing:
        raise ValueError(f"model utility: missing {', '.join(missing)}")
    values = _finite([parts[p] for p in UTILITY_PARTS], "model utility parts")
    if any(v < 0 for v in values):
        raise ValueError("model utility: parts must be >= 0")
    if any(v == 0 for v in values):
        return 0.0
    return len(values) / sum(1 / v for v in values)


def exact_memorization(hits: Sequence[bool]) -> float:
    """The fraction of an answer's tokens the model predicts (argmax, teacher-forced)."""
    if not hits:
        raise ValueError("exact memorization: the answer has no tokens")
    return sum(bool(h) for h in hits) / len(hits)


def extraction_strength(hits: Sequence[bool]) -> float:
    """``1 - k / n``: ``k`` the shortest prefix after which every token is predicted."""
    n = len(hits)
    if not n:
        raise ValueError("extraction strength: the answer has no tokens")
    k = n
    while k > 0 and hits[k - 1]:
        k -= 1
    return 1 - k / n
