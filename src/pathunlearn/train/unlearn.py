"""Unlearn the forget stage from every path model, tracking probes as it happens.

A cell (:class:`pathunlearn.plan.Cell`) is one unlearning run: (path, method, experiment seed,
learning rate, scheduler). It starts from the merged path model, adds a fresh LoRA adapter (or
trains all weights under full finetuning), and takes optimizer steps on the forget set only
(local methods) or on the forget set plus retain data (weakly-local baselines, marked
``local: false`` everywhere). What it minimises is its method's (:mod:`pathunlearn.methods`).

It writes its directory (see :mod:`pathunlearn.rundir`) through a :class:`CellWriter`:
``metrics.jsonl`` (one row per eval point: step, every probe, the held-out token
log-probabilities, the distances to the retrain model, the step's loss/lr/grad norm),
``steps.jsonl`` (one row per optimizer step), ``relearn.jsonl`` (with ``relearn.steps``),
``summary.json`` (with the saturation
diagnostics at step 0 and the first step's gradient norm), ``config.yaml`` and, with
``unlearning.save_model``, the unlearned model. It exists once its DONE marker does; a cell
finished with its key is never rerun. A non-finite loss or probe stops only its cell,
recorded as ``diverged_at``.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pathunlearn import distributed
from pathunlearn import metrics as M
from pathunlearn.config import ExperimentConfig
from pathunlearn.data.batching import collate, step_indices
from pathunlearn.data.chat import EncodedExample, tokenize_conversations
from pathunlearn.data.sources import load_stage
from pathunlearn.eval.divergence import (
    Reference,
    heldout_examples,
    kl_per_position,
    mse_distance,
    position_logprobs,
    token_logprobs_of,
)
from pathunlearn.eval.logprob import Prepared, prepare_scoring, reference_logprobs
from pathunlearn.eval.math import MathResult, measure_math
from pathunlearn.eval.probes import (
    ProbeSet,
    encode_probes,
    evaluate_probes,
    probe_conversations,
)
from pathunlearn.eval.saturation import saturation
from pathunlearn.files import is_done, write_json
from pathunlearn.keys import data_sha, stable_hash
from pathunlearn.losses import token_logprobs
from pathunlearn.methods import ForgetBatch, Method, RetainBatch, make_method
from pathunlearn.models import (
    apply_lora,
    checkpoint_activations,
    load_checkpoint,
    resolve_device,
    write_checkpoint,
)
from pathunlearn.plan import Cell, Plan, plan_run, retrain_path
from pathunlearn.rundir import (
    SUMMARY,
    CellWriter,
    cell_done,
    math_before_file,
    prefix_dir,
    unit_dir,
)
from pathunlearn.train.relearn import relearn
from pathunlearn.train.schedules import lr_lambda
from pathunlearn.train.staged import (
    autocast,
    clip_gradients,
    make_optimizer,
    num_steps,
    stage_seed,
)


@dataclass
class Shared:
    """What the cells of one invocation share, computed once rather than once per cell."""

    probe_sets: list[ProbeSet]
    references: dict[str, Reference] = field(default_factory=dict)
    """Retrain model key -> its next-token distributions on the held-out RE set."""
    math_before: dict[tuple[str, int], MathResult | None] = field(default_factory=dict)
    """(path model key, seed) -> math accuracy before unlearning (the same for every method)."""


@dataclass
class CellData:
    """The examples a cell trains on and what its method needs of the path model."""

    forget: list[EncodedExample]
    retain: list[EncodedExample]
    """Retain data of a weakly-local method; empty for a local one."""
    pad_id: int
    ref_logp: torch.Tensor | None = None
    """(N,) log pi_ref(y|x) of every forget example under the path model (NPO forms)."""
    ref_model: torch.nn.Module | None = None
    """A frozen copy of the path model (a KL retain term under full finetuning)."""


# ---------------------------------------------------------------------------- all cells


def unlearn_all(cfg: ExperimentConfig, plan: Plan | None = None, *,
                run_dir: Path | None = None, cells: list[Cell] | None = None,
                log=print, on_done: Callable[[Cell, dict], None] | None = None) -> list[dict]:
    """Run every cell of the plan (default :func:`plan_run`) not finished with its key;
    returns the summaries of all cells. The path models (and retrain models) must be
    trained (:func:`pathunlearn.train.paths.train_paths`). ``on_done(cell, summary)`` is
    called after each cell (the experiment's tracking)."""
    plan = plan or plan_run(cfg)
    run_dir = Path(run_dir or cfg.run_dir)
    cells = list(plan.cells) if cells is None else cells
    todo = [c for c in cells if not cell_done(unit_dir(run_dir, c), c.key)]
    stale = sum(is_done(unit_dir(run_dir, c)) for c in todo)
    log(f"{len(cells)} unlearning cells, {len(cells) - len(todo)} already done"
        + (f", {stale} finished under other settings (rerun)" if stale else ""))
    if todo and not plan.probes:
        raise ValueError("the plan holds no probe sets: plan_run resolves them (a plan read "
                         "back from plan.json does not)")
    shared = Shared(list(plan.probes)) if todo else None
    for i, cell in enumerate(todo, 1):
        s = unlearn_cell(cfg, cell, run_dir, shared)
        log(f"[{i}/{len(todo)}] {cell_line(cell, s)}")
        if on_done is not None:
            on_done(cell, s)
    return cell_summaries(cells, run_dir)


def cell_summaries(cells: list[Cell], run_dir: Path) -> list[dict]:
    """The summary.json of each of ``cells`` (all finished)."""
    return [json.loads((unit_dir(run_dir, c) / SUMMARY).read_text()) for c in cells]


def cell_line(cell: Cell, s: dict) -> str:
    """What the log says of a finished cell (``s``: its summary.json)."""
    note = f", diverged at step {s['diverged_at']}" if s["diverged_at"] else ""
    sweep = " " + "/".join(cell.sweep) if cell.sweep else ""
    return (f"{cell.path_label} {cell.method_label}{sweep} seed {cell.seed}: "
            f"{s['steps_done']} steps, {s['seconds']:.1f}s{note}")


# ---------------------------------------------------------------------------- one cell


def unlearn_cell(cfg: ExperimentConfig, cell: Cell, run_dir: Path, shared: Shared) -> dict:
    """Run one cell from its path model; write its directory atomically; return its summary.

    1. load the path model and encode the forget set (and the retain data of a weakly-local
       method);
    2. take from the path model what the method needs before it changes (reference
       log-probabilities or a frozen copy) and the math accuracy before unlearning;
    3. a fresh adapter, optimizer, schedule and batch order; the saturation diagnostics at
       step 0 (:mod:`pathunlearn.eval.saturation`);
    4. probes at step 0, then optimizer steps, probes every ``eval_every`` steps; a non-finite
       loss or probe stops the cell;
    5. the math accuracy after, the relearning runs (:mod:`pathunlearn.train.relearn`, when
       ``relearn.steps`` > 0), the summary, the unlearned model when asked for.
    """
    u, device = cfg.unlearning, resolve_device(cfg.runtime.device)
    method = make_method(cell.method)

    # ---- 1. the path model and the data
    model, tok = load_checkpoint(prefix_dir(run_dir, cell.model_key), cfg.model, device)
    data = CellData(forget=encode_stage(cfg, tok, cfg.paths.forget_stage),
                    retain=[] if method.local else [
                        e for s in retain_stages(cfg, cell.path) for e in encode_stage(cfg, tok, s)],
                    pad_id=tok.pad_token_id)

    # ---- 2. what the method needs from the path model, and the math accuracy before
    if method.needs_reference:
        data.ref_logp = reference_logprobs(model, data.forget, data.pad_id)
    if method.needs_reference_model and cfg.model.finetuning == "full":
        data.ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    math_before = path_model_math(cfg, cell, model, tok, run_dir, shared)

    # ---- 3. a fresh adapter, optimizer, schedule and batch order
    seed = stage_seed(cell.seed, "unlearn")
    if cfg.model.finetuning == "lora":
        model = apply_lora(model, cfg.model.lora, seed=seed)
    if cfg.runtime.gradient_checkpointing:
        checkpoint_activations(model)
    # under torchrun: DDP around the model, or FSDP2 sharding it in place (before the
    # optimizer); `model` is still what is evaluated and saved
    trained = distributed.wrap(model, cfg.distributed.strategy)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, u.model_copy(update={"lr": cell.lr}))
    total = u.steps or num_steps(len(data.forget), u.batch_size, u.epochs)
    multiplier = lr_lambda(cell.scheduler, total, u.warmup, u.decay)
    forget_batches = step_indices(len(data.forget), u.batch_size, u.micro_batch_size, seed,
                                  [len(e.input_ids) for e in data.forget])
    retain_batches = step_indices(len(data.retain), u.batch_size, u.micro_batch_size,
                                  seed + 1, [len(e.input_ids) for e in data.retain]
                                  ) if data.retain else None
    probe = CellProbes(cfg, tok, shared.probe_sets, retrain_reference(cfg, cell, run_dir, shared))
    start = saturation(model, data.forget, data.pad_id, device, cfg.probes.examples,
                       u.micro_batch_size)  # changes nothing: no update, RNG restored

    # ---- 4. the loop
    with distributed.output_dir(unit_dir(run_dir, cell)) as tmp:
        files = CellWriter(tmp)
        t0, diverged_at, last = time.perf_counter(), None, {}
        files.metrics({M.STEP: 0, **probe(model), **cell.describe()})
        for step in range(1, total + 1):
            lr = cell.lr * multiplier(step - 1)
            for group in optimizer.param_groups:
                group["lr"] = lr
            retain_idx = next(retain_batches)[1] if retain_batches else None
            loss = backward(method, trained, data, next(forget_batches)[1], retain_idx, device,
                            cfg.training.precision, cfg.runtime.vocab_chunk)
            grad_norm = clip_gradients(params, u.grad_clip)
            if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                diverged_at = step
                break
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            last = {M.STEP: step, M.LOSS: loss, M.LR: lr, M.GRAD_NORM: grad_norm}
            if step == 1:
                start[M.FIRST_GRAD_NORM] = grad_norm
            files.step(last)
            if step % u.eval_every == 0 or step == total:
                row = {**last, **probe(model), "local": cell.local}
                files.metrics(row)
                if not all(math.isfinite(v) for v in row.values() if isinstance(v, float)):
                    diverged_at = step
                    break
        if diverged_at is not None:
            files.diverged(diverged_at)

        # ---- 5. math after, relearning, summary, the unlearned model
        math_after = measure_math(u.math, model, tok, cell.seed) if diverged_at is None else None
        if cfg.relearn.steps and diverged_at is None:
            retain = data.retain or [e for s in retain_stages(cfg, cell.path)
                                     for e in encode_stage(cfg, tok, s)]
            files.relearn(relearn(cfg, model, tok, {"retain": retain, "forget": data.forget},
                                  shared.probe_sets, device, seed))
        summary = {**cell.describe(), "key": cell.key, "steps": total,
                   "steps_done": last.get(M.STEP, 0), M.DIVERGED_AT: diverged_at,
                   "seconds": time.perf_counter() - t0, "forget_examples": len(data.forget),
                   "retain_examples": len(data.retain), M.SATURATION: start,
                   **math_fields(math_before, math_after)}
        files.finish(summary, cfg)
        if u.save_model and diverged_at is None:
            write_checkpoint(model, tok, files.model_dir)
    return summary


