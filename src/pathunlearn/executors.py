"""Where the work of a plan runs: in this process, one unit after another (``executor.kind:
local``, the default), or as Ray tasks on a cluster (``ray``; docs/distributed.md).

The units of a plan (:mod:`pathunlearn.plan`) and what each waits for:

- train prefix P (:func:`~pathunlearn.train.paths.train_prefix`): P's parent prefix;
- train matched-start model M (:func:`~pathunlearn.train.paths.train_matched_model`): its
  parent prefix and the other paths' path models, whose level it matches;
- run cell C (:func:`~pathunlearn.train.unlearn.unlearn_cell`): its path model (a prefix or a
  matched-start model) and its retrain model.

The local executor is :func:`~pathunlearn.train.paths.train_paths` then
:func:`~pathunlearn.train.unlearn.unlearn_all`, as before executors existed. The Ray executor
submits every unit not done yet as a task whose arguments are the tasks of the units it waits
for (Ray starts it once they finished), with the CPUs, GPUs and retries of ``executor``. Each
unit writes its directory the way the local executor does (a temporary directory renamed
into place with a DONE marker), so a task that is killed and retried never leaves a
half-written prefix or cell, and a task whose directory is already DONE returns at once.
Only this process (the driver) holds the run directory (:func:`pathunlearn.rundir.
hold_run_dir`), logs, calls the tracking hooks, and removes what killed tasks left. Before
either executor schedules anything, the finished models are verified against the hashes their
prefix.json recorded (:func:`~pathunlearn.train.paths.verify_models`): a damaged one is set
aside and retrained, and the cells computed from it are computed again.

Every worker must reach the run directory, the driver's working directory (relative paths in
the config mean the same on every node) and the base model: a shared filesystem.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from pathunlearn.config import ExperimentConfig
from pathunlearn.errors import UserError
from pathunlearn.extras import require
from pathunlearn.files import is_done
from pathunlearn.keys import KEY_FORMAT
from pathunlearn.plan import Cell, Matched, Plan, Prefix
from pathunlearn.rundir import (
    CONFIG,
    PLAN,
    PREFIXES,
    cell_done,
    read_prefix,
    read_summary,
    remove_partial_writes,
    unit_dir,
)
from pathunlearn.train.paths import (
    matched_line,
    planned_line,
    prefix_line,
    train_matched_model,
    train_paths,
    train_prefix,
    verify_models,
)
from pathunlearn.train.pretrain import ensure_base
from pathunlearn.train.unlearn import Shared, cell_line, cells_line, unlearn_all, unlearn_cell

Unit = Prefix | Matched | Cell
"""One unit of work: a prefix or matched-start model to train, a cell to run."""
OnDone = Callable[[Unit, dict], None]
"""Called in the driver after each unit finished, with the summary it wrote."""
ENV_PREFIXES = ("PATHUNLEARN_", "HF_", "TRANSFORMERS_")
"""Environment variables of the driver that every task sees too (the tiny preset's cache,
Hugging Face's offline switches ...)."""


def task_env() -> dict[str, str]:
    """The driver's environment variables a task or worker gets (:data:`ENV_PREFIXES`)."""
    return {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIXES)}


def import_ray():
    """The ``ray`` module, or one line saying how to install it."""
    return require("ray", "executor.kind", "ray")


# ---------------------------------------------------------------------------- the session


@contextlib.contextmanager
def connect(cfg: ExperimentConfig, log=print) -> Iterator[None]:
    """While the body runs, be connected to the executor: nothing for ``local``; for ``ray``
    the cluster at ``executor.address`` (or a Ray instance started on this machine), unless
    this process is connected to one already (then that one is used and left connected). A
    cluster that cannot be joined is one line (a UserError); a missing ``ray`` and an
    address where nothing answers are found by the checks, before anything is written."""
    if cfg.executor.kind != "ray":
        yield
        return
    ray = import_ray()
    if ray.is_initialized():
        log("ray: using the Ray instance this process is connected to")
        yield
        return
    address = cfg.executor.address
    try:
        ray.init(address=address, log_to_driver=True)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise UserError(f"executor.address: cannot connect to {where}: "
                        f"{' '.join(str(e).split())[:300]}") from None
    try:
        resources = ray.cluster_resources()
        log(f"ray: {len(ray.nodes())} node(s), {resources.get('CPU', 0):g} CPUs, "
            f"{resources.get('GPU', 0):g} GPUs")
        yield
    finally:
        ray.shutdown()


