"""Unlearn the forget stage from every path model, tracking probes as it happens.

A cell is one unlearning run: (path, method, experiment seed, learning rate, scheduler). It
starts from the merged path model, adds a fresh LoRA adapter (or trains all weights under
full finetuning), and takes optimizer steps on the forget set only (local methods) or on the
forget set plus retain data (weakly-local baselines, marked ``local: false`` everywhere).

Cell directory ``cells/<path>/<method>/<seed>/`` (one more level, ``lr.../<scheduler>``, when
the config sweeps them): ``metrics.jsonl`` (one row per eval point: step, every probe, the
step's loss/lr/grad norm), ``steps.jsonl`` (one row per optimizer step), ``summary.json``,
``config.yaml`` and, with ``unlearning.save_model``, the unlearned model. It exists once its
DONE marker does; a finished cell is never rerun. A non-finite loss or probe stops only its
cell, recorded as ``diverged_at``.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from pathunlearn.config import ExperimentConfig, MethodConfig, dump_config
from pathunlearn.data.batching import collate, step_indices
from pathunlearn.data.chat import EncodedExample, tokenize_conversations
from pathunlearn.data.sources import load_source, load_stage
from pathunlearn.eval.divergence import (
    Reference,
    heldout_examples,
    kl_distance,
    mse_distance,
    position_logprobs,
    token_logprobs_of,
)
from pathunlearn.files import atomic_dir, is_done, write_json, write_text
from pathunlearn.train.losses import (
    FORGET_TERM,
    RETAIN_TERM,
    WEAKLY_LOCAL_METHODS,
    forget_loss,
    retain_loss,
    token_logprobs,
)
from pathunlearn.train.paths import TrainPlan, path_model_dir, stable_hash, stage_seed
from pathunlearn.train.schedules import lr_lambda
from pathunlearn.train.staged import autocast, clip_gradients, make_optimizer, num_steps

CELL_DIR = "cells"
CELL_FORMAT = 1  # bump when what a cell records changes, so old cells are recomputed


@dataclass(frozen=True)
class Cell:
    """One unlearning run."""

    path: tuple[str, ...]
    method: MethodConfig
    method_label: str
    seed: int
    lr: float
    scheduler: str
    sweep: tuple[str, ...] = ()  # extra directory levels when lrs/schedulers are swept

    @property
    def path_label(self) -> str:
        return "-".join(self.path)

    @property
    def local(self) -> bool:
        return self.method.name not in WEAKLY_LOCAL_METHODS

    def directory(self, run_dir: Path) -> Path:
        return Path(run_dir, CELL_DIR, self.path_label, self.method_label, str(self.seed),
                    *self.sweep)

    def describe(self) -> dict:
        return {"path": list(self.path), "method": self.method_label, "seed": self.seed,
                "lr": self.lr, "scheduler": self.scheduler, "local": self.local}


def method_labels(methods: list[MethodConfig]) -> list[str]:
    """Directory-safe names: the method name, plus the settings that tell apart methods of
    the same name (``npo-beta0.5``, ``npo-beta1``)."""
    def settings(m: MethodConfig) -> dict[str, object]:
        return {"beta": m.beta, "lambda": m.retain_weight, "gamma": m.gamma,
                "norm": m.length_normalize}

    labels = []
    for m in methods:
        group = [settings(o) for o in methods if o.name == m.name]
        differing = [k for k in settings(m) if len({repr(g[k]) for g in group}) > 1]
        labels.append("-".join([m.name] + [_setting(k, settings(m)[k]) for k in differing]))
    if len(set(labels)) != len(labels):
        from pathunlearn.errors import ConfigError

        raise ConfigError("unlearning.methods: two methods have identical settings")
    return labels


def _setting(key: str, value: object) -> str:
    if isinstance(value, bool):
        return key if value else f"no{key}"
    return f"{key}{'default' if value is None else format(value, 'g')}"


def plan_cells(cfg: ExperimentConfig, paths: list[tuple[str, ...]] | None = None) -> list[Cell]:
    """Every (path x method x seed x lr x scheduler) of the config."""
    u = cfg.unlearning
    lrs, schedulers = u.lrs or [u.lr], u.schedulers or [u.scheduler]
    cells = []
    for path in paths or cfg.paths.expand():
        for method, label in zip(u.methods, method_labels(u.methods), strict=True):
            for seed in cfg.seeds:
                for lr in lrs:
                    for sched in schedulers:
                        sweep = ((f"lr{lr:g}",) if u.lrs else ()) + ((sched,) if u.schedulers else ())
                        cells.append(Cell(tuple(path), method, label, seed, lr, sched, sweep))
    return cells


# ---------------------------------------------------------------------------- data


def encode_stage(cfg: ExperimentConfig, tokenizer, stage_name: str) -> list[EncodedExample]:
    """A stage's conversations tokenised exactly as staged training saw them."""
    conversations = load_stage(cfg.stages[stage_name])
    return tokenize_conversations(tokenizer, conversations, cfg.model.max_length)[0]


