"""Learning-rate multipliers at their boundaries, against the definitions by hand."""

from __future__ import annotations

import math

import pytest

from pathunlearn.train.schedules import constant, cosine, lr_lambda, steps_of, wsd


def test_lengths_as_fraction_or_count():
    assert steps_of(0.02, 100) == 2 and steps_of(0.02, 49) == 0  # int(0.98) = 0, as the paper's code
    assert steps_of(5, 100) == 5 and steps_of(0, 100) == 0


def test_wsd_matches_the_papers_definition_exactly():
    total, w, d = 100, 10, 20  # warmup 10 steps, decay 20 steps
    f = [wsd(s, total, warmup=w, decay=d) for s in range(total + 1)]
    assert f[0] == 0.0 and f[1] == 0.1 and f[9] == 0.9  # linear warmup from 0
    assert f[10] == 1.0 and f[80] == 1.0  # stable until step > total - d
    assert f[81] == pytest.approx(0.1 + 0.9 * 19 / 20)
    assert f[90] == pytest.approx(0.1 + 0.9 * 10 / 20)
    assert f[99] == pytest.approx(0.1 + 0.9 / 20)
    assert f[100] == pytest.approx(0.1)  # falls to 0.1 of the peak, never 0
    assert all(a >= b for a, b in zip(f[80:], f[81:], strict=False))


def test_wsd_with_the_papers_two_percent():
    total = 200  # 2% -> 4 warmup steps, 4 decay steps
    assert [wsd(s, total) for s in range(5)] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert wsd(196, total) == 1.0
    assert wsd(197, total) == pytest.approx(0.1 + 0.9 * 3 / 4)
    assert wsd(199, total) == pytest.approx(0.1 + 0.9 * 1 / 4)


def test_wsd_without_warmup_or_decay_is_constant():
    assert {wsd(s, 15, 0.02, 0.02) for s in range(15)} == {1.0}  # 2% of 15 steps is 0 steps


def test_cosine_boundaries():
    total = 110
    assert cosine(0, total, 10) == 0.0 and cosine(5, total, 10) == 0.5
    assert cosine(10, total, 10) == 1.0
    assert cosine(60, total, 10) == pytest.approx(0.5)  # halfway through the decay
    assert cosine(110, total, 10) == pytest.approx(0.0, abs=1e-12)
    assert cosine(35, total, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))


def test_constant_boundaries():
    assert [constant(s, 10, 2) for s in range(4)] == [0.0, 0.5, 1.0, 1.0]
    assert constant(0, 10) == 1.0


def test_lr_lambda_dispatch():
    assert lr_lambda("wsd", 100, 10, 20)(85) == wsd(85, 100, 10, 20)
    assert lr_lambda("cosine", 100, 0.1, 0)(50) == cosine(50, 100, 0.1)
    with pytest.raises(ValueError):
        lr_lambda("linear", 10, 0, 0)