@contextlib.contextmanager
def _no_phase(name: str) -> Iterator[None]:
    yield


def execute(cfg: ExperimentConfig, plan: Plan, run_dir: Path, *, cells: bool = True,
            progress: bool = False, log=print, phase=_no_phase,
            on_prefix: OnDone | None = None, on_cell: OnDone | None = None) -> None:
    """Train every prefix (and matched-start model) of ``plan`` not trained yet and, with
    ``cells``, run every cell not finished, on the config's executor (for Ray, connected
    by :func:`connect` for the time of the work).
    ``phase(name)`` is a context manager timing each phase (local: ``train`` then
    ``unlearn``; Ray: ``train + unlearn (ray)``: cells start while other prefixes train);
    ``on_prefix`` / ``on_cell`` are called in this process after each unit."""
    if (line := older_keys_line(plan, Path(run_dir))) is not None:
        log(line)
    if local_workers(cfg) > 1:
        run_in_processes(cfg, plan, Path(run_dir), cells=cells, log=log, phase=phase,
                         on_prefix=on_prefix, on_cell=on_cell)
        return
    if cfg.executor.kind == "local":
        with phase("train"):
            train_paths(cfg, plan, run_dir=run_dir, progress=progress, log=log,
                        on_done=on_prefix)
        if cells:
            with phase("unlearn"):
                unlearn_all(cfg, plan, run_dir=run_dir, log=log, on_done=on_cell,
                            progress=progress)
        return
    with phase("train + unlearn (ray)"), connect(cfg, log=log):
        run_on_ray(cfg, plan, Path(run_dir), cells=cells, progress=progress, log=log,
                   on_prefix=on_prefix, on_cell=on_cell)


def older_keys_line(plan: Plan, run_dir: Path) -> str | None:
    """One line when RUN_DIR holds finished cells or prefixes written by a pathunlearn from
    before key format 2 (their config.yaml has no `runtime` section): their keys were made
    another way, so this run does not reuse them and computes what it needs again, once.
    None when there are none."""

    def older(directory: Path) -> bool:
        try:
            written = yaml.safe_load((directory / CONFIG).read_text())
        except (OSError, yaml.YAMLError):
            return False
        return isinstance(written, dict) and "runtime" not in written

    cells = sum(1 for c in plan.cells if is_done(d := unit_dir(run_dir, c))
                and not cell_done(d, c.key) and older(d))
    planned = {p.key for p in plan.prefixes} | {m.key for m in plan.matched}
    top = Path(run_dir, PREFIXES)
    prefixes = sum(1 for d in (sorted(top.iterdir()) if top.is_dir() else [])
                   if d.name not in planned and is_done(d) and older(d))
    if not cells and not prefixes:
        return None
    return (f"{cells} cells and {prefixes} prefixes from an older pathunlearn are not reused "
            f"(keys changed in key format {KEY_FORMAT}: runtime settings are in no key, "
            "whole sections are); what this run needs of them is recomputed, once")


# ---------------------------------------------------------------------------- ray


@dataclass(frozen=True)
class TaskContext:
    """What every task needs besides its unit: put in Ray's object store once."""

    cfg: ExperimentConfig
    plan: Plan
    run_dir: str
    """Absolute: a worker's working directory is set to ``cwd``, but be explicit."""
    cwd: str
    """The driver's working directory: relative paths of the config resolve against it."""
    env: dict[str, str]
    threads: int
    keep_shared: bool = False
    """Keep what cells share (the retrain references, math before, the scoring batches) in
    the worker process for the next cell (local workers); a Ray task computes its own."""


