"""Train a model on one stage: its epochs over its data, a fresh optimizer and schedule.

The loop reads top to bottom: for each optimizer step, set the learning rate, run the
micro-batches (each loss divided by the target-token count of the whole effective batch, so
the accumulated gradient is that of one big batch), clip, step, log.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from pathunlearn import distributed
from pathunlearn.config import OptimConfig
from pathunlearn.data.batching import (
    Batch,
    collate,
    collate_packed,
    packing_mask,
    step_indices,
)
from pathunlearn.data.chat import IGNORE_INDEX, EncodedExample
from pathunlearn.errors import UserError
from pathunlearn.losses import nll_sum
from pathunlearn.train.schedules import lr_lambda


@dataclass(frozen=True)
class StageResult:
    """What one stage did: optimizer steps, loss of the first and last step, tokens, time."""

    steps: int
    first_loss: float | None
    """None when the stage took no step (stopped before the first)."""
    last_loss: float | None
    target_tokens: int
    seconds: float


class StageDiverged(UserError):
    """A stage's loss (or its weights) became non-finite: nothing of it may be saved."""


def stage_seed(seed: int, stage: str) -> int:
    """Seed of one stage's data order and adapter init: fixed by (training seed, stage name),
    so a stage sees the same shuffles wherever it sits in a path."""
    return zlib.crc32(f"{seed}:{stage}".encode())


def make_optimizer(params: list[torch.nn.Parameter], optim: OptimConfig) -> torch.optim.Optimizer:
    """A fresh optimizer (moment buffers empty) for one stage."""
    if optim.optimizer == "sgd":
        return torch.optim.SGD(params, lr=optim.lr, momentum=optim.momentum,
                               weight_decay=optim.weight_decay)
    return torch.optim.AdamW(params, lr=optim.lr, betas=optim.betas,
                             weight_decay=optim.weight_decay)


def num_steps(num_examples: int, batch_size: int, epochs: float) -> int:
    """Optimizer steps of a stage: ``ceil(epochs * ceil(N / B))``."""
    return math.ceil(epochs * math.ceil(num_examples / batch_size))


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast when asked for; parameters and optimizer state stay fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_stage(
    model: torch.nn.Module,
    examples: list[EncodedExample],
    optim: OptimConfig,
    *,
    epochs: float,
    seed: int,
    pad_id: int,
    precision: str = "fp32",
    stage: str = "stage",
    metrics_path: Path | None = None,
    progress: bool = False,
    stop: Callable[[int], bool] | None = None,
    strategy: str = "ddp",
    compile: bool = False,
    packing: bool = False,
    vocab_chunk: int | None = None,
    section: str = "training",
) -> StageResult:
    """Train the trainable parameters of ``model`` on ``examples`` for ``epochs``.

    ``stop(step)``, when given, is asked before the first step (``step`` 0) and after every
    optimizer step (the number of steps taken); True ends the stage there, with the schedule
    of the whole stage (the matched-start control). ``StageResult.steps`` counts the steps
    taken.

    Under torchrun (:mod:`pathunlearn.distributed`) ``model`` is trained through DDP, or
    sharded in place by FSDP2 (``strategy``); each rank makes the passes of its share of every
    step, its loss divided by the whole step's target tokens. ``compile``: the passes go
    through ``torch.compile`` (``runtime.compile``). ``packing``: each micro-batch is one
    row without padding (:func:`~pathunlearn.data.batching.collate_packed`,
    ``runtime.packing``). ``vocab_chunk``: target positions per softmax over the vocabulary
    (:func:`~pathunlearn.losses.nll_sum`; the config's ``vocab_chunk``).

    A loss or gradient norm that becomes non-finite, or weights that are at the end, stop
    the stage with :class:`StageDiverged`, one line naming the stage and ``section``'s
    settings to change (nothing is saved: the caller's directory never gets its DONE)."""
    run = _Optimization.fresh(model, optim, num_steps(len(examples), optim.batch_size, epochs),
                              strategy, compile, stage, section)
    packed = _packed_collator(model) if packing else None
    model.train()
    losses, tokens_seen, t_start = [], 0, time.perf_counter()
    if stop is not None and _asked(stop, 0, model):
        return StageResult(0, None, None, 0, time.perf_counter() - t_start)
    with _progress(progress, stage, run.total) as advance:
        for step, (epoch, n_targets, passes) in enumerate(
                _steps(examples, optim, epochs, seed, pad_id, packed)):
            t_step = time.perf_counter()
            lr, loss_value, grad_norm = run.step(step, passes, n_targets, precision, vocab_chunk)
            losses.append(loss_value)
            tokens_seen += n_targets
            row = _log(metrics_path, stage, epoch, step + 1, loss_value, lr, n_targets,
                       n_targets / max(time.perf_counter() - t_step, 1e-9), grad_norm)
            advance(loss_value, row["tokens_per_s"])
            if stop is not None and _asked(stop, step + 1, model):
                break
    if losses and not all(bool(torch.isfinite(p.detach()).all()) for p in run.params):
        _finite(stage, len(losses), run.total, optim, section, weights=float("nan"))
    return StageResult(len(losses), losses[0], losses[-1], tokens_seen,
                       time.perf_counter() - t_start)


