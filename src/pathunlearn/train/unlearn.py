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

What a cell measures is :mod:`pathunlearn.eval` code (``eval/cell.py``: the probes, the RE
distances to the retrain model; ``eval/math.py``: the math accuracy, kept in the run's cache
before unlearning); this module loads the models it measures and names the files it keeps.
"""

from __future__ import annotations

import copy
import json
import math
import random
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from pathunlearn import distributed
from pathunlearn import metrics as M
from pathunlearn.config import ExperimentConfig, LmEvalConfig, MathConfig
from pathunlearn.data.batching import collate, step_indices
from pathunlearn.data.chat import EncodedExample, encode_conversation, tokenize_conversations
from pathunlearn.data.conversation import Conversation
from pathunlearn.data.sources import load_stage
from pathunlearn.errors import ConfigError
from pathunlearn.eval.cell import CellProbes, retrain_field_reference, retrain_reference
from pathunlearn.eval.divergence import Reference
from pathunlearn.eval.field import FieldReference
from pathunlearn.eval.generate import generate
from pathunlearn.eval.logprob import (
    packable,
    prepare_scoring,
    reference_logprobs,
    score_prepared,
    scoring_precision,
)
from pathunlearn.eval.math import (
    GENERATE_BATCH,
    MathRequest,
    MathResult,
    cached_math,
    gold_answers,
    math_fields,
    math_questions,
    measure_math,
)
from pathunlearn.eval.probes import ProbeSet
from pathunlearn.eval.saturation import saturation
from pathunlearn.files import is_done, write_json
from pathunlearn.keys import data_sha, stable_hash
from pathunlearn.losses import token_logprobs
from pathunlearn.memo import Memo, once, tokenizer_key
from pathunlearn.methods import (
    ForgetBatch,
    Method,
    RetainBatch,
    Sampler,
    checked_alternates,
    checked_loss,
    last_exchange,
    make_method,
)
from pathunlearn.models import (
    apply_lora,
    checkpoint_activations,
    load_checkpoint,
    load_pretrained,
    resolve_device,
    write_checkpoint,
)
from pathunlearn.plan import Cell, Plan, plan_run, retrain_path
from pathunlearn.rundir import (
    PREFIXES,
    CellWriter,
    cell_done,
    math_before_file,
    prefix_dir,
    read_summary,
    step_zero_file,
    unit_dir,
)
from pathunlearn.timing import Phases
from pathunlearn.train.relearn import relearn
from pathunlearn.train.schedules import lr_lambda
from pathunlearn.train.staged import (
    autocast,
    clip_gradients,
    make_optimizer,
    num_steps,
    progress_bar,
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
    field_references: dict[str, FieldReference] = field(default_factory=dict)
    """Retrain model key -> its forget truth ratios and MIA AUCs (eval.field)."""
    lmeval_before: dict[str, dict] = field(default_factory=dict)
    """Path model key -> its lm-eval results (unlearning.lmeval)."""
    step_zero: dict[str, StepZero] = field(default_factory=dict)
    """:func:`step_zero_digest` -> what the cells of a path model measure before their first
    update (:func:`step_zero`)."""
    memo: Memo = field(default_factory=Memo)
    """What depends on the tokenizer and the data alone (the stages' and probes' token ids,
    the probes' scoring batches), worked out once for all the cells (pathunlearn.memo)."""


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
    alternates: list[list[EncodedExample]] = field(default_factory=list)
    """The K alternate answers of each forget prompt (DPO's winners), ``alternates[i]``
    belonging to ``forget[i]``; empty unless the method has ``needs_alternates``."""
    alt_ref_logp: torch.Tensor | None = None
    """(N, K) log pi_ref(a|x) of every alternate under the path model."""
    alternate_rows: list[dict] = field(default_factory=list)
    """The alternates as text, one row per forget example and alternate: ``{"question",
    "answer", "alternate"}`` (what the cell's alternates.jsonl holds)."""


# ---------------------------------------------------------------------------- all cells


def unlearn_all(cfg: ExperimentConfig, plan: Plan | None = None, *,
                run_dir: Path | None = None, cells: list[Cell] | None = None,
                log=print, on_done: Callable[[Cell, dict], None] | None = None,
                progress: bool = False) -> list[dict]:
    """Run every cell of the plan (default :func:`plan_run`) not finished with its key;
    returns the summaries of all cells. The path models (and retrain models) must be
    trained (:func:`pathunlearn.train.paths.train_paths`). ``on_done(cell, summary)`` is
    called after each cell (the experiment's tracking); ``progress``: a progress bar inside
    each cell (:func:`cell_bar`; on a terminal only, gone when the cell's line is printed)."""
    plan = plan or plan_run(cfg)
    run_dir = Path(run_dir or cfg.run_dir)
    cells = list(plan.cells) if cells is None else cells
    todo = [c for c in cells if not cell_done(unit_dir(run_dir, c), c.key)]
    log(cells_line(cells, todo, run_dir))
    if todo and not plan.probes:
        raise ValueError("the plan holds no probe sets: plan_run resolves them (a plan read "
                         "back from plan.json does not)")
    shared = Shared(list(plan.probes)) if todo else None
    started = time.perf_counter()
    for i, cell in enumerate(todo, 1):
        with cell_bar(progress, f"[{i}/{len(todo)}] {cell_name(cell)}") as bar:
            s = unlearn_cell(cfg, cell, run_dir, shared, bar)
        log(f"[{i}/{len(todo)}] {cell_line(cell, s)}{eta(started, i, len(todo))}")
        if on_done is not None:
            on_done(cell, s)
    return cell_summaries(cells, run_dir)


def cells_line(cells: list[Cell], todo: list[Cell], run_dir: Path) -> str:
    """What the log says before the cells: how many, how many done, how many of ``todo``
    finished under other settings (their key changed: run again)."""
    stale = sum(is_done(unit_dir(run_dir, c)) for c in todo)
    return (f"{len(cells)} unlearning cells, {len(cells) - len(todo)} already done"
            + (f", {stale} finished under other settings (rerun)" if stale else ""))


def eta(started: float, done: int, total: int) -> str:
    """``; ~Ns left`` for the cells still to run, from the mean time of those done (empty
    after the last)."""
    if done >= total:
        return ""
    left = (time.perf_counter() - started) / done * (total - done)
    return f"; ~{left:.0f}s left" if left < 120 else f"; ~{left / 60:.0f} min left"


def cell_summaries(cells: list[Cell], run_dir: Path) -> list[dict]:
    """The summary.json of each of ``cells`` (all finished)."""
    return [read_summary(unit_dir(run_dir, c)) for c in cells]


class CellBar:
    """What a cell reports while it runs: :meth:`math` while it samples math answers (before
    and after unlearning), :meth:`start` once with its number of optimizer steps, then
    :meth:`step` after each (with the loss), :meth:`evaluated` after each eval point. This one
    reports nothing (no progress asked for, or no terminal)."""

    def math(self, done: int, total: int) -> None:
        pass

    def start(self, total: int) -> None:
        pass

    def step(self, step: int, loss: float) -> None:
        pass

    def evaluated(self, step: int) -> None:
        pass


class RichCellBar(CellBar):
    """A rich progress bar of one cell: steps done of all, the loss, eval points done, the
    time left; transient (the cell's finished line replaces it)."""

    def __init__(self, bar, description: str):
        self.bar, self.description, self.task, self.points = bar, description, None, 0

    def _task(self, total: int | None):
        if self.task is None:
            self.task = self.bar.add_task(self.description, total=total, loss=float("nan"),
                                          points=0, extra="")
        return self.task

    def math(self, done: int, total: int) -> None:
        self.bar.update(self._task(None), extra=f"  math {done}/{total}" if done < total else "")

    def start(self, total: int) -> None:
        self.bar.update(self._task(total), total=total)

    def step(self, step: int, loss: float) -> None:
        self.bar.update(self.task, completed=step, loss=loss)

    def evaluated(self, step: int) -> None:
        self.points += 1
        self.bar.update(self.task, points=self.points)


@contextmanager
def cell_bar(enabled: bool, description: str) -> Iterator[CellBar]:
    """A :class:`RichCellBar` when ``enabled`` and stdout is a terminal, else a silent
    :class:`CellBar` (a log that is not a terminal stays one line per finished cell)."""
    import sys

    if not (enabled and sys.stdout.isatty()):
        yield CellBar()
        return
    with progress_bar("steps  loss {task.fields[loss]:.3f}  {task.fields[points]} eval points"
                      "{task.fields[extra]}", transient=True) as bar:
        yield RichCellBar(bar, description)


def cell_line(cell: Cell, s: dict) -> str:
    """What the log says of a finished cell (``s``: its summary.json)."""
    note = f", diverged at step {s['diverged_at']}" if s["diverged_at"] else ""
    return f"{cell_name(cell)}: {s['steps_done']} steps, {s['seconds']:.1f}s{note}"


def cell_name(cell: Cell) -> str:
    """How the log and messages name a cell: path, method, sweep values, seed."""
    sweep = " " + "/".join(cell.sweep) if cell.sweep else ""
    control = " (matched-start control)" if cell.control == "matched_start" else (
        f" ({cell.control} control)" if cell.control else "")
    return f"{cell.path_label} {cell.method_label}{sweep} seed {cell.seed}{control}"


# ---------------------------------------------------------------------------- one cell


def unlearn_cell(cfg: ExperimentConfig, cell: Cell, run_dir: Path, shared: Shared,
                 bar: CellBar | None = None) -> dict:
    """Run one cell from its path model; write its directory atomically; return its summary.

    1. load the path model and encode the forget set (and the retain data of a weakly-local
       method), and take from the path model what the method needs before it changes
       (reference log-probabilities or a frozen copy): :func:`cell_data`;
    2. the math accuracy before unlearning (:func:`path_model_math`);
    3. a fresh adapter, optimizer, schedule and batch order (:func:`fresh_steps`), what is
       measured at every eval point (:class:`~pathunlearn.eval.cell.CellProbes`) and the
       saturation diagnostics at step 0 (:mod:`pathunlearn.eval.saturation`);
    4. probes at step 0, then optimizer steps, probes every ``eval_every`` steps; a non-finite
       loss or probe stops the cell (:func:`unlearning_loop`);
    5. the math accuracy after, the relearning runs (:mod:`pathunlearn.train.relearn`, when
       ``relearn.steps`` > 0), the summary, the unlearned model when asked for
       (:func:`finish_cell`).
    """
    device, phases, bar = resolve_device(cfg.runtime.device), Phases(), bar or CellBar()
    method = make_method(cell.method)
    with phases.time("load"):
        model, tok = load_checkpoint(prefix_dir(run_dir, cell.model_key), cfg.model, device)
        data = cell_data(cfg, cell, method, model, tok, shared.memo)
    with phases.time("alternates"):
        if method.needs_alternates:
            cell_alternates(cfg, cell, method, model, tok, data, shared.memo)
    with phases.time("math"):
        math_before = path_model_math(cfg, cell, model, tok, run_dir, shared, bar)
    with phases.time("lmeval"):
        lmeval_before = path_model_lmeval(cfg, cell, model, tok, shared)
    with phases.time("load"):
        steps = fresh_steps(cfg, cell, model, data, device, method)
    with phases.time("reference"):
        retrain, field_ref = cell_retrain_reference(cfg, cell, run_dir, shared)
        probe = CellProbes(tok, shared.probe_sets, retrain, cfg.model.max_length, field_ref,
                           cfg.probes.rouge_tokens, shared.memo, cfg.probes.precision)
    with phases.time("step0"):  # changes nothing: no update, RNG restored
        zero = step_zero(cfg, cell, steps, data, probe, run_dir, shared)
    start = dict(zero.saturation)
    with distributed.output_dir(unit_dir(run_dir, cell)) as tmp:
        files, t0 = CellWriter(tmp), time.perf_counter()
        if data.alternate_rows:
            files.alternates(data.alternate_rows)
        diverged_at, last = unlearning_loop(cfg, cell, method, steps, data, probe, files, start,
                                            phases, zero, bar)
        if diverged_at is not None:
            files.diverged(diverged_at)
        summary = finish_cell(cfg, cell, steps, tok, data, files, shared, Outcome(
            last.get(M.STEP, 0), diverged_at, t0, start, math_before,
            None if field_ref is None else field_ref.to_json(), lmeval_before, phases,
            zero.source), bar)
    return summary


@dataclass
class Steps:
    """A cell's optimisation: the model with its fresh adapter, the optimizer, the schedule
    and the batch order."""

    model: torch.nn.Module
    """What is evaluated and saved."""
    trained: torch.nn.Module
    """What the passes go through: ``model``, or under torchrun its DDP/FSDP wrapping."""
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    total: int
    multiplier: Callable[[int], float]
    forget_batches: Iterator
    retain_batches: Iterator | None
    seed: int
    """The cell's seed of its adapter init, batch order and relearning."""
    device: torch.device


@dataclass(frozen=True)
class Outcome:
    """What the loop of a cell leaves for its summary."""

    steps_done: int
    diverged_at: int | None
    started: float
    """``time.perf_counter()`` when the loop started."""
    saturation: dict
    """The saturation diagnostics at step 0 and the first step's gradient norm."""
    math_before: MathResult | None
    retrain_field: dict | None = None
    """The retrain model's forget truth ratios and MIA AUCs the field metrics compared with."""
    lmeval_before: dict | None = None
    """The path model's lm-eval results ({task: {metric: value}}), with unlearning.lmeval."""
    phases: Phases = field(default_factory=Phases)
    """Seconds per phase of the cell so far (:data:`pathunlearn.timing.CELL_PHASES`)."""
    step0: str | None = None
    """Where the step-0 measurements came from (:attr:`StepZero.source`)."""


def cell_data(cfg: ExperimentConfig, cell: Cell, method: Method, model: torch.nn.Module,
              tok, memo: Memo | None = None) -> CellData:
    """The forget set (and a weakly-local method's retain data) tokenised, and what the
    method needs of the path model before it changes (reference log-probabilities, or under
    full finetuning a frozen copy for a KL retain term or a teacher's logits). ``memo``: the
    invocation's, where the stages' token ids and the forget set's scoring batches are worked
    out once."""
    data = CellData(forget=encode_stage(cfg, tok, cfg.paths.forget_stage, memo),
                    retain=[] if method.local else retain_examples(cfg, tok, cell.path, memo),
                    pad_id=tok.pad_token_id)
    if method.needs_reference:
        key = ("forget-scoring", tokenizer_key(tok), cfg.paths.forget_stage,
               cfg.model.max_length, next(model.parameters()).dtype, packable(model))
        data.ref_logp = score_prepared(model, once(memo, key, lambda: prepare_scoring(
            model, data.forget, data.pad_id))).logp  # reference_logprobs, batches reused
    wants_model = (method.needs_reference_model or method.needs_reference_logits
                   or (method.needs_hidden_states and not method.local))
    if wants_model and cfg.model.finetuning == "full":
        data.ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    return data


def cell_alternates(cfg: ExperimentConfig, cell: Cell, method: Method, model: torch.nn.Module,
                    tok, data: CellData, memo: Memo | None = None) -> None:
    """The alternate answers of a ``needs_alternates`` method (``method.alternate_answers``:
    drawn, sampled from the path model ``model`` before it changes, or read from a file;
    once per path model, seed and method settings in ``memo``), tokenised into ``data`` with
    their reference log-probabilities under the path model."""
    conversations = load_stage(cfg.stages[cfg.paths.forget_stage])
    key = ("alternates", cell.model_key, cell.seed, type(method).alternate_answers,
           stable_hash(method.options), stable_hash(method.data_identity()),
           cfg.paths.forget_stage, tokenizer_key(tok))
    rows = once(memo if cell.model_key else None, key, lambda: checked_alternates(
        method, conversations, random.Random(stage_seed(cell.seed, "alternates")),
        path_sampler(model, tok, stage_seed(cell.seed, "alternates")), cell_name(cell)))
    data.alternates = alternate_examples(cfg, tok, conversations, rows)
    data.alternate_rows = [
        {"question": ex[0], "answer": ex[1], "alternate": a}
        for conv, row in zip(conversations, rows, strict=True)
        if (ex := last_exchange(conv)) is not None for a in row]
    flat = [e for row in data.alternates for e in row]
    data.alt_ref_logp = reference_logprobs(model, flat, data.pad_id).view(len(rows), -1)


def alternate_examples(cfg: ExperimentConfig, tok, conversations: list[Conversation],
                       rows: list[list[str]]) -> list[list[EncodedExample]]:
    """Every forget conversation once per alternate of its row, its last answer replaced by
    the alternate, tokenised as the forget set is (same order)."""
    out = []
    for conv, row in zip(conversations, rows, strict=True):
        answers_at = [i for i, m in enumerate(conv.messages) if m["role"] == "assistant"]
        encoded = []
        for answer in row:
            messages = [dict(m) for m in conv.messages]
            if answers_at:  # (one without an answer has no targets either way)
                messages[answers_at[-1]]["content"] = answer
            encoded.append(encode_conversation(tok, messages, cfg.model.max_length))
        out.append(encoded)
    return out


def path_sampler(model: torch.nn.Module, tok, seed: int) -> Sampler:
    """A method's ``sample(prompts, n, temperature, max_new_tokens)``: completions from
    ``model`` (the path model before unlearning), seeded by ``seed``."""
    def sample(prompts: list[list[dict[str, str]]], n: int, temperature: float,
               max_new_tokens: int) -> list[list[str]]:
        return generate(model, tok, prompts, n=n, temperature=temperature,
                        max_new_tokens=max_new_tokens, seed=seed, batch_size=GENERATE_BATCH)
    return sample


def fresh_steps(cfg: ExperimentConfig, cell: Cell, model: torch.nn.Module, data: CellData,
                device: torch.device, method: Method) -> Steps:
    """A fresh adapter (under LoRA), optimizer, schedule and batch order for the cell; only
    the parameters ``method.trainable`` keeps are updated (the others frozen), and the method
    is prepared (``method.prepare``) with the model and the cell's seed."""
    u, seed = cfg.unlearning, stage_seed(cell.seed, "unlearn")
    if cfg.model.finetuning == "lora":
        model = apply_lora(model, cfg.model.lora, seed=seed)
    frozen = [p for n, p in model.named_parameters()
              if p.requires_grad and not method.trainable(n)]
    if frozen and len(frozen) == sum(p.requires_grad for p in model.parameters()):
        raise ConfigError(f"method {cell.method.name!r}: no trainable parameter is one it "
                          "updates (its options choose layers or names the model does not "
                          "have; under LoRA only the adapter's matrices are trainable)")
    for p in frozen:
        p.requires_grad_(False)
    method.prepare(model, seed)
    if cfg.runtime.gradient_checkpointing:
        checkpoint_activations(model)
    # under torchrun: DDP around the model, or FSDP2 sharding it in place (before the
    # optimizer); `model` is still what is evaluated and saved
    trained = distributed.wrap(model, cfg.distributed.strategy)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, u.model_copy(update={"lr": cell.lr}))
    total = u.steps or num_steps(len(data.forget), u.batch_size, u.epochs)
    forget_batches = step_indices(len(data.forget), u.batch_size, u.micro_batch_size, seed,
                                  [len(e.input_ids) for e in data.forget])
    retain_batches = step_indices(len(data.retain), u.batch_size, u.micro_batch_size,
                                  seed + 1, [len(e.input_ids) for e in data.retain]
                                  ) if data.retain else None
    return Steps(model, trained, params, optimizer, total,
                 lr_lambda(cell.scheduler, total, u.warmup, u.decay), forget_batches,
                 retain_batches, seed, device)