def backward(method: Method, model: torch.nn.Module, data: CellData,
             micro_idx: list[list[int]], retain_idx: list[list[int]] | None,
             device: torch.device, precision: str, vocab_chunk: int | None = None) -> float:
    """Forward and backward over the micro-batches of one step; returns the step's loss.

    Divisors are those of the whole effective batch (target tokens for token means,
    sequences for sequence means), so the accumulated gradient is that of one big batch.
    Retain micro-batch j goes with forget micro-batch j (those after the last forget one are
    not used). Under torchrun ``model`` is the DDP/FSDP module and each rank makes the passes
    of its share of the step (:func:`pathunlearn.distributed.step_work`) with the same global
    divisors; the loss returned is the whole step's on every rank. ``vocab_chunk``: target
    positions per softmax over the vocabulary (:mod:`pathunlearn.losses`).
    """
    flat = [i for mb in micro_idx for i in mb]
    n_tokens, n_seq = sum(data.forget[i].num_targets for i in flat), len(flat)
    r_tokens = sum(data.retain[i].num_targets for mb in retain_idx for i in mb) \
        if retain_idx else 0
    forget_work = distributed.step_work(micro_idx, len(micro_idx[0]))
    retain_work = distributed.step_work(retain_idx[:len(micro_idx)], len(retain_idx[0])) \
        if retain_idx else []
    passes = max(len(forget_work), len(retain_work))
    total = 0.0
    for j in range(passes):
        # gradients are reduced across ranks once, at the last pass
        with distributed.sync(model, last=j == passes - 1):
            loss = None
            if j < len(forget_work):
                idx, weight = forget_work[j]
                batch = collate([data.forget[i] for i in idx], data.pad_id).to(device)
                with autocast(device, precision):
                    logits = model(**batch.inputs()).logits  # (B, T, V)
                token_logp, mask = token_logprobs(logits, batch.labels, vocab_chunk)
                ref = None if data.ref_logp is None else data.ref_logp[idx].to(device)
                loss = distributed.weighted(method.forget_loss(
                    ForgetBatch(token_logp, mask, n_tokens, n_seq, ref)), weight)
            if j < len(retain_work):
                idx, weight = retain_work[j]
                term = distributed.weighted(method.retain_loss(
                    retain_batch(method, model, data, idx, device, precision, r_tokens,
                                 vocab_chunk)), weight)
                loss = term if loss is None else loss + term
            distributed.backward(loss)
        total += loss.item()
    return distributed.all_reduce_sum(total)


