"""The field's metrics (eval/tofu.py, eval/mia.py) on small inputs whose values are computed
by hand in the comments (issue 26)."""

from __future__ import annotations

import math

import pytest
import torch

from pathunlearn.eval import mia, tofu

LN2, LN4 = math.log(2), math.log(4)


# ---------------------------------------------------------------------------- TOFU


def test_prob_is_the_mean_of_exp_minus_nll():
    # exp(-0) = 1, exp(-ln 2) = 0.5
    assert tofu.prob([0.0, LN2]) == pytest.approx(0.75)


def test_normalised_prob_divides_by_the_options():
    # p = 0.5, wrong options 0.25 + 0.25: 0.5 / (0.5 + 0.5)
    assert tofu.normalised_probs([LN2], [[LN4, LN4]]) == [pytest.approx(0.5)]


def test_truth_ratio_averages_perturbed_nlls_before_the_exponential():
    # false NLLs 2 and 4 -> mean 3; exp(-3) / exp(-1) = exp(-2), not mean(exp(-2), exp(-4))/e^-1
    (tr,) = tofu.truth_ratios([1.0], [[2.0, 4.0]])
    assert tr == pytest.approx(math.exp(-2))
    assert tofu.truth_ratio([tr], forget=True) == pytest.approx(math.exp(-2))  # min(TR, 1/TR)
    assert tofu.truth_ratio([tr], forget=False) == pytest.approx(1 - math.exp(-2))


def test_truth_ratio_aggregates_differ_on_forget_and_retain():
    # TR 0.5 and 2: forget mean(min(.5, 2), min(2, .5)) = .5; else mean(1 - .5, max(0, 1 - 2)) = .25
    ratios = [0.5, 2.0]
    assert tofu.truth_ratio(ratios, forget=True) == pytest.approx(0.5)
    assert tofu.truth_ratio(ratios, forget=False) == pytest.approx(0.25)


def test_forget_quality_is_the_ks_p_value():
    # identical samples: p = 1; [1,2,3] vs [4,5,6]: D = 1, exact p = 2 / C(6, 3) = 0.1
    assert tofu.forget_quality([1, 2, 3], [1, 2, 3]) == pytest.approx(1.0)
    assert tofu.forget_quality([1, 2, 3], [4, 5, 6]) == pytest.approx(0.1)


def test_model_utility_is_the_harmonic_mean_of_nine():
    parts = dict.fromkeys(tofu.UTILITY_PARTS, 1.0) | {"world_facts_truth_ratio": 0.25}
    assert tofu.model_utility(parts) == pytest.approx(9 / (8 + 4))  # 0.75
    assert tofu.model_utility(parts | {"retain_rouge": 0.0}) == 0.0
    with pytest.raises(ValueError, match="missing retain_prob"):
        tofu.model_utility({k: v for k, v in parts.items() if k != "retain_prob"})


def test_rouge_is_recall_with_stemming_as_rouge_score_gives_it():
    from rouge_score import rouge_scorer

    answer, generation = "The cats are running home", "a cat ran home quickly"
    # stemmed answer: the cat are run home (5); generation shares cat, home: recall 2/5
    (r,) = tofu.rouge_scores([answer], [generation])
    assert (r.rouge1, r.rougeL) == (pytest.approx(0.4), pytest.approx(0.4))
    direct = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True).score(
        answer, generation)
    assert (r.rouge1, r.rougeL) == (direct["rouge1"].recall, direct["rougeL"].recall)


def test_rouge_l_f1_is_muses_unstemmed_lcs_f_measure_by_hand():
    # MUSE (verbmem/get_rouge.py, knowmem/get_rouge_qa.py) scores ROUGE-L F1 without stemming:
    # F1 = 2 P R / (P + R) = 2 LCS / (len(answer) + len(generation)), in tokens
    answer, generation = "The cat sat on the mat", "the cat lay on a mat today"
    # answer: the cat sat on the mat (6); generation: the cat lay on a mat today (7);
    # LCS = the cat on mat (4): recall 4/6, precision 4/7, F1 = 8/13
    stemmed, unstemmed = "The cats are running home", "a cat ran home quickly"
    # without stemming: the cats are running home (5) vs a cat ran home quickly (5): LCS = home
    # (1), F1 = 2/10, where the stemmed recall above is 2/5
    first, second = tofu.rouge_scores([answer, stemmed], [generation, unstemmed])
    assert first.rougeL == pytest.approx(4 / 6) and first.rougeL_f1 == pytest.approx(8 / 13)
    assert second.rougeL == pytest.approx(0.4) and second.rougeL_f1 == pytest.approx(0.2)
    (exact,) = tofu.rouge_scores(["Bridge plan on Tuesday."], ["bridge plan on tuesday"])
    assert exact.rougeL_f1 == 1.0  # case and punctuation are not tokens