def run_on_ray(cfg: ExperimentConfig, plan: Plan, run_dir: Path, *, cells: bool = True,
               progress: bool = False, log=print, on_prefix: OnDone | None = None,
               on_cell: OnDone | None = None) -> None:
    """Submit every unit not done yet as a Ray task that waits for the tasks of the units it
    starts from; log and call the hooks as they finish; raise once all ended if any failed
    (what finished is kept: rerun to resume)."""
    ray = import_ray()
    run_dir = run_dir.resolve()
    verify_models(plan, run_dir, log=log)  # as train_paths does: damaged models retrain
    units = todo(cfg, plan, run_dir, cells=cells)
    n_cells = sum(isinstance(u, Cell) for u in units)
    log(f"ray: {len(units) - n_cells} stage-training task(s) and {n_cells} cell task(s) to run "
        f"({len(plan.prefixes) + len(plan.matched)} models and "
        f"{len(plan.cells) if cells else 0} cells planned)")
    if not units:
        return
    if n_cells < len(units):
        ensure_base(cfg.model, progress=progress, log=log)  # in the driver, once
    ex = cfg.executor
    task = ray.remote(run_unit).options(
        num_cpus=ex.num_cpus, num_gpus=ex.num_gpus, max_retries=ex.max_retries,
        retry_exceptions=ex.retry_exceptions)
    context = ray.put(TaskContext(
        cfg, plan, str(run_dir), os.getcwd(),
        task_env(),
        max(1, int(ex.num_cpus))))
    made: dict[str, object] = {}  # key of a model -> the task that trains it
    pending: dict[object, tuple[Unit, list[str]]] = {}
    for unit in units:
        deps = [k for k in dependencies(unit) if k in made]
        ref = task.remote(context, unit, *(made[k] for k in deps))
        if not isinstance(unit, Cell):
            made[unit.key] = ref
        pending[ref] = (unit, deps)
    failed = _wait_all(ray, pending, cfg, log, on_prefix, on_cell)
    # every task ended (an interrupted driver leaves this to the next run's hold_run_dir: its
    # tasks may still be running until Ray ends them)
    removed = remove_partial_writes(run_dir)
    if removed:
        log(f"ray: removed {removed} partial write(s) of killed tasks")
    if failed:
        _raise_failure(failed)


def todo(cfg: ExperimentConfig, plan: Plan, run_dir: Path, *, cells: bool = True
         ) -> list[Unit]:
    """The units not done yet, each after the units it waits for."""
    units: list[Unit] = [p for p in plan.prefixes if not is_done(unit_dir(run_dir, p))]
    if cfg.controls.matched_start is not None:
        units += [m for m in plan.matched if not is_done(unit_dir(run_dir, m))]
    if cells:
        units += [c for c in plan.cells if not cell_done(unit_dir(run_dir, c), c.key)]
    return units


def dependencies(unit: Unit) -> list[str]:
    """The keys of the models ``unit`` starts from."""
    if isinstance(unit, Cell):
        return [k for k in (unit.model_key, unit.retrain_key) if k is not None]
    if isinstance(unit, Matched):
        return [k for k in (unit.parent_key, *unit.others) if k is not None]
    return [unit.parent_key] if unit.parent_key is not None else []


def _wait_all(ray, pending: dict, cfg: ExperimentConfig, log, on_prefix: OnDone | None,
              on_cell: OnDone | None) -> list[tuple[Unit, Exception]]:
    """Collect the tasks as they finish; returns the failures (their dependents, which Ray
    does not start, are not counted twice)."""
    total, finished = len(pending), 0
    failed: list[tuple[Unit, Exception]] = []
    failed_keys: set[str] = set()
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        unit, deps = pending.pop(ready[0])
        try:
            summary = ray.get(ready[0])
        except ray.exceptions.RayError as e:
            key = getattr(unit, "key", "")
            failed_keys.add(key)
            upstream = [k for k in deps if k in failed_keys]
            if upstream:
                log(f"ray: skipped {label(unit)}: a model it starts from failed")
            else:
                failed.append((unit, e))
                log(f"ray: FAILED {label(unit)}: {_first_line(e)}")
            continue
        finished += 1
        log(f"[{finished}/{total}] {line(cfg, unit, summary)}")
        hook = on_cell if isinstance(unit, Cell) else on_prefix
        if hook is not None:
            hook(unit, summary)
    return failed


def label(unit: Unit) -> str:
    if isinstance(unit, Cell):
        return str(unit_dir("", unit))  # cells/<path>/<method>/<seed>...
    if isinstance(unit, Matched):
        return f"matched-start model seed {unit.seed}: {' > '.join(unit.path)}"
    return f"prefix seed {unit.seed}: {unit.label}"


def line(cfg: ExperimentConfig, unit: Unit, summary: dict) -> str:
    """The log line of a finished unit, as the local executor writes it."""
    if isinstance(unit, Cell):
        return cell_line(unit, summary)
    if isinstance(unit, Matched):
        return f"matched start, {matched_line(cfg, unit, summary)}"
    return prefix_line(unit, summary)


def _first_line(e: BaseException) -> str:
    cause = getattr(e, "cause", None) or e
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[-1] if text else ''}"