def retrain_path(cfg: ExperimentConfig, path: tuple[str, ...]) -> tuple[str, ...]:
    """The retrain baseline's path: ``path`` without the forget stage (Definition 2.1)."""
    return tuple(s for s in path if s != cfg.paths.forget_stage)


def retain_stages(cfg: ExperimentConfig, path: tuple[str, ...]) -> list[str]:
    """Retain data of the weakly-local methods: the configured stages, else the path's others."""
    return list(cfg.unlearning.retain_stages) or list(retrain_path(cfg, path))


# ---------------------------------------------------------------------------- one cell


def cell_key(cfg: ExperimentConfig, plan: TrainPlan, cell: Cell, retrain: bool) -> str:
    """Hash of everything that determines a cell's results: its path model, the retrain
    model it is compared with, the unlearning settings, the method and the probes."""
    u = cfg.unlearning.model_dump(mode="json", exclude={"lrs", "schedulers", "methods", "lr",
                                                        "scheduler", "save_model"})
    retrain_key = plan.leaf(retrain_path(cfg, cell.path), cell.seed).key if retrain else None
    return stable_hash(plan.leaf(cell.path, cell.seed).key, retrain_key, cell.describe(),
                 cell.method.model_dump(mode="json"), u,
                 cfg.model.model_dump(mode="json", include={"finetuning", "lora", "max_length"}),
                 [p.model_dump(mode="json") for p in cfg.probes], CELL_FORMAT)


def cell_done(directory: Path, key: str) -> bool:
    """Finished with the same key; a cell finished under other settings is stale."""
    if not is_done(directory):
        return False
    try:
        return json.loads((directory / "summary.json").read_text()).get("key") == key
    except (OSError, ValueError):
        return False


