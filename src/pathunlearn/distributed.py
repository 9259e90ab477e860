"""One training run on N processes: ``torchrun --nproc_per_node N -m pathunlearn train CONFIG``.

PyTorch distributed, nothing home-made: torchrun (or ``accelerate launch``) starts the
processes and sets RANK / WORLD_SIZE / LOCAL_RANK; :func:`process_group` joins them (gloo on
CPU, nccl on CUDA, one device per process, ``cuda:LOCAL_RANK``). In a plain process (no
WORLD_SIZE, or 1) nothing here does anything and every function is the identity, so a
single-process run is bit for bit what it was.

What the ranks share and what each does alone:

- every rank runs the same plan in the same order and reads the same DONE markers (a barrier
  follows every directory rank 0 completes), so after a kill every rank resumes from the same
  state;
- an optimizer step's effective batch is the single-process one
  (:func:`pathunlearn.data.batching.step_indices`); rank r takes its examples r, r+N, r+2N ...
  (:func:`step_work`: balanced lengths, since a step's examples are sorted by length), cut into
  micro-batches; each rank divides its loss by the *whole* step's target-token (or sequence)
  count, which every rank knows from the indices, and multiplies it by N because DDP and FSDP
  average gradients across ranks: the gradient is the single-process one, summed in another
  order (differences of float rounding only);
- evaluation (probes, RE distances, math generation) is sharded (:func:`shard`: rank r takes a
  contiguous block) and gathered (:func:`gather`) on every rank, so every rank sees the same
  numbers and takes the same decisions (divergence, the matched-start stopper);
- rank 0 alone writes (:func:`output_dir`, :func:`is_main`); the others write into a scratch
  directory that is thrown away, so the same code runs on every rank.

Strategies (``distributed.strategy``): ``ddp`` (every rank holds the whole model; gradients
all-reduced once per step, ``no_sync`` for the other micro-batches) or ``fsdp`` (FSDP2
``fully_shard`` per decoder layer and the root: parameters, gradients and optimizer state are
split across ranks; full finetuning only).
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from pathunlearn.errors import ConfigError, UserError
from pathunlearn.files import atomic_dir

# ---------------------------------------------------------------------------- who am I


def launched() -> int:
    """The world size the launcher (torchrun, accelerate) announced; 1 in a plain process.
    Known before the process group is joined, so the config checks can use it."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def launched_rank() -> int:
    """This process's rank as the launcher announced it (0 in a plain process)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def local_rank() -> int:
    """This process's rank on its machine (its GPU under nccl)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def active() -> bool:
    """Whether this process is one of several in a process group."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if active() else 0


def world() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0 (the only one in a plain process): the process that writes."""
    return rank() == 0


def backend_for(name: str = "auto") -> str:
    """``auto``: nccl when CUDA is present, else gloo. nccl without CUDA is a ConfigError."""
    if name == "auto":
        return "nccl" if torch.cuda.is_available() else "gloo"
    if name == "nccl" and not torch.cuda.is_available():
        raise ConfigError("distributed.backend: nccl needs CUDA devices; use gloo (or auto)")
    return name


def device() -> torch.device:
    """This rank's device: ``cuda:LOCAL_RANK`` under nccl, else the CPU."""
    import torch.distributed as dist

    if active() and dist.get_backend() == "nccl":
        return torch.device("cuda", local_rank())
    return torch.device("cpu")


# ---------------------------------------------------------------------------- the group


@contextlib.contextmanager
def process_group(backend: str = "auto") -> Iterator[None]:
    """Join the launcher's process group for the body (nothing in a plain process, or when
    already joined). Ranks other than 0 print nothing on stdout from here on (logs, progress
    bars, the command's summary): every rank would print the same lines. Errors still reach
    stderr."""
    import torch.distributed as dist

    if launched() == 1 or (dist.is_available() and dist.is_initialized()):
        yield
        return
    name = backend_for(backend)
    if name == "nccl":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(name, device_id=torch.device("cuda", local_rank())
                            if name == "nccl" else None)
    if dist.get_rank():
        # for the rest of the process: the command's summary after the run too
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - left open until the process exits
    try:
        yield
    finally:
        dist.destroy_process_group()