def unlearning_loop(cfg: ExperimentConfig, cell: Cell, method: Method, steps: Steps,
                    data: CellData, probe: CellProbes, files: CellWriter,
                    start: dict, phases: Phases, zero: StepZero,
                    bar: CellBar) -> tuple[int | None, dict]:
    """The step-0 row (``zero``: the path model's, :func:`step_zero`), then ``steps.total``
    optimizer steps with probes every ``eval_every`` steps (and at the last); rows go to
    ``files``, the first step's gradient norm to ``start``, the seconds of the steps and of
    the probes to ``phases``, the progress to ``bar``. Returns (the step a non-finite loss,
    gradient norm or probe stopped the cell at, else None; the last step's row)."""
    u, name, last = cfg.unlearning, cell_name(cell), {}
    steps_per_epoch = max(1, math.ceil(len(data.forget) / u.batch_size))
    bar.start(steps.total)
    with phases.time("probes"):
        files.metrics({M.STEP: 0, **zero.metrics, **cell.describe()})
        files.items(0, zero.items)
    bar.evaluated(0)
    for step in range(1, steps.total + 1):
        stepped = time.perf_counter()
        lr = cell.lr * steps.multiplier(step - 1)
        for group in steps.optimizer.param_groups:
            group["lr"] = lr
        retain_idx = next(steps.retain_batches)[1] if steps.retain_batches else None
        loss = backward(method, steps.trained, data, next(steps.forget_batches)[1], retain_idx,
                        steps.device, cfg.training.precision, cfg.runtime.vocab_chunk,
                        step=step, cell=name)
        grad_norm = clip_gradients(steps.params, u.grad_clip)
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            return step, last
        steps.optimizer.step()
        steps.optimizer.zero_grad(set_to_none=True)
        last = {M.STEP: step, M.LOSS: loss, M.LR: lr, M.GRAD_NORM: grad_norm,
                **method.after_step(step, steps_per_epoch, distributed.all_reduce_sum)}
        if step == 1:
            start[M.FIRST_GRAD_NORM] = grad_norm
        files.step(last)
        phases.add("steps", time.perf_counter() - stepped)
        bar.step(step, loss)
        if step % u.eval_every == 0 or step == steps.total:
            generate = cfg.probes.rouge_every or step == steps.total
            with phases.time("probes"):
                row = {**last, **probe(steps.model, generate=generate), "local": cell.local}
                files.metrics(row)
                files.items(step, probe.items)
            bar.evaluated(step)
            if not all(math.isfinite(v) for v in row.values() if isinstance(v, float)):
                return step, last
    return None, last


