"""Train the prefixes of a plan: each distinct prefix once, parents first, cached.

The plan (:func:`pathunlearn.plan.plan_run`) holds the trie: the distinct prefixes of every
path and of every retrain baseline, whose root is the base model (e.g. the tiny preset, built
here first when it is missing). A prefix is trained with a fresh optimizer and a fresh
schedule: on all weights of its parent's checkpoint (full finetuning), or, with LoRA,
continuing the path's one adapter on the base model (``scope: path``, the paper) or with a
fresh adapter on the parent's merged checkpoint (``scope: stage``). Either way the prefix
stores its adapter unmerged (``adapter/``) and the merged weights (the path model).

Run directory: ``prefixes/<key>/`` holds the checkpoint (HF format, safetensors), the
prefix's ``metrics.jsonl``, ``prefix.json`` and the resolved ``config.yaml``; it exists once
its DONE marker does. Killing a run loses at most the prefix in progress, which the next run
retrains from its parent (bit-identically: training is deterministic on CPU).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from pathunlearn import distributed
from pathunlearn.checks import truncated_line
from pathunlearn.config import ExperimentConfig, dump_config
from pathunlearn.data.chat import tokenize_conversations
from pathunlearn.data.sources import load_stage
from pathunlearn.errors import ConfigError, UserError
from pathunlearn.files import DONE, is_done, sha256_file, write_json, write_text
from pathunlearn.models import (
    apply_lora,
    checkpoint_activations,
    load_adapter,
    load_checkpoint,
    load_model,
    resolve_device,
    write_checkpoint,
)
from pathunlearn.plan import Matched, Plan, Prefix, plan_run
from pathunlearn.rundir import (
    CONFIG,
    METRICS,
    PREFIX_JSON,
    prefix_dir,
    read_prefix,
    set_aside_name,
    unit_dir,
)
from pathunlearn.train.pretrain import ensure_base
from pathunlearn.train.staged import stage_seed, train_stage

# ---------------------------------------------------------------------------- training


def train_prefix(cfg: ExperimentConfig, prefix: Prefix, run_dir: Path, *,
                 progress: bool = False, directory: Path | None = None,
                 stop=None, extra: Callable[[], dict] | None = None) -> dict:
    """Train one prefix from its parent's checkpoint (or the base model) and save it atomically.

    Returns the summary written to ``prefix.json``. ``directory`` (default the prefix's),
    ``stop`` (see :func:`~pathunlearn.train.staged.train_stage`; called as
    ``stop(step, model, tokenizer)``) and ``extra`` (``extra()`` gives more summary fields,
    once training is done) serve the matched-start control.
    """
    device = resolve_device(cfg.runtime.device)
    stage = cfg.stages[prefix.stage]
    seed = stage_seed(prefix.seed, prefix.stage)
    model, tokenizer = stage_model(cfg, prefix, run_dir, device, seed)
    if cfg.runtime.gradient_checkpointing:
        checkpoint_activations(model)
    conversations = load_stage(stage)
    examples, n_truncated = tokenize_conversations(tokenizer, conversations, cfg.model.max_length)
    if not any(e.num_targets for e in examples):  # checks.py finds it first when it can
        raise UserError(truncated_line(prefix.stage, len(examples), cfg.model.max_length))
    # under torchrun rank 0 writes, the others wait for its DONE marker (pathunlearn.distributed)
    with distributed.output_dir(directory or unit_dir(run_dir, prefix)) as tmp:
        result = train_stage(model, examples, cfg.training, epochs=stage.epochs, seed=seed,
                             pad_id=tokenizer.pad_token_id, precision=cfg.training.precision,
                             stage=prefix.stage, metrics_path=tmp / METRICS,
                             progress=progress, strategy=cfg.distributed.strategy,
                             compile=cfg.runtime.compile, packing=cfg.runtime.packing,
                             vocab_chunk=cfg.runtime.vocab_chunk,
                             stop=None if stop is None else (
                                 lambda step: stop(step, model, tokenizer)))
        (tmp / METRICS).touch()  # a stage stopped before its first step logged none
        write_checkpoint(model, tokenizer, tmp)
        weights = file_hashes(tmp, exclude={METRICS})  # the checkpoint's files only
        summary = {"stages": list(prefix.stages), "seed": prefix.seed, "key": prefix.key,
                   "parent": prefix.parent_key, "examples": len(examples),
                   "truncated": n_truncated, "steps": result.steps,
                   "first_loss": result.first_loss, "last_loss": result.last_loss,
                   "target_tokens": result.target_tokens, "seconds": result.seconds,
                   **(extra() if extra is not None else {}), WEIGHTS: weights}
        write_json(tmp / PREFIX_JSON, summary)
        write_text(tmp / CONFIG, dump_config(cfg))
    return summary


# ---------------------------------------------------------------------------- reuse


WEIGHTS = "weights"
"""prefix.json's record of the checkpoint: every file of it (relative path) -> its sha256,
verified before the prefix is reused (:func:`set_aside_broken`)."""


def file_hashes(directory: Path, exclude: set[str] = frozenset()) -> dict[str, str]:
    """Every file under ``directory`` (but ``exclude``, relative paths) -> its sha256."""
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    return {f.relative_to(directory).as_posix(): sha256_file(f) for f in files
            if f.relative_to(directory).as_posix() not in exclude}


def damage(directory: Path) -> str | None:
    """Why the finished checkpoint in ``directory`` cannot be reused (a file it recorded is
    missing or holds other bytes, prefix.json is unreadable), or None: intact, or written
    before prefix.json recorded its files (``unverified``: nothing to check against)."""
    try:
        recorded = read_prefix(directory)[WEIGHTS]
    except (OSError, ValueError, TypeError):
        return "prefix.json is missing or unreadable"
    except KeyError:
        return None
    if not isinstance(recorded, dict):
        return f"prefix.json: {WEIGHTS} is not a table of files"
    missing = sorted(n for n in recorded if not (directory / n).is_file())
    if missing:
        return f"missing {missing[0]}" + (f" and {len(missing) - 1} more" if missing[1:] else "")
    changed = [n for n in sorted(recorded) if sha256_file(directory / n) != recorded[n]]
    return f"{changed[0]} does not hold the bytes it was written with" if changed else None


def verify_models(plan: Plan, run_dir: Path, log=print) -> set[str]:
    """What both executors do before they schedule any unit of ``plan``: every finished
    prefix and matched-start model whose checkpoint is damaged is set aside and will be
    retrained (:func:`set_aside_broken`), and every finished cell computed from one (its
    path or retrain model) is computed again: nothing tells whether it read the weights
    before or after the damage. Returns the keys of the models set aside. Under torchrun
    process 0 alone moves anything; the others wait for it, then read the same directory."""
    moved: set[str] = set()
    if distributed.is_main():
        moved = set_aside_broken([*plan.prefixes, *plan.matched], run_dir, log=log)
        stale = [d for c in plan.cells if {c.model_key, c.retrain_key} & moved
                 and is_done(d := unit_dir(run_dir, c))]
        for directory in stale:
            (directory / DONE).unlink()  # no longer finished: recomputed, replaced whole
        if stale:
            log(f"{len(stale)} finished cell(s) computed from a model set aside: computed "
                "again")
    distributed.barrier()
    return moved


def set_aside_broken(units, run_dir: Path, log=print) -> set[str]:
    """Check every finished prefix (or matched-start model) of ``units`` against the hashes
    its prefix.json recorded; one that is damaged (:func:`damage`) is moved to
    ``prefixes/<key>.corrupt-<UTC time>/`` (kept for inspection, out of the plan's way) with
    one line saying so, and is retrained like a missing one. Old prefixes without recorded
    hashes are reused unverified (one line counts them). Returns the keys set aside.
    Cost: one sha256 pass over each reused checkpoint (the tiny preset: milliseconds; a
    135M-parameter model in fp32, 540 MiB: 0.35-0.5 s, docs/performance.md)."""
    import os
    from datetime import UTC, datetime

    moved: set[str] = set()
    unverified = 0
    for unit in units:
        directory = unit_dir(run_dir, unit)
        if not is_done(directory):
            continue
        why = damage(directory)
        if why is None:
            unverified += WEIGHTS not in _read_json(directory / PREFIX_JSON)
            continue
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        aside = set_aside_name(directory, stamp)
        os.replace(directory, aside)
        moved.add(unit.key)
        log(f"{directory}: {why}; set aside as {aside.name} and retrained")
    if unverified:
        log(f"{unverified} finished prefix(es) written before pathunlearn recorded checkpoint "
            "hashes: reused unverified (delete them to retrain)")
    return moved


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def stage_model(cfg: ExperimentConfig, prefix: Prefix, run_dir: Path, device, seed: int):
    """(model, tokenizer) that trains ``prefix``'s stage: all weights of the parent's
    checkpoint (full finetuning); a fresh adapter on the parent's merged checkpoint (LoRA,
    ``scope: stage``); or the base model with the parent's path adapter, continued (LoRA,
    ``scope: path``, the paper), a fresh adapter for the first stage. The base model of the
    root prefix is the config's."""
    lora = cfg.model.finetuning == "lora"
    if prefix.parent_key is None:
        model, tokenizer = load_model(cfg.model, device=device)
    elif lora and cfg.model.lora.scope == "path":
        model, tokenizer = load_model(cfg.model, device=device)
        return load_adapter(model, prefix_dir(run_dir, prefix.parent_key) / "adapter"), tokenizer
    else:
        model, tokenizer = load_checkpoint(prefix_dir(run_dir, prefix.parent_key), cfg.model,
                                           device)
    if lora:
        model = apply_lora(model, cfg.model.lora, seed=seed)
    return model, tokenizer