@dataclass
class _Optimization:
    """One stage's fresh optimizer and schedule over the model's trainable parameters, and
    what its passes go through (under torchrun the DDP/FSDP wrapping, maybe compiled)."""

    trained: torch.nn.Module
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    optim: OptimConfig
    total: int
    multiplier: Callable[[int], float]
    device: torch.device
    stage: str
    section: str
    """The config section of ``optim`` (for the message of a diverged stage)."""

    @classmethod
    def fresh(cls, model: torch.nn.Module, optim: OptimConfig, total: int, strategy: str,
              compile: bool, stage: str, section: str) -> _Optimization:
        device = next(model.parameters()).device
        trained = distributed.wrap(model, strategy)  # before the optimizer: FSDP swaps params
        if compile:  # the forward and backward of the (wrapped) model, compiled; same params
            trained = torch.compile(trained)
        params = [p for p in model.parameters() if p.requires_grad]
        return cls(trained, params, make_optimizer(params, optim), optim, total,
                   lr_lambda(optim.scheduler, total, optim.warmup, optim.decay), device,
                   stage, section)

    def step(self, step: int, passes: list[tuple[Batch, float]], n_targets: int,
             precision: str, vocab_chunk: int | None) -> tuple[float, float, float]:
        """Optimizer step ``step + 1``: set its learning rate, forward and backward over its
        micro-batches, clip, step; returns (lr, loss, gradient norm). Never a step from a
        non-finite loss or gradient (:class:`StageDiverged`)."""
        lr = self.optim.lr * self.multiplier(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss = _accumulate(self.trained, passes, n_targets, self.device, precision, vocab_chunk)
        grad_norm = clip_gradients(self.params, self.optim.grad_clip)
        _finite(self.stage, step + 1, self.total, self.optim, self.section, loss=loss,
                grad_norm=grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return lr, loss, grad_norm


def _accumulate(trained: torch.nn.Module, passes: list[tuple[Batch, float]], n_targets: int,
                device: torch.device, precision: str, vocab_chunk: int | None) -> float:
    """Forward and backward over one step's micro-batches (this rank's share under torchrun);
    returns the step's loss, all ranks' together. Each ``.backward()`` adds to ``.grad``, so
    each micro-batch's loss is divided by the target tokens of the whole effective batch (all
    ranks' together): the accumulated gradient is that of one big batch."""
    loss_value = 0.0
    for k, (mb, weight) in enumerate(passes):
        mb = mb.to(device)
        with distributed.sync(trained, last=k == len(passes) - 1):
            with autocast(device, precision):
                logits = trained(**mb.inputs()).logits  # (B, T, V)
            loss = distributed.weighted(nll_sum(logits, mb.labels, vocab_chunk) / n_targets,
                                        weight)
            distributed.backward(loss)
        loss_value += loss.item()
    return distributed.all_reduce_sum(loss_value)


def _log(metrics_path: Path | None, stage: str, epoch: int, step: int, loss: float, lr: float,
         target_tokens: int, tokens_per_s: float, grad_norm: float) -> dict:
    """One step's row, appended to the stage's metrics.jsonl (when it has one)."""
    row = {"stage": stage, "epoch": epoch, "step": step, "loss": loss, "lr": lr,
           "target_tokens": target_tokens, "tokens_per_s": tokens_per_s, "grad_norm": grad_norm}
    if metrics_path is not None:
        with metrics_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
    return row


def _finite(stage: str, step: int, total: int, optim: OptimConfig, section: str,
            **values: float) -> None:
    """A :class:`StageDiverged` naming the first non-finite value of ``values``."""
    for name, value in values.items():
        if math.isfinite(value):
            continue
        what = ("the weights are not finite after" if name == "weights"
                else f"the {name.replace('_', ' ')} is {value} at")
        raise StageDiverged(
            f"stage {stage}: {what} step {step} of {total}; nothing of it is saved. Lower "
            f"{section}.lr (now {optim.lr:g})")


def _asked(stop: Callable[[int], bool], step: int, model: torch.nn.Module) -> bool:
    """``stop(step)``, with the model back in training mode afterwards."""
    try:
        return bool(stop(step))
    finally:
        model.train()


def _packed_collator(model: torch.nn.Module) -> Callable[[list[EncodedExample]], Batch]:
    """Micro-batches as packed rows, kept apart the way ``model``'s attention needs
    (:func:`~pathunlearn.data.batching.packing_mask`), masks in its dtype."""
    impl = getattr(getattr(model, "config", None), "_attn_implementation", "sdpa") or "sdpa"
    mask, dtype = packing_mask(impl), next(model.parameters()).dtype
    return lambda batch: collate_packed(batch, mask, dtype)


def _steps(examples, optim: OptimConfig, epochs: float, seed: int, pad_id: int,
           packed: Callable[[list[EncodedExample]], Batch] | None = None) -> Iterator:
    """(epoch, target tokens of the whole step, this rank's passes: (micro-batch, weight))
    for every optimizer step (:func:`pathunlearn.distributed.step_work`: the step's
    micro-batches, weight 1, in a plain process); the last epoch may be partial. ``packed``:
    the collator of packed rows (else right padding)."""
    make = packed or (lambda batch: collate(batch, pad_id))
    total = num_steps(len(examples), optim.batch_size, epochs)
    steps = step_indices(len(examples), optim.batch_size, optim.micro_batch_size, seed,
                         [len(e.input_ids) for e in examples])
    # a target is a label after the first position (labels are shifted by one in the loss)
    targets = [sum(label != IGNORE_INDEX for label in e.labels[1:]) for e in examples]
    for epoch, micro_idx in itertools.islice(steps, total):
        n_targets = max(1, sum(targets[i] for idx in micro_idx for i in idx))
        yield epoch, n_targets, [(make([examples[i] for i in idx]), weight)
                                 for idx, weight in distributed.step_work(
                                     micro_idx, optim.micro_batch_size)]


def clip_gradients(params: list[torch.nn.Parameter], max_norm: float | None) -> float:
    """Clip the global gradient norm to ``max_norm`` (None: no clipping); returns the norm
    before clipping. FSDP's sharded gradients (DTensors) give the norm of the whole gradient."""
    if max_norm is None:
        grads = [p.grad.norm() for p in params if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack(grads)) if grads else torch.zeros(())
    else:
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


def progress_bar(fields: str, *, transient: bool):
    """A rich progress bar: the task's description (bold, taken as plain text), the bar,
    done / total, ``fields`` (a format of the task's fields) and the time left."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("{task.description}", style="bold", markup=False), BarColumn(),
                    MofNCompleteColumn(), TextColumn(fields), TimeRemainingColumn(),
                    transient=transient)


@contextlib.contextmanager
def _progress(enabled: bool, stage: str, total: int):
    """A rich progress bar showing loss and tokens/s; a no-op when disabled."""
    if not enabled:
        yield lambda loss, tps: None
        return
    with progress_bar("loss {task.fields[loss]:.3f}  {task.fields[tps]:.0f} tok/s",
                      transient=False) as bar:
        task = bar.add_task(stage, total=total, loss=float("nan"), tps=0.0)
        yield lambda loss, tps: bar.update(task, advance=1, loss=loss, tps=tps)