def test_a_sets_rouge_l_f1_is_the_mean_over_its_items_beside_the_recall():
    import numpy as np

    from pathunlearn.eval.field import FieldSet, Layout, item_values, set_metrics

    answers = ("The cat sat on the mat", "The cats are running home")
    fs = FieldSet("verbmem", "verbmem", ("rouge",), Layout(False, 0), answers, ([], []))
    items = item_values(fs, {"mean": np.array([-1.0, -2.0])},
                        ["the cat lay on a mat today", "a cat ran home quickly"])
    assert [it["rougeL_f1"] for it in items] == [pytest.approx(8 / 13), pytest.approx(0.2)]
    values = set_metrics(fs, items)
    assert values["verbmem/rougeL_f1"] == pytest.approx((8 / 13 + 0.2) / 2)
    assert values["verbmem/rougeL"] == pytest.approx((4 / 6 + 0.4) / 2)  # TOFU's, unchanged


def test_non_finite_values_are_refused():
    with pytest.raises(ValueError, match="finite"):
        tofu.truth_ratios([math.nan], [[1.0]])
    with pytest.raises(ValueError, match="no perturbed"):
        tofu.truth_ratios([1.0], [[]])


# ---------------------------------------------------------------------------- MIA


def test_auc_counts_pairs_with_ties_half():
    assert mia.auc([1, 2], [3, 4]) == 1.0  # every holdout item scores above every forget one
    assert mia.auc([3, 4], [1, 2]) == 0.0
    # pairs (1,2) (1,3) (2,3) holdout higher, (2,2) a tie: 3.5 / 4
    assert mia.auc([1, 2], [2, 3]) == pytest.approx(0.875)
    assert mia.auc([5, 5], [5]) == pytest.approx(0.5)


def test_privleak_in_muse_convention():
    # model AUC .75, reference .5: ((1-.75) - (1-.5)) / (1-.5) * 100 = -50
    assert mia.privleak(0.75, 0.5) == pytest.approx(-50.0)
    assert mia.privleak(0.5, 0.5) == pytest.approx(0.0)


def test_loss_zlib_and_reference_scores():
    assert mia.loss_score(2.5) == 2.5
    assert mia.zlib_score(2.4, "aaaa") == pytest.approx(2.4 / 12)  # zlib.compress(b"aaaa"): 12 B
    assert mia.reference_score(2.0, 0.5) == 1.5


def test_min_k_takes_the_lowest_fraction():
    lp = [-1.0, -2.0, -3.0, -4.0, -5.0]
    assert mia.min_k_score(lp, 0.4) == pytest.approx(4.5)  # int(5 * .4) = 2: -5, -4
    assert mia.min_k_score(lp, 0.1) == pytest.approx(5.0)  # at least one token
    assert mia.min_k_score([], 0.4) == 0.0


def test_min_k_plus_plus_standardises_by_the_model_distribution():
    # two-token vocabulary with p = (.8, .2) at both positions: mu = .8 ln .8 + .2 ln .2,
    # sigma^2 = E[lp^2] - mu^2, and the z-scores of the two tokens are +0.5 and -2.0
    vocab = torch.log(torch.tensor([[0.8, 0.2], [0.8, 0.2]]))
    tokens = torch.log(torch.tensor([0.8, 0.2]))
    assert mia.min_k_plus_plus_score(tokens, vocab, 0.4) == pytest.approx(2.0, abs=1e-5)
    assert mia.min_k_plus_plus_score(tokens, vocab, 1.0) == pytest.approx(0.75, abs=1e-5)


def test_gradnorm_is_the_mean_parameter_gradient_norm():
    layer = torch.nn.Linear(1, 1)
    with torch.no_grad():
        layer.weight.fill_(2.0)
        layer.bias.fill_(0.0)
    out = layer(torch.tensor([[3.0]])).sum()  # d/dw = 3, d/db = 1
    assert mia.gradnorm_score(layer, out) == pytest.approx(2.0)
    assert layer.weight.grad is None  # the model's .grad untouched


def test_exact_memorization_and_extraction_strength_by_hand():
    """OpenUnlearning's memorization.py: EM = the fraction of argmax hits; ES = 1 - k/n with
    k the shortest prefix after which every token is a hit."""
    from pathunlearn.eval.tofu import exact_memorization, extraction_strength

    hits = [False, True, False, True, True]  # the suffix from index 3 is all hits: k = 3
    assert exact_memorization(hits) == 3 / 5
    assert extraction_strength(hits) == 1 - 3 / 5
    assert extraction_strength([True] * 4) == 1.0  # k = 0: the whole answer is predicted
    assert extraction_strength([True, True, False]) == 0.0  # the last token missed: k = n
    assert exact_memorization([False] * 3) == 0.0
    with pytest.raises(ValueError):
        extraction_strength([])
