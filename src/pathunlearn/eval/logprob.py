"""Batched log-likelihood scoring: many (prompt, target) rows per forward pass.

A row is a prompt (chat messages, ending before the answer) and a target string scored as the
start of the assistant's answer (:func:`pathunlearn.data.chat.encode_prompt_target`: labels on
the target's tokens only). For every row: log pi(target | prompt) = the sum of the target
tokens' log-probabilities, the number of target tokens, and their ratio, the per-token average
log-probability (the quantity the paper's probes track).

Rows are sorted by length before they are cut into batches, so a batch holds rows of similar
length and little padding; results come back in the caller's order. Right padding with an
attention mask gives the same numbers as scoring each row alone (up to float rounding).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from pathunlearn.data.batching import collate
from pathunlearn.data.chat import EncodedExample, encode_prompt_target
from pathunlearn.data.conversation import Conversation
from pathunlearn.errors import DataError
from pathunlearn.losses import sequence_logprobs

Row = tuple[list[dict[str, str]], str]
"""(prompt messages, target text)."""


@dataclass(frozen=True)
class ScoreResult:
    """Scores of N rows, in the order they were given."""

    logp: torch.Tensor
    """(N,) float32: summed log-probability of each row's target tokens, log pi(y|x)."""
    num_tokens: torch.Tensor
    """(N,) int64: number of target tokens of each row."""

    @property
    def mean(self) -> torch.Tensor:
        """(N,) per-token average log-probability: logp / num_tokens."""
        return self.logp / self.num_tokens.clamp_min(1)

    def __len__(self) -> int:
        return self.logp.numel()


def score_examples(model: torch.nn.Module, examples: list[EncodedExample], pad_id: int,
                   batch_size: int = 64) -> ScoreResult:
    """Summed target log-probabilities of encoded examples, ``batch_size`` rows per forward.

    Runs under ``torch.no_grad()`` in eval mode (the caller's train/eval mode is restored).
    """
    logp = torch.zeros(len(examples), dtype=torch.float32)
    num_tokens = torch.zeros(len(examples), dtype=torch.long)
    device = next(model.parameters()).device
    # longest first: the first batch shows at once whether the largest one fits in memory
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids), reverse=True)
    with torch.no_grad(), eval_mode(model):
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = collate([examples[i] for i in idx], pad_id).to(device)
            logits = model(**batch.inputs()).logits  # (B, T, V)
            sums, counts = sequence_logprobs(logits, batch.labels)  # (B,), (B,)
            logp[idx] = sums.float().cpu()
            num_tokens[idx] = counts.cpu()
    return ScoreResult(logp, num_tokens)


def encode_rows(tokenizer, rows: list[Row], max_length: int = 256) -> list[EncodedExample]:
    """Each row as prompt + generation prompt + target, labels on the target only.

    A prompt too long for ``max_length`` is cut from the left (the target is kept).
    """
    examples = [encode_prompt_target(tokenizer, prompt, target, max_length)
                for prompt, target in rows]
    for i, e in enumerate(examples):
        if e.num_targets == 0:
            raise DataError(f"probe row {i}: target {rows[i][1]!r} has no tokens to score")
    return examples


def score_rows(model: torch.nn.Module, tokenizer, rows: list[Row], batch_size: int = 64,
               max_length: int = 256) -> ScoreResult:
    """log pi(target | prompt) of every (prompt, target) row; see :class:`ScoreResult`."""
    examples = encode_rows(tokenizer, rows, max_length)
    return score_examples(model, examples, pad_token_id(tokenizer), batch_size)


def score_conversations(model: torch.nn.Module, tokenizer, conversations: list[Conversation],
                        batch_size: int = 64, max_length: int = 256) -> ScoreResult:
    """Score each conversation's last assistant turn given everything before it.

    The target is the response text only (no end-of-turn token), as for every probe row.
    """
    rows = [(c.prompt, c.response) for c in conversations]
    return score_rows(model, tokenizer, rows, batch_size, max_length)


def reference_logprobs(model: torch.nn.Module, examples: list[EncodedExample], pad_id: int,
                       batch_size: int = 64) -> torch.Tensor:
    """log pi_ref(y|x) of every forget example, computed once before unlearning. (N,) float32.

    ``examples`` are the encoded forget examples exactly as the unlearning loop trains on them
    (same labels, so the same target tokens), and ``ref[i]`` belongs to ``examples[i]``. The
    loop looks the values up with the example indices of each micro-batch: the slices of
    ``epoch_order`` that ``effective_batches`` cuts, i.e. ``ref[order[a:b]]``. Because the
    forget set is fixed and the reference is the model before unlearning, this replaces a
    second forward pass per step (NPO); it equals that pass up to float rounding.
    """
    return score_examples(model, examples, pad_id, batch_size).logp


def pad_token_id(tokenizer) -> int:
    """The padding id (eos, then 0, when the tokenizer has none); padded positions are masked,
    so the value only has to be a valid id."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return candidate
    return 0


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode inside the block (no dropout), the caller's train/eval mode restored after:
    scorers and samplers are called from loops that may be mid-training."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