def unlearn_cell(cfg: ExperimentConfig, cell: Cell, model_dir: Path, out_dir: Path,
                 probe_sets: list, retrain: Reference | None = None, key: str = "",
                 math_cache: dict | None = None) -> dict:
    """Run one cell from the path model in ``model_dir``; write its directory atomically.

    At every eval point the per-token log-probabilities of the held-out RE set are stored
    (``re_tokens``: pairwise distances between cells are computed from them afterwards); with
    ``retrain`` (:func:`retrain_reference`) also the distances to that retrain model
    (``re_retrain/kl``, ``/mse``). ``math_cache`` shares the before-unlearning math accuracy
    of a path model between the cells that start from it.
    """
    from pathunlearn.eval.logprob import reference_logprobs
    from pathunlearn.eval.probes import encode_probes, evaluate_probes
    from pathunlearn.models import apply_lora, load_checkpoint, resolve_device, write_checkpoint

    # ---- setup: path model, forget (and retain) data, reference values, fresh adapter
    u, device = cfg.unlearning, resolve_device(cfg.training.device)
    model, tok = load_checkpoint(model_dir, cfg.model, device)
    pad = tok.pad_token_id
    forget = encode_stage(cfg, tok, cfg.paths.forget_stage)
    ref = reference_logprobs(model, forget, pad) if FORGET_TERM[cell.method.name] == "npo" else None
    retain = [e for s in retain_stages(cfg, cell.path) for e in encode_stage(cfg, tok, s)] \
        if not cell.local else []
    ref_model = None
    if RETAIN_TERM.get(cell.method.name) == "kl" and cfg.model.finetuning == "full":
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    seed = stage_seed(cell.seed, "unlearn")
    if cfg.model.finetuning == "lora":
        model = apply_lora(model, cfg.model.lora, seed=seed)
    encoded_probes = encode_probes(tok, probe_sets, cfg.model.max_length)
    heldout = heldout_examples(tok, cfg.model.max_length)
    if retrain is not None and retrain.tokens.numel() != sum(e.num_targets for e in heldout):
        raise ValueError("the retrain reference was computed on another held-out set")

    def probe() -> dict:
        metrics = evaluate_probes(model, tok, probe_sets, encoded=encoded_probes)
        current = position_logprobs(model, heldout, pad)
        tokens = token_logprobs_of(current)
        if retrain is not None:
            metrics["re_retrain/kl"] = kl_distance(current, retrain)
            metrics["re_retrain/mse"] = mse_distance(tokens, token_logprobs_of(retrain))
        return {**metrics, "re_tokens": [round(float(x), 5) for x in tokens]}

    math_cache = {} if math_cache is None else math_cache
    if (str(model_dir), cell.seed) not in math_cache:  # the same for every method of a path
        math_cache[(str(model_dir), cell.seed)] = measure_math(cfg, model, tok, cell.seed)
    math_before = math_cache[(str(model_dir), cell.seed)]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, cell_optim(u, cell.lr))
    total = u.steps or num_steps(len(forget), u.batch_size, u.epochs)
    multiplier = lr_lambda(cell.scheduler, total, u.warmup, u.decay)
    forget_batches = step_indices(len(forget), u.batch_size, u.micro_batch_size, seed)
    retain_batches = step_indices(len(retain), u.batch_size, u.micro_batch_size, seed + 1) \
        if retain else None

    with atomic_dir(out_dir) as tmp:
        metrics, steps_log = (tmp / "metrics.jsonl").open("w"), (tmp / "steps.jsonl").open("w")
        t0, diverged_at, last = time.perf_counter(), None, {}
        first = {"step": 0, **probe(), **cell.describe()}
        metrics.write(json.dumps(first) + "\n")
        for step in range(1, total + 1):
            # ---- one optimizer step on an effective batch of the forget set
            lr = cell.lr * multiplier(step - 1)
            for group in optimizer.param_groups:
                group["lr"] = lr
            _, micro_idx = next(forget_batches)
            retain_idx = next(retain_batches)[1] if retain_batches else None
            loss_value = _step_losses(cell.method, model, ref_model, forget, ref, micro_idx,
                                      retain, retain_idx, pad, device, cfg.training.precision)
            grad_norm = clip_gradients(params, u.grad_clip)
            if not (math.isfinite(loss_value) and math.isfinite(grad_norm)):
                diverged_at = step
                break
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            last = {"step": step, "loss": loss_value, "lr": lr, "grad_norm": grad_norm}
            steps_log.write(json.dumps(last) + "\n")
            # ---- probes every eval_every steps and at the end
            if step % u.eval_every == 0 or step == total:
                row = {**last, **probe(), "local": cell.local}
                if not all(math.isfinite(v) for v in row.values() if isinstance(v, float)):
                    diverged_at = step
                    metrics.write(json.dumps(row) + "\n")
                    break
                metrics.write(json.dumps(row) + "\n")
        if diverged_at is not None:
            metrics.write(json.dumps({"step": diverged_at, "diverged": True,
                                      "reason": f"diverged at step {diverged_at}"}) + "\n")
        metrics.close()
        steps_log.close()
        math_after = measure_math(cfg, model, tok, cell.seed) if diverged_at is None else None
        summary = {**cell.describe(), "key": key, "steps": total, "steps_done": last.get("step", 0),
                   "diverged_at": diverged_at, "seconds": time.perf_counter() - t0,
                   "forget_examples": len(forget), "retain_examples": len(retain),
                   **_math_fields(math_before, math_after)}
        write_json(tmp / "summary.json", summary)
        write_text(tmp / "config.yaml", dump_config(cfg))
        if u.save_model and diverged_at is None:
            write_checkpoint(model, tok, tmp / "model")
    return summary


def retrain_reference(cfg: ExperimentConfig, retrain_dir: Path) -> Reference:
    """The retrain model's next-token distributions on the held-out RE set, computed once
    and shared by every cell compared with that model."""
    from pathunlearn.models import load_checkpoint, resolve_device

    model, tok = load_checkpoint(retrain_dir, cfg.model, resolve_device(cfg.training.device))
    heldout = heldout_examples(tok, cfg.model.max_length)
    return position_logprobs(model, heldout, tok.pad_token_id)


def measure_math(cfg: ExperimentConfig, model, tokenizer, seed: int):
    """Math accuracy on ``unlearning.math_questions`` questions, or None when not asked for."""
    u = cfg.unlearning
    if u.math_questions == 0:
        return None
    from pathunlearn.eval.math import evaluate_math

    style = u.math_prompt
    if style == "auto":
        style = "plain" if u.math_source.startswith("builtin:") else "paper"
    questions = load_source(u.math_source, max_examples=u.math_questions)
    return evaluate_math(model, tokenizer, questions, n=u.math_samples,
                         temperature=u.math_temperature, top_p=u.math_top_p,
                         greedy=u.math_greedy, max_new_tokens=u.math_max_new_tokens, seed=seed,
                         prompt_style=style)


def _math_fields(before, after) -> dict:
    if before is None:
        return {}
    fields = {"math_before": before.accuracy, "math_no_answer_before": before.no_answer_rate,
              "math_shuffled_baseline": before.shuffled_accuracy}
    if after is not None:
        fields |= {"math_after": after.accuracy, "math_no_answer_after": after.no_answer_rate}
    return fields


