"""The run directory: what a run writes where, written and read back by the same code.

```
runs/<name>/
  config.yaml      the resolved config (every command writes it; the report validates it)
  plan.json        the plan (pathunlearn.plan): base model, prefixes, cells with their keys
  probes.json      the probe sets the cells track, every row (pathunlearn.eval.probes)
  prefixes/<key>/  a path-model checkpoint + metrics.jsonl, prefix.json, config.yaml (train/paths)
  cells/<path>/<method>/<seed>[/<lr>][/<scheduler>]/
                   metrics.jsonl (a row per eval point), steps.jsonl (a row per optimizer
                   step), [relearn.jsonl,] [items.jsonl,] [alternates.jsonl,] summary.json,
                   config.yaml [, model/]
                   (train/unlearn, via CellWriter)
  cache/math_before/<model key>-<hash>.json
                   a path model's math accuracy before unlearning (train/unlearn), content-
                   addressed: it grows after the prefix is DONE, so it lives outside it
  results.{json,csv,md}, report.key, figures/, superficial.json, report.html   (report/)
  phases.json, phases_history.json                (experiment.py: wall times)
  tracking.json, tensorboard/                     (tracking.py)
```

Every name above is a constant of this module, and no other module spells one: who writes a
file imports its name from here (``grep`` for a file name finds its one owner).

A directory without its DONE marker does not exist as far as any reader is concerned, and a
cell counts as finished only with the key its plan gives it (a cell finished under other
settings is stale). :func:`load_run` returns what the report is built from: the validated
config, the plan and the finished cells, each read back through the :class:`~pathunlearn.plan.Cell`
that named its directory.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pathunlearn import metrics as M
from pathunlearn.config import ExperimentConfig, dump_config, load_config
from pathunlearn.data.io import iter_jsonl, parse_json, read_text, write_jsonl
from pathunlearn.errors import DataError, UserError
from pathunlearn.eval.probes import ProbeSet
from pathunlearn.files import is_done, write_json, write_text
from pathunlearn.plan import PLAN_FORMAT, Cell, Matched, Plan, Prefix, path_part

# ---------------------------------------------------------------------------- the layout

CONFIG = "config.yaml"
"""The resolved config: of the run, and beside every checkpoint and cell."""
PLAN = "plan.json"
PROBES = "probes.json"
PREFIXES = "prefixes"
CELLS = "cells"
PREFIX_JSON = "prefix.json"
"""A prefix's (or matched-start model's) summary: stages, losses, the sha256 of its weights."""
METRICS = "metrics.jsonl"
"""A row per eval point of a cell; a row per logged step of a stage."""
STEPS = "steps.jsonl"
RELEARN = "relearn.jsonl"
ITEMS = "items.jsonl"
"""A cell's per-item values of its field sets (:mod:`pathunlearn.eval.field`): one row per
eval step, set and item."""
ALTERNATES = "alternates.jsonl"
"""The alternate answers a cell's method preferred (DPO, AltPO): ``{"question", "answer",
"alternate"}`` per forget example and alternate, the layout of AltPO's ``generate.py`` (so
one cell's file is another's option ``alternates``)."""
SUMMARY = "summary.json"
MODEL = "model"
"""A cell's unlearned model (``unlearning.save_model``)."""
CACHE = "cache"
MATH_BEFORE = "math_before"
STEP_ZERO = "step_zero"
RESULTS_JSON, RESULTS_CSV, RESULTS_MD = "results.json", "results.csv", "results.md"
RESULTS = (RESULTS_JSON, RESULTS_CSV, RESULTS_MD)
REPORT_HTML = "report.html"
REPORT_KEY = "report.key"
"""The report's inputs' key and the sha256 of the files it vouches for (written last)."""
FIGURES = "figures"
FIGURE_INDEX = "index.json"
SUPERFICIAL = "superficial.json"
PHASES = "phases.json"
PHASES_HISTORY = "phases_history.json"
TRACKING = "tracking.json"
TENSORBOARD = "tensorboard"


