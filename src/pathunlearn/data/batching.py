"""Token batches: encoded examples -> tensors, and the order they are visited in.

The training loop only ever sees :class:`Batch` objects and calls ``model(**batch.inputs())``:
:func:`collate` right-pads a micro-batch, :func:`collate_packed` puts its examples one after
another in a single row with no padding (``runtime.packing``).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from pathunlearn.data.chat import IGNORE_INDEX, EncodedExample


@dataclass
class Batch:
    """A micro-batch: ``input_ids``, ``labels`` (B, T) and ``attention_mask``: (B, T) (1 on
    real tokens), or for a packed row (:func:`collate_packed`) a 4D additive mask (B, 1, T, T)
    or None (flash attention reads the example boundaries from ``position_ids``)."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor | None
    position_ids: torch.Tensor | None = None
    """(B, T), restarting at 0 with every packed example; None: 0..T-1."""

    @property
    def num_targets(self) -> int:
        """Target tokens the loss is taken over (labels are shifted by one in the loss)."""
        return int((self.labels[:, 1:] != IGNORE_INDEX).sum())

    def inputs(self) -> dict[str, torch.Tensor]:
        extra = {"position_ids": self.position_ids} if self.position_ids is not None else {}
        mask = {"attention_mask": self.attention_mask} if self.attention_mask is not None else {}
        return {"input_ids": self.input_ids, **mask, **extra}

    def to(self, device: torch.device | str) -> Batch:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        return Batch(self.input_ids.to(device), self.labels.to(device),
                     move(self.attention_mask), move(self.position_ids))


def collate(examples: list[EncodedExample], pad_id: int) -> Batch:
    """Right-pad examples to the longest one; padding gets label -100 and mask 0."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return Batch(ids, labels, mask)


PACKED_MASKS = ("block", "positions")


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean attention pattern (True: may look) as the additive mask attention layers take
    in ``dtype``: 0 where allowed, the dtype's minimum elsewhere."""
    return torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)


def packing_mask(attn_implementation: str) -> str:
    """How a packed row keeps its examples apart for an attention implementation: flash
    attention reads the boundaries from the restarting position ids (``positions``, no mask,
    nothing quadratic); sdpa and eager need a 4D block-diagonal mask (``block``), whose size is
    quadratic in the row (on CPU, where attention is a large share of a small model's work,
    packing is then slower than padding: it is for flash attention on GPUs)."""
    return "positions" if attn_implementation.startswith("flash_attention") else "block"


def collate_packed(examples: list[EncodedExample], mask: str = "block",
                   dtype: torch.dtype = torch.float32) -> Batch:
    """The examples one after another in a single row, no padding: position ids restart at 0
    with each example, each token attends to its own example's earlier tokens only (``block``:
    a 4D additive mask of ``dtype``; ``positions``: none, for flash attention), and an
    example's first token carries no label, as in :func:`collate` (token 0 of a sequence is
    never predicted). The logits of every example are those it gets alone, so the loss and its
    gradient are the padded batch's (float rounding apart; tested)."""
    if mask not in PACKED_MASKS:
        raise ValueError(f"mask must be one of {PACKED_MASKS}")
    ids = torch.tensor([t for e in examples for t in e.input_ids])[None]
    labels = torch.tensor([IGNORE_INDEX if k == 0 else label for e in examples
                           for k, label in enumerate(e.labels)])[None]
    positions = torch.cat([torch.arange(len(e.input_ids)) for e in examples])[None]
    if mask == "positions":
        return Batch(ids, labels, None, positions)
    allowed = torch.zeros(ids.size(1), ids.size(1), dtype=torch.bool)
    start = 0
    for e in examples:
        n = len(e.input_ids)
        allowed[start:start + n, start:start + n] = torch.ones(n, n, dtype=torch.bool).tril()
        start += n
    return Batch(ids, labels, additive_mask(allowed, dtype)[None, None], positions)


def pack(examples: list[EncodedExample], row_length: int) -> list[EncodedExample]:
    """Concatenate examples (in order) and cut the stream into rows of ``row_length`` tokens.

    Padding-free batches for pretraining-style training: nothing is wasted on padding, and
    attention crosses example boundaries (as in ordinary LM pretraining). The last partial
    row is kept.
    """
    ids = [t for e in examples for t in e.input_ids]
    labels = [t for e in examples for t in e.labels]
    return [EncodedExample(ids[i : i + row_length], labels[i : i + row_length])
            for i in range(0, len(ids), row_length)]


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The example order of one epoch: a permutation fixed by (seed, epoch)."""
    order = list(range(n))
    random.Random(f"{seed}:{epoch}").shuffle(order)
    return order


def cut_epoch(order: list[int], batch_size: int, micro_batch_size: int,
              lengths: list[int] | None = None) -> list[list[list[int]]]:
    """One epoch's example order as optimizer steps, each a list of micro-batches of indices.

    A last incomplete effective batch is kept (it is a smaller step, weighted by its own
    token count). With ``lengths`` (tokens per example), an effective batch cut into several
    micro-batches is sorted by length first (longest first, ties in epoch order), so each
    micro-batch holds examples of similar length and little padding: the step's examples, and
    so its token-weighted loss and gradient, are the same; only how they are grouped for the
    forward passes changes (float rounding aside).
    """
    steps = []
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        if lengths is not None and len(chunk) > micro_batch_size:
            chunk = sorted(chunk, key=lambda i: -lengths[i])
        steps.append([chunk[j : j + micro_batch_size]
                      for j in range(0, len(chunk), micro_batch_size)])
    return steps


def step_indices(n: int, batch_size: int, micro_batch_size: int, seed: int,
                 lengths: list[int] | None = None) -> Iterator[tuple[int, list[list[int]]]]:
    """Endless ``(epoch, micro-batches of example indices)`` for every optimizer step: each
    epoch is reshuffled from ``seed`` (:func:`epoch_order`) and cut by :func:`cut_epoch`
    (length-bucketed with ``lengths``), so a batch never spans two epochs. Take as many steps
    as needed (``itertools.islice``)."""
    if n == 0:
        raise ValueError("no examples to batch")
    for epoch in itertools.count():
        for micro_batches in cut_epoch(epoch_order(n, seed, epoch), batch_size,
                                       micro_batch_size, lengths):
            yield epoch, micro_batches


def padding_fraction(examples: list[EncodedExample], steps: list[list[list[int]]]) -> float:
    """The share of the computed tokens that are padding when ``steps`` (from
    :func:`cut_epoch`) are collated, each micro-batch right-padded to its longest example."""
    real = padded = 0
    for micro_batches in steps:
        for idx in micro_batches:
            sizes = [len(examples[i].input_ids) for i in idx]
            real += sum(sizes)
            padded += max(sizes) * len(sizes)
    return 1 - real / padded if padded else 0.0


def effective_batches(
    examples: list[EncodedExample], order: list[int], batch_size: int, micro_batch_size: int,
    pad_id: int,
) -> list[list[Batch]]:
    """One epoch in ``order`` as optimizer steps, each a list of collated micro-batches."""
    return [[collate([examples[i] for i in idx], pad_id) for idx in step]
            for step in cut_epoch(order, batch_size, micro_batch_size)]