def cell_optim(u, lr: float):
    """The unlearning optimizer settings with this cell's learning rate."""
    return u.model_copy(update={"lr": lr})


def _step_losses(method, model, ref_model, forget, ref, micro_idx, retain, retain_idx, pad,
                 device, precision) -> float:
    """Forward/backward over the micro-batches of one step; returns the step's loss.

    Divisors are those of the whole effective batch (target tokens for token means, sequences
    for sequence means), so the accumulated gradient is that of one big batch.
    """
    flat = [i for mb in micro_idx for i in mb]
    n_tokens = sum(forget[i].num_targets for i in flat)
    n_seq = len(flat)
    r_tokens = sum(retain[i].num_targets for mb in retain_idx for i in mb) if retain_idx else 0
    total = 0.0
    for j, idx in enumerate(micro_idx):
        batch = collate([forget[i] for i in idx], pad).to(device)
        with autocast(device, precision):
            logits = model(**batch.inputs()).logits  # (B, T, V)
        token_logp, mask = token_logprobs(logits, batch.labels)
        loss = forget_loss(method, token_logp, mask, None if ref is None else ref[idx].to(device),
                           num_tokens=n_tokens, num_sequences=n_seq)
        if retain_idx is not None and j < len(retain_idx):
            loss = loss + _retain_term(method, model, ref_model, retain, retain_idx[j], pad,
                                       device, precision, r_tokens)
        loss.backward()
        total += loss.item()
    return total


def _retain_term(method, model, ref_model, retain, idx, pad, device, precision, n_tokens):
    batch = collate([retain[i] for i in idx], pad).to(device)
    ref_logits = None
    if RETAIN_TERM[method.name] == "kl":
        with torch.no_grad():
            if ref_model is not None:
                ref_logits = ref_model(**batch.inputs()).logits
            else:  # LoRA: the reference is the path model, i.e. the adapter switched off
                with model.disable_adapter():
                    ref_logits = model(**batch.inputs()).logits
    with autocast(device, precision):
        logits = model(**batch.inputs()).logits
    return retain_loss(method, logits, batch.labels, ref_logits, num_tokens=n_tokens)


# ---------------------------------------------------------------------------- all cells


def unlearn_all(cfg: ExperimentConfig, plan: TrainPlan, *, run_dir: Path | None = None,
                cells: list[Cell] | None = None, retrain: bool = False,
                log=print) -> list[dict]:
    """Run every cell that has no DONE marker yet; returns the summaries of all cells.

    ``retrain``: measure distances to each path's retrain model (the path without the
    forget stage), which ``plan`` must contain.
    """
    from pathunlearn.eval.probes import default_probes, probes_from_config

    run_dir = Path(run_dir or cfg.run_dir)
    cells = cells if cells is not None else plan_cells(cfg)
    keys = {c: cell_key(cfg, plan, c, retrain) for c in cells}
    todo = [c for c in cells if not cell_done(c.directory(run_dir), keys[c])]
    stale = sum(is_done(c.directory(run_dir)) for c in todo)
    log(f"{len(cells)} unlearning cells, {len(cells) - len(todo)} already done"
        + (f", {stale} finished under other settings (rerun)" if stale else ""))
    if todo:
        u = cfg.unlearning
        forget_convs = load_stage(cfg.stages[cfg.paths.forget_stage])
        probe_sets = default_probes(forget_convs, max_prompts=u.probe_prompts,
                                    max_examples=u.probe_examples,
                                    label_prompts=u.label_prompts,
                                    label_prompts_ood=u.label_prompts_ood) \
            if u.builtin_probes else []
        probe_sets += [probes_from_config(p) for p in cfg.probes]
    references: dict[Path, Reference] = {}  # one per retrain model, not one per cell
    math_cache: dict = {}
    for i, cell in enumerate(todo, 1):
        model_dir = path_model_dir(run_dir, plan, cell.path, cell.seed)
        reference = None
        if retrain:
            retrain_dir = path_model_dir(run_dir, plan, retrain_path(cfg, cell.path), cell.seed)
            if retrain_dir not in references:
                references[retrain_dir] = retrain_reference(cfg, retrain_dir)
            reference = references[retrain_dir]
        s = unlearn_cell(cfg, cell, model_dir, cell.directory(run_dir), probe_sets, reference,
                         keys[cell], math_cache)
        note = f", diverged at step {s['diverged_at']}" if s["diverged_at"] else ""
        sweep = " " + "/".join(cell.sweep) if cell.sweep else ""
        log(f"[{i}/{len(todo)}] {cell.path_label} {cell.method_label}{sweep} seed {cell.seed}: "
            f"{s['steps_done']} steps, {s['seconds']:.1f}s{note}")
    return [json.loads((c.directory(run_dir) / "summary.json").read_text()) for c in cells]