@dataclass(frozen=True)
class StepZero:
    """What a cell measures before its first update: the probe metrics (and field items) of
    step 0 and the saturation diagnostics. Every cell of a path model starts from the same
    weights (under LoRA with a zero-initialised adapter), so these are the same for all its
    methods and seeds wherever they take no gradient of the cell's own parameters."""

    metrics: dict
    items: list[dict]
    saturation: dict
    source: str = "measured"
    """``measured`` by this cell, ``shared`` by an earlier cell of this process, or ``read``
    from RUN_DIR/cache/step_zero (the cell's summary.json says which)."""

    def to_json(self) -> dict:
        return {"format": STEP_ZERO_FORMAT, "metrics": self.metrics, "items": self.items,
                "saturation": self.saturation}


STEP_ZERO_FORMAT = 1
"""Bump when what :func:`step_zero` measures changes: older cache files are then ignored."""


def step_zero(cfg: ExperimentConfig, cell: Cell, steps: Steps, data: CellData,
              probe: CellProbes, run_dir: Path, shared: Shared) -> StepZero:
    """The cell's :class:`StepZero`: measured once per :func:`step_zero_digest` (kept in
    ``shared`` for this invocation and in RUN_DIR/cache/step_zero for later invocations and
    Ray tasks; under torchrun in this process only), else read back. Reading it back gives
    exactly the numbers measuring gives: the measurement is deterministic and changes neither
    the model nor the random state."""
    digest = step_zero_digest(cfg, cell, steps, data, probe)
    if digest in shared.step_zero:
        return replace(shared.step_zero[digest], source="shared")
    path = step_zero_file(run_dir, cell.model_key, digest)
    alone = distributed.world() == 1
    kept = _read_step_zero(path) if alone and STEP_ZERO_CACHE else None
    if kept is None:
        metrics = probe(steps.model, generate=True)
        kept = StepZero(metrics, list(probe.items), saturation(
            steps.model, data.forget, data.pad_id, steps.device, cfg.probes.examples,
            cfg.unlearning.micro_batch_size))
        if alone and STEP_ZERO_CACHE:
            write_json(path, kept.to_json())
    if STEP_ZERO_CACHE:
        shared.step_zero[digest] = kept
    return kept