def retain_batch(method: Method, model: torch.nn.Module, data: CellData, idx: list[int],
                 device: torch.device, precision: str, n_tokens: int,
                 vocab_chunk: int | None = None) -> RetainBatch:
    """One retain micro-batch with the model's logits (and the reference model's when the
    method needs them: a frozen copy, or under LoRA the adapter switched off)."""
    batch = collate([data.retain[i] for i in idx], data.pad_id).to(device)
    ref_logits = None
    if method.needs_reference_model:
        with torch.no_grad():
            if data.ref_model is not None:
                ref_logits = data.ref_model(**batch.inputs()).logits
            else:  # LoRA: the reference is the path model, i.e. the adapter switched off
                base = distributed.unwrap(model)  # outside DDP: no gradient reduction
                with base.disable_adapter():
                    ref_logits = base(**batch.inputs()).logits
    with autocast(device, precision):
        logits = model(**batch.inputs()).logits
    return RetainBatch(logits, batch.labels, n_tokens, ref_logits, vocab_chunk)


class CellProbes:
    """What a cell measures at every eval point: every scored probe, the log-probability of
    every held-out reference token (``re_tokens``, from which pairwise distances between cells
    are computed afterwards) and, with a retrain model, the distances to it
    (``re_retrain/kl``, ``/mse``). Without heldout probe sets there are no distances."""

    def __init__(self, cfg: ExperimentConfig, tokenizer, probe_sets: list[ProbeSet],
                 retrain: Reference | None):
        self.tokenizer, self.probe_sets, self.retrain = tokenizer, probe_sets, retrain
        self.encoded = encode_probes(tokenizer, probe_sets, cfg.model.max_length)
        self.prepared: Prepared | None = None  # the batches, worked out at the first call
        self.heldout = heldout_set(cfg, tokenizer, probe_sets)
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


