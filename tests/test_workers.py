"""The local executor on worker processes (``executor.workers``, issue 29): the same run
directory and numbers as one process, nothing half-written when a worker dies, and the
first cell of a path model before its others (they read its step 0 back).

One in-process run of a reduced config (1 path, NPO, 2 seeds) is the reference; the same
config then runs on 2 spawned workers, whose first cell's worker kills itself with SIGKILL at
its first step: the run stops (what finished is kept), the rerun ends with the reference's
results.json, rows and model bytes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from pathunlearn.config import load_config
from pathunlearn.executors import cell_leaders
from pathunlearn.plan import plan_run
from pathunlearn.rundir import unit_dir
from test_executors import KILL_ONCE
from test_resilience import REDUCED, rows_of

pytestmark = pytest.mark.usefixtures("one_thread")  # the workers' 1 thread each


def write_config(directory: Path, *, workers: int) -> Path:
    (directory / "kill_once.py").write_text(KILL_ONCE)
    data = {**REDUCED, "seeds": [0, 1], "output_dir": str(directory / "runs"),
            "paths": {**REDUCED["paths"], "positions": [2]},
            "executor": {"workers": workers},
            "unlearning": {**REDUCED["unlearning"],
                           "methods": [{"name": f"{directory / 'kill_once.py'}:KillOnceNPO"}]}}
    path = directory / "small.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The config's run in this process (workers: 1): its run directory."""
    from pathunlearn.experiment import run_experiment

    directory = tmp_path_factory.mktemp("one_process")
    config = write_config(directory, workers=1)
    run_experiment(load_config(config), log=lambda *a: 0, figures=False)
    return directory / "runs" / "small"


def test_two_workers_equal_one_process_even_when_a_worker_is_killed(reference, tmp_path,
                                                                     cli):
    config = write_config(tmp_path, workers=2)
    (tmp_path / "ARMED").touch()  # the first cell's worker dies at its first step
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="failed in the worker processes.*rerun to resume"):
        cli("run", config, "--no-figures")  # a worker that died is not a user's error
    assert (tmp_path / "FIRED").is_file()
    run_dir = tmp_path / "runs" / "small"
    # the prefixes (trained before any cell) are kept, nothing is half-written
    assert len(list(run_dir.glob("prefixes/*/DONE"))) == len(list(
        reference.glob("prefixes/*/DONE")))
    assert [p for top in ("prefixes", "cells", "cache") for p in (run_dir / top).rglob(".*")
            if p.name.endswith((".tmp", ".old"))] == []
    again = cli("run", config, "--no-figures")
    print(f"2 workers, killed and rerun: {time.monotonic() - started:.1f} s")
    assert again.code == 0, again.err + again.out
    assert "on 2 worker processes of 1 torch thread(s) each" in again.out
    assert json.loads((run_dir / "results.json").read_text()) == json.loads(
        (reference / "results.json").read_text())
    rows, ref_rows = rows_of(run_dir), rows_of(reference)
    assert rows.keys() == ref_rows.keys() and len(rows) == 6  # 2 prefixes, 2 cells x 2 files
    assert [k for k in rows if rows[k] != ref_rows[k]] == []
    for ref in sorted(reference.glob("prefixes/*/model.safetensors")):
        assert (run_dir / ref.relative_to(reference)).read_bytes() == ref.read_bytes()
    phases = json.loads((run_dir / "phases.json").read_text())
    assert {"train", "unlearn"} <= set(phases)
    # the path model's seed-1 cell waited for its seed-0 cell and took its step 0 (read back
    # from the run's cache, or kept by the worker that measured it)
    step0 = [json.loads(p.read_text())["step0"] for p in run_dir.glob("cells/*/*/1/summary.json")]
    assert len(step0) == 1 and set(step0) <= {"read", "shared"}, step0
    # a rerun has nothing to do: the local executor's lines, no worker started
    done = cli("run", config, "--no-figures")
    assert done.code == 0 and "2 unlearning cells, 2 already done" in done.out
    assert "worker processes" not in done.out


def test_a_cell_waits_for_the_first_cell_of_its_path_model_and_seed(tmp_path):
    config = load_config(write_config(tmp_path, workers=2))
    plan = plan_run(config, check=False)
    cells = list(plan.cells)
    waits = cell_leaders([*plan.prefixes, *cells])
    assert waits[: len(plan.prefixes)] == [set()] * len(plan.prefixes)
    offset = len(plan.prefixes)
    for i, cell in enumerate(cells):
        first = next(j for j, c in enumerate(cells) if c.model_key == cell.model_key)
        seed = next(j for j, c in enumerate(cells)
                    if (c.model_key, c.seed) == (cell.model_key, cell.seed))
        assert waits[offset + i] == {offset + first, offset + seed} - {offset + i}
    assert sum(not w for w in waits[offset:]) == len({c.model_key for c in cells})