STEP_ZERO_CACHE = True
"""Whether cells share their path model's step-0 measurements (tests turn it off to compare)."""


def step_zero_digest(cfg: ExperimentConfig, cell: Cell, steps: Steps, data: CellData,
                     probe: CellProbes) -> str:
    """What a cell's step-0 measurements depend on besides its path model (``model_key``):
    the probe sets and how they are scored and generated, the retrain model they are compared
    with, the forget set (saturation), the trainable parameters whose gradients the saturation
    and GradNorm diagnostics take (all weights, the adapter, a method's chosen layers), the
    dtype, device and precision; under LoRA also the cell's seed, which draws the adapter's
    initialisation (the gradients depend on it), and the seed wherever dropout is active."""
    trainable = [n for n, p in steps.model.named_parameters() if p.requires_grad]
    stochastic = cfg.model.finetuning == "lora" or _has_dropout(steps.model)
    return stable_hash(
        STEP_ZERO_FORMAT, cell.model_key, cell.retrain_key if probe.retrain is not None else None,
        [p.to_json() for p in probe.probe_sets], cfg.model.max_length, cfg.probes.rouge_tokens,
        cfg.probes.examples, cfg.unlearning.micro_batch_size, cfg.model.dtype,
        cfg.training.precision, str(steps.device), cfg.model.attn_implementation,
        *([cfg.probes.precision] if cfg.probes.precision != "fp32" else []),
        stable_hash([e.input_ids for e in data.forget], [e.labels for e in data.forget]),
        trainable, cfg.model.lora.model_dump(mode="json") if cfg.model.finetuning == "lora"
        else None, cell.seed if stochastic else None)


