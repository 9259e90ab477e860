"""Issue 24's fault list: each fault reproduced as the issue describes it, with its outcome.

Bad input (duplicate seeds or swept values, names that would escape the run directory, a
learning rate that makes every loss NaN, a stage cut to nothing by ``model.max_length``) is
one line and exit code 2, with nothing written where it does not belong. Damage (a report
killed half-way, a checkpoint whose bytes changed, a checkpoint file deleted or truncated) is
repaired by the rerun: the numbers equal a clean run's.

One clean run of a small config (2 stages, 2 paths, 4 prefixes, 2 cells; seconds) is shared
by the module; a test that damages a run works on a copy of it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pathunlearn.config import load_config
from pathunlearn.plan import plan_run
from pathunlearn.rundir import unit_dir
from test_resilience import REDUCED, rows_of

pytestmark = pytest.mark.usefixtures("one_thread")  # the same numbers in every process

SMALL = {
    **REDUCED,
    "stages": {k: {**v, "max_examples": 8} for k, v in REDUCED["stages"].items()},
    "training": {**REDUCED["training"], "batch_size": 4, "micro_batch_size": 4},
    "unlearning": {**REDUCED["unlearning"], "steps": 2, "batch_size": 4,
                   "micro_batch_size": 4},
}
"""REDUCED at half the size: 2 steps per stage, 2 unlearning steps per cell."""
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def write_config(directory: Path, data: dict | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "small.yaml"
    path.write_text(yaml.safe_dump({**(data or SMALL), "output_dir": str(directory / "runs")}))
    return path


def one_error(result) -> str:
    """The one line of a failed command (exit 2, no traceback), without its ``error: ``."""
    assert result.code == 2, result.out + result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.err, result.err
    assert lines[0].startswith("error: ")
    return lines[0].removeprefix("error: ")


def set_aside(out: str) -> list[str]:
    """The lines of ``out`` that say a prefix was set aside (the console wraps long lines)."""
    text = " ".join(out.split())
    return [f"{s.strip()} retrained" for s in text.split(" retrained")[:-1]
            if "; set aside as " in s]


def files_under(directory: Path) -> set[Path]:
    return set(directory.rglob("*"))


@pytest.fixture(scope="module")
def clean(tmp_path_factory, tiny_preset):
    """A clean run of SMALL: (config, run directory)."""
    from pathunlearn.experiment import run_experiment

    config = write_config(tmp_path_factory.mktemp("clean"))
    run_experiment(load_config(config), log=lambda *a: None)
    return config, config.parent / "runs" / "small"


def copy_of(clean, tmp_path: Path, *, cells: bool = True) -> tuple[Path, Path]:
    """A copy of the clean run (prefixes and, with ``cells``, cells) under ``tmp_path``:
    (config, run directory)."""
    _, run_dir = clean
    config = write_config(tmp_path)
    copy = tmp_path / "runs" / "small"
    shutil.copytree(run_dir / "prefixes", copy / "prefixes")
    if cells:
        shutil.copytree(run_dir / "cells", copy / "cells")
    return config, copy


def same_numbers(run_dir: Path, reference: Path) -> None:
    """results.json, every metrics/steps row and every checkpoint equal the reference's."""
    assert json.loads((run_dir / "results.json").read_text()) == json.loads(
        (reference / "results.json").read_text())
    rows = {k: v for k, v in rows_of(run_dir).items() if ".corrupt-" not in k}  # set aside
    ref_rows = rows_of(reference)
    assert rows.keys() == ref_rows.keys()
    assert [k for k in rows if rows[k] != ref_rows[k]] == []
    for ref in sorted(reference.glob("prefixes/*/model.safetensors")):
        assert (run_dir / ref.relative_to(reference)).read_bytes() == ref.read_bytes(), ref


def leaf_dir(config: Path, path: tuple[str, ...]) -> Path:
    cfg = load_config(config)
    return unit_dir(cfg.run_dir, plan_run(cfg, check=False).leaf(path, 0))


# ---------------------------------------------------------------------------- the report


KILL_AT_RESULTS_MD = """
import os, signal, sys
from pathlib import Path
import pathunlearn.report.results as results
write_text = results.write_text
def killed_at_results_md(path, text):
    if Path(path).name == "results.md":  # results.json is written, results.md not yet
        os.kill(os.getpid(), signal.SIGKILL)
    write_text(path, text)
results.write_text = killed_at_results_md
from pathunlearn.cli import main
sys.argv = ["pathunlearn", *sys.argv[1:]]
main()
"""