def train_paths(cfg: ExperimentConfig, plan: Plan | None = None, *,
                run_dir: Path | None = None, progress: bool = False, log=print,
                on_done: Callable[[Prefix | Matched, dict], None] | None = None) -> Plan:
    """Train every prefix of the plan (default :func:`plan_run`) that has no DONE checkpoint
    yet, parents first, after building the base model when it is a missing preset.
    ``on_done(prefix, summary)`` is called after each (the experiment's tracking)."""
    plan = plan or plan_run(cfg)
    run_dir = Path(run_dir or cfg.run_dir)
    verify_models(plan, run_dir, log=log)
    todo = [p for p in plan.prefixes if not is_done(unit_dir(run_dir, p))]
    log(planned_line(plan, len(todo)))
    if todo:
        ensure_base(cfg.model, progress=progress, log=log)
    for i, prefix in enumerate(todo, 1):
        s = train_prefix(cfg, prefix, run_dir, progress=progress)
        log(f"[{i}/{len(todo)}] {prefix_line(prefix, s)}")
        if on_done is not None:
            on_done(prefix, s)
    train_matched(cfg, plan, run_dir, progress=progress, log=log, on_done=on_done)
    return plan


def planned_line(plan: Plan, todo: int) -> str:
    """What the log says before the stage-trainings, ``todo`` of them not done yet."""
    return (f"{len(plan.prefixes)} stage-trainings planned ({plan.naive_count} without "
            f"sharing), {len(plan.prefixes) - todo} already done")