def _has_dropout(model: torch.nn.Module) -> bool:
    """Whether a forward pass in training mode draws random numbers (a dropout with p > 0)."""
    if any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules()):
        return True
    config = getattr(model, "config", None)
    return any(float(getattr(config, k, 0) or 0) > 0 for k in (
        "attention_dropout", "attn_pdrop", "hidden_dropout", "resid_pdrop", "embd_pdrop"))


def _read_step_zero(path: Path) -> StepZero | None:
    """A kept :class:`StepZero` (None when there is none, or of another format)."""
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if data.get("format") != STEP_ZERO_FORMAT:
        return None
    return StepZero(data["metrics"], data["items"], data["saturation"], "read")


def finish_cell(cfg: ExperimentConfig, cell: Cell, steps: Steps, tok, data: CellData,
                files: CellWriter, shared: Shared, done: Outcome,
                bar: CellBar | None = None) -> dict:
    """After the loop: the math accuracy after unlearning, the relearning runs, the summary
    and config, the unlearned model (``unlearning.save_model``); returns the summary."""
    model, diverged = steps.model, done.diverged_at is not None
    phases = done.phases
    with phases.time("math"):
        math_after = None if diverged else measure_math(
            cfg.unlearning.math, model, tok, cell.seed, progress=(bar or CellBar()).math)
    with phases.time("lmeval"):
        lmeval_after = (run_lmeval(cfg.unlearning.lmeval, model, tok)
                        if done.lmeval_before is not None and not diverged else None)
    if cfg.relearn.steps and not diverged:
        with phases.apart("relearn") as inner:  # its optimizer steps: relearn_steps
            retain = data.retain or retain_examples(cfg, tok, cell.path, shared.memo)
            files.relearn(relearn(cfg, model, tok, {"retain": retain, "forget": data.forget},
                                  shared.probe_sets, steps.device, steps.seed, shared.memo,
                                  phases=inner))
    written = time.perf_counter()
    summary = {**cell.describe(), "key": cell.key, "steps": steps.total,
               "steps_done": done.steps_done, M.DIVERGED_AT: done.diverged_at,
               "seconds": time.perf_counter() - done.started, "forget_examples": len(data.forget),
               "retain_examples": len(data.retain), M.SATURATION: done.saturation,
               **({M.RETRAIN_FIELD: done.retrain_field} if done.retrain_field else {}),
               **({M.LMEVAL_BEFORE: done.lmeval_before, M.LMEVAL_AFTER: lmeval_after}
                  if done.lmeval_before is not None else {}),
               **math_fields(done.math_before, math_after)}
    if cfg.unlearning.save_model and not diverged:
        write_checkpoint(model, tok, files.model_dir)
    # (the summary is the last file written; its own write is left out of "write")
    phases.add("write", time.perf_counter() - written)
    summary["phases"] = {k: round(v, 4) for k, v in phases.seconds.items()}
    summary["step0"] = done.step0
    files.finish(summary, cfg)
    return summary


