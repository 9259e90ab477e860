"""Experiment tracking through the libraries researchers already run: MLflow, Weights & Biases
and TensorBoard (``tracking`` in the config; each optional, off by default; docs/tracking.md).

What is logged, from the files the run wrote (so it is the same with every executor, and a
unit is logged only once it is DONE):

- every prefix (and matched-start model): its training loss, learning rate and tokens per
  second at every step (``prefixes/<key>/metrics.jsonl``), its stages, seed and key;
- every cell: loss, learning rate and gradient norm at every step (``steps.jsonl``), every
  probe and distance at every eval point (``metrics.jsonl``), the relearning curves
  (``relearn.jsonl``), the summary's numbers (math accuracy, saturation) and its identity
  (path, method, seed, lr, scheduler, key) as parameters;
- the final table: every number of every row of results.json, and results.{json,csv,md} and
  report.html as files.

MLflow: one run per study (named after the run) with a nested run per prefix and per cell.
W&B: one run per prefix, per cell and for the table, grouped under the study's name (W&B
compares runs of a group). TensorBoard: one event directory per prefix and per cell
(TensorBoard overlays them), the table as text. Which units each backend holds is recorded in
RUN_DIR/tracking.json: a rerun logs what earlier invocations did not (a study resumed, or
tracking switched on afterwards), never a unit twice. A backend that fails in the middle of a
run is switched off with one line; the run goes on and a rerun logs what is missing.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pathunlearn import metrics as M
from pathunlearn.config import ExperimentConfig
from pathunlearn.data.io import iter_jsonl
from pathunlearn.errors import UserError
from pathunlearn.extras import require
from pathunlearn.files import is_done, write_json
from pathunlearn.plan import Cell, Matched, Plan, Prefix
from pathunlearn.rundir import (
    CELLS,
    CONFIG,
    METRICS,
    PREFIXES,
    RELEARN,
    REPORT_HTML,
    RESULTS,
    RESULTS_JSON,
    RESULTS_MD,
    STEPS,
    SUMMARY,
    TENSORBOARD,
    TRACKING,
    cell_done,
    is_number,
    read_prefix,
    unit_dir,
)

STATE = TRACKING
"""RUN_DIR/tracking.json: per backend, where it logs, its run and the keys it holds."""
TABLE_FILES = (*RESULTS, REPORT_HTML)


# ---------------------------------------------------------------------------- what is logged


class Record:
    """One finished unit as the backends log it: a name, parameters and numeric series."""

    def __init__(self, kind: str, key: str, name: str, params: dict[str, str]):
        self.kind, self.key, self.name, self.params = kind, key, name, params
        self.series: dict[str, list[tuple[int, float]]] = {}

    def add(self, prefix: str, rows, exclude: set[str] = frozenset()) -> None:
        """Every number of ``rows`` (dicts with a ``step``) as ``prefix + key`` at that step."""
        for row in rows:
            step = int(row.get(M.STEP, 0))
            for k, v in row.items():
                if k not in exclude and k != M.STEP and is_number(v):
                    self.series.setdefault(prefix + k, []).append((step, float(v)))


def prefix_record(unit: Prefix | Matched, run_dir: Path) -> Record:
    """A trained prefix or matched-start model: its training rows and identity."""
    directory = unit_dir(run_dir, unit)
    stages = unit.stages if isinstance(unit, Prefix) else unit.path
    control = "@matched_start" if isinstance(unit, Matched) else ""
    name = f"prefix {'-'.join(stages)}{control} seed {unit.seed}"
    record = Record("prefix", unit.key, name, {
        "stages": " > ".join(stages), "seed": str(unit.seed), "key": unit.key,
        "parent": str(unit.parent_key), **({"control": "matched_start"} if control else {})})
    record.add("", iter_jsonl(directory / METRICS), exclude={"epoch"})
    summary = read_prefix(directory)
    record.add("summary/", [{k: v for k, v in summary.items() if k != "seed"}])
    return record


def cell_record(cell: Cell, run_dir: Path) -> Record:
    """A finished cell: steps, probes, relearning and summary numbers, identity as params."""
    directory = unit_dir(run_dir, cell)
    identity = cell.describe()
    params = {k: (" > ".join(v) if isinstance(v, list) else str(v)) for k, v in identity.items()}
    params |= {"sweep": cell.sweep_label, "key": cell.key, "model": cell.model_key,
               "retrain": str(cell.retrain_key), "method_description": cell.method_description}
    record = Record("cell", cell.key, str(unit_dir("", cell)).removeprefix(f"{CELLS}/"), params)
    record.add("", iter_jsonl(directory / STEPS))
    step_keys = {M.LOSS, M.LR, M.GRAD_NORM}
    record.add("", iter_jsonl(directory / METRICS), exclude=set(identity) | step_keys)
    if (directory / RELEARN).is_file():
        for row in iter_jsonl(directory / RELEARN):
            record.add(f"relearn_{row.get(M.RELEARN_DATA, 'run')}/", [row])
    summary = json.loads((directory / SUMMARY).read_text())
    flat = {k: v for k, v in summary.items() if k not in identity and k != M.SATURATION}
    flat |= {f"{M.SATURATION}/{k}": v for k, v in (summary.get(M.SATURATION) or {}).items()}
    record.add("summary/", [{**flat, M.STEP: summary.get("steps_done", 0)}])
    return record


def table_rows(run_dir: Path) -> dict[str, dict[str, float]]:
    """results.json's rows: ``method[/sweep]/path`` -> every number of the row."""
    rows = json.loads((run_dir / RESULTS_JSON).read_text()).get("rows", [])
    skip = {"lr", "position", "n"}
    return {"/".join(p for p in (r["method"], r.get("sweep", ""), r["path_label"]) if p):
            {k: float(v) for k, v in r.items() if is_number(v) and k not in skip
             and math.isfinite(v)} for r in rows}