def _raise_failure(failed: list[tuple[Unit, BaseException]], what: str = "Ray task(s) failed",
                   units: str = "task(s)") -> None:
    """A UserError when the first failure is one (a problem with the inputs that the checks
    could not see before the work, e.g. a node without the run directory; a Ray task's error
    carries it as its ``cause``), with the unit it came from; else an error that keeps the
    failure as its cause (a bug, a Ray worker that died more often than max_retries, a local
    worker that died: BrokenProcessPool). ``what`` / ``units``: how the message names the
    failed work."""
    unit, error = failed[0]
    cause = getattr(error, "cause", None) or error
    more = f" (and {len(failed) - 1} more {units})" if len(failed) > 1 else ""
    if isinstance(cause, UserError):
        raise type(cause)(f"{label(unit)}: {cause}{more}") from None
    raise RuntimeError(f"{len(failed)} {what}, first {label(unit)}{more}; what "
                       "finished is kept, rerun to resume") from error


# ---------------------------------------------------------------------------- local workers


def local_workers(cfg: ExperimentConfig) -> int:
    """The worker processes the local executor uses: ``executor.workers``, but 1 (this
    process) with the Ray executor and under torchrun, where each rank is one process."""
    from pathunlearn import distributed

    if cfg.executor.kind != "local" or distributed.world() > 1:
        return 1
    return cfg.executor.workers


def run_in_processes(cfg: ExperimentConfig, plan: Plan, run_dir: Path, *, cells: bool = True,
                     log=print, phase=_no_phase, on_prefix: OnDone | None = None,
                     on_cell: OnDone | None = None) -> None:
    """The local executor on ``executor.workers`` processes (spawned; each with torch's
    threads divided among them, at least 1): the prefixes and matched-start models first
    (phase ``train``), each submitted once the models it starts from are trained, then the
    cells (phase ``unlearn``), in the plan's order. A worker keeps what the cells of one
    invocation share (:class:`~pathunlearn.train.unlearn.Shared`) across the cells it runs.
    The driver (this process) holds the run directory, logs every unit as it finishes and
    calls the hooks; a unit that fails stops the submitting, the units running finish, what
    finished is kept, and the failure is raised (a UserError as one line)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import torch

    run_dir = run_dir.resolve()
    workers = cfg.executor.workers
    threads = max(1, torch.get_num_threads() // workers)
    verify_models(plan, run_dir, log=log)
    units = todo(cfg, plan, run_dir, cells=cells)
    models = [u for u in units if not isinstance(u, Cell)]
    runs = [u for u in units if isinstance(u, Cell)]
    log(planned_line(plan, sum(isinstance(u, Prefix) for u in models)))
    if cells:
        log(cells_line(list(plan.cells), runs, run_dir))
    if not units:
        return
    log(f"local: {len(units)} unit(s) on {workers} worker processes of {threads} torch "
        "thread(s) each")
    if models:
        ensure_base(cfg.model, log=log)  # in the driver, once
    context = TaskContext(cfg, plan, str(run_dir), os.getcwd(),
                          task_env(),
                          threads, keep_shared=True)
    failed: list[tuple[Unit, BaseException]] = []
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_ignore_ctrl_c)
    try:
        for name, wave in (("train", models), ("unlearn", runs)):
            if failed or (name == "unlearn" and not cells):
                break
            with phase(name):
                failed = _run_wave(pool, context, wave, cfg, log, on_prefix, on_cell)
    except BaseException:  # ctrl-c: the workers stop now, what they began is discarded
        _stop_workers(pool)
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    else:
        pool.shutdown(wait=True)
    finally:  # every worker ended: what a failed or interrupted unit began is removed
        removed = remove_partial_writes(run_dir)
        if removed:
            log(f"local: removed {removed} partial write(s) of failed or interrupted units")
    if failed:
        _raise_failure(failed, "unit(s) failed in the worker processes", "unit(s)")


def _ignore_ctrl_c() -> None:
    """A worker's initializer: ctrl-c in a terminal reaches the whole process group, and the
    driver alone decides (it stops the workers: :func:`_stop_workers`)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _stop_workers(pool) -> None:
    """End ``pool``'s worker processes at once (SIGTERM, then SIGKILL after 5 s): their units
    write atomically, so what they began is a temporary file the driver removes."""
    procs = list((getattr(pool, "_processes", None) or {}).values())  # CPython: pid -> process
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join()


