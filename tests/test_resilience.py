"""A run directory survives a second writer, kill -9 at random moments and refused writes.

One uninterrupted ``pathunlearn run`` of a reduced config (a subprocess, as a user starts it)
is the reference; while it runs, a second ``run`` on the same directory must exit 2 naming
it. Another run of the same config is killed with SIGKILL at random moments, rerun to
completion, and must end with the same results.json and the same metrics/steps rows as the
reference, with nothing partial left behind.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pathunlearn.rundir import LOCK, hold_run_dir

REDUCED = {
    "name": "small", "seeds": [0],
    "model": {"finetuning": "full"},
    "stages": {"instructions": {"source": "builtin:instructions", "max_examples": 16},
               "refusals": {"source": "builtin:refusals", "max_examples": 16}},
    "paths": {"forget_stage": "refusals", "order": ["instructions"], "positions": [1, 2]},
    "training": {"lr": 5e-4, "batch_size": 8, "micro_batch_size": 8, "seed": 0},
    "unlearning": {"methods": [{"name": "npo"}], "lr": 1e-4, "batch_size": 8,
                   "micro_batch_size": 8, "steps": 3, "eval_every": 1},
    "probes": {"prompts": 2, "examples": 4, "heldout": 2},
}
# one intra-op thread: two processes share 2 cores here, and the numbers must not depend on
# how many threads a process had
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PATHUNLEARN_DEBUG": "1"}


def write_config(directory: Path) -> Path:
    path = directory / "small.yaml"
    path.write_text(yaml.safe_dump({**REDUCED, "output_dir": str(directory / "runs")}))
    return path


def start_run(config: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pathunlearn", "run", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)


def wait_for_holder(lock: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    """Until the process has written its record into RUN_DIR/.lock (it holds the directory)."""
    deadline = time.monotonic() + timeout
    while not (lock.is_file() and lock.read_text().strip()):
        assert process.poll() is None, process.communicate()[0]
        assert time.monotonic() < deadline, "the run never took its run directory"
        time.sleep(0.05)


WALL_TIME = {"tokens_per_s", "seconds"}
"""Row fields that measure wall time, the only ones allowed to differ."""


def rows_of(run_dir: Path) -> dict[str, list[dict]]:
    """Every row of every row file of the run's prefixes and cells (by path relative to the
    run), without the wall-time fields."""
    return {str(p.relative_to(run_dir)): [
        {k: v for k, v in json.loads(line).items() if k not in WALL_TIME}
        for line in p.read_text().splitlines()]
        for name in ("metrics.jsonl", "steps.jsonl") for p in run_dir.rglob(name)}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run, started in the background: (process, config, run dir, start)."""
    directory = tmp_path_factory.mktemp("reference")
    config = write_config(directory)
    started = time.monotonic()
    process = start_run(config)
    wait_for_holder(directory / "runs" / "small" / LOCK, process)
    yield process, config, directory / "runs" / "small", started
    process.kill()
    process.wait()


def finished(reference) -> tuple[Path, float]:
    """The reference run directory once the run is done, and how long the run took."""
    process, _, run_dir, started = reference
    out, _ = process.communicate(timeout=600)
    assert process.returncode == 0, out
    return run_dir, time.monotonic() - started


def test_a_second_writer_exits_2_naming_the_holder(reference, cli):
    process, config, run_dir, _ = reference
    second = cli("run", config)
    assert process.poll() is None, "the reference run ended before the second writer tried"
    assert second.code == 2
    lines = second.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in second.err
    assert f"pid {process.pid} on host" in lines[0] and "pathunlearn run" in lines[0]
    # the first one is undisturbed: it finishes, its lock is released and emptied
    run_dir, _ = finished(reference)
    assert (run_dir / "results.json").is_file()
    assert (run_dir / LOCK).read_text() == ""


