"""lm-evaluation-harness tasks on pathunlearn models (``pip install 'pathunlearn[lmeval]'``).

Named lm-eval tasks (built-in ones such as ``hellaswag``, or local ones from an
``include_path`` of task YAML files) run on a model already in memory — a path model, a cell's
final model — through lm-eval's Python API: ``simple_evaluate`` on an ``HFLM`` that wraps the
model and its tokenizer, with a ``TaskManager`` that indexes the task files. lm-eval is imported
only here and only when asked for, so the package and its CLI stay light without it.

Two things differ from calling lm-eval by hand:

- a local task's ``dataset_kwargs.data_files`` (and ``data_dir``) given as relative paths are
  read relative to the task's YAML file, not the working directory (lm-eval hands them to
  ``datasets.load_dataset`` as they are); so a task directory works from anywhere, which is
  what a run, a test or a copied task directory needs;
- ``simple_evaluate`` seeds Python's, NumPy's and torch's global generators (and loading a
  dataset draws from Python's); they are restored afterwards, so an evaluation between two
  training steps does not change what comes after.

Nothing here reaches the hub by itself: a local task over local files runs with
``HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1`` (a built-in task still needs its dataset in the
``datasets`` cache, or the network). See docs/lmeval.md.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from pathunlearn.errors import UserError, one_line
from pathunlearn.extras import require

EXTRA = "lmeval"
"""The extra that installs lm-eval: ``pip install 'pathunlearn[lmeval]'``."""

WHAT = "lm-eval tasks"
"""What needs lm-eval, as the missing-package line names it."""

NOT_METRICS = ("name", "alias", "sample_len")
"""Keys of lm-eval's per-task results that are not scores."""

Results = dict[str, dict[str, float]]
"""``{task: {metric: value}}``: finite floats; ``acc`` and ``acc_stderr`` for lm-eval's
``acc,none`` and ``acc_stderr,none`` (a metric under another filter keeps lm-eval's name,
``exact_match,strict-match``)."""


def evaluate(model, tokenizer, tasks: Sequence[str], *, include_path: str | Path | None = None,
             limit: int | None = None, num_fewshot: int | None = None, batch_size: int = 8,
             device=None) -> Results:
    """Run the lm-eval ``tasks`` (names of tasks, groups or tags) on an in-memory Hugging Face
    causal LM; ``{task: {metric: value}}`` for every task and group that reports scores.

    ``include_path``: a directory (or list of them) of task YAML files, whose tasks win over
    lm-eval's own of the same name; ``limit``: score only the first N documents of each task;
    ``num_fewshot``: lm-eval's (default: each task's own, else 0); ``device``: a torch device
    (or its name) to move the model to first (default: where it is; the caller resolves
    ``auto``, :func:`pathunlearn.models.resolve_device`). The model's train/eval mode and the
    global random generators are as they were afterwards. A task lm-eval does not know, or
    data it cannot load, is a UserError raised before the model runs."""
    _check_counts(limit, num_fewshot, batch_size)
    loaded = load_tasks(tasks, include_path)
    return flat_results(run_loaded(model, tokenizer, loaded, limit=limit,
                                   num_fewshot=num_fewshot, batch_size=batch_size,
                                   device=device))


def evaluate_saved(directory: str | Path, load: Callable[[Path], tuple[Any, Any]],
                   tasks: Sequence[str], *, include_path: str | Path | None = None,
                   limit: int | None = None, num_fewshot: int | None = None,
                   batch_size: int = 8, output: str | Path | None = None) -> dict[str, Any]:
    """Run ``tasks`` on the model saved in ``directory`` (a path model ``RUN/prefixes/KEY``, a
    cell's ``model/``, the tiny preset's directory), loaded by ``load(directory) -> (model,
    tokenizer)``: :func:`pathunlearn.models.load_pretrained`, or ``load_checkpoint`` with a
    run's ``model`` settings to load it as the run's cells do (``eval/`` takes its models from
    its caller and loads none itself; ARCHITECTURE.md). Returns the record of :func:`record` —
    the results of :func:`evaluate` with what produced them — also written atomically as JSON
    to ``output`` when given. The request, the tasks and their data, and ``output`` are
    checked before the model is loaded."""
    from pathunlearn.files import check_writable, write_json

    _check_counts(limit, num_fewshot, batch_size)
    if output is not None:
        output = Path(output)
        if output.is_dir():
            raise UserError(f"{output}: is a directory; give the JSON file to write")
        check_writable(output.parent)
    loaded = load_tasks(tasks, include_path)
    model, tokenizer = load(Path(directory))
    start = time.perf_counter()
    raw = run_loaded(model, tokenizer, loaded, limit=limit, num_fewshot=num_fewshot,
                     batch_size=batch_size)
    result = record(raw, directory=directory, tasks=tasks, include_path=include_path,
                    limit=limit, num_fewshot=num_fewshot,
                    seconds=time.perf_counter() - start)
    if output is not None:
        write_json(output, result)
    return result


