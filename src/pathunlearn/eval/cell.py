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
from dataclasses import replace

import torch

from pathunlearn import distributed
from pathunlearn import metrics as M
from pathunlearn.data.chat import EncodedExample
from pathunlearn.eval import mia
from pathunlearn.eval.divergence import (
    Reference,
    heldout_examples,
    kl_per_position,
    mse_distance,
    position_logprobs,
    token_logprobs_of,
)
from pathunlearn.eval.field import (
    FieldReference,
    FieldSet,
    cross_metrics,
    item_values,
    reference_of,
    set_metrics,
)
from pathunlearn.eval.generate import generate
from pathunlearn.eval.logprob import Prepared, packable, prepare_scoring, scoring_precision
from pathunlearn.eval.probes import (
    ProbeSet,
    encode_probes,
    probe_conversations,
    probe_metrics,
    probes_key,
    score_probe_rows,
)
from pathunlearn.memo import Memo, once, tokenizer_key

HELDOUT_BATCH = 32
"""Sequences per forward pass over the held-out RE set."""
GENERATE_BATCH = 64
"""Prompts decoded together for ROUGE (greedy: the texts do not depend on it)."""


class CellProbes:
    """What a cell measures at every eval point: every scored probe, the field's metrics of
    the field sets (:mod:`pathunlearn.eval.field`; their per-item values are left in
    ``items`` after each call), the log-probability of every held-out reference token
    (``re_tokens``, from which pairwise distances between cells are computed afterwards) and,
    with a retrain model, the distances to it (``re_retrain/kl``, ``/mse``) and the field
    reference (forget quality, privleak). Without heldout probe sets there are no distances.
    ``max_length``: the run's ``model.max_length``, which the probes are tokenised to;
    ``rouge_tokens``: the most new tokens a ROUGE generation gets; ``memo``: the invocation's
    :class:`~pathunlearn.memo.Memo`, where the probes' token ids and scoring batches are
    worked out once for all its cells (they depend on the tokenizer and the probes only);
    ``precision``: ``probes.precision``, the evaluations under bf16 autocast for ``bf16``."""

    def __init__(self, tokenizer, probe_sets: list[ProbeSet], retrain: Reference | None,
                 max_length: int, field_reference: FieldReference | None = None,
                 rouge_tokens: int = 200, memo: Memo | None = None, precision: str = "fp32"):
        self.tokenizer, self.probe_sets, self.retrain = tokenizer, probe_sets, retrain
        self.field_sets = [FieldSet.of(p) for p in probe_sets if p.metrics and p.scored]
        self.field_reference, self.rouge_tokens = field_reference, rouge_tokens
        self.items: list[dict] = []
        self.max_length, self.memo, self.precision = max_length, memo, precision
        self.key = (tokenizer_key(tokenizer), probes_key(probe_sets), max_length)
        self.encoded = once(memo, ("probes", *self.key),
                            lambda: encode_probes(tokenizer, probe_sets, max_length))
        self.prepared: Prepared | None = None  # the batches, worked out at the first call
        self.heldout = once(memo, ("heldout", *self.key),
                            lambda: heldout_set(tokenizer, probe_sets, max_length))
        # under torchrun a rank holds the retrain reference of its share of the held-out set
        if retrain is not None and retrain.tokens.numel() != sum(
                e.num_targets for e in distributed.shard(self.heldout)):
            raise ValueError("the retrain reference was computed on another held-out set")
        self.retrain_tokens = None if retrain is None else distributed.gather_tensor(
            token_logprobs_of(retrain))

    def __call__(self, model: torch.nn.Module, generate: bool = False) -> dict:
        """The metrics at this eval point; ``generate``: also the generation-based ones
        (ROUGE, and with it model utility)."""
        with scoring_precision(next(model.parameters()).device, self.precision):
            return self._measure(model, generate)

    def _measure(self, model: torch.nn.Module, generate: bool) -> dict:
        if self.prepared is None:
            dtype = next(model.parameters()).dtype
            self.prepared = once(
                self.memo, ("prepared", *self.key, dtype, packable(model)),
                lambda: prepare_scoring(model, self.encoded, self.tokenizer.pad_token_id))
        scores = score_probe_rows(model, self.tokenizer, self.probe_sets, prepared=self.prepared)
        metrics = {}
        for p in self.probe_sets:
            if p.scored:
                metrics |= probe_metrics(p, scores[p.name][p.reduce])
        if self.field_sets:
            metrics |= self._field(model, scores, generate)
        if not self.heldout:
            return metrics
        current = heldout_logprobs(model, self.heldout, self.tokenizer.pad_token_id)
        tokens = distributed.gather_tensor(token_logprobs_of(current))
        if self.retrain is not None:
            metrics[M.RE_RETRAIN_KL] = distributed.global_mean(
                kl_per_position(current, self.retrain))
            metrics[M.RE_RETRAIN_MSE] = mse_distance(tokens, self.retrain_tokens)
        return {**metrics, M.RE_TOKENS: [round(float(x), 5) for x in tokens]}


    def _field(self, model: torch.nn.Module, scores: dict, generate: bool) -> dict:
        items, values = field_items(model, self.tokenizer, self.field_sets, scores,
                                    self.rouge_tokens if generate else None, self.max_length)
        self.items = [{"probe": name, **it} for name, its in items.items() for it in its]
        return values | cross_metrics(self.field_sets, items, values, self.field_reference)


