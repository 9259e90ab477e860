"""Retrain-equivalence distances between two models on a fixed held-out set.

The paper's Definition 2.1 compares predictions of an unlearned model and the model retrained
without the forget set. For language models we compare next-token distributions at every
response token of the held-out set (the run's ``heldout`` probe sets: prompts + reference
responses used in no stage's training), P positions in all:

    d_KL(A, B)  = (1/P) sum_p KL(B_p || A_p)       (B the reference, e.g. the retrain model)
    d_MSE(A, B) = (1/P) sum_p (log A_p(y_p) - log B_p(y_p))^2

where A_p is model A's next-token distribution at position p and y_p the reference token.
d_MSE needs only the per-token log-probabilities, which the unlearning loop stores at every
eval point, so it is computed afterwards between any two cells (paths diverging under
unlearning); d_KL needs whole distributions and is computed during unlearning against the
retrain model, whose distributions are computed once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pathunlearn.data.batching import collate
from pathunlearn.data.chat import IGNORE_INDEX, EncodedExample, tokenize_conversations
from pathunlearn.data.conversation import Conversation
from pathunlearn.eval.logprob import eval_mode


@dataclass(frozen=True)
class Reference:
    """The reference model's log-distributions at the held-out positions: (P, V) and the
    reference tokens (P,)."""

    logp: torch.Tensor
    tokens: torch.Tensor


def heldout_examples(tokenizer, max_length: int,
                     conversations: list[Conversation]) -> list[EncodedExample]:
    """The held-out set, tokenised as staged training tokenises (labels on the responses):
    the items of the run's ``heldout`` probe sets (:func:`pathunlearn.eval.probes.
    probe_conversations`)."""
    return tokenize_conversations(tokenizer, conversations, max_length)[0]


@torch.no_grad()
def position_logprobs(model: torch.nn.Module, examples: list[EncodedExample], pad_id: int,
                      batch_size: int = 32) -> Reference:
    """log-softmax of the model's next-token distribution at every target position, in order."""
    device = next(model.parameters()).device
    rows, tokens = [], []
    with eval_mode(model):
        for start in range(0, len(examples), batch_size):
            batch = collate(examples[start : start + batch_size], pad_id).to(device)
            logits = model(**batch.inputs()).logits[:, :-1].float()  # (B, T-1, V)
            targets = batch.labels[:, 1:]  # (B, T-1)
            mask = targets != IGNORE_INDEX
            rows.append(torch.log_softmax(logits[mask], dim=-1).cpu())  # (P_b, V)
            tokens.append(targets[mask].cpu())
    return Reference(torch.cat(rows), torch.cat(tokens))


def token_logprobs_of(ref: Reference) -> torch.Tensor:
    """(P,) the log-probability of each reference token."""
    return ref.logp.gather(-1, ref.tokens.unsqueeze(-1)).squeeze(-1)


def kl_distance(a: Reference, b: Reference) -> float:
    """d_KL(A, B) = mean over positions of KL(B_p || A_p)."""
    return float(kl_per_position(a, b).mean())


def kl_per_position(a: Reference, b: Reference) -> torch.Tensor:
    """(P,) KL(B_p || A_p) at every position (a rank's share of d_KL under torchrun)."""
    return (b.logp.exp() * (b.logp - a.logp)).sum(-1)


def mse_distance(logp_a: torch.Tensor, logp_b: torch.Tensor) -> float:
    """d_MSE = mean over positions of the squared difference of reference-token log-probs."""
    return float(((torch.as_tensor(logp_a) - torch.as_tensor(logp_b)) ** 2).mean())