def record(raw: dict, *, directory, tasks: Sequence[str], include_path, limit, num_fewshot,
           seconds: float) -> dict[str, Any]:
    """What :func:`evaluate_saved` returns and writes: the model, the request, lm-eval's
    version, the flat results and, per task, the documents scored and the task's version."""
    return {"model": str(directory), "tasks": list(tasks),
            "include_path": [str(p) for p in _paths(include_path)], "limit": limit,
            "num_fewshot": num_fewshot, "lm_eval": raw.get("lm_eval_version"),
            "seconds": round(seconds, 3), "results": flat_results(raw),
            "samples": {t: n.get("effective") for t, n in raw.get("n-samples", {}).items()},
            "versions": dict(raw.get("versions", {}))}


def flat_results(raw: dict) -> Results:
    """lm-eval's ``results`` section as ``{task: {metric: value}}``: names without the
    ``,none`` filter suffix, finite numbers only (lm-eval writes ``"N/A"`` for a stderr it
    cannot compute, e.g. over one document)."""
    flat: Results = {}
    for task, scores in raw.get("results", {}).items():
        row = {}
        for key, value in scores.items():
            if key in NOT_METRICS or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            metric, _, where = key.partition(",")
            if math.isfinite(value):
                row[metric if where in ("", "none") else key] = float(value)
        flat[task] = row
    return flat


def model_request(run_config: Path | None, device: str | None) -> tuple[Any, str]:
    """How ``pathunlearn eval lmeval`` loads its model: the ``model`` settings (dtype,
    attention) of the run whose config.yaml is ``run_config`` and its ``runtime.device``, or
    (None, ``auto``) without a run; a ``device`` given wins."""
    from pathunlearn.config import run_config_file

    cfg = run_config_file(run_config)
    if cfg is None:
        return None, device or "auto"
    return cfg.model, device or cfg.runtime.device


def _is_stderr(metric: str) -> bool:
    return metric.endswith("_stderr") or "_stderr," in metric


def format_results(results: Results) -> str:
    """One line per task and metric: ``task  metric  value ± stderr``."""
    width = max((len(t) for t in results), default=4)
    shown = {t: {m: v for m, v in scores.items() if not _is_stderr(m)}
             for t, scores in results.items()}
    wide = max((len(m) for scores in shown.values() for m in scores), default=6)
    lines = []
    for task, scores in shown.items():
        for metric, value in scores.items():
            err = results[task].get(metric.replace(",", "_stderr,", 1) if "," in metric
                             else f"{metric}_stderr")
            lines.append(f"{task:<{width}}  {metric:<{wide}}  {value:.4f}"
                         + ("" if err is None else f" ± {err:.4f}"))
    return "\n".join(lines) or "no scores (did every task run?)"


# ---------------------------------------------------------------------------- tasks


def load_tasks(tasks: Sequence[str], include_path: str | Path | None = None) -> list:
    """The lm-eval Task and Group objects for ``tasks``, their data loaded: what
    :func:`run_loaded` evaluates. Only the ``include_path`` directories are indexed when
    every name is found there (lm-eval's own ~15,000 tasks take seconds to index)."""
    require("lm_eval", WHAT, EXTRA)
    from lm_eval.tasks import TaskManager

    names = _task_names(tasks)
    paths = _paths(include_path)
    include = [str(p) for p in paths] or None
    if paths:
        local = TaskManager(include_path=include, include_defaults=False)
        if all(n in local.all_tasks for n in names):
            with contextlib.suppress(_NotIndexed):  # a local group naming a built-in task
                return _load(local, names, paths)
    manager = TaskManager(include_path=include)
    unknown = [n for n in names if n not in manager.all_tasks]
    if unknown:
        raise UserError(_unknown_line(unknown[0], manager.all_tasks, paths))
    return _load(manager, names, paths)


class _NotIndexed(UserError):
    """A name that the task manager's index lacks, found while loading."""


def _load(manager, names: list[str], paths: list[Path]) -> list:
    """The requested items of ``manager.load``: groups and tasks that are no other loaded
    group's child (``simple_evaluate`` takes them as they are, loaded once)."""
    what = f"lm-eval tasks {', '.join(names)}"
    try:
        with _kept_rng():  # datasets draws from the global generator as it builds a split
            loaded = manager.load([_anchored_spec(manager, n, paths) for n in names])
    except KeyError as e:
        raise _NotIndexed(f"{what}: {one_line(e)}") from e
    except Exception as e:  # datasets: a missing file, offline without a cached dataset ...
        raise UserError(f"{what}: cannot load the task or its data: {one_line(e)}") from e
    children = {c for kids in loaded.get("group_map", {}).values() for c in kids}
    groups = [g for name, g in loaded.get("groups", {}).items() if name not in children]
    return groups + [t for name, t in loaded["tasks"].items() if name not in children]