def field_items(model: torch.nn.Module, tokenizer, field_sets: list[FieldSet], scores: dict,
                rouge_tokens: int | None, max_length: int = 256
                ) -> tuple[dict[str, list[dict]], dict[str, float]]:
    """Per field set its items' values and its aggregates, from its rows' ``scores``
    (:func:`~pathunlearn.eval.probes.score_probe_rows`); with ``rouge_tokens`` (the first and
    last eval point), the sets with ``rouge`` are generated greedily (at most that many new
    tokens) and scored, and the sets with ``gradnorm`` get each answer's GradNorm score (a
    backward pass per item)."""
    generated = [fs for fs in field_sets if rouge_tokens is not None and "rouge" in fs.metrics]
    # every set's prompts in one greedy call: the decoding steps are shared across sets
    texts = iter([g[0] for g in generate(
        model, tokenizer, [p for fs in generated for p in fs.prompts], greedy=True,
        max_new_tokens=rouge_tokens, batch_size=GENERATE_BATCH)] if generated else [])
    items, values = {}, {}
    for fs in field_sets:
        generations = [next(texts) for _ in fs.prompts] if fs in generated else None
        items[fs.name] = item_values(fs, scores[fs.name], generations)
        if rouge_tokens is not None and "gradnorm" in fs.metrics:
            for it, g in zip(items[fs.name], gradnorms(model, tokenizer, fs, max_length),
                             strict=True):
                it["mia_gradnorm"] = g
        values |= set_metrics(fs, items[fs.name])
    return items, values


def gradnorms(model: torch.nn.Module, tokenizer, fs: FieldSet, max_length: int) -> list[float]:
    """The GradNorm attack's score of each item's answer (:func:`pathunlearn.eval.mia.
    gradnorm_score`: the mean over the trained parameter tensors of the gradient's 2-norm of
    the answer's mean token NLL); no ``.grad`` of the model is touched."""
    from pathunlearn.data.batching import collate
    from pathunlearn.eval.logprob import encode_rows, eval_mode
    from pathunlearn.losses import IGNORE_INDEX

    device = next(model.parameters()).device
    out = []
    with eval_mode(model):
        for example in encode_rows(tokenizer, list(zip(fs.prompts, fs.answers, strict=True)),
                                   max_length):
            batch = collate([example], tokenizer.pad_token_id)
            logits = model(**{k: v.to(device) for k, v in batch.inputs().items()}).logits
            labels = batch.labels[:, 1:].to(device)
            nll = torch.nn.functional.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX)
            out.append(mia.gradnorm_score(model, nll))
    return out


def retrain_field_reference(key: str | None, load: Callable[[str], tuple],
                            probe_sets: list[ProbeSet], max_length: int,
                            known: dict[str, FieldReference]) -> FieldReference | None:
    """The retrain model ``key``'s per-item forget truth ratios and MIA AUCs
    (:func:`pathunlearn.eval.field.reference_of`), computed once per retrain model; None
    without a retrain model or field sets."""
    if key is None or not any(p.metrics and p.scored for p in probe_sets):
        return None
    if key not in known:
        known[key] = field_reference(*load(key), probe_sets, max_length)
    return known[key]


def field_reference(model: torch.nn.Module, tokenizer, probe_sets: list[ProbeSet],
                    max_length: int) -> FieldReference:
    """A model's per-item forget truth ratios, MIA AUCs and answer NLLs on the field sets of
    ``probe_sets`` (:func:`pathunlearn.eval.field.reference_of`): what forget quality and
    privleak compare a cell with (a path's retrain model, or any model given as reference)."""
    scored = [p for p in probe_sets if p.metrics and p.scored]
    field_sets = [FieldSet.of(p) for p in scored]
    scores = score_probe_rows(model, tokenizer, scored, max_length=max_length)
    # no generation (ROUGE is the cell's own), but the GradNorm scores privleak compares with
    gradnorm = any("gradnorm" in fs.metrics for fs in field_sets)
    items, _ = field_items(model, tokenizer, [replace(fs, metrics=tuple(
        m for m in fs.metrics if m != "rouge")) for fs in field_sets], scores,
        0 if gradnorm else None, max_length)
    return reference_of(field_sets, items)


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
