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
from pathunlearn.data.chat import IGNORE_INDEX, EncodedExample, encode_prompt_target
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
                   batch_size: int = 64, share_prompts: bool = True) -> ScoreResult:
    """Summed target log-probabilities of encoded examples.

    With ``share_prompts`` (the default), rows whose tokens before the first target token are
    identical (one prompt scored with many targets, as a label probe's rows are) are packed
    into one sequence that holds the prompt once and every target after it, each target
    attending to the prompt and to itself only (:func:`pack_rows`); the rest are scored as
    they are, ``batch_size`` rows per forward. Both give the same numbers as scoring every row
    alone (up to float rounding). Runs under ``torch.no_grad()`` in eval mode (the caller's
    train/eval mode is restored).
    """
    if share_prompts and _packable(model):
        packs, single = pack_rows(examples)
        if packs:
            return _score_packed(model, examples, packs, single, pad_id, batch_size)
    return _score_rows(model, examples, pad_id, batch_size)


def _score_rows(model: torch.nn.Module, examples: list[EncodedExample], pad_id: int,
                batch_size: int) -> ScoreResult:
    """One row per sequence, ``batch_size`` rows per forward, longest first."""
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


# ---------------------------------------------------------------------------- shared prompts


@dataclass(frozen=True)
class Pack:
    """Rows that share their prompt tokens, as one sequence: the prompt once, then each row's
    target tokens (``rows[j]``'s from ``starts[j]``, ``lengths[j]`` tokens)."""

    rows: tuple[int, ...]
    prompt: tuple[int, ...]
    starts: tuple[int, ...]
    lengths: tuple[int, ...]

    @property
    def length(self) -> int:
        return len(self.prompt) + sum(self.lengths)


def _first_target(example: EncodedExample) -> int | None:
    return next((i for i, label in enumerate(example.labels) if label != IGNORE_INDEX), None)


def pack_rows(examples: list[EncodedExample], max_tokens: int = 2048
              ) -> tuple[list[Pack], list[int]]:
    """Group rows by their tokens before the first target token (only rows whose labels are
    exactly their tokens from there to the end, as a probe row's are); groups of two or more
    become :class:`Pack` s of at most ``max_tokens`` tokens. Returns the packs and the indices
    of the rows left to score alone."""
    groups: dict[tuple[int, ...], list[int]] = {}
    single = []
    for i, e in enumerate(examples):
        f = _first_target(e)
        if f is None or f == 0 or list(e.labels[f:]) != list(e.input_ids[f:]):
            single.append(i)
            continue
        groups.setdefault(tuple(e.input_ids[:f]), []).append(i)
    packs = []
    for prompt, rows in groups.items():
        if len(rows) < 2:
            single += rows
            continue
        chunk: list[int] = []
        for i in rows:
            tail = len(examples[i].input_ids) - len(prompt)
            if chunk and len(prompt) + sum(len(examples[j].input_ids) - len(prompt)
                                           for j in chunk) + tail > max_tokens:
                packs.append(_pack(examples, prompt, chunk))
                chunk = []
            chunk.append(i)
        packs.append(_pack(examples, prompt, chunk))
    return packs, sorted(single)


def _pack(examples: list[EncodedExample], prompt: tuple[int, ...], rows: list[int]) -> Pack:
    lengths = tuple(len(examples[i].input_ids) - len(prompt) for i in rows)
    starts, at = [], len(prompt)
    for n in lengths:
        starts.append(at)
        at += n
    return Pack(tuple(rows), prompt, tuple(starts), lengths)


def _packable(model: torch.nn.Module) -> bool:
    """Packing needs a 4D attention mask: sdpa and eager take one, flash attention does not."""
    impl = getattr(getattr(model, "config", None), "_attn_implementation", "sdpa")
    return impl in ("sdpa", "eager")


def _packed_batch(examples: list[EncodedExample], packs: list[Pack], pad_id: int,
                  dtype: torch.dtype):
    """Token ids, position ids and the additive 4D attention mask (0 where a token may look,
    the dtype's minimum elsewhere) of a batch of packs, right-padded."""
    width = max(p.length for p in packs)
    ids = torch.full((len(packs), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(packs), width), dtype=torch.long)
    allowed = torch.zeros((len(packs), width, width), dtype=torch.bool)
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    for b, pack in enumerate(packs):
        n = len(pack.prompt)
        ids[b, :n] = torch.tensor(pack.prompt)
        positions[b, :n] = torch.arange(n)
        allowed[b, :n, :n] = causal[:n, :n]
        for row, start, length in zip(pack.rows, pack.starts, pack.lengths, strict=True):
            ids[b, start:start + length] = torch.tensor(examples[row].input_ids[n:])
            positions[b, start:start + length] = torch.arange(n, n + length)
            allowed[b, start:start + length, :n] = True
            allowed[b, start:start + length, start:start + length] = causal[:length, :length]
        allowed[b, pack.length:, :] = False
        allowed[b, torch.arange(pack.length, width), torch.arange(pack.length, width)] = True
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
    return ids, positions, mask.unsqueeze(1)


def _score_packed(model: torch.nn.Module, examples: list[EncodedExample], packs: list[Pack],
                  single: list[int], pad_id: int, batch_size: int) -> ScoreResult:
    logp = torch.zeros(len(examples), dtype=torch.float32)
    num_tokens = torch.zeros(len(examples), dtype=torch.long)
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    if single:
        alone = _score_rows(model, [examples[i] for i in single], pad_id, batch_size)
        logp[single], num_tokens[single] = alone.logp, alone.num_tokens
    # as many packs per forward as hold about batch_size rows' worth of tokens
    budget = batch_size * max(len(e.input_ids) for e in examples)
    order = sorted(packs, key=lambda p: p.length, reverse=True)
    with torch.no_grad(), eval_mode(model):
        start = 0
        while start < len(order):
            end = start + 1
            while end < len(order) and (end - start + 1) * order[start].length <= budget:
                end += 1
            batch = order[start:end]
            ids, positions, mask = _packed_batch(examples, batch, pad_id, dtype)
            logits = model(input_ids=ids.to(device), position_ids=positions.to(device),
                           attention_mask=mask.to(device)).logits  # (B, T, V)
            for b, pack in enumerate(batch):
                n = len(pack.prompt)
                for row, first, length in zip(pack.rows, pack.starts, pack.lengths,
                                              strict=True):
                    targets = ids[b, first:first + length].to(device)
                    # token k of the target is predicted at the token before it: the prompt's
                    # last for k = 0, else the target's own token k - 1
                    at = torch.cat([torch.tensor([n - 1]),
                                    torch.arange(first, first + length - 1)]).to(device)
                    # the softmax over the vocabulary only where a target token is read
                    picked = torch.log_softmax(logits[b, at].float(), dim=-1)
                    logp[row] = picked.gather(-1, targets[:, None]).sum().cpu()
                    num_tokens[row] = length
            start = end
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
