"""The whole study, end to end and resumable: ``pathunlearn run``.

plan -> train prefixes (path models and retrain baselines share the trie) -> unlearn every
cell (probes, distances to the retrain model) -> table, verdict, figures, report. Every step
skips what a previous run finished, so rerunning a finished run only rebuilds the report.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pathunlearn.config import ExperimentConfig, dump_config
from pathunlearn.files import write_json, write_text
from pathunlearn.train.paths import TrainPlan, plan_paths, train_paths
from pathunlearn.train.unlearn import retrain_path, unlearn_all


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


def plan_experiment(cfg: ExperimentConfig) -> TrainPlan:
    """The trie over the config's paths and their retrain baselines (paths without the
    forget stage), which share its prefixes."""
    paths = cfg.paths.expand()
    retrain = [retrain_path(cfg, p) for p in paths]
    return plan_paths(cfg, paths + [r for r in retrain if r])


def run_experiment(cfg: ExperimentConfig, *, log=print, progress: bool = False):
    """Run (or resume) the study of ``cfg``; returns ``(results, figure files, report path)``."""
    from pathunlearn.models import resolve_device
    from pathunlearn.report import make_report

    run_dir = Path(cfg.run_dir)
    phases = Phases()
    write_text(run_dir / "config.yaml", dump_config(cfg))
    with phases.time("plan"):
        plan = plan_experiment(cfg)
        has_retrain = all(retrain_path(cfg, p) for p in cfg.paths.expand())
    with phases.time("train"):
        train_paths(cfg, plan, run_dir=run_dir, progress=progress, log=log)
    with phases.time("unlearn"):
        unlearn_all(cfg, plan, run_dir=run_dir, retrain=has_retrain, log=log)
    with phases.time("report"):
        earlier = _phase_history(run_dir)
        extra = {"device": str(resolve_device(cfg.training.device))}
        if earlier:  # a rerun: keep the timings of the run that did the work visible
            first = earlier[0]["seconds"]
            extra["first invocation"] = ", ".join(f"{k} {v:.0f} s" for k, v in first.items())
        made = make_report(run_dir, cfg.paths.forget_stage, phases=phases.seconds, extra=extra)
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