def backward(method: Method, model: torch.nn.Module, data: CellData,
             micro_idx: list[list[int]], retain_idx: list[list[int]] | None,
             device: torch.device, precision: str, vocab_chunk: int | None = None, *,
             step: int = 0, cell: str = "") -> float:
    """Forward and backward over the micro-batches of one step; returns the step's loss.

    Divisors are those of the whole effective batch (target tokens for token means,
    sequences for sequence means), so the accumulated gradient is that of one big batch.
    Retain micro-batch j goes with forget micro-batch j (those after the last forget one are
    not used). Under torchrun ``model`` is the DDP/FSDP module and each rank makes the passes
    of its share of the step (:func:`pathunlearn.distributed.step_work`) with the same global
    divisors; the loss returned is the whole step's on every rank. ``vocab_chunk``: target
    positions per softmax over the vocabulary (:mod:`pathunlearn.losses`). A user's method's
    terms go through :func:`pathunlearn.methods.checked_loss` (an exception or a non-scalar
    loss is one line naming the method, ``step`` and ``cell``).
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
                loss = distributed.weighted(checked_loss(
                    method, "forget_loss", forget_batch(method, model, data, idx, device,
                                                        precision, (n_tokens, n_seq),
                                                        vocab_chunk),
                    step, cell), weight)
            if j < len(retain_work):
                idx, weight = retain_work[j]
                term = distributed.weighted(checked_loss(
                    method, "retain_loss", retain_batch(method, model, data, idx, device,
                                                        precision, r_tokens, vocab_chunk),
                    step, cell), weight)
                loss = term if loss is None else loss + term
            distributed.backward(loss)
        total += loss.item()
    return distributed.all_reduce_sum(total)


def forget_batch(method: Method, model: torch.nn.Module, data: CellData, idx: list[int],
                 device: torch.device, precision: str, counts: tuple[int, int],
                 vocab_chunk: int | None = None) -> ForgetBatch:
    """One forget micro-batch: the token log-probabilities, the cached reference
    log-probabilities (``needs_reference``), the logits and labels (``needs_logits``), the
    reference model's logits (``needs_reference_logits``) and the alternate answers'
    log-probabilities under the model and the reference (``needs_alternates``). ``counts``: the effective
    batch's target tokens and sequences."""
    batch = collate([data.forget[i] for i in idx], data.pad_id).to(device)
    teacher = (reference_logits(model, data, batch.inputs())
               if method.needs_reference_logits else None)
    with autocast(device, precision), layer_output(model, method) as hidden:
        logits = model(**batch.inputs()).logits  # (B, T, V)
    token_logp, mask = token_logprobs(logits, batch.labels, vocab_chunk)
    ref = None if data.ref_logp is None else data.ref_logp[idx].to(device)
    full = method.needs_logits
    labels = batch.labels if full or method.needs_hidden_states else None
    alt_logp = alt_ref = None
    if method.needs_alternates:
        alt = collate([e for i in idx for e in data.alternates[i]], data.pad_id).to(device)
        with autocast(device, precision):
            alt_logits = model(**alt.inputs()).logits
        alt_token_logp, alt_mask = token_logprobs(alt_logits, alt.labels, vocab_chunk)
        k = data.alt_ref_logp.shape[1]
        alt_logp = (alt_token_logp * alt_mask).sum(-1).view(len(idx), k)
        alt_ref = data.alt_ref_logp[idx].to(device)
        if k == 1:  # one alternate per prompt: (B,), as DPO's term reads it
            alt_logp, alt_ref = alt_logp[:, 0], alt_ref[:, 0]
    return ForgetBatch(token_logp, mask, *counts, ref, logits if full else None, labels,
                       teacher, alt_logp, alt_ref, hidden[-1] if hidden else None)


