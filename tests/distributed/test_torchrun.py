"""One training run on 2 processes (torchrun, gloo on CPU) computes what 1 process does.

Each test launches ``torchrun --standalone --nproc_per_node 2 -m pathunlearn ...`` as a user
would (``python -m torch.distributed.run`` is torchrun) on the tiny preset: two stages of 9
examples, batch 4 in micro-batches of 1 (two passes per rank, and a last step of one example,
so rank 1 makes a padding pass), then one GA cell of 2 steps. SGD rather than the default
AdamW: Adam divides each gradient element by its own size, so it hides a wrong normalisation
(a gradient twice too large moves the weights the same) and turns float rounding of the
near-zero elements into differences of a fraction of the learning rate; SGD shows both.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pathunlearn.config import validate_config
from pathunlearn.experiment import unlearn

CONFIG = {
    "name": "d", "seeds": [0],
    "model": {"finetuning": "full"},
    "stages": {"instructions": {"source": "builtin:instructions", "max_examples": 9},
               "refusals": {"source": "builtin:refusals", "max_examples": 9}},
    "paths": {"forget_stage": "refusals", "orders": [["instructions", "refusals"]]},
    "training": {"optimizer": "sgd", "lr": 0.05, "batch_size": 4, "micro_batch_size": 1,
                 "seed": 0},
    "unlearning": {"methods": [{"name": "ga"}], "optimizer": "sgd", "lr": 0.01,
                   "batch_size": 4, "micro_batch_size": 1, "steps": 2, "eval_every": 1,
                   "save_model": True},
    "probes": {"prompts": 2, "examples": 4, "heldout": 2},
}
PROBES = ("forget_label_id/target", "forget_label_id/all_mean", "forget_label_ood/all_mean",
          "forget_response/mean", "instructions_train/mean", "re_retrain/kl", "re_retrain/mse")


def torchrun(cwd: Path, *args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node NPROC -m pathunlearn ARGS`` in ``cwd``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", str(nproc), "-m", "pathunlearn", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def weights(run_dir: Path) -> dict[str, dict]:
    """Every safetensors file under ``run_dir`` by its relative path, loaded."""
    from safetensors.torch import load_file

    return {str(p.relative_to(run_dir)): load_file(p)
            for p in sorted(run_dir.rglob("*.safetensors"))}


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def cell_rows(run_dir: Path) -> list[dict]:
    (path,) = run_dir.glob("cells/*/ga/0/metrics.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The study in one process (in this one), then under torchrun with DDP."""
    root = tmp_path_factory.mktemp("torchrun")
    (root / "c.yaml").write_text(yaml.safe_dump(CONFIG))
    one = root / "one"
    cfg = validate_config({**CONFIG, "output_dir": str(one)})
    torch_threads = __import__("torch").get_num_threads()
    __import__("torch").set_num_threads(1)
    try:
        started = time.perf_counter()
        unlearn(cfg, log=lambda *_: None)
        seconds_one = time.perf_counter() - started
    finally:
        __import__("torch").set_num_threads(torch_threads)
    started = time.perf_counter()
    out = torchrun(root, "unlearn", "c.yaml", "output_dir=ddp")
    assert out.returncode == 0, out.stderr[-3000:]
    return {"root": root, "one": one / "d", "ddp": root / "ddp" / "d", "out": out,
            "seconds": (seconds_one, time.perf_counter() - started)}


def test_ddp_on_two_processes_gives_the_weights_of_one(runs):
    one, ddp = weights(runs["one"]), weights(runs["ddp"])
    assert len(one) == 3  # two path-model prefixes and the unlearned cell's model
    for name in one:
        assert max_diff(one[name], ddp[name]) <= 1e-5, name
    # and the same losses, step by step (every rank logs the whole step's loss)
    for path in runs["one"].glob("prefixes/*/metrics.jsonl"):
        a = [json.loads(x) for x in path.read_text().splitlines()]
        b = [json.loads(x) for x in (runs["ddp"] / path.relative_to(runs["one"]))
             .read_text().splitlines()]
        assert [r["target_tokens"] for r in a] == [r["target_tokens"] for r in b]
        assert [r["loss"] for r in a] == pytest.approx([r["loss"] for r in b], abs=1e-5)