# ---------------------------------------------------------------------------- the tracker


class Tracker:
    """Logs the finished units of a run to every configured backend, each unit once per
    backend (RUN_DIR/tracking.json)."""

    def __init__(self, run_dir: Path, backends: list, state: dict, log=print):
        self.run_dir, self.backends, self.state, self.log = run_dir, backends, state, log

    def prefix(self, unit: Prefix | Matched, summary: dict | None = None) -> None:
        self._log(unit.key, lambda: prefix_record(unit, self.run_dir))

    def cell(self, cell: Cell, summary: dict | None = None) -> None:
        self._log(cell.key, lambda: cell_record(cell, self.run_dir))

    def backfill(self, plan: Plan) -> None:
        """Every unit of ``plan`` finished earlier and not logged yet."""
        for unit in (*plan.prefixes, *plan.matched):
            if is_done(unit_dir(self.run_dir, unit)):
                self.prefix(unit)
        for cell in plan.cells:
            if cell_done(unit_dir(self.run_dir, cell), cell.key):
                self.cell(cell)

    def results(self) -> None:
        """The final table (after the report), once per version of results.json."""
        results = self.run_dir / RESULTS_JSON
        if not self.backends or not results.is_file():
            return
        key = "table:" + hashlib.sha256(results.read_bytes()).hexdigest()[:20]
        rows = table_rows(self.run_dir)
        files = [self.run_dir / f for f in TABLE_FILES if (self.run_dir / f).is_file()]
        for backend in [b for b in self.backends if key not in self._logged(b)]:
            if self._guard(backend, lambda b=backend: b.table(rows, files)):
                self._logged(backend).append(key)
        write_json(self.run_dir / STATE, self.state)

    def close(self, failed: bool = False) -> None:
        for backend in list(self.backends):
            self._guard(backend, lambda b=backend: b.close(failed))

    def _log(self, key: str, make) -> None:
        wanted = [b for b in self.backends if key not in self._logged(b)]
        if not wanted:
            return
        record = make()
        for backend in wanted:
            if self._guard(backend, lambda b=backend: b.unit(record)):
                self._logged(backend).append(key)
        write_json(self.run_dir / STATE, self.state)

    def _logged(self, backend) -> list[str]:
        return self.state[backend.name]["logged"]

    def _guard(self, backend, call) -> bool:
        """Run one backend call; a failure switches the backend off for this run."""
        try:
            call()
            return True
        except Exception as e:  # tracking must never stop a study: its results are on disk
            self.backends.remove(backend)
            self.log(f"tracking.{backend.name}: {type(e).__name__}: {str(e)[:200]}; off for "
                     "the rest of this run (rerun to log what is missing)")
            return False


@contextmanager
def tracking(cfg: ExperimentConfig, run_dir: Path, plan: Plan | None = None,
             log=print) -> Iterator[Tracker]:
    """The tracker of a run while the body runs: opens every configured backend (one that
    cannot start is a UserError), logs the finished units it misses (``plan``), and closes
    the backends at the end (an MLflow run is marked failed when the body raised)."""
    run_dir = Path(run_dir)
    state = _read_state(run_dir)
    backends = []
    rank = os.environ.get("RANK", "0")  # under torchrun, rank 0 alone logs (and writes)
    try:
        for name, opener in OPENERS.items():
            section = getattr(cfg.tracking, name)
            if section is not None and rank in ("", "0"):
                backends.append(opener(cfg, section, run_dir, state, log))
    except Exception:
        for backend in backends:
            backend.close(True)
        raise
    tracker = Tracker(run_dir, backends, state, log)
    if backends:
        write_json(run_dir / STATE, state)
        log("tracking: " + ", ".join(b.describe() for b in backends))
        if plan is not None:
            tracker.backfill(plan)
    failed = True
    try:
        yield tracker
        failed = False
    finally:
        tracker.close(failed)
        if backends:
            write_json(run_dir / STATE, state)