@contextlib.contextmanager
def errors_once() -> Iterator[None]:
    """Under a launcher, a user's error (every rank meets the same one) is printed by rank 0
    only, so the user reads one line: the other ranks say nothing and give rank 0 time to
    print it and exit with code 2 (torchrun stops every rank once one has exited), then exit
    with code 2 themselves."""
    try:
        yield
    except UserError:
        exit_quietly_unless_rank_0()
        raise


def exit_quietly_unless_rank_0(code: int = 2) -> None:
    """Under a launcher, on a rank other than 0: say nothing about the error every rank met,
    give rank 0 time to print it and exit (torchrun then stops this rank), else exit with
    ``code`` (:func:`errors_once`; the CLI's error handling calls it too). A no-op on rank 0
    and in a plain process."""
    if launched() > 1 and launched_rank() != 0:
        time.sleep(10)
        raise SystemExit(code)


def barrier() -> None:
    """Wait until every rank gets here (a no-op in a plain process)."""
    if active():
        import torch.distributed as dist

        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[local_rank()])
        else:
            dist.barrier()


def all_reduce_sum(value: float) -> float:
    """The sum of ``value`` over the ranks (``value`` itself in a plain process)."""
    if not active():
        return value
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64, device=device())
    dist.all_reduce(t)
    return float(t.item())


def all_reduce_max(value: int) -> int:
    if not active():
        return value
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.int64, device=device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def all_reduce_tensor(t: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of every rank's ``t`` (same shape everywhere), on ``t``'s device;
    ``t`` itself in a plain process."""
    if not active():
        return t
    import torch.distributed as dist

    on = t.to(device())
    dist.all_reduce(on)
    return on.to(t.device)


def global_mean(values: torch.Tensor) -> float:
    """The mean of every rank's ``values`` together (``float(values.mean())`` in a plain
    process): the sum and the count all-reduced."""
    if not active():
        return float(values.mean())
    total = all_reduce_sum(float(values.double().sum()))
    return total / max(1.0, all_reduce_sum(float(values.numel())))


# ---------------------------------------------------------------------------- sharding


def shard(items: Sequence) -> list:
    """This rank's contiguous block of ``items`` (sizes differ by at most one; the blocks in
    rank order are ``items``): evaluation rows, held-out examples. Everything in a plain
    process."""
    n, w, r = len(items), world(), rank()
    return list(items[r * n // w:(r + 1) * n // w])


def deal(items: Sequence) -> list:
    """This rank's items r, r+N, r+2N ... of ``items`` (dealt like cards: items sorted by size
    give every rank a similar load). Everything in a plain process."""
    return list(items[rank()::world()])


def gather(local: list) -> list:
    """Every rank's ``local`` list (picklable items), concatenated in rank order, on every
    rank: the inverse of :func:`shard`. ``local`` itself in a plain process."""
    if not active():
        return local
    import torch.distributed as dist

    parts: list = [None] * world()
    dist.all_gather_object(parts, local)
    return [x for part in parts for x in part]


def gather_tensor(local: torch.Tensor) -> torch.Tensor:
    """Every rank's 1-D ``local`` (on the CPU), concatenated in rank order."""
    if not active():
        return local
    return torch.tensor(gather(local.tolist()), dtype=local.dtype)