def prefix_dir(run_dir: str | Path, key: str) -> Path:
    """``RUN_DIR/prefixes/<key>``: the checkpoint of the prefix (or matched-start model)."""
    return Path(run_dir, PREFIXES, path_part(key, "prefix key"))


def unit_dir(run_dir: str | Path, unit: Prefix | Matched | Cell) -> Path:
    """The directory of a unit of the plan: ``prefixes/<key>`` or ``cells/<parts>``
    (relative with ``run_dir=""``)."""
    return Path(run_dir, CELLS if isinstance(unit, Cell) else PREFIXES, *unit.parts)


def set_aside_name(directory: Path, stamp: str) -> Path:
    """Where a finished prefix whose files are damaged is moved, kept for inspection:
    ``prefixes/<key>.corrupt-<UTC time>/`` (no unit of any plan has that name)."""
    return directory.with_name(f"{directory.name}.corrupt-{stamp}")


def read_prefix(directory: str | Path) -> dict:
    """The prefix.json of a prefix directory (:func:`prefix_dir`)."""
    return json.loads((Path(directory) / PREFIX_JSON).read_text())


def math_before_file(run_dir: str | Path, model_key: str, digest: str) -> Path:
    """``RUN_DIR/cache/math_before/<model key>-<digest>.json``: a path model's math accuracy
    before unlearning under the settings and seed ``digest`` hashes."""
    return Path(run_dir, CACHE, MATH_BEFORE,
                f"{path_part(model_key, 'prefix key')}-{path_part(digest, 'math digest')}.json")


def step_zero_file(run_dir: str | Path, model_key: str, digest: str) -> Path:
    """``RUN_DIR/cache/step_zero/<model key>-<digest>.json``: what every cell of a path model
    measures before its first update (probes, field items, saturation) under what ``digest``
    hashes (:func:`pathunlearn.train.unlearn.step_zero_digest`)."""
    return Path(run_dir, CACHE, STEP_ZERO,
                f"{path_part(model_key, 'prefix key')}-{path_part(digest, 'step-0 digest')}.json")


# ---------------------------------------------------------------------------- one writer

LOCK = ".lock"
_held: dict[Path, int] = {}
"""Run directories this process holds, with how many nested holds (``unlearn`` trains)."""


class RunDirBusy(UserError):
    """Another live process holds the run directory."""


