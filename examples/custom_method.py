"""A local unlearning method of your own, in one file: weighted gradient ascent.

Gradient ascent pushes every forget token down equally, including tokens the model already
finds unlikely; weighting each token by its probability to the power ``alpha`` (detached)
spends the step on the tokens that are still likely, the idea of weighted gradient ascent
(WGA, Wang et al. 2025). ``alpha = 0`` is plain GA.

Use it in a config (from the directory this file sits in, or with the package it lives in
installed):

    unlearning:
      methods:
        - {name: ga}
        - {name: examples/custom_method.py:WeightedGA, options: {alpha: 1.0}}
        # or {name: mypkg.unlearning:WeightedGA} for a module on the import path

then `pathunlearn run my.yaml`: its cells appear in the table as `wga`, local like GA.
"""

import torch

from pathunlearn.methods import ForgetBatch, Method


class WeightedGA(Method):
    """Minimise sum_t w_t log p(y_t) / N with w_t = p(y_t)^alpha (no gradient through w)."""

    name = "wga"
    local = True  # forget-set gradients only (the paper's Definition 2.2)

    def forget_loss(self, batch: ForgetBatch) -> torch.Tensor:
        alpha = float(self.options.get("alpha", 1.0))
        weights = torch.exp(alpha * batch.token_logp).detach() * batch.mask  # (B, T-1)
        return (weights * batch.token_logp).sum() / max(batch.num_tokens, 1)