def test_ddp_tracks_the_probes_of_one_process(runs):
    a, b = cell_rows(runs["one"]), cell_rows(runs["ddp"])
    assert [r["step"] for r in a] == [r["step"] for r in b] == [0, 1, 2]
    # the two runs' weights are float32 summation order apart (DDP's all-reduce adds the
    # ranks' halves; one process adds the micro-batches in turn; a wrong gradient is the
    # weights test's to catch): up to 1e-5 of a tensor's largest element after the GA steps,
    # and the probes scored on them drift alike: seen up to 5.1e-6 relative at step 0,
    # 1.0e-5 at step 1 (re_retrain/mse, of 25.46), 2.4e-5 at step 2
    for ra, rb in zip(a, b, strict=True):
        for key in PROBES:
            assert rb[key] == pytest.approx(ra[key], rel=5e-5, abs=1e-6), (ra["step"], key)
        assert rb["re_tokens"] == pytest.approx(ra["re_tokens"], abs=1e-3)
    # rank 0 alone wrote: one line per step, the lock released, no scratch left in the run
    assert not (runs["ddp"] / ".lock").read_text()
    assert not [p for p in runs["ddp"].rglob("*") if p.name.endswith((".tmp", ".old"))]
    assert runs["out"].stdout.count("1 unlearning cells") == 1  # rank 1 prints nothing


def test_two_processes_resume_a_run_score_as_one_process_and_report_once(runs):
    # the path models of the 1-process run, its cell removed: torchrun skips the DONE
    # prefixes and scores the same models, so step 0 is the same to float rounding
    resumed = runs["root"] / "resumed" / "d"
    shutil.copytree(runs["one"], resumed)
    shutil.rmtree(next(resumed.glob("cells/*/ga/0")))
    out = torchrun(runs["root"], "run", "c.yaml", "output_dir=resumed")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "2 already done" in out.stdout
    # `run`: rank 0 writes the report, rank 1 reads it back; one report line printed
    assert (resumed / "report.html").is_file() and (resumed / "results.json").is_file()
    assert out.stdout.count("report: ") == 1
    first, again = cell_rows(runs["one"])[0], cell_rows(resumed)[0]
    # float32 sums split over two ranks add in another order: equal to a few float32 ulps
    # (relative 1e-6; seen: 7e-8 on an MSE of 25.4), exactly what summation order can change
    for key in PROBES:
        assert again[key] == pytest.approx(first[key], rel=1e-6, abs=1e-6), key
    assert again["re_tokens"] == pytest.approx(first["re_tokens"], rel=1e-6, abs=1e-5)


def test_accelerate_launch_trains_what_one_process_does(runs):
    """``accelerate launch --multi_gpu`` (torchrun underneath; on CPU it falls back to gloo)
    sets the same environment: 2 processes, the weights of one. (``--cpu`` would launch a
    single process.)"""
    pytest.importorskip("accelerate")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
                          "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
                          "no", "--dynamo_backend", "no", "-m", "pathunlearn", "train",
                          "c.yaml", "output_dir=accelerate"],
                         cwd=runs["root"], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("2 stage-trainings planned") == 1  # rank 1 prints nothing
    one = {k: v for k, v in weights(runs["one"]).items() if k.startswith("prefixes/")}
    launched = weights(runs["root"] / "accelerate" / "d")
    assert one.keys() == launched.keys()
    for name in one:
        assert max_diff(one[name], launched[name]) <= 1e-5, name


