"""lm-eval-harness tasks on pathunlearn models (pathunlearn.eval.lmeval; issue 26, item 5).

The local task (tests/eval/lmeval_task/: six multiple-choice questions over a JSONL file) runs
on the tiny model with the network blocked, and its scores are recomputed from the model's own
log-probabilities of each choice.
"""

from __future__ import annotations

import json
import math
import random
import socket
import sys
from pathlib import Path

import pytest
import torch
import yaml

from pathunlearn.errors import UserError
from pathunlearn.eval.lmeval import (
    anchor_data_files,
    evaluate,
    evaluate_saved,
    format_results,
    model_request,
)
from pathunlearn.models import load_pretrained
from pathunlearn.tiny import tiny_location

TASK_DIR = Path(__file__).parent / "lmeval_task"
TASK = "pathunlearn_everyday"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny():
    return load_pretrained(tiny_location())


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No hub, no network, a fresh datasets cache, and a working directory that is not the
    task's (its data file is named relative to its YAML)."""
    pytest.importorskip("lm_eval")
    import datasets

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    connect = socket.socket.connect

    def no_network(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise AssertionError(f"network access to {address}")
        return connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def choice_logprob(model, tokenizer, context: str, choice: str) -> float:
    """log p(" choice" | context), split into tokens as lm-eval splits a causal pair: the
    continuation is what the whole string has beyond the context's tokens."""
    whole = tokenizer.encode(context + " " + choice)
    start = len(tokenizer.encode(context))
    assert 0 < start < len(whole)
    with torch.no_grad():
        logp = model(torch.tensor([whole])).logits.log_softmax(-1)[0]  # (T, V)
    return sum(logp[i - 1, whole[i]].item() for i in range(start, len(whole)))


def expected_scores(model, tokenizer, limit: int | None = None) -> dict[str, float]:
    """acc and acc_norm (log-probability per character of the choice), with lm-eval's stderr
    of a mean (sample standard deviation / sqrt(n)), over the task's first ``limit`` items."""
    items = [json.loads(line) for line in (TASK_DIR / "everyday.jsonl").read_text().splitlines()]
    acc, acc_norm = [], []
    for item in items[:limit]:
        lls = [choice_logprob(model, tokenizer, item["question"], c) for c in item["choices"]]
        norm = [ll / len(c) for ll, c in zip(lls, item["choices"], strict=True)]
        for scores in (lls, norm):  # no near-ties: the argmax is not a matter of rounding
            top = sorted(scores, reverse=True)
            assert top[0] - top[1] > 1e-3
        acc.append(float(max(range(len(lls)), key=lls.__getitem__) == item["label"]))
        acc_norm.append(float(max(range(len(norm)), key=norm.__getitem__) == item["label"]))

    def stderr(xs):
        mean = sum(xs) / len(xs)
        return math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1) / len(xs))

    return {"acc": sum(acc) / len(acc), "acc_stderr": stderr(acc),
            "acc_norm": sum(acc_norm) / len(acc_norm), "acc_norm_stderr": stderr(acc_norm)}


def test_local_task_scores_are_the_models_own_choice_log_probabilities(tiny, offline):
    model, tokenizer = tiny
    model.train()
    random.seed(7)
    torch.manual_seed(7)
    before = random.random(), torch.rand(1).item()
    random.seed(7)
    torch.manual_seed(7)

    got = evaluate(model, tokenizer, [TASK], include_path=TASK_DIR, batch_size=4)

    assert model.training  # the caller's mode is back
    assert (random.random(), torch.rand(1).item()) == before  # lm-eval's seeding undone
    model.eval()
    want = expected_scores(model, tokenizer)
    assert set(got) == {TASK} and set(got[TASK]) == set(want)
    assert 0 < got[TASK]["acc"] < 1 and got[TASK]["acc"] != got[TASK]["acc_norm"]  # a real test
    assert got[TASK]["acc"] == want["acc"] and got[TASK]["acc_norm"] == want["acc_norm"]
    assert got[TASK]["acc_stderr"] == pytest.approx(want["acc_stderr"], rel=1e-9)
    assert got[TASK]["acc_norm_stderr"] == pytest.approx(want["acc_norm_stderr"], rel=1e-9)


