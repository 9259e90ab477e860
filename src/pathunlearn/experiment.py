"""The study, end to end and resumable: ``pathunlearn train``, ``unlearn`` and ``run``.

plan (:func:`pathunlearn.plan.plan_run`: every input checked first) -> hold the run directory
(one writer at a time) and write config.yaml + plan.json + probes.json -> build the base
model when it is a missing preset -> train the prefixes (path models and retrain baselines
share the trie) -> unlearn every cell (probes, distances to the retrain model) -> table,
verdict, figures, report. Every command uses the same plan, so what one finished the next one
skips: rerunning a finished run only rebuilds the report.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from pathlib import Path

from pathunlearn import distributed
from pathunlearn.config import ExperimentConfig
from pathunlearn.executors import execute
from pathunlearn.files import write_json
from pathunlearn.plan import Plan, plan_run
from pathunlearn.rundir import PHASES, PHASES_HISTORY, hold_run_dir, start_run
from pathunlearn.timing import Phases, sum_phases
from pathunlearn.tracking import tracking
from pathunlearn.train.unlearn import cell_summaries


@contextmanager
def session(cfg: ExperimentConfig, command: str, log=print) -> Iterator[Plan]:
    """Plan ``cfg`` (every input checked first: nothing is written when one is wrong), hold
    its run directory for this process (:func:`pathunlearn.rundir.hold_run_dir`), write
    RUN_DIR/config.yaml, plan.json and probes.json, and yield the plan.

    Under torchrun (:mod:`pathunlearn.distributed`) every rank plans, then joins the process
    group; rank 0 alone holds the run directory and writes, the others wait for it."""
    with distributed.errors_once():
        plan = plan_run(cfg)
        with distributed.process_group(cfg.distributed.backend), _held(cfg, command, log):
            if distributed.is_main():
                log(f"run directory: {cfg.run_dir}")
                start_run(cfg.run_dir, cfg, plan)
            distributed.barrier()
            yield plan


def _held(cfg: ExperimentConfig, command: str, log):
    """The run directory's lock, taken by rank 0 only (the one writer)."""
    if distributed.is_main():
        return hold_run_dir(cfg.run_dir, command, log=log)
    return nullcontext()


def train(cfg: ExperimentConfig, *, log=print, progress: bool = False) -> Plan:
    """``pathunlearn train``: plan, then train every prefix not trained yet (on the config's
    executor, :mod:`pathunlearn.executors`; tracked when ``tracking`` asks)."""
    run_dir = Path(cfg.run_dir)
    with session(cfg, "train", log=log) as plan, tracking(cfg, run_dir, plan, log) as tracker:
        execute(cfg, plan, run_dir, cells=False, progress=progress, log=log,
                on_prefix=tracker.prefix)
    return plan


def unlearn(cfg: ExperimentConfig, *, log=print, progress: bool = False) -> list[dict]:
    """``pathunlearn unlearn``: plan, train what is missing, run every cell not finished;
    returns the cells' summaries."""
    run_dir = Path(cfg.run_dir)
    with session(cfg, "unlearn", log=log) as plan, tracking(cfg, run_dir, plan, log) as tracker:
        execute(cfg, plan, run_dir, progress=progress, log=log, on_prefix=tracker.prefix,
                on_cell=tracker.cell)
        return cell_summaries(plan.cells, run_dir)


def run_experiment(cfg: ExperimentConfig, *, log=print, progress: bool = False,
                   figures: bool = True):
    """``pathunlearn run``: the whole study of ``cfg`` (or what is left of it); returns
    ``(results, figure files, report path)``. The prefixes and cells run on the config's
    executor (:mod:`pathunlearn.executors`); tracking logs each as it finishes, then the
    table (:mod:`pathunlearn.tracking`). ``figures=False``: the report without figures
    (``--no-figures``)."""
    run_dir = Path(cfg.run_dir)
    phases = Phases()
    started = time.perf_counter()
    with session(cfg, "run", log=log) as plan:
        phases.seconds["plan"] = time.perf_counter() - started
        with tracking(cfg, run_dir, plan, log) as tracker:
            execute(cfg, plan, run_dir, progress=progress, log=log, phase=phases.time,
                    on_prefix=tracker.prefix, on_cell=tracker.cell)
            if distributed.is_main():
                made = _report(cfg, run_dir, phases, log, figures=figures)
                tracker.results()
            distributed.barrier()
            if not distributed.is_main():  # under torchrun: rank 0's report, read back
                from pathunlearn.report import make_report
                from pathunlearn.rundir import load_run

                made = make_report(load_run(run_dir), reuse=True, figures=figures)
            return made


def _report(cfg: ExperimentConfig, run_dir: Path, phases: Phases, log=print,
            figures: bool = True):
    """The report of a run and the record of its wall times (phases.json, phases_history.json)."""
    from pathunlearn.models import resolve_device
    from pathunlearn.report import make_report
    from pathunlearn.rundir import load_run

    with phases.time("report"):
        earlier = _phase_history(run_dir)
        extra = {"device": str(resolve_device(cfg.runtime.device))}
        if earlier:  # a rerun: keep the timings of the run that did the work visible
            first = earlier[0]["seconds"]
            extra["first invocation"] = ", ".join(f"{k} {v:.0f} s" for k, v in first.items())
        run = load_run(run_dir)
        made = make_report(run, phases=phases.seconds, extra=extra, reuse=True, log=log,
                           figures=figures)
    # phases.json: this invocation's wall times, and "cells": the phases inside every
    # finished cell added up (timing.CELL_PHASES; the matched-start control's cells too, so
    # they add up to the unlearn phase); phases_history.json: every invocation's, so
    # rerunning a finished run does not hide how long the work took
    write_json(run_dir / PHASES, {**phases.seconds, "cells": sum_phases(
        [c.summary for c in (*run.cells, *run.controls)])})
    write_json(run_dir / PHASES_HISTORY, earlier + [
        {"finished": datetime.now(UTC).isoformat(timespec="seconds"),
         "seconds": dict(phases.seconds)}])
    return made


def _phase_history(run_dir: Path) -> list[dict]:
    path = run_dir / PHASES_HISTORY
    return json.loads(path.read_text()) if path.is_file() else []
