"""Experiment tracking (issue 17, part 3): MLflow, TensorBoard and W&B hold what the run wrote.

One local run of a reduced config with MLflow (a file store in a temp dir) and TensorBoard on;
the MLflow runs are read back with MLflow's own client, the event files with TensorBoard's
EventAccumulator, and compared with the run directory's rows. A rerun logs nothing twice; a
new destination gets every finished unit (backfill). W&B is tested when it is installed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pathunlearn.config import load_config
from pathunlearn.data.io import iter_jsonl
from pathunlearn.experiment import run_experiment
from pathunlearn.plan import plan_run
from pathunlearn.rundir import unit_dir
from pathunlearn.tracking import STATE, Tracker
from test_resilience import REDUCED

pytestmark = pytest.mark.usefixtures("one_thread")
mlflow = pytest.importorskip("mlflow")


@pytest.fixture(autouse=True)
def file_store(monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow >= 3.13 asks for it


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """A reduced run with MLflow and TensorBoard on: (config path, run dir, store URI, log)."""
    directory = tmp_path_factory.mktemp("tracking")
    store = (directory / "mlruns").as_uri()
    config = directory / "small.yaml"
    config.write_text(yaml.safe_dump({
        **REDUCED, "output_dir": str(directory / "runs"),
        "tracking": {"mlflow": {"tracking_uri": store, "experiment": "study"},
                     "tensorboard": {}}}))
    said: list[str] = []
    with pytest.MonkeyPatch.context() as m:
        m.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        run_experiment(load_config(config), log=said.append)
    return config, directory / "runs" / "small", store, said


def mlflow_runs(store: str, experiment: str = "study"):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store)
    found = client.get_experiment_by_name(experiment)
    return client, client.search_runs([found.experiment_id])


def test_mlflow_holds_every_cell_and_prefix_and_the_table(tracked):
    config, run_dir, store, said = tracked
    assert any(line.startswith("tracking: MLflow " + store) for line in said)
    client, runs = mlflow_runs(store)
    (study,) = [r for r in runs if r.data.tags["pathunlearn.kind"] == "study"]
    assert study.info.status == "FINISHED" and study.info.run_name == "small"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == study.info.run_id]
    plan = plan_run(load_config(config), check=False)
    cells = {r.data.tags["pathunlearn.key"]: r for r in children
             if r.data.tags["pathunlearn.kind"] == "cell"}
    prefixes = {r.data.tags["pathunlearn.key"] for r in children
                if r.data.tags["pathunlearn.kind"] == "prefix"}
    assert set(cells) == {c.key for c in plan.cells} and len(cells) == 2
    assert prefixes == {p.key for p in plan.prefixes}
    for cell in plan.cells:
        run = cells[cell.key]
        assert run.data.params["method"] == "npo" and run.data.params["seed"] == "0"
        directory = unit_dir(run_dir, cell)
        steps = list(iter_jsonl(directory / "steps.jsonl"))
        history = client.get_metric_history(run.info.run_id, "loss")
        assert [(m.step, m.value) for m in history] == [(r["step"], r["loss"]) for r in steps]
        rows = list(iter_jsonl(directory / "metrics.jsonl"))
        probe = client.get_metric_history(run.info.run_id, "forget_label_id/all_mean")
        assert [(m.step, m.value) for m in probe] == [
            (r["step"], r["forget_label_id/all_mean"]) for r in rows]
        assert "re_tokens" not in run.data.metrics  # a list, not a metric
    # the final table: every number of every row, and the files
    results = json.loads((run_dir / "results.json").read_text())
    for row in results["rows"]:
        key = f"table/{row['method']}/{row['path_label']}/forget_score"
        assert study.data.metrics[key] == pytest.approx(row["forget_score"])
    names = {a.path for a in client.list_artifacts(study.info.run_id)}
    assert {"results.json", "results.csv", "results.md", "report.html", "config.yaml"} <= names


def test_tensorboard_event_files_hold_the_steps(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config, run_dir, _, _ = tracked
    for cell in plan_run(load_config(config), check=False).cells:
        events = EventAccumulator(str(run_dir / "tensorboard" / unit_dir("", cell)))
        events.Reload()
        steps = list(iter_jsonl(unit_dir(run_dir, cell) / "steps.jsonl"))
        assert [(e.step, pytest.approx(e.value)) for e in events.Scalars("loss")] == [
            (r["step"], r["loss"]) for r in steps]
        assert "forget_label_id/all_mean" in events.Tags()["scalars"]
    table = EventAccumulator(str(run_dir / "tensorboard" / "table"))
    table.Reload()
    assert any(t.startswith("forget_score/") for t in table.Tags()["scalars"])


def test_a_rerun_logs_nothing_twice_and_a_new_store_gets_everything(tracked, tmp_path):
    config, run_dir, store, _ = tracked
    _, before = mlflow_runs(store)
    state = json.loads((run_dir / STATE).read_text())
    run_experiment(load_config(config), log=lambda *a: None)
    _, after = mlflow_runs(store)
    assert sorted(r.info.run_id for r in after) == sorted(r.info.run_id for r in before)
    assert json.loads((run_dir / STATE).read_text())["mlflow"] == state["mlflow"]
    client, _ = mlflow_runs(store)
    (study,) = [r for r in after if r.data.tags["pathunlearn.kind"] == "study"]
    assert len(client.get_metric_history(study.info.run_id,
                                         "table/npo/refusals-instructions/forget_score")) == 1
    # tracking switched on afterwards (here: another store) logs every finished unit
    other = (tmp_path / "other").as_uri()
    run_experiment(load_config(config, [f"tracking.mlflow.tracking_uri={other}"]),
                   log=lambda *a: None)
    _, backfilled = mlflow_runs(other)
    assert sorted(r.info.run_name for r in backfilled) == sorted(r.info.run_name for r in after)


def test_a_failing_backend_is_switched_off_with_one_line_and_the_run_goes_on(tmp_path):
    class Broken:
        name = "broken"

        def unit(self, record):
            raise ConnectionError("server gone")

        def close(self, failed):
            pass

    said: list[str] = []
    state = {"broken": {"destination": "x", "run_id": None, "logged": []}}
    tracker = Tracker(tmp_path, [Broken()], state, log=said.append)
    tracker._log("k1", lambda: object())
    tracker._log("k2", lambda: pytest.fail("a switched-off backend is not asked again"))
    assert said == ["tracking.broken: ConnectionError: server gone; off for the rest of this "
                    "run (rerun to log what is missing)"]
    assert state["broken"]["logged"] == []  # a rerun logs it


def test_wandb_offline_writes_a_run_per_cell(tracked, tmp_path):
    pytest.importorskip("wandb", reason="W&B is not installed (pip install 'pathunlearn[wandb]')")
    config, _, _, _ = tracked
    run_experiment(load_config(config, [f"tracking.wandb={{mode: offline, dir: {tmp_path}}}"]),
                   log=lambda *a: None)
    runs = list(Path(tmp_path, "wandb").glob("offline-run-*"))
    assert len(runs) == 4 + 2 + 1  # every prefix, every cell, the table