def test_a_report_killed_half_way_is_rebuilt_not_called_up_to_date(clean, tmp_path, cli):
    config, run_dir = copy_of(clean, tmp_path)
    assert cli("run", config).code == 0  # config A's report, in this directory
    # config B: the same run with one path less (its cells are A's: no work but the report),
    # killed by SIGKILL between results.json and results.md
    killed = subprocess.run(
        [sys.executable, "-c", KILL_AT_RESULTS_MD, "run", str(config), "paths.positions=[2]"],
        env=ENV, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    b = json.loads((run_dir / "results.json").read_text())
    assert b != json.loads((clean[1] / "results.json").read_text())  # B's wrote it
    # rerun A: its report is rebuilt, and every file of it is A's
    again = cli("run", config)
    assert again.code == 0, again.err
    assert "report up to date" not in again.out
    for name in ("results.json", "results.md", "results.csv"):
        assert (run_dir / name).read_text() == (clean[1] / name).read_text(), name
    # and now it is up to date
    assert "report up to date" in cli("run", config).out
    # until a cell holds other numbers under the same key (computed again after the model it
    # started from was set aside, on a machine where that is not bit-identical): rebuilt
    metrics = unit_dir(run_dir, plan_run(load_config(config), check=False).cells[0]) / \
        "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    rows[-1]["forget_label_id/all_mean"] -= 1.0
    metrics.write_text("".join(json.dumps(row) + "\n" for row in rows))
    rebuilt = cli("run", config)
    assert rebuilt.code == 0 and "report up to date" not in rebuilt.out
    assert (run_dir / "results.json").read_text() != (clean[1] / "results.json").read_text()


# ---------------------------------------------------------------------------- duplicates


@pytest.mark.parametrize(("override", "named"), [
    ("seeds=[0,0]", "`seeds` lists 0 twice"),
    ("unlearning.lrs=[1e-4,1e-4]", "`lrs` lists 0.0001 twice"),
    ("unlearning.schedulers=[cosine,cosine]", "`schedulers` lists 'cosine' twice"),
    ("unlearning.methods=[{name: npo},{name: npo}]", "`methods` lists {\"name\": \"npo\"} twice"),
])
def test_a_value_listed_twice_is_one_line_and_nothing_is_written(tmp_path, cli, override,
                                                                  named):
    config = write_config(tmp_path)
    line = one_error(cli("run", config, override))
    assert named in line, line
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------------- names


def test_swept_lrs_that_print_alike_get_their_own_cells_and_a_rerun_recomputes_nothing(
        clean, tmp_path, cli):
    config, run_dir = copy_of(clean, tmp_path, cells=False)
    lrs = "unlearning.lrs=[1e-5,1.0000001e-5]"
    first = cli("run", config, lrs)
    assert first.code == 0, first.err
    cells = sorted(p.parent for p in (run_dir / "cells").rglob("DONE"))
    assert len(cells) == 4 and len({p.name for p in cells}) == 2  # 2 paths x 2 lrs
    rates = {json.loads((c / "summary.json").read_text())["lr"] for c in cells}
    assert rates == {1e-5, 1.0000001e-5}
    again = cli("run", config, lrs)
    assert again.code == 0, again.err
    assert "4 unlearning cells, 4 already done" in again.out, again.out


ESCAPING = "/../../../../OUT"


def test_a_method_option_that_would_escape_writes_nothing_outside_the_run(clean, tmp_path,
                                                                         cli):
    # two methods of one name are told apart by their options in the cell's directory name
    config, run_dir = copy_of(clean, tmp_path, cells=False)
    methods = f"unlearning.methods=[{{name: npo}}, {{name: npo, options: {{x: '{ESCAPING}'}}}}]"
    before = files_under(tmp_path) - files_under(run_dir)
    result = cli("run", config, methods)
    outside = files_under(tmp_path) - files_under(run_dir) - before
    assert outside == set(), outside  # every file of the run is under its directory
    if result.code == 0:  # accepted: the option's value is hashed into a safe name
        labels = {p.parent.parent.name for p in (run_dir / "cells").rglob("DONE")}
        assert len(labels) == 2 and "npo" in {la.split("-")[0] for la in labels}
        assert all(".." not in la and "/" not in la for la in labels)
    else:
        assert "unlearning.methods" in one_error(result)


def test_a_name_that_is_a_parent_directory_is_one_line_and_writes_nothing(tmp_path, cli):
    config = write_config(tmp_path / "a" / "b")
    line = one_error(cli("run", config, "name=.."))
    assert "name '..'" in line, line
    assert files_under(tmp_path) == {tmp_path / "a", tmp_path / "a" / "b", config}
    # a user's method whose class is named ".." (its cells' directory)
    method = tmp_path / "a" / "b" / "up.py"
    method.write_text("from pathunlearn.methods import NPO\n\n\nclass Up(NPO):\n"
                      "    name = '..'\n")
    line = one_error(cli("run", config, f"unlearning.methods=[{{name: '{method}:Up'}}]"))
    assert "unlearning.methods.0" in line and "'..'" in line, line
    assert files_under(tmp_path) == {tmp_path / "a", tmp_path / "a" / "b", config, method}


# ---------------------------------------------------------------------------- damage


def flip_bytes(path: Path) -> None:
    """Same size, other bytes: 64 bytes in the middle of the file (tensor data)."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    path.write_bytes(bytes(data))


def test_flipped_bytes_in_a_finished_prefix_are_found_and_it_is_retrained(clean, tmp_path,
                                                                         cli):
    config, run_dir = copy_of(clean, tmp_path)
    damaged = leaf_dir(config, ("instructions", "refusals"))
    flip_bytes(damaged / "model.safetensors")
    result = cli("run", config)
    assert result.code == 0, result.err
    said = set_aside(result.out)
    assert len(said) == 1 and "model.safetensors" in said[0], result.out
    (aside,) = damaged.parent.glob(f"{damaged.name}.corrupt-*")
    assert aside.name in said[0] and (aside / "model.safetensors").is_file()  # kept as found
    assert "1 already done" in result.out  # the cell computed from it is computed again
    same_numbers(run_dir, clean[1])


def test_a_deleted_or_truncated_checkpoint_file_is_found_and_retrained(clean, tmp_path, cli):
    config, run_dir = copy_of(clean, tmp_path, cells=False)
    deleted = leaf_dir(config, ("instructions", "refusals"))
    (deleted / "model.safetensors").unlink()
    truncated = leaf_dir(config, ("refusals", "instructions")) / "model.safetensors"
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    (leaf_dir(config, ("instructions",)) / "prefix.json").unlink()  # the record itself
    result = cli("run", config)
    assert result.code == 0, result.err
    said = set_aside(result.out)
    assert len(said) == 3, result.out
    assert any("missing model.safetensors" in s for s in said)
    assert any("model.safetensors does not hold the bytes" in s for s in said)
    assert any("prefix.json is missing or unreadable" in s for s in said)
    assert len(list((run_dir / "prefixes").glob("*.corrupt-*"))) == 3
    same_numbers(run_dir, clean[1])


# ---------------------------------------------------------------------------- stages


def test_a_stage_whose_loss_is_not_finite_stops_with_one_line_and_no_done(tmp_path, cli):
    config = write_config(tmp_path)
    line = one_error(cli("run", config, "training.lr=1e9"))
    assert "stage " in line and "training.lr" in line and "1e+09" in line, line
    run_dir = tmp_path / "runs" / "small"
    assert list(run_dir.glob("prefixes/*/DONE")) == []
    assert not (run_dir / "cells").exists() or list((run_dir / "cells").rglob("*")) == []
    assert [p for p in (run_dir / "prefixes").iterdir()] == []  # no partial write either


def test_a_stage_cut_to_nothing_by_max_length_is_found_at_check_time(tmp_path, cli):
    long = tmp_path / "long.jsonl"
    prompt = " ".join(["please tell me more about the weather today"] * 60)
    long.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"{i} {prompt}"},
        {"role": "assistant", "content": "It is sunny."}]}) + "\n" for i in range(8)))
    data = {**SMALL, "stages": {**SMALL["stages"], "instructions": {"source": str(long)}}}
    config = write_config(tmp_path / "study", data)
    line = one_error(cli("run", config))
    assert line.startswith("stages.instructions: every answer of its 8 example(s) is cut off "
                           "by model.max_length (256 tokens)"), line
    assert not (tmp_path / "study" / "runs").exists()
