"""The Ray executor (issue 17, part 2): the same study as the local executor, task by task.

One local run of a reduced config is the reference; the same config then runs as Ray tasks on
a local Ray instance of 2 CPUs (shared by the module), with one worker killed by SIGKILL in the
middle of a cell: Ray reruns the task, and the run ends with the reference's results.json and
rows and nothing half-written. Bad inputs (no Ray, nowhere to connect) are one line, exit 2,
nothing written.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import yaml

from pathunlearn.config import load_config
from pathunlearn.executors import dependencies, todo
from pathunlearn.plan import Cell, plan_run
from pathunlearn.rundir import unit_dir
from test_resilience import REDUCED, rows_of

pytestmark = pytest.mark.usefixtures("one_thread")  # the numbers of a 1-CPU Ray task

KILL_ONCE = '''"""NPO whose first forget loss after the file ARMED appears kills its own process."""
import os
import signal
from pathlib import Path

from pathunlearn.methods import NPO


class KillOnceNPO(NPO):
    name = "knpo"

    def forget_loss(self, batch):
        armed = Path(__file__).with_name("ARMED")
        try:
            armed.rename(armed.with_name("FIRED"))  # one attempt takes it
        except FileNotFoundError:
            pass
        else:
            os.kill(os.getpid(), signal.SIGKILL)  # mid-cell: its directory is half-written
        return super().forget_loss(batch)
'''
ENGINES = ("ray", "mlflow", "wandb", "tensorboard", "fastapi", "uvicorn", "openai")


def write_config(directory: Path, name: str = "small") -> Path:
    (directory / "kill_once.py").write_text(KILL_ONCE)
    data = {**REDUCED, "name": name, "output_dir": str(directory / "runs"),
            "unlearning": {**REDUCED["unlearning"],
                           "methods": [{"name": f"{directory / 'kill_once.py'}:KillOnceNPO"}]}}
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    directory = tmp_path_factory.mktemp("executors")
    return directory, write_config(directory)


@pytest.fixture(scope="module")
def reference(workspace):
    """The local executor's run of the config: its run directory."""
    from pathunlearn.experiment import run_experiment

    directory, config = workspace
    started = time.monotonic()
    run_experiment(load_config(config, [f"output_dir={directory / 'local'}"]), log=lambda *a: 0)
    print(f"local run: {time.monotonic() - started:.1f} s")
    return directory / "local" / "small"