def _read_state(run_dir: Path) -> dict:
    try:
        state = json.loads((run_dir / STATE).read_text())
        return state if isinstance(state, dict) else {}
    except (OSError, ValueError):
        return {}


def _backend_state(state: dict, name: str, destination: str) -> dict:
    """The backend's entry of tracking.json; a fresh one when it logged elsewhere before."""
    entry = state.get(name)
    if not isinstance(entry, dict) or entry.get("destination") != destination:
        entry = state[name] = {"destination": destination, "run_id": None, "logged": []}
    entry.setdefault("logged", [])
    return entry


# ---------------------------------------------------------------------------- MLflow


class MlflowBackend:
    """One MLflow run per study, a nested run per prefix and per cell (MlflowClient: no
    global active run)."""

    name = "mlflow"
    BATCH = 1000  # MLflow's limit of metrics per log_batch

    def __init__(self, cfg: ExperimentConfig, section, run_dir: Path, state: dict, log=print):
        require("mlflow", "tracking.mlflow", "mlflow")
        from mlflow.tracking import MlflowClient

        self.uri = section.tracking_uri or (Path(cfg.output_dir) / "mlruns").resolve().as_uri()
        if self.uri.startswith("file:") or "://" not in self.uri:
            # MLflow >= 3.13 refuses its file store unless asked for explicitly; it is the
            # default here: no server, no database, the runs beside the run directories
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.entry = _backend_state(state, self.name, self.uri)
        try:
            self.client = MlflowClient(self.uri)
            self.experiment = self._experiment(section.experiment or cfg.name)
            self.run_id = self._parent(cfg, run_dir)
        except Exception as e:
            raise UserError(f"tracking.mlflow: cannot log to {self.uri}: "
                            f"{' '.join(str(e).split())[:300]}") from None

    def describe(self) -> str:
        return f"MLflow {self.uri} (run {self.run_id})"

    def _experiment(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        return found.experiment_id if found is not None else self.client.create_experiment(name)

    def _parent(self, cfg: ExperimentConfig, run_dir: Path) -> str:
        """The study's run: the one an earlier invocation started, else a new one."""
        run_id = self.entry.get("run_id")
        if run_id:
            try:
                self.client.update_run(run_id, status="RUNNING")
                return run_id
            except Exception:  # deleted, or another store: start over
                self.entry["logged"] = []
        run = self.client.create_run(self.experiment, run_name=cfg.name, tags={
            "pathunlearn.run_dir": str(run_dir.resolve()), "pathunlearn.kind": "study"})
        self.entry["run_id"] = run.info.run_id
        params = {"forget_stage": cfg.paths.forget_stage, "paths": len(cfg.paths.expand()),
                  "methods": ", ".join(m.name for m in cfg.unlearning.methods),
                  "seeds": cfg.seeds, "model": cfg.model.preset or cfg.model.path,
                  "finetuning": cfg.model.finetuning, "executor": cfg.executor.kind}
        self._batch(run.info.run_id, {}, {k: str(v) for k, v in params.items()})
        if (run_dir / CONFIG).is_file():
            self.client.log_artifact(run.info.run_id, str(run_dir / CONFIG))
        return run.info.run_id

    def unit(self, record: Record) -> None:
        run = self.client.create_run(self.experiment, run_name=record.name, tags={
            "mlflow.parentRunId": self.run_id, "pathunlearn.kind": record.kind,
            "pathunlearn.key": record.key})
        self._batch(run.info.run_id, record.series, record.params)
        self.client.set_terminated(run.info.run_id)

    def table(self, rows: dict[str, dict[str, float]], files: list[Path]) -> None:
        self._batch(self.run_id, {f"table/{row}/{k}": [(0, v)] for row, values in rows.items()
                                  for k, v in values.items()}, {})
        for path in files:
            self.client.log_artifact(self.run_id, str(path))

    def close(self, failed: bool) -> None:
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")

    def _batch(self, run_id: str, series: dict, params: dict[str, str]) -> None:
        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        metrics = [Metric(_mlflow_key(k), v, now, step) for k, points in series.items()
                   for step, v in points]
        params_ = [Param(_mlflow_key(k), v[:500]) for k, v in params.items()]
        if not metrics and not params_:
            return
        for i in range(0, max(len(metrics), 1), self.BATCH):
            self.client.log_batch(run_id, metrics=metrics[i:i + self.BATCH],
                                  params=params_ if i == 0 else [])


def _mlflow_key(key: str) -> str:
    """MLflow names take letters, digits, _ - . / and spaces."""
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in key)


