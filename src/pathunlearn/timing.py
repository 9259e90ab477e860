"""Wall-clock seconds per phase: of a run (RUN_DIR/phases.json) and of a cell (its
summary.json ``phases``), so a reader sees where the time goes."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field

CELL_PHASES = ("load", "alternates", "math", "lmeval", "reference", "step0", "probes", "steps",
               "relearn", "relearn_steps", "write")
"""A cell's phases, in the order it runs them: loading the path model and encoding its data
(with what the method takes from the path model before it changes), the alternate answers of
a DPO / AltPO cell (AltPO samples them from the path model) and their reference
log-probabilities, math accuracy (before
and after), lm-eval tasks, the retrain model's reference values, the step-0 measurements
(probes, field items and saturation diagnostics: measured once per path model, then read back),
the probe evaluations at the later eval points (generations and field metrics included), the
optimizer steps (forward, backward, clip, update), relearning's evaluations (its data and
tracked probes, scored at its eval points) and relearning's own optimizer steps, writing the
summary and the model."""
TRAINING_PHASES = ("steps", "relearn_steps")
"""The phases that are optimizer steps (unlearning's and relearning's); the rest of a cell is
evaluation, loading and writing."""


@dataclass
class Phases:
    """Wall-clock seconds per phase, in the order first timed; a phase timed twice adds up."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def time(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    @contextmanager
    def apart(self, name: str):
        """Time ``name`` around the block, less the phases the block times on the
        :class:`Phases` it is given, which are added here as phases of their own (relearning:
        its optimizer steps apart from its evaluations)."""
        inner = Phases()
        with self.time(name):
            yield inner
        for inside, seconds in inner.seconds.items():
            self.add(inside, seconds)
            self.add(name, -seconds)


def sum_phases(summaries: list[dict]) -> dict[str, float]:
    """The cells' ``phases`` added up per phase (cells written before phases were recorded
    add nothing)."""
    total = Phases()
    for s in summaries:
        for name, seconds in (s.get("phases") or {}).items():
            total.add(name, float(seconds))
    return total.seconds