def step_work(micro_idx: list[list[int]], micro_batch_size: int) -> list[tuple[list[int], int]]:
    """This rank's forward/backward passes of one optimizer step: ``(example indices,
    weight)``. In a plain process: the step's micro-batches, weight 1, as they are. Under N
    ranks: rank r takes the step's examples r, r+N, ... (in the step's order, so still sorted
    by length), cut into micro-batches; every rank makes as many passes as the one with most,
    the missing ones a zero-weight pass over the step's first example (DDP and FSDP need every
    rank in every gradient reduction)."""
    if not active():
        return [(idx, 1) for idx in micro_idx]
    flat = [i for mb in micro_idx for i in mb]
    mine = deal(flat)
    passes = [(mine[j:j + micro_batch_size], 1) for j in range(0, len(mine), micro_batch_size)]
    largest = -(-len(flat) // world())  # rank 0's share
    most = -(-largest // micro_batch_size)
    return passes + [([flat[0]], 0)] * (most - len(passes))


# ---------------------------------------------------------------------------- the model


def wrap(model: torch.nn.Module, strategy: str = "ddp") -> torch.nn.Module:
    """The module to train on: ``model`` itself in a plain process; DDP around it (gradients
    all-reduced); or, with ``fsdp``, ``model`` sharded in place by FSDP2 (each decoder layer
    and the root). Build the optimizer after this (FSDP replaces the parameters). Evaluate
    and save through ``model`` (or :func:`unwrap`)."""
    if not active():
        return model
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        layers = set(getattr(model, "_no_split_modules", None) or [])
        for module in model.modules():
            if type(module).__name__ in layers:
                fully_shard(module)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [local_rank()] if device().type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DDP wrapper (``model`` otherwise)."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether ``model`` is sharded by FSDP2 (every forward is then a collective)."""
    if not active():
        return False
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def weighted(loss: torch.Tensor, weight: int) -> torch.Tensor:
    """The loss of a pass of :func:`step_work`: ``loss`` itself, or 0 x it for a rank's padding
    pass (it joins the gradient reduction and adds nothing)."""
    return loss if weight == 1 else loss * weight


def backward(loss: torch.Tensor) -> None:
    """``loss.backward()``; under N ranks of ``loss * N``: DDP and FSDP average the gradients
    across ranks, and each rank's loss is already its share of the step's (divided by the
    whole step's count), so the shares must add up instead."""
    (loss * world() if active() else loss).backward()


def sync(model: torch.nn.Module, last: bool) -> contextlib.AbstractContextManager:
    """Around the forward and backward of one micro-batch: gradients are reduced across ranks
    on the step's ``last`` micro-batch only (DDP ``no_sync`` before it)."""
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(model, DistributedDataParallel) and not last:
        return model.no_sync()
    if is_sharded(model):
        model.set_requires_gradient_sync(last)
    return contextlib.nullcontext()


@contextlib.contextmanager
def lockstep(model: torch.nn.Module, forwards: int) -> Iterator[None]:
    """Around sharded evaluation of an FSDP model, where this rank makes ``forwards`` forward
    passes: every forward gathers parameters from all ranks, so the ranks first agree on the
    most any makes, and a rank with fewer makes up the difference with one-token forwards at
    the end. A no-op for other models."""
    if not is_sharded(model):
        yield
        return
    most = all_reduce_max(forwards)
    yield
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for _ in range(most - forwards):
            model(input_ids=torch.zeros((1, 1), dtype=torch.long, device=device()))
    model.train(was_training)


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole state dict of an FSDP-sharded model, on rank 0's CPU (empty elsewhere); every
    rank must call it. A tied parameter (an LM head sharing the embeddings) appears once, under
    its first name, as ``save_pretrained`` writes it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True,
                                                                 cpu_offload=True))
    first: dict[int, str] = {}
    tied = set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in first:
            tied.add(name)
        else:
            first[id(param)] = name
    return {k: v for k, v in state.items() if k not in tied}


# ---------------------------------------------------------------------------- writing


@contextlib.contextmanager
def output_dir(path: str | Path) -> Iterator[Path]:
    """:func:`pathunlearn.files.atomic_dir` on rank 0; on other ranks a scratch directory that
    is thrown away, so the same code runs everywhere and only rank 0's files land. Every rank
    leaves once rank 0's directory is complete (its DONE marker written)."""
    if is_main():
        with atomic_dir(path) as tmp:
            yield tmp
    else:
        with tempfile.TemporaryDirectory(prefix=f"pathunlearn-rank{rank()}-") as tmp:
            yield Path(tmp)
    barrier()