@contextmanager
def hold_run_dir(run_dir: str | Path, command: str, log=print) -> Iterator[None]:
    """Hold RUN_DIR for one writer while the body runs: ``flock`` on RUN_DIR/.lock, which
    the kernel releases when the holder exits in any way (kill -9 included), so a lock is
    never stale for a process that died. The file records the holder (pid, host, command,
    start time) for the message a second writer gets (:class:`RunDirBusy`); a clean exit
    empties it, so a record found on taking the lock belongs to a process that was killed, and
    taking over from it is logged. Re-entrant within a process."""
    import fcntl
    import os
    import socket
    from datetime import UTC, datetime

    key = Path(run_dir).resolve()
    if key in _held:
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    fd = os.open(Path(run_dir) / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe_holder(os.read(fd, 4096))
            raise RunDirBusy(f"{run_dir}: in use by {holder}; wait for it to finish or stop "
                             "it (one process writes a run directory at a time)") from None
        previous = os.read(fd, 4096)
        if previous.strip():
            log(f"{run_dir}: taking over from {_describe_holder(previous)}, which stopped "
                "without releasing it (killed); its unfinished work is discarded and redone")
        record = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                  "started": datetime.now(UTC).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        os.fsync(fd)
        _held[key] = 1
        removed = remove_partial_writes(run_dir)
        if removed:
            log(f"{run_dir}: removed {removed} partial write(s) left by a stopped process")
        try:
            yield
        finally:
            del _held[key]
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the flock


def remove_partial_writes(run_dir: str | Path) -> int:
    """Remove the temporary files and directories a killed writer left under RUN_DIR/prefixes
    RUN_DIR/cells and RUN_DIR/cache (``.NAME.*.tmp`` of :mod:`pathunlearn.files`, ``.NAME.old`` of a
    replaced checkpoint); only the holder of the run directory may call this. Returns how many
    were removed. (The report's files, written by `pathunlearn report` without the lock, are
    not touched.)"""
    import shutil

    removed = 0
    for top in (PREFIXES, CELLS, CACHE):
        root = Path(run_dir, top)
        if not root.is_dir():
            continue
        partial = [p for p in root.rglob(".*") if p.name.endswith((".tmp", ".old"))]
        for p in sorted(partial, key=lambda p: len(p.parts)):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            elif p.exists() or p.is_symlink():
                p.unlink(missing_ok=True)
            removed += 1
    return removed


def _describe_holder(data: bytes) -> str:
    try:
        h = json.loads(data.decode())
        return (f"`pathunlearn {h['command']}` (pid {h['pid']} on host {h['host']}, since "
                f"{h['started']})")
    except (ValueError, KeyError, TypeError):
        return "another process"


def start_run(run_dir: str | Path, cfg: ExperimentConfig, plan: Plan) -> None:
    """Write RUN_DIR/config.yaml, RUN_DIR/plan.json and RUN_DIR/probes.json (the resolved
    probe sets; atomically): the first thing every command that works on a run does."""
    write_text(Path(run_dir) / CONFIG, dump_config(cfg))
    write_json(Path(run_dir) / PLAN, plan.to_json())
    write_json(Path(run_dir) / PROBES, [p.to_json() for p in plan.probes])


# ---------------------------------------------------------------------------- one cell


class CellWriter:
    """The files of one cell, written into its (temporary) directory as unlearning goes."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self._metrics = (self.directory / METRICS).open("w", encoding="utf-8")
        self._steps = (self.directory / STEPS).open("w", encoding="utf-8")
        self._items = None

    def metrics(self, row: dict) -> None:
        """One eval point: step, every probe metric, the step's loss / lr / grad norm."""
        self._metrics.write(json.dumps(row) + "\n")

    def step(self, row: dict) -> None:
        """One optimizer step: step, loss, lr, grad norm."""
        self._steps.write(json.dumps(row) + "\n")

    def items(self, step: int, rows: list[dict]) -> None:
        """The field sets' per-item values at one eval step (items.jsonl, opened at the
        first call: a cell without field sets has none)."""
        if not rows:
            return
        if self._items is None:
            self._items = (self.directory / ITEMS).open("w", encoding="utf-8")
        for row in rows:
            self._items.write(json.dumps({M.STEP: step, **row}) + "\n")

    def alternates(self, rows: list[dict]) -> None:
        """The alternate answers of the cell's method (alternates.jsonl), written whole."""
        write_jsonl(self.directory / ALTERNATES, rows)

    def relearn(self, rows: list[dict]) -> None:
        """The relearning rows (:mod:`pathunlearn.train.relearn`), written whole."""
        write_jsonl(self.directory / RELEARN, rows)

    def diverged(self, step: int) -> None:
        """The final row of a cell stopped by a non-finite loss or probe."""
        self.metrics({M.STEP: step, M.DIVERGED: True, "reason": f"diverged at step {step}"})

    def finish(self, summary: dict, cfg: ExperimentConfig) -> None:
        """Close the row files; write summary.json and the resolved config."""
        self._metrics.close()
        self._steps.close()
        if self._items is not None:
            self._items.close()
        write_json(self.directory / SUMMARY, summary)
        write_text(self.directory / CONFIG, dump_config(cfg))

    @property
    def model_dir(self) -> Path:
        """Where the unlearned model goes (``unlearning.save_model``)."""
        return self.directory / MODEL


def cell_done(directory: Path, key: str) -> bool:
    """Finished with the same key; a cell finished under other settings is stale."""
    if not is_done(directory):
        return False
    try:
        summary = json.loads((directory / SUMMARY).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(summary, dict) and summary.get("key") == key


@dataclass
class CellRecord:
    """One finished cell as read back from its directory."""

    cell: Cell
    directory: Path
    summary: dict
    rows: list[dict]
    """Metric rows, step 0 first; without the final ``diverged`` marker row."""
    diverged_at: int | None = None
    diverged_reason: str | None = None
    relearn: list[dict] = field(default_factory=list)
    """The relearning rows (relearn.jsonl; empty without relearning)."""

    path = property(lambda self: self.cell.path)
    method = property(lambda self: self.cell.method_label)
    seed = property(lambda self: self.cell.seed)
    lr = property(lambda self: self.cell.lr)
    scheduler = property(lambda self: self.cell.scheduler)
    sweep = property(lambda self: self.cell.sweep)
    local = property(lambda self: self.cell.local)
    path_label = property(lambda self: self.cell.path_label)
    sweep_label = property(lambda self: self.cell.sweep_label)

    def series(self, metric: str) -> tuple[list[int], list[float]]:
        """(steps, values) of one metric over the rows that carry it as a number."""
        pairs = [(r[M.STEP], float(r[metric])) for r in self.rows if is_number(r.get(metric))]
        return [s for s, _ in pairs], [v for _, v in pairs]


def is_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


RECOMPUTE = ("delete the cell's directory and rerun `pathunlearn unlearn` (or `run`) to "
             "recompute it")


def read_cell(run_dir: str | Path, cell: Cell) -> CellRecord:
    """The finished cell ``cell`` of RUN_DIR; a file that is not what the cell writes (not
    JSON, or JSON of the wrong shape: a list for the summary, a row without an integer step)
    is a DataError naming it and saying how to recompute the cell."""
    directory = unit_dir(run_dir, cell)
    summary = read_summary(directory)
    metrics_file = directory / METRICS
    if not metrics_file.is_file():
        raise DataError(f"{metrics_file}: missing; the cell is marked DONE without its metrics")
    rows = _cell_file(metrics_file, _step_rows)
    diverged = next((r for r in rows if r.get(M.DIVERGED)), None)
    rows = [r for r in rows if not r.get(M.DIVERGED)]
    if not rows or rows[0][M.STEP] != 0:
        raise DataError(f"{metrics_file}: the first row must be step 0 (before unlearning); "
                        f"{RECOMPUTE}")
    diverged_at = summary.get(M.DIVERGED_AT) or (diverged or {}).get(M.STEP)
    reason = (diverged or {}).get("reason") or (f"diverged at step {diverged_at}"
                                                if diverged_at else None)
    relearn_file = directory / RELEARN
    relearn = _cell_file(relearn_file, _step_rows) if relearn_file.is_file() else []
    if any(not isinstance(r.get(M.RELEARN_DATA), str) for r in relearn):
        raise DataError(f"{relearn_file}: a row without its `{M.RELEARN_DATA}` (retain or "
                        f"forget); {RECOMPUTE}")
    return CellRecord(cell, directory, summary, rows, diverged_at, reason, relearn)


def read_summary(directory: Path) -> dict:
    """A finished cell's summary.json, a JSON object (else a DataError naming it)."""
    summary = _cell_file(directory / SUMMARY, lambda f: parse_json(read_text(f), str(f)))
    if not isinstance(summary, dict):
        raise DataError(f"{directory / SUMMARY}: expected a JSON object, got "
                        f"{type(summary).__name__}; {RECOMPUTE}")
    return summary


def _cell_file(path: Path, read):
    """``read(path)``, a malformed file's DataError ending in how to recompute the cell."""
    try:
        return read(path)
    except DataError as e:
        raise DataError(f"{e}; {RECOMPUTE}") from None


def read_items(directory: Path) -> list[dict]:
    """A finished cell's items.jsonl (the field sets' per-item values, one row per eval step,
    set and item); empty when the cell has no field sets. A malformed file is a DataError
    naming it and saying how to recompute the cell."""
    path = Path(directory) / ITEMS
    if not path.is_file():
        return []
    rows = _cell_file(path, _step_rows)
    for i, row in enumerate(rows, 1):
        if not isinstance(row.get("probe"), str) or not isinstance(row.get("item"), int):
            raise DataError(f"{path}: row {i}: expected `probe` (text) and `item` (an "
                            f"integer); {RECOMPUTE}")
    return rows


def _step_rows(path: Path) -> list[dict]:
    """The rows of a JSON Lines file of a cell: objects, each with an integer ``step``."""
    rows = list(iter_jsonl(path))
    for i, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise DataError(f"{path}: row {i}: expected a JSON object, got {type(row).__name__}")
        step = row.get(M.STEP)
        if not isinstance(step, int) or isinstance(step, bool):
            raise DataError(f"{path}: row {i}: `{M.STEP}` is "
                            f"{'missing' if step is None else repr(step)}, not an integer")
    return rows


# ---------------------------------------------------------------------------- a whole run


@dataclass
class Run:
    """What a run directory holds: its config, its plan and its finished cells."""

    run_dir: Path
    config: ExperimentConfig
    plan: Plan
    cells: list[CellRecord]
    """The finished cells of the plan, in plan order."""
    probes: list[ProbeSet] = field(default_factory=list)
    """The probe sets the cells track (RUN_DIR/probes.json)."""
    pending: list[Cell] = field(default_factory=list)
    """Cells of the plan not finished yet."""
    stale: list[Cell] = field(default_factory=list)
    """Cells whose directory holds a cell finished under other settings (another key)."""
    controls: list[CellRecord] = field(default_factory=list)
    """The finished cells of the matched-start control (``Cell.control``), kept out of
    ``cells``: they start from other models than the study's paths."""

    @property
    def forget_stage(self) -> str:
        return self.config.paths.forget_stage


def load_run(run_dir: str | Path) -> Run:
    """Read RUN_DIR: validate its config.yaml, read its plan.json, read every finished cell
    of the plan. Problems are one-line UserErrors naming the file."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory")
    if not (run_dir / CONFIG).is_file():
        raise UserError(f"{run_dir}: no {CONFIG}; not a run directory written by pathunlearn")
    config = load_config(run_dir / CONFIG, relative_to_file=False)  # paths as the run resolved them
    plan = read_plan(run_dir)
    probes = read_probes(run_dir)
    records, pending, stale, controls = [], [], [], []
    for cell in plan.cells:
        directory = unit_dir(run_dir, cell)
        if cell_done(directory, cell.key):
            (controls if cell.control else records).append(read_cell(run_dir, cell))
        elif is_done(directory):
            read_summary(directory)  # a malformed summary is named, not taken for stale
            stale.append(cell)
        else:
            pending.append(cell)
    return Run(run_dir, config, plan, records, probes, pending, stale, controls)


def read_plan(run_dir: str | Path) -> Plan:
    """RUN_DIR/plan.json as a :class:`Plan`."""
    path = Path(run_dir) / PLAN
    rerun = "rerun `pathunlearn unlearn` (or `run`) with the run's config to write it"
    try:
        data = json.loads(path.read_text())
    except OSError:
        raise UserError(f"{path}: missing; {rerun}") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
        raise UserError(f"{path}: written by another version of pathunlearn (plan format "
                        f"{data.get('format') if isinstance(data, dict) else None}, expected "
                        f"{PLAN_FORMAT}); {rerun}")
    try:
        return Plan.from_json(data)
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{path}: malformed plan ({type(e).__name__}: {e})") from None


def read_probes(run_dir: str | Path) -> list[ProbeSet]:
    """RUN_DIR/probes.json as :class:`ProbeSet` objects."""
    path = Path(run_dir) / PROBES
    try:
        data = json.loads(path.read_text())
        return [ProbeSet.from_json(p) for p in data]
    except OSError:
        raise UserError(f"{path}: missing; rerun `pathunlearn unlearn` (or `run`) with the "
                        "run's config to write it") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise DataError(f"{path}: malformed probe sets ({type(e).__name__}: {e})") from None