def _task_names(tasks: Sequence[str]) -> list[str]:
    names = [tasks] if isinstance(tasks, str) else list(tasks)
    if not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise UserError(f"lm-eval tasks {names!r}: give one or more task names "
                        "(e.g. hellaswag, or a task in --include-path)")
    return [n.strip() for n in names]


def _paths(include_path) -> list[Path]:
    """The ``include_path`` directories, each checked to be one."""
    if include_path is None:
        return []
    given = [include_path] if isinstance(include_path, str | Path) else list(include_path)
    paths = [Path(p).expanduser() for p in given]
    for p in paths:
        if not p.is_dir():
            raise UserError(f"lm-eval include path {p}: not a directory of task YAML files")
    return [p.resolve() for p in paths]


def _unknown_line(name: str, known: list[str], paths: list[Path]) -> str:
    where = f" nor in {', '.join(map(str, paths))}" if paths else ""
    close = difflib.get_close_matches(name, known, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else (
        "" if paths else "; a local task needs its directory as the include path")
    return f"lm-eval task {name!r}: not a task, group or tag lm-eval knows{where}{hint}"


def _anchored_spec(manager, name: str, paths: list[Path]):
    """``name``, or, for a task defined under an include path whose data files are relative
    paths, its config with them made relative to its YAML file (lm-eval passes them to
    ``datasets`` as they are, which would read them relative to the working directory)."""
    entry = manager.task_index.get(name)
    yaml_path = getattr(entry, "yaml_path", None)
    if yaml_path is None or not any(Path(yaml_path).resolve().is_relative_to(p) for p in paths):
        return name
    from lm_eval.tasks._yaml_loader import load_yaml  # follows `include:` and `!function`

    cfg = load_yaml(Path(yaml_path), resolve_func=True)
    kwargs = cfg.get("dataset_kwargs") or {}
    anchored = anchor_data_files(kwargs, Path(yaml_path).resolve().parent)
    if cfg.get("task") != name or anchored == kwargs:  # a tag, or nothing to anchor
        return name
    return {**cfg, "dataset_kwargs": anchored}


def anchor_data_files(kwargs: dict, base: Path) -> dict:
    """``dataset_kwargs`` with a relative ``data_dir``, or else relative ``data_files`` (a
    path, a list, or a dict of split to either), joined to ``base``; URLs (``hf://``,
    ``https://``), absolute and ``~`` paths as they are."""
    out = dict(kwargs)
    if isinstance(out.get("data_dir"), str):
        out["data_dir"] = _anchor(out["data_dir"], base)  # data_files are then relative to it
    elif "data_files" in out:
        out["data_files"] = _anchor_all(out["data_files"], base)
    return out


def _anchor_all(files, base: Path):
    if isinstance(files, dict):
        return {split: _anchor_all(f, base) for split, f in files.items()}
    if isinstance(files, list | tuple):
        return [_anchor(f, base) for f in files]
    return _anchor(files, base)


def _anchor(path, base: Path):
    if not isinstance(path, str) or "://" in path or path.startswith("~") \
            or Path(path).is_absolute():
        return path
    return str(base / path)


# ---------------------------------------------------------------------------- running


def run_loaded(model, tokenizer, loaded: list, *, limit: int | None = None,
               num_fewshot: int | None = None, batch_size: int = 8, device=None) -> dict:
    """lm-eval's ``simple_evaluate`` output for the tasks of :func:`load_tasks` on ``model``
    (no per-document samples kept). See :func:`evaluate`."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    _check_counts(limit, num_fewshot, batch_size)
    if device is not None:
        model.to(device)
    training = model.training
    try:
        with _quiet("lm_eval.models.huggingface"), _kept_rng():
            # lm-eval warns that a model object, not a name, ignores its loading options:
            # that is the point here
            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
            # the tasks come loaded: an empty index stands in for the one simple_evaluate
            # would build of lm-eval's own tasks (seconds) only to look nothing up in it
            raw = lm_eval.simple_evaluate(model=lm, tasks=loaded, limit=limit,
                                          num_fewshot=num_fewshot, log_samples=False,
                                          task_manager=TaskManager(include_defaults=False))
    finally:
        model.train(training)
    if raw is None:  # only a non-zero rank of a distributed lm-eval run returns None
        raise RuntimeError("lm-eval returned no results (not rank 0?)")
    return raw


def _check_counts(limit, num_fewshot, batch_size) -> None:
    for key, value, least in (("limit", limit, 1), ("num_fewshot", num_fewshot, 0),
                              ("batch_size", batch_size, 1)):
        if value is None and key != "batch_size":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise UserError(f"lm-eval {key} {value!r}: give a whole number >= {least}")


@contextlib.contextmanager
def _kept_rng() -> Iterator[None]:
    """Python's, NumPy's and torch's (CPU and CUDA) global generators as they were on entry,
    whatever the body seeded."""
    import numpy as np
    import torch

    py, np_state = random.getstate(), np.random.get_state()
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=cuda):
            yield
    finally:
        random.setstate(py)
        np.random.set_state(np_state)


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