def test_a_saved_model_with_a_limit_writes_its_record(tiny, offline):
    out = offline / "res" / "lmeval.json"
    got = evaluate_saved(tiny_location(), load_pretrained, [TASK], include_path=str(TASK_DIR),
                         limit=3, output=out)

    assert json.loads(out.read_text()) == got
    assert list(out.parent.iterdir()) == [out]  # no temp file left beside it
    assert got["samples"] == {TASK: 3} and got["limit"] == 3 and got["lm_eval"]
    assert got["include_path"] == [str(TASK_DIR.resolve())]
    model, tokenizer = tiny
    want = expected_scores(model.eval(), tokenizer, limit=3)
    assert got["results"][TASK]["acc"] == want["acc"]
    assert got["results"][TASK]["acc_norm"] == want["acc_norm"]


def no_load(directory):
    raise AssertionError(f"loaded {directory} for a request that was refused")


def test_bad_requests_are_one_line_before_any_model_loads(offline, tmp_path):
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "gone.yaml").write_text(
        (TASK_DIR / "pathunlearn_everyday.yaml").read_text()
        .replace(f"task: {TASK}", "task: gone").replace("everyday.jsonl", "missing.jsonl"))
    with pytest.raises(UserError, match=r"lm-eval tasks gone: cannot load .*missing\.jsonl"):
        evaluate_saved(tmp_path / "no-model", no_load, ["gone"], include_path=tmp_path / "tasks")
    with pytest.raises(UserError, match=r"include path .*nowhere: not a directory"):
        evaluate(None, None, [TASK], include_path=tmp_path / "nowhere")
    with pytest.raises(UserError, match="give one or more task names"):
        evaluate(None, None, [], include_path=TASK_DIR)
    with pytest.raises(UserError, match="is a directory; give the JSON file"):
        evaluate_saved(tmp_path / "no-model", no_load, [TASK], include_path=TASK_DIR,
                       output=tmp_path)
    with pytest.raises(UserError, match=r"lm-eval limit 0: give a whole number >= 1"):
        evaluate(None, None, [TASK], include_path=TASK_DIR, limit=0)


@pytest.mark.slow  # indexes lm-eval's own ~15,000 tasks to look the name up (~6 s)
def test_an_unknown_task_name_suggests_close_ones(offline):
    with pytest.raises(UserError, match=r"'pathunlearn_everyda': not a task.*did you mean "
                                        r"pathunlearn_everyday"):
        evaluate(None, None, ["pathunlearn_everyda"], include_path=TASK_DIR)


def test_without_lm_eval_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval raises ImportError
    with pytest.raises(UserError, match=r"pip install 'pathunlearn\[lmeval\]'"):
        evaluate(None, None, [TASK])


def test_relative_data_files_are_anchored_at_the_task_file():
    base = Path("/tasks/mine")
    got = anchor_data_files({"data_files": {"test": "a.jsonl", "train": ["b.jsonl", "/abs/c"]},
                             "split": "x"}, base)
    assert got == {"data_files": {"test": "/tasks/mine/a.jsonl",
                                  "train": ["/tasks/mine/b.jsonl", "/abs/c"]}, "split": "x"}
    assert anchor_data_files({"data_files": "hf://datasets/x/y.json"}, base) == {
        "data_files": "hf://datasets/x/y.json"}
    assert anchor_data_files({"data_files": "~/d.json"}, base) == {"data_files": "~/d.json"}
    # with a data_dir, datasets reads data_files relative to it: only the directory moves
    assert anchor_data_files({"data_dir": "data", "data_files": "d.json"}, base) == {
        "data_dir": "/tasks/mine/data", "data_files": "d.json"}


def test_a_runs_model_settings_and_device_load_the_model(tmp_path):
    from pathunlearn.config import builtin_config_path

    config = yaml.safe_load(builtin_config_path("demo").read_text())
    config["model"]["dtype"], config["runtime"] = "bfloat16", {"device": "cpu"}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    model_cfg, device = model_request(tmp_path / "config.yaml", None)
    assert (model_cfg.dtype, device) == ("bfloat16", "cpu")
    assert model_request(tmp_path / "config.yaml", "cuda:1")[1] == "cuda:1"  # the flag wins
    assert model_request(None, None) == (None, "auto")
    with pytest.raises(UserError, match=r"--run .*: no config.yaml; not a run directory"):
        model_request(tmp_path / "elsewhere" / "config.yaml", None)


def test_results_print_one_line_per_score_with_its_stderr():
    text = format_results({"t": {"acc": 0.5, "acc_stderr": 0.25, "acc_norm": 1 / 3,
                                 "exact_match,strict-match": 0.1,
                                 "exact_match_stderr,strict-match": 0.05}})
    assert [line.split() for line in text.splitlines()] == [
        ["t", "acc", "0.5000", "±", "0.2500"], ["t", "acc_norm", "0.3333"],
        ["t", "exact_match,strict-match", "0.1000", "±", "0.0500"]]
