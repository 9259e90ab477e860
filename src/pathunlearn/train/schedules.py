"""Learning-rate multipliers as pure functions of the optimizer step.

Each takes the 0-based step (the number of optimizer steps already taken) and the stage's
total number of steps and returns the factor applied to the peak learning rate, as a
``torch.optim.lr_scheduler.LambdaLR`` would. Lengths given as a fraction (< 1) are a share of
``total`` rounded down, as the paper's code does; values >= 1 are step counts.
"""

from __future__ import annotations

import math
from collections.abc import Callable


def steps_of(length: float, total: int) -> int:
    """A warmup/decay length: ``int(length * total)`` when ``length < 1``, else ``int(length)``."""
    return int(length * total) if length < 1 else int(length)


def constant(step: int, total: int, warmup: float = 0.0) -> float:
    """1.0 after an optional linear warmup from 0: ``min(1, step / warmup_steps)``."""
    w = steps_of(warmup, total)
    return step / w if step < w else 1.0


def cosine(step: int, total: int, warmup: float = 0.0) -> float:
    """Linear warmup from 0 over ``w`` steps, then ``0.5 * (1 + cos(pi * p))`` with
    ``p = (step - w) / (total - w)`` falling from 1 to 0 at ``step == total``."""
    w = steps_of(warmup, total)
    if step < w:
        return step / w
    p = min(1.0, (step - w) / max(1, total - w))
    return 0.5 * (1.0 + math.cos(math.pi * p))


def wsd(step: int, total: int, warmup: float = 0.02, decay: float = 0.02) -> float:
    """Warmup-stable-decay, as the paper's code defines it.

    ``w = steps_of(warmup)``, ``d = steps_of(decay)``:
      step < w            -> step / w            (linear warmup from 0)
      step > total - d    -> 0.1 + 0.9 * (total - step) / d   (linear fall to 0.1 at ``total``)
      otherwise           -> 1.0
    """
    w, d = steps_of(warmup, total), steps_of(decay, total)
    if step < w:
        return step / w
    if d > 0 and step > total - d:
        return 0.1 + max(0.9 * (total - step) / d, 0.0)
    return 1.0


def lr_lambda(name: str, total: int, warmup: float, decay: float) -> Callable[[int], float]:
    """The multiplier function for a scheduler name from the config."""
    if name == "constant":
        return lambda step: constant(step, total, warmup)
    if name == "cosine":
        return lambda step: cosine(step, total, warmup)
    if name == "wsd":
        return lambda step: wsd(step, total, warmup, decay)
    raise ValueError(f"unknown scheduler {name!r}")