def test_workers_are_the_local_executors_in_a_plain_process(tmp_path, monkeypatch):
    """The demo's workers: 2 is no error with --executor ray or under torchrun: Ray's tasks
    and torchrun's ranks are the processes there."""
    from pathunlearn import distributed
    from pathunlearn.executors import local_workers

    path = write_config(tmp_path, workers=2)
    assert local_workers(load_config(path)) == 2
    assert local_workers(load_config(path, ["executor.kind=ray"])) == 1
    monkeypatch.setattr(distributed, "world", lambda: 2)
    assert local_workers(load_config(path)) == 1
    with pytest.raises(Exception, match="workers"):
        load_config(path, ["executor.workers=0"])


LOCAL = ("unit(s) failed in the worker processes", "unit(s)")
"""How run_in_processes names its failures."""


def test_a_failed_unit_is_raised_with_its_name_a_users_error_as_one(tmp_path):
    from concurrent.futures.process import BrokenProcessPool

    from pathunlearn.errors import DataError
    from pathunlearn.executors import _raise_failure

    cell = plan_run(load_config(write_config(tmp_path, workers=2)), check=False).cells[0]
    with pytest.raises(DataError) as bad:
        _raise_failure([(cell, DataError("stage x: record 3: no answer"))], *LOCAL)
    assert str(bad.value) == f"{unit_dir('', cell)}: stage x: record 3: no answer"
    with pytest.raises(RuntimeError, match=r"2 unit\(s\) failed .*\(and 1 more unit\(s\)\); "
                       "what finished is kept") as died:
        _raise_failure([(cell, BrokenProcessPool("killed")), (cell, BrokenProcessPool(""))],
                       *LOCAL)
    assert isinstance(died.value.__cause__, BrokenProcessPool)


SLOW_NPO = '''"""NPO that says it started, then takes minutes over its first step."""
import time
from pathlib import Path

from pathunlearn.methods import NPO


class SlowNPO(NPO):
    name = "snpo"

    def forget_loss(self, batch):
        Path(__file__).with_name("STARTED").touch()
        time.sleep(300)
        return super().forget_loss(batch)
'''


def test_ctrl_c_stops_the_workers_at_once_and_leaves_nothing_half_written(tmp_path):
    """A terminal's ctrl-c (SIGINT to the whole process group) while both workers are inside
    a cell: the run ends within seconds with the interrupted line and exit code 130, no
    worker is left, nothing is half-written, and the trained prefixes are kept."""
    import os
    import signal
    import subprocess
    import sys

    (tmp_path / "slow.py").write_text(SLOW_NPO)
    path = write_config(tmp_path, workers=2)
    data = yaml.safe_load(path.read_text())
    data["unlearning"]["methods"] = [{"name": f"{tmp_path / 'slow.py'}:SlowNPO"}]
    path.write_text(yaml.safe_dump(data))
    run = subprocess.Popen([sys.executable, "-m", "pathunlearn", "run", str(path), "-q"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while not (tmp_path / "STARTED").exists():
        assert run.poll() is None, run.communicate()
        assert time.monotonic() < deadline, "no cell started"
        time.sleep(0.1)
    time.sleep(0.5)  # the other worker's cell too, most of the time
    stopped = time.monotonic()
    os.killpg(run.pid, signal.SIGINT)
    out, err = run.communicate(timeout=60)
    assert time.monotonic() - stopped < 20  # the cells sleep for 300 s
    assert run.returncode == 130, out + err
    assert err.strip() == ("interrupted: finished stages and cells are kept; rerun to "
                           "resume")
    run_dir = tmp_path / "runs" / "small"
    assert len(list(run_dir.glob("prefixes/*/DONE"))) == 2
    assert list(run_dir.glob("cells/**/DONE")) == []
    assert [p for top in ("prefixes", "cells", "cache") for p in (run_dir / top).rglob(".*")
            if p.name.endswith((".tmp", ".old"))] == []
    deadline = time.monotonic() + 10  # no process of the run's session is left
    while (alive := subprocess.run(["pgrep", "-a", "-s", str(run.pid)], capture_output=True,
                                   text=True).stdout.strip()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert alive == ""