# ---------------------------------------------------------------------------- W&B


class WandbBackend:
    """A W&B run per prefix, per cell and one for the table, grouped under the study's name;
    each run's id is its unit's key, so a unit is never two runs."""

    name = "wandb"

    def __init__(self, cfg: ExperimentConfig, section, run_dir: Path, state: dict, log=print):
        self.wandb = require("wandb", "tracking.wandb", "wandb")
        self.section, self.group = section, cfg.name
        self.dir = Path(section.dir or run_dir)
        self.entry = _backend_state(state, self.name, f"{section.mode}:{section.entity}/"
                                    f"{section.project}:{self.dir.resolve()}")
        self.config = cfg.model_dump(mode="json")

    def describe(self) -> str:
        return f"W&B project {self.section.project} ({self.section.mode}, {self.dir})"

    def _run(self, run_id: str, name: str, job_type: str, config: dict):
        self.dir.mkdir(parents=True, exist_ok=True)
        return self.wandb.init(project=self.section.project, entity=self.section.entity,
                               mode=self.section.mode, dir=str(self.dir), group=self.group,
                               job_type=job_type, name=name, id=run_id, resume="allow",
                               config=config, settings=self.wandb.Settings(
                                   silent=True, console="off"))  # a run per unit: no banners

    def unit(self, record: Record) -> None:
        run = self._run(f"{self.group}-{record.key}", record.name, record.kind,
                        {**record.params, "study": self.config})
        try:
            by_step: dict[int, dict[str, float]] = {}
            for key, points in record.series.items():
                for step, value in points:
                    by_step.setdefault(step, {})[key] = value
            for step in sorted(by_step):
                run.log(by_step[step], step=step)
        finally:
            run.finish()

    def table(self, rows: dict[str, dict[str, float]], files: list[Path]) -> None:
        run = self._run(f"{self.group}-table", f"{self.group} table", "table", self.config)
        try:
            columns = sorted({k for values in rows.values() for k in values})
            table = self.wandb.Table(columns=["row", *columns], data=[
                [row, *(values.get(c) for c in columns)] for row, values in rows.items()])
            run.log({"results": table})
            artifact = self.wandb.Artifact(f"{self.group}-results", type="results")
            for path in files:
                artifact.add_file(str(path))  # a copy: a later report does not change it
            run.log_artifact(artifact)
        finally:
            run.finish()

    def close(self, failed: bool) -> None:
        pass


# ---------------------------------------------------------------------------- TensorBoard


class TensorboardBackend:
    """An event directory per prefix and per cell under ``log_dir`` (TensorBoard overlays
    them); the table as text under ``log_dir/table``."""

    name = "tensorboard"

    def __init__(self, cfg: ExperimentConfig, section, run_dir: Path, state: dict, log=print):
        require("tensorboard", "tracking.tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter
        self.log_dir = Path(section.log_dir or run_dir / TENSORBOARD)
        self.entry = _backend_state(state, self.name, str(self.log_dir.resolve()))

    def describe(self) -> str:
        return f"TensorBoard {self.log_dir}"

    def unit(self, record: Record) -> None:
        top = CELLS if record.kind == "cell" else PREFIXES
        writer = self.writer(str(self.log_dir / top / record.name.replace(" ", "_")))
        try:
            writer.add_text("params", "\n".join(f"- {k}: {v}" for k, v in
                                                 record.params.items()))
            for key, points in record.series.items():
                for step, value in points:
                    writer.add_scalar(key, value, step)
        finally:
            writer.close()

    def table(self, rows: dict[str, dict[str, float]], files: list[Path]) -> None:
        writer = self.writer(str(self.log_dir / "table"))
        try:
            md = next((p for p in files if p.name == RESULTS_MD), None)
            if md is not None:
                writer.add_text("results", md.read_text())
            for row, values in rows.items():
                for k, v in values.items():
                    writer.add_scalar(f"{k}/{row}", v, 0)
        finally:
            writer.close()

    def close(self, failed: bool) -> None:
        pass


OPENERS = {"mlflow": MlflowBackend, "wandb": WandbBackend, "tensorboard": TensorboardBackend}
"""The backends, in the order they are opened (the config's ``tracking`` keys)."""