@contextmanager
def layer_output(model: torch.nn.Module, method: Method) -> Iterator[list[torch.Tensor]]:
    """A list that the forward passes inside the block append the output of decoder layer
    ``method.hidden_layer()`` to (the module named ``...layers.<i>``: Llama, Qwen and their
    LoRA/DDP wrappings); empty, and nothing hooked, unless the method has
    ``needs_hidden_states``."""
    out: list[torch.Tensor] = []
    if not method.needs_hidden_states:
        yield out
        return
    layer = method.hidden_layer()
    found = [m for n, m in model.named_modules() if re.search(rf"(^|\.)layers\.{layer}$", n)]
    if not found:
        raise ConfigError(f"method {method.config.name!r}: the model has no decoder layer "
                          f"{layer} (no module named ...layers.{layer})")
    handle = found[0].register_forward_hook(
        lambda _m, _i, o: out.append(o[0] if isinstance(o, tuple) else o))
    try:
        yield out
    finally:
        handle.remove()


def reference_logits(model: torch.nn.Module, data: CellData, inputs: dict,
                     method: Method | None = None) -> torch.Tensor:
    """The reference (path) model's logits on ``inputs``, without gradients: the frozen copy,
    or under LoRA the model with its adapter switched off. With a ``needs_hidden_states``
    ``method``: the output of its layer instead."""
    with torch.no_grad():
        if data.ref_model is not None:
            return _forward(data.ref_model, inputs, method)
        base = distributed.unwrap(model)  # outside DDP: no gradient reduction
        with base.disable_adapter():
            return _forward(base, inputs, method)


def _forward(model: torch.nn.Module, inputs: dict, method: Method | None) -> torch.Tensor:
    if method is None:
        return model(**inputs).logits
    with layer_output(model, method) as hidden:
        model(**inputs)
    return hidden[-1]


def retain_batch(method: Method, model: torch.nn.Module, data: CellData, idx: list[int],
                 device: torch.device, precision: str, n_tokens: int,
                 vocab_chunk: int | None = None) -> RetainBatch:
    """One retain micro-batch with the model's logits (and the reference model's when the
    method needs them: a frozen copy, or under LoRA the adapter switched off)."""
    batch = collate([data.retain[i] for i in idx], data.pad_id).to(device)
    ref_logits = (reference_logits(model, data, batch.inputs())
                  if method.needs_reference_model else None)
    ref_hidden = (reference_logits(model, data, batch.inputs(), method)
                  if method.needs_hidden_states else None)
    with autocast(device, precision), layer_output(model, method) as hidden:
        logits = model(**batch.inputs()).logits
    return RetainBatch(logits, batch.labels, n_tokens, ref_logits, vocab_chunk,
                       hidden[-1] if hidden else None, ref_hidden)


def cell_retrain_reference(cfg: ExperimentConfig, cell: Cell, run_dir: Path,
                           shared: Shared) -> tuple[Reference | None, FieldReference | None]:
    """The retrain model's next-token distributions on the held-out RE set
    (:func:`pathunlearn.eval.cell.retrain_reference`) and its field reference (forget truth
    ratios, MIA AUCs: :func:`~pathunlearn.eval.cell.retrain_field_reference`), from the run's
    prefix of the cell's retrain model (loaded at most once here), computed once per retrain
    model for every cell compared with it."""
    loaded: dict[str, tuple] = {}

    def load(key: str):
        if key not in loaded:
            loaded[key] = load_checkpoint(prefix_dir(run_dir, key), cfg.model,
                                          resolve_device(cfg.runtime.device))
        return loaded[key]

    args = (cell.retrain_key, load, shared.probe_sets, cfg.model.max_length)
    with scoring_precision(resolve_device(cfg.runtime.device), cfg.probes.precision):
        return (retrain_reference(*args, shared.references),
                retrain_field_reference(*args, shared.field_references))


# ---------------------------------------------------------------------------- data


def encode_stage(cfg: ExperimentConfig, tokenizer, stage_name: str,
                 memo: Memo | None = None) -> list[EncodedExample]:
    """A stage's conversations tokenised exactly as staged training saw them (once per
    ``memo``: the invocation's)."""
    def make() -> list[EncodedExample]:
        conversations = load_stage(cfg.stages[stage_name])
        return tokenize_conversations(tokenizer, conversations, cfg.model.max_length)[0]

    key = ("stage", tokenizer_key(tokenizer), stage_name, cfg.model.max_length)
    return once(memo, key, make)


