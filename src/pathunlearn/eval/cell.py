"""What an unlearning cell measures at every eval point, and the references it compares with.

A cell (:mod:`pathunlearn.train.unlearn`) calls a :class:`CellProbes` at step 0 and every
``eval_every`` steps: every scored probe set (:func:`pathunlearn.eval.probes.evaluate_probes`),
the log-probability of every held-out reference token (``re_tokens``, from which the report
computes pairwise distances between cells) and, with a retrain model, the distances to it
(``re_retrain/kl``, ``/mse``; :mod:`pathunlearn.eval.divergence`). The retrain model's
distributions on the held-out set are computed once per retrain model
(:func:`retrain_reference`) and shared by every cell compared with it.

Nothing here reads a run directory: the caller passes the models, or a function that loads
one, in (``eval/`` sits below ``rundir`` in ARCHITECTURE.md's picture).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from pathunlearn import distributed
from pathunlearn import metrics as M
from pathunlearn.data.chat import EncodedExample
from pathunlearn.eval.divergence import (
    Reference,
    heldout_examples,
    kl_per_position,
    mse_distance,
    position_logprobs,
    token_logprobs_of,
)
from pathunlearn.eval.logprob import Prepared, prepare_scoring
from pathunlearn.eval.probes import ProbeSet, encode_probes, evaluate_probes, probe_conversations

HELDOUT_BATCH = 32
"""Sequences per forward pass over the held-out RE set."""


class CellProbes:
    """What a cell measures at every eval point: every scored probe, the log-probability of
    every held-out reference token (``re_tokens``, from which pairwise distances between cells
    are computed afterwards) and, with a retrain model, the distances to it
    (``re_retrain/kl``, ``/mse``). Without heldout probe sets there are no distances.
    ``max_length``: the run's ``model.max_length``, which the probes are tokenised to."""

    def __init__(self, tokenizer, probe_sets: list[ProbeSet], retrain: Reference | None,
                 max_length: int):
        self.tokenizer, self.probe_sets, self.retrain = tokenizer, probe_sets, retrain
        self.encoded = encode_probes(tokenizer, probe_sets, max_length)
        self.prepared: Prepared | None = None  # the batches, worked out at the first call
        self.heldout = heldout_set(tokenizer, probe_sets, max_length)
        # under torchrun a rank holds the retrain reference of its share of the held-out set
        if retrain is not None and retrain.tokens.numel() != sum(
                e.num_targets for e in distributed.shard(self.heldout)):
            raise ValueError("the retrain reference was computed on another held-out set")
        self.retrain_tokens = None if retrain is None else distributed.gather_tensor(
            token_logprobs_of(retrain))

    def __call__(self, model: torch.nn.Module) -> dict:
        if self.prepared is None:
            self.prepared = prepare_scoring(model, self.encoded, self.tokenizer.pad_token_id)
        metrics = evaluate_probes(model, self.tokenizer, self.probe_sets, prepared=self.prepared)
        if not self.heldout:
            return metrics
        current = heldout_logprobs(model, self.heldout, self.tokenizer.pad_token_id)
        tokens = distributed.gather_tensor(token_logprobs_of(current))
        if self.retrain is not None:
            metrics[M.RE_RETRAIN_KL] = distributed.global_mean(
                kl_per_position(current, self.retrain))
            metrics[M.RE_RETRAIN_MSE] = mse_distance(tokens, self.retrain_tokens)
        return {**metrics, M.RE_TOKENS: [round(float(x), 5) for x in tokens]}


def has_heldout(probe_sets: list[ProbeSet]) -> bool:
    """Whether any probe set is a held-out RE set (then cells measure RE distances)."""
    return any(p.kind == "heldout" for p in probe_sets)


def heldout_set(tokenizer, probe_sets: list[ProbeSet], max_length: int) -> list[EncodedExample]:
    """The held-out RE set: the items of every ``heldout`` probe set, tokenised."""
    conversations = [c for p in probe_sets if p.kind == "heldout"
                     for c in probe_conversations(p)]
    return heldout_examples(tokenizer, max_length, conversations) if conversations else []


def heldout_logprobs(model: torch.nn.Module, heldout: list[EncodedExample],
                     pad_id: int) -> Reference:
    """:func:`~pathunlearn.eval.divergence.position_logprobs` of this rank's contiguous share
    of the held-out set (all of it in a plain process; :func:`pathunlearn.distributed.shard`)."""
    mine = distributed.shard(heldout)
    with distributed.lockstep(model, -(-len(mine) // HELDOUT_BATCH)):
        if mine:
            return position_logprobs(model, mine, pad_id, HELDOUT_BATCH)
    return Reference(torch.zeros(0, 0), torch.zeros(0, dtype=torch.long))


def retrain_reference(key: str | None, load: Callable[[str], tuple], probe_sets: list[ProbeSet],
                      max_length: int, known: dict[str, Reference]) -> Reference | None:
    """The retrain model ``key``'s next-token distributions on the held-out RE set; None
    without a retrain model (``key`` None) or a held-out set. ``load(key)`` gives the model
    and its tokenizer; ``known`` (retrain key -> reference) keeps what was computed, so each
    retrain model is loaded and evaluated once for every cell compared with it."""
    if key is None or not has_heldout(probe_sets):
        return None
    if key not in known:
        model, tokenizer = load(key)
        heldout = heldout_set(tokenizer, probe_sets, max_length)
        known[key] = heldout_logprobs(model, heldout, tokenizer.pad_token_id)
    return known[key]