def test_kill_9_at_random_moments_then_resume_gives_the_same_results(reference, tmp_path):
    ref_dir, seconds = finished(reference)
    config = write_config(tmp_path)
    run_dir = tmp_path / "runs" / "small"
    # first while the second stage is half trained (its partial metrics written, the first
    # stage's checkpoint done), then at two random moments
    process = start_run(config)
    prefixes = run_dir / "prefixes"
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        partial = [m for m in prefixes.glob(".*.tmp/metrics.jsonl") if m.read_text().strip()]
        if partial and len(list(prefixes.glob("*/DONE"))) == 1:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    process.communicate()
    assert process.returncode == -signal.SIGKILL, "the run finished before it was killed"
    rng = random.Random(14)
    took_over = 1
    for _ in range(2):
        process = start_run(config)
        time.sleep(rng.uniform(0.15, 0.85) * seconds)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.communicate()
        had_holder = (run_dir / LOCK).is_file() and (run_dir / LOCK).read_text().strip()
        took_over += bool(had_holder)
    out = subprocess.run([sys.executable, "-m", "pathunlearn", "run", str(config)], env=ENV,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    if took_over and "taking over from" not in out.stdout:
        # the last kill may have hit before the lock was taken: then no record was left
        assert (run_dir / LOCK).read_text() == ""
    assert json.loads((run_dir / "results.json").read_text()) == json.loads(
        (ref_dir / "results.json").read_text())
    rows, ref_rows = rows_of(run_dir), rows_of(ref_dir)
    assert rows.keys() == ref_rows.keys() and len(rows) >= 6
    assert [k for k in rows if rows[k] != ref_rows[k]] == []
    for ref in sorted(ref_dir.glob("prefixes/*/model.safetensors")):  # byte-identical weights
        assert (run_dir / ref.relative_to(ref_dir)).read_bytes() == ref.read_bytes()
    leftovers = [p for top in ("prefixes", "cells") for p in (run_dir / top).rglob(".*")]
    assert leftovers == []


def test_a_lock_left_by_a_killed_process_is_taken_over_and_partial_writes_removed(tmp_path):
    run_dir = tmp_path / "run"
    partial = run_dir / "cells" / "a-b" / "ga" / ".0.abc123.tmp"
    partial.mkdir(parents=True)
    (partial / "metrics.jsonl").write_text("{}\n")
    (run_dir / LOCK).write_text(json.dumps({"pid": 999999, "host": "gone", "command": "run",
                                            "started": "2026-01-01T00:00:00+00:00"}) + "\n")
    said = []
    with hold_run_dir(run_dir, "train", log=said.append):
        holder = json.loads((run_dir / LOCK).read_text())
        assert holder["pid"] == os.getpid() and holder["command"] == "train"
        with hold_run_dir(run_dir, "train", log=said.append):  # re-entrant in one process
            pass
        assert (run_dir / LOCK).read_text().strip()
    assert not partial.exists()
    assert any("taking over from `pathunlearn run` (pid 999999 on host gone" in s for s in said)
    assert any("removed 1 partial write" in s for s in said)
    assert (run_dir / LOCK).read_text() == ""


def _limit_file_size() -> None:  # runs in the child: files over 512 KiB cannot be written
    import resource

    resource.setrlimit(resource.RLIMIT_FSIZE, (512 * 1024, 512 * 1024))


def test_a_refused_write_stops_the_run_with_one_line_and_leaves_nothing_half_written(tmp_path):
    # the first checkpoint (a ~4 MB safetensors file) exceeds the limit: Python ignores
    # SIGXFSZ, so the write fails with EFBIG, as a full disk fails with ENOSPC
    config = write_config(tmp_path)
    run_dir = tmp_path / "runs" / "small"
    out = subprocess.run([sys.executable, "-m", "pathunlearn", "run", str(config)],
                         env={**ENV, "PATHUNLEARN_DEBUG": "0"}, capture_output=True, text=True,
                         timeout=300, preexec_fn=_limit_file_size)
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert "File too large" in lines[0] and str(run_dir / "prefixes") in lines[0]
    assert not list((run_dir / "prefixes").iterdir())  # no checkpoint, no partial one
    assert (run_dir / LOCK).read_text() == ""  # released: the next run starts cleanly