def retain_stages(cfg: ExperimentConfig, path: tuple[str, ...]) -> list[str]:
    """Retain data of the weakly-local methods: the configured stages, else the path's others."""
    return list(cfg.unlearning.retain_stages) or list(retrain_path(cfg, path))


def retain_examples(cfg: ExperimentConfig, tokenizer, path: tuple[str, ...],
                    memo: Memo | None = None) -> list[EncodedExample]:
    """The retain data of a cell on ``path`` (:func:`retain_stages`), tokenised."""
    return [e for s in retain_stages(cfg, path) for e in encode_stage(cfg, tokenizer, s, memo)]


# ---------------------------------------------------------------------------- math


def path_model_math(cfg: ExperimentConfig, cell: Cell, model: torch.nn.Module, tokenizer,
                    run_dir: Path, shared: Shared,
                    bar: CellBar | None = None) -> MathResult | None:
    """The math accuracy of the cell's path model before unlearning (None without math
    questions). It is the same for every method and learning rate of a (path model, seed), so
    it is measured once: kept in ``shared`` for this invocation, and in the run's cache
    (:func:`math_before_path`; outside the path model's directory, which is complete once
    DONE) for every later invocation and every Ray task, which would each sample it again (at
    the paper's 5 samples per GSM8K question, the costliest evaluation of a cell)."""
    key = (cell.model_key, cell.seed)
    if key not in shared.math_before:
        settings = cfg.unlearning.math
        shared.math_before[key] = cached_math(
            settings, model, tokenizer, cell.seed,
            math_before_path(run_dir, cell.model_key, settings, cell.seed),
            (bar or CellBar()).math) if settings.questions else None
    return shared.math_before[key]


def path_model_lmeval(cfg: ExperimentConfig, cell: Cell, model: torch.nn.Module, tokenizer,
                      shared: Shared) -> dict | None:
    """The path model's lm-eval results before unlearning (None without unlearning.lmeval
    tasks): the same for every cell of the path model, so measured once per invocation (lm-eval
    scores deterministically: no sampling)."""
    settings = cfg.unlearning.lmeval
    if not settings.tasks:
        return None
    if cell.model_key not in shared.lmeval_before:
        shared.lmeval_before[cell.model_key] = run_lmeval(settings, model, tokenizer)
    return shared.lmeval_before[cell.model_key]


def run_lmeval(settings: LmEvalConfig, model: torch.nn.Module, tokenizer) -> dict:
    """``settings.tasks`` on ``model`` through lm-eval's Python API (:mod:`pathunlearn.eval.
    lmeval`); a LoRA model is scored through its base model, whose LoRA layers are live."""
    from pathunlearn.eval.lmeval import evaluate

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return evaluate(base, tokenizer, settings.tasks, include_path=settings.include_path or None,
                    limit=settings.limit, num_fewshot=settings.num_fewshot,
                    batch_size=settings.batch_size)


def math_before_path(run_dir: str | Path, model_key: str, settings: MathConfig,
                     seed: int) -> Path:
    """Where a path model's math accuracy before unlearning under ``settings`` and ``seed``
    is kept: :func:`pathunlearn.rundir.math_before_file`, hashed over the math settings, the
    questions' content and the seed (``pathunlearn eval math --run`` finds it there too)."""
    digest = stable_hash(settings.model_dump(mode="json"), data_sha(settings.source), seed)
    return math_before_file(run_dir, model_key, digest)


def kept_math_before(run_dir: str | Path, model_dir: str | Path, settings: MathConfig,
                     seed: int) -> MathResult | None:
    """What the run's cells measured of the path model in ``model_dir`` before unlearning
    under ``settings`` and ``seed`` (:func:`math_before_path`), when ``model_dir`` is one of
    the run's prefixes and a cell measured it; else None."""
    model_dir = Path(model_dir).resolve()
    if not settings.questions or model_dir.parent != Path(run_dir, PREFIXES).resolve():
        return None
    path = math_before_path(run_dir, model_dir.name, settings, seed)
    return MathResult.from_json(json.loads(path.read_text())) if path.is_file() else None


def model_math(directory: Path, want: MathRequest, batch_size: int | None = None,
               run_dir: Path | None = None) -> tuple[MathResult, float, MathResult | None]:
    """``pathunlearn eval math``: the model in ``directory``, loaded as a cell loads its path
    model (the run's ``model`` settings, when ``want`` has them), measured as a cell measures
    it (:func:`~pathunlearn.eval.math.measure_math`); the questions are checked before the
    model is loaded. Returns the result, the seconds it took and, for a path model of
    ``run_dir``, what its cells measured before unlearning (:func:`kept_math_before`)."""
    questions = math_questions(want.settings)
    gold_answers(questions)  # fail on bad data before loading the model
    device = resolve_device(want.device)
    model, tokenizer = (load_checkpoint(directory, want.model, device) if want.model else
                        load_pretrained(directory, device=device))
    start = time.perf_counter()
    result = measure_math(want.settings, model, tokenizer, want.seed, questions=questions,
                          batch_size=batch_size or GENERATE_BATCH)
    seconds = time.perf_counter() - start
    kept = None if run_dir is None else kept_math_before(run_dir, directory, want.settings,
                                                         want.seed)
    return result, seconds, kept