def prefix_line(prefix: Prefix, s: dict) -> str:
    """What the log says of a trained prefix (``s``: its prefix.json)."""
    return (f"seed {prefix.seed}: {prefix.label}  loss {s['first_loss']:.3f} -> "
            f"{s['last_loss']:.3f}  ({s['steps']} steps, {s['seconds']:.1f}s"
            f"{', ' + str(s['truncated']) + ' truncated' if s['truncated'] else ''})")


# ---------------------------------------------------------------------------- the control


def train_matched(cfg: ExperimentConfig, plan: Plan, run_dir: Path, *, progress: bool = False,
                  log=print, on_done: Callable[[Prefix | Matched, dict], None] | None = None
                  ) -> None:
    """The matched-start control's models (:class:`pathunlearn.plan.Matched`) not trained yet
    (:func:`train_matched_model`), after the prefixes; ``on_done(model, summary)`` after
    each."""
    todo = [m for m in plan.matched if not is_done(unit_dir(run_dir, m))]
    if cfg.controls.matched_start is None or not todo:
        return
    levels: dict[str, float] = {}  # a path model's level is the same for every model
    for i, m in enumerate(todo, 1):
        s = train_matched_model(cfg, plan, m, run_dir, levels=levels, progress=progress)
        log(f"matched start {i}/{len(todo)}, {matched_line(cfg, m, s)}")
        if on_done is not None:
            on_done(m, s)