@pytest.fixture(scope="module")
def ray_instance():
    """One local Ray instance of 2 CPUs for the module (the executor uses it: connected)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_run_equals_the_local_run_even_when_a_worker_is_killed(workspace, reference,
                                                                   ray_instance, cli):
    directory, config = workspace
    (directory / "ARMED").touch()  # the first cell's worker dies at its first step
    started = time.monotonic()
    result = cli("run", config, "--executor", "ray", "tracking.tensorboard={}")
    print(f"ray run: {time.monotonic() - started:.1f} s")
    assert result.code == 0, result.err + result.out
    assert (directory / "FIRED").is_file() and not (directory / "ARMED").exists()
    run_dir = directory / "runs" / "small"
    assert json.loads((run_dir / "results.json").read_text()) == json.loads(
        (reference / "results.json").read_text())
    rows, ref_rows = rows_of(run_dir), rows_of(reference)
    assert rows.keys() == ref_rows.keys() and len(rows) == 8  # 4 prefixes, 2 cells x 2 files
    assert [k for k in rows if rows[k] != ref_rows[k]] == []
    for ref in sorted(reference.glob("prefixes/*/model.safetensors")):
        assert (run_dir / ref.relative_to(reference)).read_bytes() == ref.read_bytes()
    leftovers = [p for top in ("prefixes", "cells") for p in (run_dir / top).rglob(".*")]
    assert leftovers == [] and "ray: removed 1 partial write(s) of killed tasks" in result.out
    assert "train + unlearn (ray)" in json.loads((run_dir / "phases.json").read_text())
    # issue 29: the killed task measured its path model's step 0 before it died; its retry
    # (another Ray task) read it back from RUN_DIR/cache/step_zero, and the numbers above
    # equal the local run's
    step0 = {json.loads(p.read_text())["step0"] for p in run_dir.glob("cells/**/summary.json")}
    assert "read" in step0, step0
    # tracking from the driver as tasks finish: every prefix and cell, then the table
    logged = json.loads((run_dir / "tracking.json").read_text())["tensorboard"]["logged"]
    plan = plan_run(load_config(config), check=False)
    assert set(logged) - {k for k in logged if k.startswith("table:")} == {
        u.key for u in (*plan.prefixes, *plan.cells)}
    # a rerun on Ray submits nothing
    again = cli("run", config, "--executor", "ray")
    assert again.code == 0 and "0 stage-training task(s) and 0 cell task(s)" in again.out


def test_ray_sets_a_damaged_prefix_aside_and_retrains_it_before_it_schedules(
        workspace, reference, ray_instance, cli, tmp_path):
    """Issue 24: the Ray executor verifies finished prefixes as the local one does; the cell
    computed from the damaged one runs again, after it."""
    import shutil

    _, config = workspace
    run_dir = tmp_path / "small"
    for top in ("prefixes", "cells"):
        shutil.copytree(reference / top, run_dir / top)
    cfg = load_config(config, [f"output_dir={tmp_path}"])
    damaged = unit_dir(run_dir, plan_run(cfg, check=False).prefixes[-1])  # a path model
    weights = (damaged / "model.safetensors").read_bytes()
    middle = len(weights) // 2  # same size, 16 bytes of tensor data flipped
    (damaged / "model.safetensors").write_bytes(
        weights[:middle] + bytes(b ^ 0xFF for b in weights[middle:middle + 16])
        + weights[middle + 16:])
    result = cli("run", config, f"output_dir={tmp_path}", "--executor", "ray")
    assert result.code == 0, result.err + result.out
    said = " ".join(result.out.split())
    assert said.count("; set aside as ") == 1 and "model.safetensors does not hold" in said
    assert "ray: 1 stage-training task(s) and 1 cell task(s) to run" in said
    (aside,) = run_dir.glob("prefixes/*.corrupt-*")
    assert aside.name.startswith(damaged.name) and aside.name in said
    assert (damaged / "model.safetensors").read_bytes() == weights  # retrained, bit-identical
    assert json.loads((run_dir / "results.json").read_text()) == json.loads(
        (reference / "results.json").read_text())
    rows = {k: v for k, v in rows_of(run_dir).items() if ".corrupt-" not in k}
    assert rows == rows_of(reference)


def test_the_units_wait_for_the_models_they_start_from(workspace):
    directory, config = workspace
    cfg = load_config(config, [f"output_dir={directory / 'nowhere'}",
                               "controls.matched_start={tolerance: 0.05}"])
    plan = plan_run(cfg)
    units = todo(cfg, plan, cfg.run_dir)
    assert len(units) == len(plan.prefixes) + len(plan.matched) + len(plan.cells) == 4 + 1 + 3
    made: set[str] = set()
    for unit in units:
        assert set(dependencies(unit)) <= made, unit
        if not isinstance(unit, Cell):
            made.add(unit.key)
    (matched,) = plan.matched
    assert set(dependencies(matched)) == {matched.parent_key, *matched.others}


def test_executor_and_tracking_settings_are_in_no_key(workspace):
    directory, config = workspace
    base = plan_run(load_config(config), check=False).to_json()
    other = plan_run(load_config(config, [
        "executor={kind: ray, address: 'ray://head:10001', num_cpus: 4, num_gpus: 1}",
        "tracking={mlflow: {}, tensorboard: {}}"]), check=False).to_json()
    assert other == base


# ---------------------------------------------------------------------------- bad inputs


def test_executor_ray_without_ray_is_one_line_and_writes_nothing(workspace, tmp_path,
                                                                 monkeypatch, cli):
    _, config = workspace
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    out = tmp_path / "out"
    result = cli("run", config, f"output_dir={out}", "--executor", "ray")
    assert result.code == 2, result.err + result.out
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.err
    assert lines[0] == ("error: executor.kind: needs the `ray` package, which is not "
                        "installed: pip install 'pathunlearn[ray]'")
    assert not out.exists()


def test_an_unreachable_ray_address_fails_in_seconds_and_writes_nothing(workspace, tmp_path,
                                                                      cli):
    _, config = workspace
    out = tmp_path / "out"
    started = time.monotonic()
    result = cli("run", config, f"output_dir={out}", "--address", "127.0.0.1:1")
    assert time.monotonic() - started < 10
    assert result.code == 2, result.err + result.out
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.err
    assert "executor.address: no Ray cluster answers at 127.0.0.1:1" in lines[0]
    assert not out.exists()


def test_a_missing_tracking_library_is_one_line(workspace, tmp_path, monkeypatch, cli):
    _, config = workspace
    monkeypatch.setitem(sys.modules, "mlflow", None)
    out = tmp_path / "out"
    result = cli("run", config, f"output_dir={out}", "tracking.mlflow={}")
    assert result.code == 2 and "Traceback" not in result.err
    assert result.err.strip() == ("error: tracking.mlflow: needs the `mlflow` package, which "
                                  "is not installed: pip install 'pathunlearn[mlflow]'")
    assert not out.exists()


# ---------------------------------------------------------------------------- a light install


def test_no_engine_is_a_dependency_of_the_package():
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    base = " ".join(project["project"]["dependencies"]).lower()
    assert not [e for e in ENGINES if e in base]
    extras = project["project"]["optional-dependencies"]
    assert any(d.startswith("ray") for d in extras["ray"])
    assert any(d.startswith("mlflow") for d in extras["mlflow"])
    assert any(d.startswith("wandb") for d in extras["wandb"])
    assert any(d.startswith("fastapi") for d in extras["serve"])
    assert any(d.startswith("openai") for d in extras["llm"])


def test_the_cli_imports_no_engine():
    code = ("import sys\nsys.argv = ['pathunlearn', '--help']\nfrom pathunlearn.cli import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            f"print('ENGINES', [m for m in {ENGINES!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "--executor" not in out.stdout  # the top-level help lists commands only
    assert out.stdout.strip().splitlines()[-1] == "ENGINES []"


def test_run_help_names_the_executor_options(cli):
    result = cli("run", "--help")
    assert result.code == 0
    assert "--executor" in result.out and "--address" in result.out


# ---------------------------------------------------------------------------- failures


class FakeRay:
    """What _wait_all uses of ray: refs are strings, a failed one raises its error."""

    class exceptions:  # noqa: N801 - the module's name
        RayError = RuntimeError

    def __init__(self, outcomes: dict[str, object]):
        self.outcomes = outcomes

    def wait(self, refs, num_returns):
        return refs[:num_returns], refs[num_returns:]

    def get(self, ref):
        if isinstance(self.outcomes[ref], Exception):
            raise self.outcomes[ref]
        return self.outcomes[ref]


def test_a_failed_task_is_reported_once_and_its_dependents_are_skipped(workspace):
    from pathunlearn.executors import _raise_failure, _wait_all

    _, config = workspace
    cfg = load_config(config)
    plan = plan_run(cfg, check=False)
    root, child = plan.prefixes[0], plan.prefixes[1]
    cell = next(c for c in plan.cells if c.model_key == child.key)
    pending = {"a": (root, []), "b": (child, [root.key]), "c": (cell, [child.key])}
    error = RuntimeError("worker died 4 times")
    said, done = [], []
    failed = _wait_all(FakeRay({"a": error, "b": error, "c": error}), pending, cfg,
                       said.append, lambda u, s: done.append(u), None)
    assert failed == [(root, error)] and done == []
    assert said[0].startswith(f"ray: FAILED prefix seed 0: {root.label}: RuntimeError")
    assert [s.split(":")[1].strip() for s in said[1:]] == [
        "skipped prefix seed 0", f"skipped {unit_dir('', cell)}"]
    with pytest.raises(RuntimeError, match="1 Ray task.s. failed, first prefix seed 0"):
        _raise_failure(failed)


def test_a_worker_that_does_not_see_the_run_directory_says_so(workspace, tmp_path):
    import os

    from pathunlearn.errors import UserError
    from pathunlearn.executors import TaskContext, run_unit

    _, config = workspace
    cfg = load_config(config)
    plan = plan_run(cfg, check=False)
    context = TaskContext(cfg, plan, str(tmp_path / "not-shared"), os.getcwd(), {}, 1)
    with pytest.raises(UserError, match="does not see the run directory .*not-shared"):
        run_unit(context, plan.prefixes[0])
    context = TaskContext(cfg, plan, str(tmp_path), str(tmp_path / "gone"), {}, 1)
    with pytest.raises(UserError, match="has no directory .*gone"):
        run_unit(context, plan.prefixes[0])
