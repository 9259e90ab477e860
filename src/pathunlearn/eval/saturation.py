"""Saturation diagnostics: how far from probability 1 the forget set is when unlearning starts.

Gradient ascent pushes down log pi(y|x) of the forget responses. Where the model already gives
them probability ~1, the gradient of that log-probability vanishes (d log p / d logits = onehot
- p), so a path whose forget stage came last can forget slowly because it is *saturated*, not
because of the order as such. :func:`saturation` measures, on the path model at step 0 (before
the first update, with the cell's fresh adapter), over the first ``examples`` forget examples
taken as one batch:

- ``forget_token_prob``: the mean probability of the response tokens (every target token of
  every example, averaged);
- ``forget_logp``: their mean log-probability (per token);
- ``forget_grad_norm``: the L2 norm of the gradient of their mean negative log-likelihood (per
  token) with respect to the trainable parameters (the adapter under LoRA, all weights under
  full finetuning): the size of the push gradient ascent starts with, whatever the method.

The cell also records the unlearn target's own per-token log-probability at step 0 (the label
probe's ``/target``, not only the mean over the target and its paraphrases) and its method's
gradient norm at the first step; the report puts them per path next to the recency verdict.
Nothing here changes the cell: gradients are cleared and the RNG state is restored.
"""

from __future__ import annotations

import torch

from pathunlearn import metrics as M
from pathunlearn.data.batching import collate
from pathunlearn.data.chat import EncodedExample
from pathunlearn.losses import token_logprobs

TOKEN_PROB, LOGP, GRAD_NORM = M.FORGET_TOKEN_PROB, M.FORGET_LOGP, M.FORGET_GRAD_NORM


def saturation(model: torch.nn.Module, examples: list[EncodedExample], pad_id: int,
               device: torch.device | str = "cpu", max_examples: int = 32,
               micro_batch_size: int = 8) -> dict[str, float]:
    """The diagnostics of the module docstring on the first ``max_examples`` of ``examples``
    (micro-batches of ``micro_batch_size``, gradients accumulated as one batch)."""
    chosen = examples[:max_examples]
    if not chosen:
        raise ValueError("saturation needs at least one example")
    params = [p for p in model.parameters() if p.requires_grad]
    n_tokens = sum(e.num_targets for e in chosen)
    prob_sum = logp_sum = 0.0
    with torch.random.fork_rng(devices=[]):
        for start in range(0, len(chosen), micro_batch_size):
            batch = collate(chosen[start:start + micro_batch_size], pad_id).to(device)
            logp, mask = token_logprobs(model(**batch.inputs()).logits, batch.labels)
            nll = -(logp * mask).sum() / max(n_tokens, 1)
            nll.backward()
            with torch.no_grad():
                prob_sum += float((logp.exp() * mask).sum())
                logp_sum += float((logp * mask).sum())
    grads = [p.grad.detach().float().norm() for p in params if p.grad is not None]
    norm = torch.linalg.vector_norm(torch.stack(grads)) if grads else torch.zeros(())
    for p in params:
        p.grad = None
    return {TOKEN_PROB: prob_sum / max(n_tokens, 1), LOGP: logp_sum / max(n_tokens, 1),
            GRAD_NORM: float(norm)}