def train_matched_model(cfg: ExperimentConfig, plan: Plan, m: Matched, run_dir: Path, *,
                        levels: dict[str, float] | None = None, progress: bool = False) -> dict:
    """One matched-start model: the level of the metric on the other paths' path models
    (``levels``: their values measured so far, filled in), then the forget-last path's last
    stage again from its parent, stopped at the first check where the metric reaches the level
    minus the tolerance (the whole stage when it never does). prefix.json (returned) records
    the level, each other model's value, the metric at every check and the stopping step."""
    control = cfg.controls.matched_start
    from pathunlearn.eval.probes import evaluate_probes

    # the probe's existence is checked before any work (pathunlearn.checks); its statistic here
    name = control.metric.rsplit("/", 1)[0]
    probe = [p for p in plan.probes if p.name == name]
    device = resolve_device(cfg.runtime.device)

    def measure(model, tokenizer) -> float:
        from pathunlearn.eval.logprob import scoring_precision

        with scoring_precision(device, cfg.probes.precision):  # as the cells measure it
            metrics = evaluate_probes(model, tokenizer, probe)
        if control.metric not in metrics:
            raise ConfigError(f"controls.matched_start.metric: probe {name} has no "
                              f"{control.metric!r} ({', '.join(metrics)})")
        return float(metrics[control.metric])

    levels = {} if levels is None else levels
    for key in m.others:
        if key not in levels:
            model, tokenizer = load_checkpoint(prefix_dir(run_dir, key), cfg.model, device)
            levels[key] = measure(model, tokenizer)
    values = [levels[k] for k in m.others]
    level = {"mean": sum(values) / len(values), "min": min(values),
             "max": max(values)}[control.level]
    stopper = _Stopper(measure, level - control.tolerance, control.check_every)
    leaf = Prefix(m.path, m.seed, m.leaf_key, m.parent_key)
    return train_prefix(cfg, leaf, run_dir, progress=progress, directory=unit_dir(run_dir, m),
                        stop=stopper, extra=lambda: {
                            "control": "matched_start", "key": m.key, "leaf": m.leaf_key,
                            "metric": control.metric, "level": level,
                            "others": {k: levels[k] for k in m.others}, **stopper.summary()})


def matched_line(cfg: ExperimentConfig, m: Matched, s: dict) -> str:
    """What the log says of a trained matched-start model (``s``: its prefix.json)."""
    metric, level = cfg.controls.matched_start.metric, s["level"]
    last = s["trace"][-1]["value"] if s["trace"] else float("nan")
    return (f"seed {m.seed}: {' > '.join(m.path)}: "
            + (f"stopped after {s['steps']} steps at {metric} {last:.3f} (level "
               f"{level:.3f})" if s["reached"] else f"the whole stage ({s['steps']} steps) "
               f"stays below the level {level:.3f} ({last:.3f} at the end)"))


class _Stopper:
    """``stop(step, model, tokenizer)`` of the matched-start control: measures the metric every
    ``check_every`` steps (and before the first), records it, and stops once it reaches
    ``target``."""

    def __init__(self, measure, target: float, check_every: int):
        self.measure, self.target, self.check_every = measure, target, check_every
        self.trace: list[dict] = []

    def __call__(self, step: int, model, tokenizer) -> bool:
        if step % self.check_every:
            return False
        self.trace.append({"step": step, "value": self.measure(model, tokenizer)})
        return self.reached

    @property
    def reached(self) -> bool:
        return bool(self.trace) and self.trace[-1]["value"] >= self.target

    def summary(self) -> dict:
        return {"target": self.target, "reached": self.reached,
                "stopped_at": self.trace[-1]["step"] if self.reached else None,
                "trace": self.trace}
