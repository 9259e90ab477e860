"""`pathunlearn eval math --run` measures a path model exactly as the run's cells did (issue 24)."""

from __future__ import annotations

import json

import pytest

from pathunlearn.config import validate_config
from pathunlearn.plan import plan_run
from pathunlearn.rundir import prefix_dir
from pathunlearn.train.paths import train_paths
from pathunlearn.train.unlearn import unlearn_all

CONFIG = {
    "name": "m", "seeds": [3],
    "model": {"finetuning": "full"},
    "stages": {"instructions": {"source": "builtin:instructions", "epochs": 1, "max_examples": 16},
               "refusals": {"source": "builtin:refusals", "epochs": 1, "max_examples": 16}},
    "paths": {"forget_stage": "refusals", "order": ["instructions"], "positions": [2]},
    "training": {"lr": 5e-4, "batch_size": 8, "micro_batch_size": 8},
    # sampled (not greedy), 2 samples of 3 questions, short answers: a cheap measurement that
    # still depends on the seed, the prompt, the token budget and the sampler
    "unlearning": {"methods": [{"name": "ga"}], "lr": 2e-4, "batch_size": 8, "steps": 1,
                   "eval_every": 1,
                   "math": {"questions": 3, "samples": 2, "max_new_tokens": 40}},
    "probes": {"prompts": 2, "examples": 2},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("evalmath")
    cfg = validate_config({**CONFIG, "output_dir": str(out)})
    plan = plan_run(cfg)
    train_paths(cfg, plan, log=lambda *_: None)
    from pathunlearn.rundir import start_run

    start_run(cfg.run_dir, cfg, plan)  # config.yaml, as every command writes it
    (summary,) = unlearn_all(cfg, plan, log=lambda *_: None)
    return cfg.run_dir, prefix_dir(cfg.run_dir, plan.cells[0].model_key), summary


def test_eval_math_on_a_path_model_reproduces_its_cells_math_before(cli, run):
    run_dir, model_dir, summary = run
    r = cli("eval", "math", model_dir, "--run", run_dir, "--json")
    assert r.code == 0, r.err
    got = json.loads(r.out)
    # the run's settings and first seed (3), not eval math's own defaults
    assert got["settings"]["seed"] == 3 and got["settings"]["max_new_tokens"] == 40
    assert got["num_questions"] == 3 and got["n"] == 2
    assert got["settings"]["prompt_style"] == "plain"  # `auto` on a built-in source
    # exactly the cell's numbers: JSON floats round-trip, so == is bit for bit
    assert (got["accuracy"], got["no_answer_rate"], got["shuffled_accuracy"]) == (
        summary["math_before"], summary["math_no_answer_before"],
        summary["math_shuffled_baseline"])
    kept = got["run_math_before"]  # what the cells measured, as the run keeps it
    assert kept is not None and kept["accuracy"] == got["accuracy"]
    # and every sampled answer is the one the cell drew (the run's cache keeps each answer)
    (cache,) = (run_dir / "cache" / "math_before").glob("*.json")
    drawn = json.loads(cache.read_text())["questions"]
    assert [q["responses"] for q in drawn] == [q["responses"] for q in got["questions"]]


def test_an_option_given_overrides_the_runs_setting(cli, run):
    run_dir, model_dir, _ = run
    r = cli("eval", "math", model_dir, "--run", run_dir, "--json", "--max-new-tokens", "3",
            "--seed", "0", "--max-questions", "2")
    assert r.code == 0, r.err
    got = json.loads(r.out)
    assert (got["settings"]["max_new_tokens"], got["settings"]["seed"], got["num_questions"],
            got["n"]) == (3, 0, 2, 2)
    assert got["run_math_before"] is None  # other settings: not what the cells measured


def test_the_text_output_says_whether_it_matches_the_run(cli, run):
    run_dir, model_dir, _ = run
    r = cli("eval", "math", model_dir, "--run", run_dir)
    assert r.code == 0, r.err
    assert "seed 3" in r.out and "before unlearning: the same" in r.out


def test_a_directory_that_is_not_a_run_is_one_line(cli, run, tmp_path):
    _, model_dir, _ = run
    r = cli("eval", "math", model_dir, "--run", tmp_path)
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1 and "config.yaml" in r.err


def test_the_math_defaults_are_defined_once(cli):
    """MathConfig's defaults are evaluate_math's and `eval math`'s (issue 24 item 4: they
    were 128 / auto in a run, 256 / paper in the other two)."""
    import inspect

    from pathunlearn.config import MathConfig
    from pathunlearn.eval.math import evaluate_math

    d, params = MathConfig(), inspect.signature(evaluate_math).parameters
    assert [params[k].default for k in ("n", "temperature", "top_p", "max_new_tokens",
                                        "greedy")] == [d.samples, d.temperature, d.top_p,
                                                       d.max_new_tokens, d.greedy]
    r = cli("eval", "math", "tiny", "--max-questions", "1", "--n", "1", "--json")
    assert r.code == 0, r.err
    got = json.loads(r.out)
    assert got["settings"]["max_new_tokens"] == d.max_new_tokens and got["data"] == d.source
    assert got["settings"]["prompt_style"] == "plain"  # `auto`, on the built-in source
    assert got["run_math_before"] is None
