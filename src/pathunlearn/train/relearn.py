"""Relearning after unlearning: how much of the forgotten likelihood comes back.

Forgetting can be *superficial* (the model still holds what it was made to forget and a little
finetuning brings it back) or *deep*. For every cell with ``relearn.steps`` > 0, after
unlearning, :func:`relearn` finetunes the unlearned model for K steps (a fresh optimizer,
constant learning rate, token-weighted NLL as staged training) once per ``relearn.data`` entry:

- ``retain``: on the path's other stages (data that never held the forget set): does the
  forget set come back as a side effect of ordinary finetuning?
- ``forget``: on the first ``relearn.forget_examples`` items of the forget set: how fast do a
  few examples restore the rest (the relearning attacks of the unlearning literature)?

Before the first step and every ``eval_every`` steps it scores the forget probes (the
``forget_label`` sets, which the forget score reads; the ``forget_response`` set when there is
none) and returns one row each (``data``, ``step``,
``loss``, the probes' metrics). The trained parameters are restored afterwards, and the random
state too, so the unlearned model and everything after it are exactly as without relearning.
"""

from __future__ import annotations

import math

import torch

from pathunlearn import metrics as M
from pathunlearn.config import ExperimentConfig
from pathunlearn.data.batching import collate, step_indices
from pathunlearn.data.chat import EncodedExample
from pathunlearn.eval.logprob import packable, prepare_scoring, scoring_precision
from pathunlearn.eval.probes import ProbeSet, encode_probes, evaluate_probes, probes_key
from pathunlearn.losses import nll_sum
from pathunlearn.memo import Memo, once, tokenizer_key
from pathunlearn.timing import Phases
from pathunlearn.train.staged import autocast, clip_gradients, make_optimizer

TRACKED_KINDS = ("forget_label", "forget_response")
"""The probe kinds a relearning run scores: the label probes (the forget score's) when the run
has any, else the forget responses."""
DATA = M.RELEARN_DATA


def relearn(cfg: ExperimentConfig, model: torch.nn.Module, tokenizer,
            examples: dict[str, list[EncodedExample]], probe_sets: list[ProbeSet],
            device: torch.device, seed: int, memo: Memo | None = None,
            phases: Phases | None = None) -> list[dict]:
    """The relearning rows of one cell (module docstring). ``examples``: the data of each run
    (``retain``, the whole forget set for ``forget``, of which the first
    ``relearn.forget_examples`` are used); a run without data is skipped. ``memo``: where the
    tracked probes' scoring batches are worked out once for all the invocation's cells.
    ``phases``: where the optimizer steps' seconds are added (``relearn_steps``); the caller
    times the rest."""
    steps_time = (phases or Phases()).time
    r, training = cfg.relearn, cfg.training
    tracked = next(([p for p in probe_sets if p.kind == kind] for kind in TRACKED_KINDS
                    if any(p.kind == kind for p in probe_sets)), [])
    if not r.steps or not tracked:
        return []
    key = ("relearn", tokenizer_key(tokenizer), probes_key(tracked), cfg.model.max_length,
           next(model.parameters()).dtype, packable(model))
    prepared = once(memo, key, lambda: prepare_scoring(
        model, encode_probes(tokenizer, tracked, cfg.model.max_length), tokenizer.pad_token_id))
    params = [p for p in model.parameters() if p.requires_grad]
    saved = [p.detach().clone() for p in params]
    optim = training.model_copy(update={"lr": r.lr or training.lr})
    pad_id = tokenizer.pad_token_id
    rows = []
    def evaluate() -> dict:
        with scoring_precision(device, cfg.probes.precision):
            return evaluate_probes(model, tokenizer, tracked, prepared=prepared)

    # step 0 of every run is the unlearned model itself (each run restores it): scored once
    before = evaluate()
    with torch.random.fork_rng(devices=[]):
        for kind in r.data:
            data = examples.get(kind) or []
            if kind == "forget":
                data = data[:r.forget_examples]
            if not data:
                continue
            optimizer = make_optimizer(params, optim)
            batches = step_indices(len(data), r.batch_size, r.batch_size, seed)
            rows.append({M.RELEARN_DATA: kind, M.STEP: 0, **before})
            for step in range(1, r.steps + 1):
                with steps_time("relearn_steps"):
                    (idx,) = next(batches)[1]
                    batch = collate([data[i] for i in idx], pad_id).to(device)
                    with autocast(device, training.precision):
                        logits = model(**batch.inputs()).logits
                    # the run's vocab_chunk, as in staged training and unlearning
                    loss = nll_sum(logits, batch.labels, cfg.runtime.vocab_chunk) / max(
                        batch.num_targets, 1)
                    loss.backward()
                    clip_gradients(params, training.grad_clip)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                if step % r.eval_every == 0 or step == r.steps:
                    row = {M.RELEARN_DATA: kind, M.STEP: step, M.LOSS: loss.item(),
                           **evaluate()}
                    rows.append(row)
                    if not all(math.isfinite(v) for v in row.values() if isinstance(v, float)):
                        break
            with torch.no_grad():
                for p, value in zip(params, saved, strict=True):
                    p.copy_(value)
    return rows
