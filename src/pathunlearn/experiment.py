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
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pathunlearn.config import ExperimentConfig
from pathunlearn.files import write_json
from pathunlearn.plan import Plan, plan_run
from pathunlearn.rundir import hold_run_dir, start_run
from pathunlearn.train.paths import train_paths
from pathunlearn.train.unlearn import unlearn_all


@dataclass
class Phases:
    """Wall-clock seconds per phase of the run, in order."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def time(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


@contextmanager
def session(cfg: ExperimentConfig, command: str, log=print) -> Iterator[Plan]:
    """Plan ``cfg`` (every input checked first: nothing is written when one is wrong), hold
    its run directory for this process (:func:`pathunlearn.rundir.hold_run_dir`), write
    RUN_DIR/config.yaml, plan.json and probes.json, and yield the plan."""
    plan = plan_run(cfg)
    with hold_run_dir(cfg.run_dir, command, log=log):
        log(f"run directory: {cfg.run_dir}")
        start_run(cfg.run_dir, cfg, plan)
        yield plan


def train(cfg: ExperimentConfig, *, log=print, progress: bool = False) -> Plan:
    """``pathunlearn train``: plan, then train every prefix not trained yet."""
    with session(cfg, "train", log=log) as plan:
        train_paths(cfg, plan, progress=progress, log=log)
    return plan


def unlearn(cfg: ExperimentConfig, *, log=print, progress: bool = False) -> list[dict]:
    """``pathunlearn unlearn``: plan, train what is missing, run every cell not finished;
    returns the cells' summaries."""
    with session(cfg, "unlearn", log=log) as plan:
        train_paths(cfg, plan, progress=progress, log=log)
        return unlearn_all(cfg, plan, log=log)


def run_experiment(cfg: ExperimentConfig, *, log=print, progress: bool = False):
    """``pathunlearn run``: the whole study of ``cfg`` (or what is left of it); returns
    ``(results, figure files, report path)``."""
    run_dir = Path(cfg.run_dir)
    phases = Phases()
    started = time.perf_counter()
    with session(cfg, "run", log=log) as plan:
        phases.seconds["plan"] = time.perf_counter() - started
        with phases.time("train"):
            train_paths(cfg, plan, run_dir=run_dir, progress=progress, log=log)
        with phases.time("unlearn"):
            unlearn_all(cfg, plan, run_dir=run_dir, log=log)
        return _report(cfg, run_dir, phases, log)


def _report(cfg: ExperimentConfig, run_dir: Path, phases: Phases, log=print):
    """The report of a run and the record of its wall times (phases.json, phases_history.json)."""
    from pathunlearn.models import resolve_device
    from pathunlearn.report import make_report
    from pathunlearn.rundir import load_run

    with phases.time("report"):
        earlier = _phase_history(run_dir)
        extra = {"device": str(resolve_device(cfg.training.device))}
        if earlier:  # a rerun: keep the timings of the run that did the work visible
            first = earlier[0]["seconds"]
            extra["first invocation"] = ", ".join(f"{k} {v:.0f} s" for k, v in first.items())
        made = make_report(load_run(run_dir), phases=phases.seconds, extra=extra, reuse=True,
                           log=log)
    # phases.json: this invocation's wall times; phases_history.json: every invocation's, so
    # rerunning a finished run does not hide how long the work took
    write_json(run_dir / "phases.json", phases.seconds)
    write_json(run_dir / "phases_history.json", earlier + [
        {"finished": datetime.now(UTC).isoformat(timespec="seconds"),
         "seconds": dict(phases.seconds)}])
    return made


def _phase_history(run_dir: Path) -> list[dict]:
    path = run_dir / "phases_history.json"
    return json.loads(path.read_text()) if path.is_file() else []
