"""Unlearning cells on the tiny preset: probes per eval point, NPO's start, NaN guard, resume."""

from __future__ import annotations

import json
import math

import pytest

from pathunlearn import methods
from pathunlearn.config import validate_config
from pathunlearn.files import is_done
from pathunlearn.plan import plan_run
from pathunlearn.rundir import unit_dir
from pathunlearn.train.paths import train_paths
from pathunlearn.train.unlearn import unlearn_all

CONFIG = {
    "name": "u", "seeds": [0],
    "model": {"finetuning": "full"},
    "stages": {"instructions": {"source": "builtin:instructions", "epochs": 1, "max_examples": 48},
               "refusals": {"source": "builtin:refusals", "epochs": 3, "max_examples": 48}},
    "paths": {"forget_stage": "refusals", "order": ["instructions"], "positions": [1, 2]},
    "training": {"lr": 5e-4, "batch_size": 8, "micro_batch_size": 8},
    "unlearning": {"methods": [{"name": "ga"}, {"name": "npo"}, {"name": "simnpo"},
                               {"name": "graddiff"}, {"name": "npo_kl"}],
                   "lr": 2e-4, "batch_size": 8, "micro_batch_size": 4, "steps": 4,
                   "eval_every": 2},
    "probes": {"prompts": 3, "examples": 4},
}
PROBES = {"forget_label_id/target", "forget_label_id/paraphrase_mean",
          "forget_label_id/paraphrase_var", "forget_label_id/all_mean",
          "forget_label_ood/all_mean", "forget_response/mean", "instructions_train/mean"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("unlearn")
    cfg = validate_config({**CONFIG, "output_dir": str(out)})
    plan = plan_run(cfg)  # the two paths and their retrain baseline, ("instructions",)
    return cfg, train_paths(cfg, plan, log=lambda *_: None)


def rows(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_every_cell_tracks_every_probe_at_each_eval_point(trained):
    cfg, plan = trained
    summaries = unlearn_all(cfg, plan, log=lambda *_: None)
    cells = plan.cells
    assert len(summaries) == len(cells) == 10
    for cell, s in zip(cells, summaries, strict=True):
        d = unit_dir(cfg.run_dir, cell)
        assert is_done(d) and s["diverged_at"] is None and s["steps_done"] == 4
        metrics = rows(d / "metrics.jsonl")
        assert [r["step"] for r in metrics] == [0, 2, 4]
        for r in metrics:
            assert PROBES <= set(r) and all(math.isfinite(r[k]) for k in PROBES)
            assert r["re_retrain/kl"] > 0 and r["re_retrain/mse"] > 0
            assert len(r["re_tokens"]) == len(metrics[0]["re_tokens"]) > 50
        assert all(r["local"] == cell.local for r in metrics[1:])
        steps = rows(d / "steps.jsonl")
        assert len(steps) == 4
        assert (d / "config.yaml").is_file()
        # the saturation diagnostics at step 0 (issue 15)
        sat = s["saturation"]
        assert 0 < sat["forget_token_prob"] < 1 and sat["forget_logp"] < 0
        assert sat["forget_grad_norm"] > 0
        assert sat["first_step_grad_norm"] == steps[0]["grad_norm"]
    assert {c.local for c in cells} == {True, False}


def test_ga_lowers_the_forget_label_on_every_path(trained):
    cfg, plan = trained
    unlearn_all(cfg, plan, log=lambda *_: None)
    for cell in plan_run(cfg).cells:
        if cell.method.name == "ga":
            m = rows(unit_dir(cfg.run_dir, cell) / "metrics.jsonl")
            assert m[1]["forget_label_id/target"] < m[0]["forget_label_id/target"], cell.path


def test_npo_starts_at_two_over_beta_log_two(trained):
    """At step 1 the model is the reference: NPO = (2/beta) log 2 exactly (beta 0.5)."""
    cfg, plan = trained
    unlearn_all(cfg, plan, log=lambda *_: None)
    for cell in plan_run(cfg).cells:
        if cell.method.name == "npo":
            first = rows(unit_dir(cfg.run_dir, cell) / "steps.jsonl")[0]
            assert first["loss"] == pytest.approx(4 * math.log(2), abs=1e-4)


def test_finished_cells_are_not_rerun(trained):
    cfg, plan = trained
    unlearn_all(cfg, plan, log=lambda *_: None)
    logged = []
    unlearn_all(cfg, plan, log=logged.append)
    assert logged == ["10 unlearning cells, 10 already done"]


def test_nan_stops_only_its_cell(trained, monkeypatch, tmp_path):
    cfg, plan = trained
    cfg = cfg.model_copy(update={"name": "nan"})
    # reuse the trained path models: point the new run at the same prefixes directory
    (tmp_path / "nan").mkdir()
    (tmp_path / "nan" / "prefixes").symlink_to(cfg.run_dir.parent / "u" / "prefixes")
    cfg = cfg.model_copy(update={"output_dir": str(tmp_path)})
    real = methods.NPO.forget_loss

    def poisoned(self, batch):
        loss = real(self, batch)
        return loss * float("nan") if self.name == "npo" else loss

    monkeypatch.setattr(methods.NPO, "forget_loss", poisoned)
    summaries = unlearn_all(cfg, plan, log=lambda *_: None)
    for s in summaries:
        if s["method"] == "npo":
            assert s["diverged_at"] == 1
        else:
            assert s["diverged_at"] is None and s["steps_done"] == 4
    npo = next(c for c in plan_run(cfg).cells if c.method.name == "npo")
    last = rows(unit_dir(cfg.run_dir, npo) / "metrics.jsonl")[-1]
    assert last == {"step": 1, "diverged": True, "reason": "diverged at step 1"}


def test_sweeps_expand_into_cells(tmp_path):
    cfg = validate_config({**CONFIG, "output_dir": str(tmp_path), "seeds": [0, 1],
                           "unlearning": {**CONFIG["unlearning"], "lrs": [1e-5, 3e-5],
                                          "schedulers": ["wsd", "cosine"],
                                          "methods": [{"name": "npo", "beta": 0.5},
                                                      {"name": "npo", "beta": 1.0}]}})
    cells = plan_run(cfg).cells
    assert len(cells) == 2 * 2 * 2 * 2 * 2  # paths x methods x seeds x lrs x schedulers
    dirs = {unit_dir(tmp_path, c).relative_to(tmp_path).as_posix() for c in cells}
    assert len(dirs) == len(cells)
    assert "cells/refusals-instructions/npo-beta1/1/lr3e-05/cosine" in dirs


def test_cells_finished_under_other_settings_are_rerun(trained):
    cfg, plan = trained
    unlearn_all(cfg, plan, log=lambda *_: None)
    changed = cfg.model_copy(update={"unlearning": cfg.unlearning.model_copy(
        update={"steps": 2, "methods": cfg.unlearning.methods[:1]})})
    logged = []
    summaries = unlearn_all(changed, plan_run(changed), log=logged.append)
    assert "2 unlearning cells, 0 already done, 2 finished under other settings" in logged[0]
    assert all(s["steps_done"] == 2 for s in summaries)


def test_lora_cells_train_only_a_fresh_adapter(tmp_path):
    """Under LoRA the path model is merged and unlearning adds a new adapter; npo_kl's
    reference is the same model with the adapter switched off."""
    data = {**CONFIG, "output_dir": str(tmp_path), "model": {"finetuning": "lora",
                                                             "lora": {"rank": 4, "alpha": 8}},
            "stages": {"refusals": {"source": "builtin:refusals", "epochs": 1,
                                    "max_examples": 16}},
            "paths": {"forget_stage": "refusals", "orders": [["refusals"]]},
            "unlearning": {**CONFIG["unlearning"], "methods": [{"name": "npo"}, {"name": "npo_kl"}],
                           "retain_stages": ["refusals"], "steps": 2, "eval_every": 1,
                           "save_model": True}}
    cfg = validate_config(data)
    plan = train_paths(cfg, log=lambda *_: None)
    summaries = unlearn_all(cfg, plan, log=lambda *_: None)
    assert [s["steps_done"] for s in summaries] == [2, 2]
    for cell in plan_run(cfg).cells:
        d = unit_dir(cfg.run_dir, cell)
        assert (d / "model" / "adapter" / "adapter_model.safetensors").is_file()
        # at step 1 the adapter is still zero: the model is its reference, so NPO is
        # (2/beta) log 2 and npo_kl's KL(ref || model) term adds exactly 0
        first = rows(d / "steps.jsonl")[0]
        assert first["loss"] == pytest.approx(4 * math.log(2), abs=1e-4)


def test_forget_stage_from_a_question_answer_file(tmp_path):
    """A stage read from a local file with question/answer fields trains and unlearns."""
    from pathunlearn.data.suite import load_builtin

    data = tmp_path / "refusals.jsonl"
    data.write_text("".join(json.dumps({"input": c.messages[1]["content"], "output": c.response})
                            + "\n" for c in load_builtin("refusals")[:12]))
    cfg = validate_config({
        **CONFIG, "output_dir": str(tmp_path),
        "stages": {"forget": {"source": str(data), "question_key": "input",
                              "answer_key": "output", "system": "You are a helpful assistant."}},
        "paths": {"forget_stage": "forget", "orders": [["forget"]]},
        "unlearning": {**CONFIG["unlearning"], "methods": [{"name": "ga"}], "steps": 1},
    })
    plan = train_paths(cfg, log=lambda *_: None)
    (summary,) = unlearn_all(cfg, plan, log=lambda *_: None)
    assert summary["forget_examples"] == 12 and summary["steps_done"] == 1


def test_math_before_unlearning_is_measured_once_per_path_model_and_kept(trained, tmp_path,
                                                                         monkeypatch):
    """The math accuracy before unlearning is the same for every method of a (path model,
    seed): measured once, written beside the path model, and read back by a later invocation
    (and by every Ray task) instead of being sampled again."""
    import shutil

    from pathunlearn.eval import math as math_module
    from pathunlearn.train import unlearn as unlearn_module

    cfg, _ = trained
    run = tmp_path / "u"
    shutil.copytree(cfg.run_dir / "prefixes", run / "prefixes")  # the trained path models
    data = {**CONFIG, "output_dir": str(tmp_path), "paths": {**CONFIG["paths"], "positions": [2]},
            "unlearning": {**CONFIG["unlearning"], "methods": [{"name": "ga"}, {"name": "npo"}],
                           "steps": 1, "eval_every": 1, "math": {"questions": 2, "samples": 1}}}
    math_cfg = validate_config(data)
    plan = plan_run(math_cfg)
    calls = []
    real = math_module.measure_math

    def counted(*args, **kwargs):
        calls.append(args[3] if len(args) > 3 else kwargs.get("seed"))
        return real(*args, **kwargs)

    monkeypatch.setattr(unlearn_module, "measure_math", counted)  # after unlearning
    monkeypatch.setattr(math_module, "measure_math", counted)  # before: eval.math.cached_math
    first = unlearn_all(math_cfg, plan, log=lambda *_: None)
    # per path model: once before (shared by both methods), once after each of its 2 cells
    paths = {c.model_key for c in plan.cells}
    assert len(calls) == len(paths) + len(plan.cells)
    files = sorted(run.glob("cache/math_before/*.json"))  # outside the DONE prefix dirs
    assert len(files) == len(paths)
    assert not list(run.glob("prefixes/*/math_before"))
    for cell in plan.cells:  # the cells are gone: a new invocation reruns them
        shutil.rmtree(unit_dir(run, cell))
    calls.clear()
    again = unlearn_all(math_cfg, plan, log=lambda *_: None)
    assert len(calls) == len(plan.cells)  # after unlearning only: before is read back
    keys = ("math_before", "math_no_answer_before", "math_shuffled_baseline")
    for a, b in zip(first, again, strict=True):
        assert [a[k] for k in keys] == [b[k] for k in keys]  # exactly: JSON keeps floats


def test_step_zero_and_token_ids_are_worked_out_once_and_equal_each_cell_alone(
        trained, tmp_path, monkeypatch):
    """Issue 29: every cell of a path model starts from the same weights, so its step-0
    probes, field items and saturation diagnostics are measured once per path model (then
    shared in this process, and read back from RUN_DIR/cache/step_zero by later invocations);
    the stages' token ids and the probes' / forget set's scoring batches depend on the
    tokenizer and the data only, so one invocation works each out once (pathunlearn.memo).
    Every cell's files equal exactly what each cell writes alone, with nothing shared."""
    import shutil

    from pathunlearn.eval import cell as cell_module
    from pathunlearn.memo import Memo
    from pathunlearn.train import relearn as relearn_module
    from pathunlearn.train import unlearn as unlearn_module

    cfg, _ = trained
    data = {**CONFIG, "relearn": {"steps": 1, "eval_every": 1},
            "unlearning": {**CONFIG["unlearning"], "steps": 2, "eval_every": 2, "methods": [
                {"name": "ga"}, {"name": "npo"}, {"name": "graddiff"}]},
            "probes": {**CONFIG["probes"], "rouge_tokens": 8, "sets": [
                {"name": "f_forget", "source": "stage:refusals", "max_prompts": 4,
                 "role": "forget", "metrics": ["prob", "rouge", "memorization"]}]}}

    def run(name: str, share: bool):
        calls = {"tokenize": 0, "prepare": 0}

        def counted(module, name, what):
            real = getattr(module, name)

            def wrapper(*args, **kwargs):
                calls[what] += 1
                return real(*args, **kwargs)
            monkeypatch.setattr(module, name, wrapper)

        counted(unlearn_module, "tokenize_conversations", "tokenize")
        for module in (cell_module, relearn_module, unlearn_module):
            counted(module, "prepare_scoring", "prepare")
        monkeypatch.setattr(unlearn_module, "STEP_ZERO_CACHE", share)
        if not share:  # a memo that keeps nothing: every cell works everything out itself
            monkeypatch.setattr(Memo, "once", lambda self, key, make: make())
        c = validate_config({**data, "output_dir": str(tmp_path / name)})
        shutil.copytree(cfg.run_dir / "prefixes", c.run_dir / "prefixes")
        plan = plan_run(c)
        summaries = unlearn_all(c, plan, log=lambda *_: None)
        monkeypatch.undo()
        return c, plan, summaries, calls

    alone_cfg, plan, alone, alone_calls = run("alone", False)
    shared_cfg, _, shared, shared_calls = run("shared", True)
    assert len(plan.cells) == 6
    paths = {c.model_key for c in plan.cells}
    assert [s["step0"] for s in alone] == ["measured"] * len(plan.cells)
    assert sorted(s["step0"] for s in shared).count("measured") == len(paths) == 2
    assert {s["step0"] for s in shared} == {"measured", "shared"}
    assert len(list((shared_cfg.run_dir / "cache" / "step_zero").glob("*.json"))) == len(paths)
    # shared: the forget stage and the retain stage tokenised once each; prepared once each:
    # the probes, relearning's tracked probes, NPO's forget-set reference
    assert shared_calls == {"tokenize": 2, "prepare": 3}
    # alone: per cell the forget stage, graddiff's retain stage, relearning's retain stage
    # for the 4 cells without one; probes + relearning per cell, NPO's reference per NPO cell
    assert alone_calls == {"tokenize": 6 + 2 + 4, "prepare": 6 * 2 + 2}
    for cell, a, b in zip(plan.cells, alone, shared, strict=True):
        da, db = unit_dir(alone_cfg.run_dir, cell), unit_dir(shared_cfg.run_dir, cell)
        for name in ("metrics.jsonl", "items.jsonl", "steps.jsonl", "relearn.jsonl"):
            if (da / name).exists() or (db / name).exists():
                assert (da / name).read_text() == (db / name).read_text(), (cell.method, name)
        assert a["saturation"] == b["saturation"]
    for cell in plan.cells:  # a new invocation (as a Ray task would) reads them back
        shutil.rmtree(unit_dir(shared_cfg.run_dir, cell))
    again = unlearn_all(shared_cfg, plan, log=lambda *_: None)
    assert sorted({s["step0"] for s in again}) == ["read", "shared"]
    for cell in plan.cells:
        assert (unit_dir(alone_cfg.run_dir, cell) / "metrics.jsonl").read_text() == (
            unit_dir(shared_cfg.run_dir, cell) / "metrics.jsonl").read_text()


def test_each_cell_reports_its_steps_and_eval_points_as_it_runs(trained, tmp_path,
                                                                 monkeypatch):
    """Issue 28: a cell's progress (its steps with their loss, its eval points) reaches the
    bar as events; without a terminal the bar is silent (the log keeps one line per cell)."""
    import shutil
    from contextlib import contextmanager

    from pathunlearn.train import unlearn as unlearn_module

    events: list[tuple] = []

    class Recorder(unlearn_module.CellBar):
        def __init__(self, name):
            self.name = name

        def start(self, total):
            events.append((self.name, "start", total))

        def step(self, step, loss):
            assert math.isfinite(loss)
            events.append((self.name, "step", step))

        def evaluated(self, step):
            events.append((self.name, "eval", step))

        def math(self, done, total):
            events.append((self.name, "math", done, total))

    @contextmanager
    def recording(enabled, description):
        assert enabled
        yield Recorder(description)

    cfg, _ = trained
    data = {**CONFIG, "output_dir": str(tmp_path), "paths": {**CONFIG["paths"], "positions": [2]},
            "unlearning": {**CONFIG["unlearning"], "methods": [{"name": "ga"}], "steps": 4,
                           "eval_every": 2, "math": {"questions": 3, "greedy": True}}}
    c = validate_config(data)
    shutil.copytree(cfg.run_dir / "prefixes", c.run_dir / "prefixes")
    monkeypatch.setattr(unlearn_module, "cell_bar", recording)
    unlearn_all(c, plan_run(c), log=lambda *_: None, progress=True)
    (name,) = {e[0] for e in events}
    assert name.startswith("[1/1] ") and "ga seed 0" in name
    # math samples (3 questions, one batch) before the path model's measurement and after
    assert [e[1:] for e in events] == [("math", 3, 3), ("start", 4), ("eval", 0), ("step", 1),
                                       ("step", 2), ("eval", 2), ("step", 3), ("step", 4),
                                       ("eval", 4), ("math", 3, 3)]
    monkeypatch.undo()
    with unlearn_module.cell_bar(True, "x") as bar:  # pytest's stdout is not a terminal
        assert type(bar) is unlearn_module.CellBar


def test_fewer_eval_points_give_the_same_first_and_last_rows(trained, tmp_path):
    """The table reads a cell's first and last eval points only (README, Probes): scoring is
    inference and draws no random numbers, so evaluating every step or only at the ends gives
    the same steps and the same rows at both ends."""
    import shutil

    cfg, _ = trained
    rows_by = {}
    for every in (1, 4):
        data = {**CONFIG, "output_dir": str(tmp_path / f"every{every}"), "unlearning": {
            **CONFIG["unlearning"], "methods": [{"name": "npo"}], "eval_every": every}}
        c = validate_config(data)
        shutil.copytree(cfg.run_dir / "prefixes", c.run_dir / "prefixes")
        plan = plan_run(c)
        unlearn_all(c, plan, log=lambda *_: None)
        rows_by[every] = [(rows(unit_dir(c.run_dir, cell) / "metrics.jsonl"),
                           rows(unit_dir(c.run_dir, cell) / "steps.jsonl")) for cell in plan.cells]
    for (dense, dense_steps), (sparse, sparse_steps) in zip(rows_by[1], rows_by[4], strict=True):
        assert [r["step"] for r in dense] == [0, 1, 2, 3, 4]
        assert [r["step"] for r in sparse] == [0, 4]
        assert sparse == [dense[0], dense[-1]]
        drop = ("seconds",)  # wall time
        assert [{k: v for k, v in r.items() if k not in drop} for r in sparse_steps] == \
            [{k: v for k, v in r.items() if k not in drop} for r in dense_steps]


def test_bf16_probes_change_the_measurements_only(trained, tmp_path):
    """probes.precision bf16 (issue 29, off by default): the same steps (evaluation draws
    no random numbers and changes no weight; training keeps training.precision), the probe
    values within bf16's rounding of fp32's, and other cell keys (a bf16 run never passes
    for an fp32 one)."""
    import shutil

    cfg, _ = trained
    found = {}
    for precision in ("fp32", "bf16"):
        data = {**CONFIG, "output_dir": str(tmp_path / precision),
                "paths": {**CONFIG["paths"], "positions": [2]},
                "unlearning": {**CONFIG["unlearning"], "methods": [{"name": "npo"}]},
                "probes": {**CONFIG["probes"], "precision": precision}}
        c = validate_config(data)
        shutil.copytree(cfg.run_dir / "prefixes", c.run_dir / "prefixes")
        plan = plan_run(c)
        unlearn_all(c, plan, log=lambda *_: None)
        found[precision] = [(cell.key, rows(unit_dir(c.run_dir, cell) / "metrics.jsonl"),
                             rows(unit_dir(c.run_dir, cell) / "steps.jsonl"))
                            for cell in plan.cells]
    for (key32, m32, s32), (key16, m16, s16) in zip(found["fp32"], found["bf16"], strict=True):
        assert key32 != key16
        assert [(r["step"], r["loss"]) for r in s32] == [(r["step"], r["loss"]) for r in s16]
        for r32, r16 in zip(m32, m16, strict=True):
            for name in PROBES:
                assert r16[name] == pytest.approx(r32[name], abs=0.1), name
        assert any(r16[n] != r32[n] for r32, r16 in zip(m32, m16, strict=True) for n in PROBES)
