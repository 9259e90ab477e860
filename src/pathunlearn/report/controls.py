"""The matched-start control in the report: the recency verdict again, with every forget-last
path started from its matched model (:func:`pathunlearn.train.paths.train_matched`).

A forget-last path starts unlearning with its forget set freshly learned, so usually at a
higher likelihood than the other paths (where later stages overwrote part of it); gradient
ascent's push vanishes near probability 1, so it may forget slowest for that reason alone. The
control trains that path's last stage again and stops it where the control's metric reaches
the other paths' starting level; if the forget-last path still forgets slowest from there, the
recency effect is not a saturation artefact.

:func:`matched_start` returns, per matched model, the level it matched, where it stopped (step
k of the stage's N) and the metric there; and the table and recency verdicts with the control's
cells in place of the forget-last paths' (every other path's cells unchanged).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

from pathunlearn.report.model import RecencyVerdict
from pathunlearn.report.tables import ResultTable, build_table, recency_verdicts, training_seeds
from pathunlearn.rundir import PREFIX_JSON, Run, prefix_dir


@dataclass
class MatchedStart:
    models: list[dict]
    """Per matched model: path, training seed, metric, level matched, the other models'
    values, whether it was reached, the stopping step and the stage's full length."""
    table: ResultTable
    verdicts: list[RecencyVerdict]

    def to_json(self) -> dict:
        return {"models": self.models, "verdicts": [v.to_json() for v in self.verdicts],
                "rows": [r.to_json() for r in self.table.rows]}


def matched_start(run: Run) -> MatchedStart | None:
    """The control's models and verdicts (module docstring); None when the run has no
    finished control cell."""
    if not run.controls:
        return None
    control = run.config.controls.matched_start
    how = control.level if control is not None else "mean"
    models = []
    for m in run.plan.matched:
        info = _read(prefix_dir(run.run_dir, m.key) / PREFIX_JSON)
        if info is None:
            continue
        leaf = _read(prefix_dir(run.run_dir, m.leaf_key) / PREFIX_JSON) or {}
        trace = info.get("trace") or []
        models.append({"path": list(m.path), "path_label": "-".join(m.path), "seed": m.seed,
                       "metric": info.get("metric"), "level": info.get("level"),
                       "level_of": how,
                       "others": info.get("others"), "reached": info.get("reached"),
                       "stopped_at": info.get("stopped_at"), "steps": info.get("steps"),
                       "stage_steps": leaf.get("steps"),
                       "start": trace[-1]["value"] if trace else None})
    replaced = {(c.method, c.sweep, c.seed, c.path) for c in run.controls}
    cells = [c for c in run.cells if (c.method, c.sweep, c.seed, c.path) not in replaced]
    table = build_table(cells + run.controls, run.forget_stage, run.probes,
                        training_seeds(run.config))
    verdicts = [replace(v, kind="recency_matched", text="With the matched-start control: "
                        + v.text) for v in recency_verdicts(table)]
    return MatchedStart(models, table, verdicts)


def model_lines(control: MatchedStart) -> list[str]:
    """One line per matched model: where it stopped and what it matched."""
    lines = []
    for m in control.models:
        where = (f"stopped after {m['stopped_at']} of {m['stage_steps']} steps of its last "
                 f"stage at {m['metric']} {m['start']:.3f}" if m["reached"] else
                 f"never reached it: the whole stage ({m['steps']} steps) ends at "
                 f"{m['start']:.3f}" if m["start"] is not None else "no measurement")
        lines.append(f"{m['path_label']} (training seed {m['seed']}): the other paths start at "
                     f"{m['level']:.3f} ({m['metric']}, the {m['level_of']} of "
                     f"{', '.join(f'{v:.3f}' for v in (m['others'] or {}).values())}); "
                     f"{where}.")
    return lines


def _read(path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