def test_fsdp2_on_two_cpu_processes_trains_what_ddp_does(runs):
    out = torchrun(runs["root"], "train", "c.yaml", "output_dir=fsdp",
                   "distributed.strategy=fsdp")
    assert out.returncode == 0, out.stderr[-3000:]
    fsdp, ddp = weights(runs["root"] / "fsdp" / "d"), weights(runs["ddp"])
    assert len(fsdp) == 2
    for name in fsdp:
        assert max_diff(fsdp[name], ddp[name]) <= 1e-5, name
    # an ordinary checkpoint: the whole model in one file, the tied head once
    from transformers import AutoModelForCausalLM

    directory = (runs["root"] / "fsdp" / "d" / next(iter(fsdp))).parent
    model = AutoModelForCausalLM.from_pretrained(directory, use_safetensors=True)
    assert "lm_head.weight" not in fsdp[next(iter(fsdp))]
    state = model.state_dict()
    assert max(float((state[k] - v).abs().max()) for k, v in fsdp[next(iter(fsdp))].items()) == 0


def test_a_world_size_that_does_not_divide_the_batch_is_one_line(tmp_path):
    root = tmp_path
    (root / "c.yaml").write_text(yaml.safe_dump(CONFIG))
    out = torchrun(root, "train", "c.yaml", "output_dir=bad", "training.batch_size=3")
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert errors == ["error: training.batch_size: 3 examples do not split over the 2 "
                      "processes the launcher started (WORLD_SIZE=2); use a multiple of 2"]
    # rank 0 exits 2 (rank 1 waits for it, silent, and torchrun stops it); torchrun itself
    # exits 1 with its report of the failed ranks (its own traceback, no frame of ours)
    assert out.returncode == 1
    assert "rank      : 0 (local_rank: 0)\n  exitcode  : 2" in out.stderr
    assert not [line for line in out.stderr.splitlines()
                if line.strip().startswith("File") and "/pathunlearn/" in line]
    assert not (root / "bad").exists()


def test_the_check_runs_before_anything_is_written(tmp_path, monkeypatch, cli):
    # what each rank does, in this process: the launcher's WORLD_SIZE read before any work
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({**CONFIG, "output_dir": "runs"}))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = cli("unlearn", "c.yaml", "unlearning.batch_size=5")
    assert result.code == 2
    assert result.err.strip().splitlines() == [
        "error: unlearning.batch_size: 5 examples do not split over the 2 processes the "
        "launcher started (WORLD_SIZE=2); use a multiple of 2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]
    monkeypatch.setenv("RANK", "1")  # another rank: exit 2 without a word (after a wait)
    monkeypatch.setattr("time.sleep", lambda _: None)
    result = cli("unlearn", "c.yaml", "unlearning.batch_size=5")
    assert result.code == 2 and not result.err.strip()


def test_a_config_error_under_torchrun_is_printed_once(tmp_path):
    # a typo in an override fails while the config loads, before any rank joins a group:
    # rank 0 prints it, rank 1 says nothing (and is stopped once rank 0 exited with 2)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(CONFIG))
    out = torchrun(tmp_path, "train", "c.yaml", "output_dir=bad", "training.lrr=1e-4")
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert errors == ["error: training.lrr=1e-4: unknown key; did you mean training.lr?"]
    assert "rank      : 0 (local_rank: 0)\n  exitcode  : 2" in out.stderr
    assert not [line for line in out.stderr.splitlines()  # torchrun's traceback, none of ours
                if line.strip().startswith("File") and "/pathunlearn/" in line]
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("args", [["train", "c.yaml", "training.lrr=1e-4"],
                                  ["train", "c.yaml", "--bogus"]])
def test_every_rank_exits_2_and_only_rank_0_says_why(tmp_path, monkeypatch, cli, args):
    # what each rank does with an error of the config or the command line, in this process
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(CONFIG))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    first = cli(*args)
    assert first.code == 2 and len(first.err.strip().splitlines()) == 1, first.err
    waited = []
    monkeypatch.setattr("time.sleep", waited.append)
    monkeypatch.setenv("RANK", "1")
    other = cli(*args)
    assert other.code == 2 and other.err == "" and waited == [10]