def _run_wave(pool, context: TaskContext, units: list[Unit], cfg: ExperimentConfig, log,
              on_prefix: OnDone | None, on_cell: OnDone | None
              ) -> list[tuple[Unit, BaseException]]:
    """Run ``units`` (each after the units of the list it waits for) on ``pool``; log and
    call the hooks as they finish. After a failure nothing more is started (what was
    submitted but not started is cancelled); returns the failures once the running units
    ended."""
    from concurrent.futures import FIRST_COMPLETED, wait

    keys = {u.key for u in units if not isinstance(u, Cell)}
    leaders = cell_leaders(units)
    waiting = list(range(len(units)))
    made: set[str] = set()
    ended: set[int] = set()
    running: dict[object, int] = {}
    failed: list[tuple[Unit, BaseException]] = []
    finished = 0
    while waiting or running:
        if not failed:
            ready = [i for i in waiting if leaders[i] <= ended and all(
                k in made for k in dependencies(units[i]) if k in keys)]
            for i in ready:
                waiting.remove(i)
                running[pool.submit(run_unit, context, units[i])] = i
        if not running:
            break
        done, _ = wait(list(running), return_when=FIRST_COMPLETED)
        for future in done:
            i = running.pop(future)
            unit = units[i]
            try:
                summary = future.result()
            except Exception as e:  # noqa: BLE001 - reported once all running units ended
                failed.append((unit, e))
                log(f"local: FAILED {label(unit)}: {_first_line(e)}")
                for queued in [f for f in running if f.cancel()]:  # not started: not run
                    running.pop(queued)
                continue
            finished += 1
            ended.add(i)
            if not isinstance(unit, Cell):
                made.add(unit.key)
            log(f"[{finished}/{len(units)}] {line(cfg, unit, summary)}")
            hook = on_cell if isinstance(unit, Cell) else on_prefix
            if hook is not None:
                hook(unit, summary)
    return failed


def cell_leaders(units: list[Unit]) -> list[set[int]]:
    """For each of ``units`` the indices of the cells it waits for: the first cell of a path
    model before the other cells of that model, and the first cell of a (path model, seed)
    before the others of that seed. What those measure once and keep in the run directory
    (the step-0 measurements, the math accuracy before) the others then read instead of
    measuring it at the same moment in another worker."""
    first_model: dict[str, int] = {}
    first_seed: dict[tuple[str, int], int] = {}
    out: list[set[int]] = []
    for i, unit in enumerate(units):
        if not isinstance(unit, Cell):
            out.append(set())
            continue
        model = first_model.setdefault(unit.model_key, i)
        seed = first_seed.setdefault((unit.model_key, unit.seed), i)
        out.append({j for j in (model, seed) if j != i})
    return out


# ---------------------------------------------------------------------------- in a worker

_SHARED: dict[tuple[str, str], Shared] = {}
"""In a local worker process: (run directory, probe sets hash) -> what its cells share."""


def run_unit(context: TaskContext, unit: Unit, *_models_it_starts_from) -> dict:
    """The body of a Ray task: make ``unit``'s directory unless it is DONE; returns its
    summary. Runs in the driver's working directory with its PATHUNLEARN_* variables."""
    import torch

    host = socket.gethostname()
    if not Path(context.cwd).is_dir():
        raise UserError(f"node {host} has no directory {context.cwd} (the driver's working "
                        "directory): run from a directory every Ray node mounts")
    os.chdir(context.cwd)
    os.environ.update(context.env)
    torch.set_num_threads(context.threads)
    run_dir = Path(context.run_dir)
    if not (run_dir / PLAN).is_file():
        raise UserError(f"node {host} does not see the run directory {run_dir} (no {PLAN}): "
                        "put output_dir on a filesystem every Ray node mounts")
    cfg, plan = context.cfg, context.plan
    directory = unit_dir(run_dir, unit)
    if isinstance(unit, Cell):
        if cell_done(directory, unit.key):  # a retry of a task that finished its writes
            return read_summary(directory)
        # per Ray task: the retrain reference and math accuracy before are recomputed per
        # cell (deterministic, so the numbers equal the local executor's); a local worker
        # keeps them for its next cell
        if not context.keep_shared:
            return unlearn_cell(cfg, unit, run_dir, Shared(list(plan.probes)))
        shared = _SHARED.setdefault((str(run_dir), plan.probes_sha), Shared(list(plan.probes)))
        return unlearn_cell(cfg, unit, run_dir, shared)
    if is_done(directory):
        return read_prefix(directory)
    if isinstance(unit, Matched):
        return train_matched_model(cfg, plan, unit, run_dir)
    return train_prefix(cfg, unit, run_dir)