def heldout_set(cfg: ExperimentConfig, tokenizer, probe_sets: list[ProbeSet]) -> list:
    """The held-out RE set: the items of every ``heldout`` probe set, tokenised."""
    conversations = [c for p in probe_sets if p.kind == "heldout"
                     for c in probe_conversations(p)]
    return heldout_examples(tokenizer, cfg.model.max_length, conversations) \
        if conversations else []


def retrain_reference(cfg: ExperimentConfig, cell: Cell, run_dir: Path,
                      shared: Shared) -> Reference | None:
    """The retrain model's next-token distributions on the held-out RE set, computed once per
    retrain model and shared by every cell compared with it; None without a retrain model."""
    key = cell.retrain_key
    if key is None or not any(p.kind == "heldout" for p in shared.probe_sets):
        return None
    if key not in shared.references:
        model, tok = load_checkpoint(prefix_dir(run_dir, key), cfg.model,
                                     resolve_device(cfg.runtime.device))
        heldout = heldout_set(cfg, tok, shared.probe_sets)
        shared.references[key] = heldout_logprobs(model, heldout, tok.pad_token_id)
    return shared.references[key]


def heldout_logprobs(model: torch.nn.Module, heldout: list[EncodedExample],
                     pad_id: int) -> Reference:
    """:func:`~pathunlearn.eval.divergence.position_logprobs` of this rank's contiguous share
    of the held-out set (all of it in a plain process; :func:`pathunlearn.distributed.shard`)."""
    mine, batch_size = distributed.shard(heldout), 32
    with distributed.lockstep(model, -(-len(mine) // batch_size)):
        if mine:
            return position_logprobs(model, mine, pad_id, batch_size)
    return Reference(torch.zeros(0, 0), torch.zeros(0, dtype=torch.long))


# ---------------------------------------------------------------------------- data


def encode_stage(cfg: ExperimentConfig, tokenizer, stage_name: str) -> list[EncodedExample]:
    """A stage's conversations tokenised exactly as staged training saw them."""
    conversations = load_stage(cfg.stages[stage_name])
    return tokenize_conversations(tokenizer, conversations, cfg.model.max_length)[0]


def retain_stages(cfg: ExperimentConfig, path: tuple[str, ...]) -> list[str]:
    """Retain data of the weakly-local methods: the configured stages, else the path's others."""
    return list(cfg.unlearning.retain_stages) or list(retrain_path(cfg, path))


def path_model_math(cfg: ExperimentConfig, cell: Cell, model: torch.nn.Module, tokenizer,
                    run_dir: Path, shared: Shared) -> MathResult | None:
    """The math accuracy of the cell's path model before unlearning (None without math
    questions). It is the same for every method and learning rate of a (path model, seed), so
    it is measured once: kept in ``shared`` for this invocation, and written to the run's
    cache (``cache/math_before/<model key>-<hash>.json``, :func:`pathunlearn.rundir.
    math_before_file`, hashed over the math settings, the math file's content and the seed;
    outside the path model's directory, which is complete once DONE) for every later
    invocation and every Ray task, which would
    each sample it again (at the paper's 5 samples per GSM8K question, the costliest
    evaluation of a cell)."""
    key = (cell.model_key, cell.seed)
    if key in shared.math_before:
        return shared.math_before[key]
    settings = cfg.unlearning.math
    result = None
    if settings.questions:
        content = data_sha(settings.source)
        path = math_before_file(run_dir, cell.model_key,
                                stable_hash(settings.model_dump(mode="json"), content, cell.seed))
        if path.is_file():
            result = MathResult.from_json(json.loads(path.read_text()))
        else:
            result = measure_math(settings, model, tokenizer, cell.seed)
            if result is not None and distributed.is_main():
                write_json(path, result.to_json())  # with every answer, for people to read
    shared.math_before[key] = result
    return result


def math_fields(before: MathResult | None, after: MathResult | None) -> dict:
    """The summary.json fields of the math accuracy before and after unlearning."""
    if before is None:
        return {}
    fields = {M.MATH_BEFORE: before.accuracy, M.MATH_NO_ANSWER_BEFORE: before.no_answer_rate,
              M.MATH_SHUFFLED: before.shuffled_accuracy}
    if after is not None:
        fields |= {M.MATH_AFTER: after.accuracy, M.MATH_NO_ANSWER_AFTER: after.no_answer_rate}
    return fields
