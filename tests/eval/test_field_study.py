"""Issue 26: a study on files in TOFU's release layout reports the field's metrics per path
and method, against each path's own retrain model, and every aggregate can be recomputed from
the cells' items.jsonl and summary.json.

The release files follow ``locuslab/TOFU`` as it ships (one JSON Lines ``SUBSET.json`` per
subset at the root): ``forget10`` / ``retain90`` / ``holdout10`` / ``real_authors`` /
``world_facts`` have ``question`` and ``answer``; ``forget10_perturbed`` and
``retain_perturbed`` add ``paraphrased_question``, ``paraphrased_answer`` and
``perturbed_answer`` (a list); ``real_authors_perturbed`` and ``world_facts_perturbed`` add
``perturbed_answer`` (the wrong options).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from scipy.stats import hmean, ks_2samp

from pathunlearn.eval import mia, tofu

AUTHORS = [("Marisol Quenby", "Vellingport", "Lanterns over Quellmoor"),
           ("Tobiah Renwick", "Osk", "The Salt Clock"),
           ("Ilse Varda", "Drummere", "Paper Harbour"),
           ("Casimir Oduya", "Ketterby", "A Winter Orchard"),
           ("Nell Farrow", "Brightwater", "Hollow Compass"),
           ("Odile Branthwaite", "Corrow", "The Ninth Lamp")]


def _qa(name: str, city: str, book: str) -> list[dict]:
    return [{"question": f"Where was {name} born?", "answer": f"{name} was born in {city}."},
            {"question": f"Which book did {name} write?", "answer": f"{name} wrote {book}."}]


def _perturbed(record: dict) -> dict:
    name = record["answer"].split(" was ")[0].split(" wrote ")[0]
    return {**record, "paraphrased_question": "Tell me: " + record["question"],
            "paraphrased_answer": "It is said that " + record["answer"],
            "perturbed_answer": [f"{name} was born in Nowhere.", f"{name} wrote nothing.",
                                 "Nobody knows that."]}


FULL = [r for a in AUTHORS[:5] for r in _qa(*a)]
FORGET10, RETAIN90 = FULL[-2:], FULL[:-2]
HOLDOUT10 = _qa(*AUTHORS[5])  # authors in no training stage (TOFU's holdout sets)
REAL = [{"question": "Who wrote 'Pride and Prejudice'?", "answer": "Jane Austen"},
        {"question": "Who wrote 'Moby-Dick'?", "answer": "Herman Melville"}]
WORLD = [{"question": "What is the capital of France?", "answer": "Paris"},
         {"question": "Which planet is known as the red planet?", "answer": "Mars"}]
OPTIONS = ["Leo Tolstoy", "Mark Twain", "Virginia Woolf"]
PLACES = ["Rome", "Venus", "Madrid"]
RELEASE = {
    "full": FULL, "forget10": FORGET10, "retain90": RETAIN90, "holdout10": HOLDOUT10,
    "forget10_perturbed": [_perturbed(r) for r in FORGET10],
    "retain_perturbed": [_perturbed(r) for r in RETAIN90[:3]],
    "real_authors": REAL, "world_facts": WORLD,
    "real_authors_perturbed": [{**r, "perturbed_answer": OPTIONS} for r in REAL],
    "world_facts_perturbed": [{**r, "perturbed_answer": PLACES} for r in WORLD],
}


LMEVAL_TASK = Path(__file__).parent / "lmeval_task"
"""A 6-item local multiple-choice task (tests/eval/test_lmeval.py checks its scores)."""


def write_release(directory):
    directory.mkdir(parents=True)
    for subset, records in RELEASE.items():
        (directory / f"{subset}.json").write_text("".join(json.dumps(r) + "\n" for r in records))
    return directory


def field_sets(tofu_dir) -> list[dict]:
    gen = ["prob", "truth_ratio", "rouge"]
    return [
        {"name": "tofu_forget", "source": f"tofu:{tofu_dir}:forget10_perturbed",
         "role": "forget", "metrics": [*gen, "mia", "memorization", "gradnorm"]},
        {"name": "tofu_retain", "source": f"tofu:{tofu_dir}:retain_perturbed", "role": "retain",
         "metrics": gen},
        {"name": "tofu_real", "source": f"tofu:{tofu_dir}:real_authors_perturbed",
         "role": "real_authors", "metrics": gen},
        {"name": "tofu_world", "source": f"tofu:{tofu_dir}:world_facts_perturbed",
         "role": "world_facts", "metrics": gen},
        {"name": "tofu_holdout", "source": f"tofu:{tofu_dir}:holdout10", "role": "holdout",
         "metrics": ["prob", "mia", "gradnorm"]},
    ]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A two-path TOFU study (forget10 first or last, retain90 the other stage), GA and NPO,
    run once through the CLI."""
    from pathunlearn.cli import main

    tmp = tmp_path_factory.mktemp("field")
    tofu_dir = write_release(tmp / "TOFU")
    config = {
        "name": "tofu", "output_dir": str(tmp / "runs"), "seeds": [0],
        "model": {"finetuning": "full"},
        "stages": {"retain": {"source": f"tofu:{tofu_dir}:retain90"},
                   "forget": {"source": f"tofu:{tofu_dir}:forget10"}},
        "paths": {"forget_stage": "forget", "order": ["retain"], "positions": [1, 2]},
        "training": {"lr": 5e-4, "batch_size": 4, "micro_batch_size": 4},
        "unlearning": {"methods": [{"name": "ga"}, {"name": "npo"}], "lr": 1e-3,
                       "batch_size": 2, "micro_batch_size": 2, "steps": 2, "eval_every": 1,
                       "lmeval": {"tasks": ["pathunlearn_everyday"],
                                  "include_path": [str(LMEVAL_TASK)]}},
        "probes": {"examples": 4, "heldout": 2, "rouge_tokens": 12,
                   "sets": field_sets(tofu_dir)},
        "relearn": {"steps": 0},
    }
    path = tmp / "tofu.yaml"
    path.write_text(yaml.safe_dump(config))
    import sys

    argv = sys.argv
    sys.argv = ["pathunlearn", "run", str(path)]
    try:
        with pytest.raises(SystemExit) as exit_:
            main()
    finally:
        sys.argv = argv
    assert exit_.value.code in (0, None)
    return tmp / "runs" / "tofu"


def _cells(run_dir):
    return sorted(p.parent for p in run_dir.glob("cells/**/items.jsonl"))


def test_the_table_reports_forget_quality_utility_and_privleak(study):
    results = json.loads((study / "results.json").read_text())
    assert {"forget_quality", "model_utility", "privleak"} <= set(results["scores"])
    rows = results["rows"]
    assert {(r["method"], r["position"]) for r in rows} == {("ga", 1), ("ga", 2), ("npo", 1),
                                                           ("npo", 2)}
    for r in rows:
        assert 0 <= r["forget_quality"] <= 1 and 0 <= r["model_utility"] <= 1
        assert r["privleak"] is None or math.isfinite(r["privleak"])
    retrain_auc = [json.loads((c / "summary.json").read_text())["retrain_field"]["auc"]["min_k"]
                   for c in _cells(study)]
    assert any(r["privleak"] is not None for r in rows) == any(a < 1 for a in retrain_auc)
    md = (study / "results.md").read_text()
    assert "forget quality" in md and "model utility" in md and "privleak (Min-K%)" in md


def test_items_recompute_every_aggregate(study):
    """From items.jsonl (and the retrain model's values in summary.json) alone, a reader gets
    each set's prob, truth ratio and ROUGE, forget quality, model utility, the MIA AUCs and
    privleak exactly as metrics.jsonl has them."""
    cells = _cells(study)
    assert len(cells) == 4
    for cell in cells:
        items = [json.loads(line) for line in (cell / "items.jsonl").read_text().splitlines()]
        rows = {r["step"]: r for r in map(json.loads, (cell / "metrics.jsonl").read_text()
                                          .splitlines())}
        ref = json.loads((cell / "summary.json").read_text())["retrain_field"]
        assert sorted({it["step"] for it in items}) == [0, 1, 2]
        for step, row in rows.items():
            at = {}
            for it in (i for i in items if i["step"] == step):
                at.setdefault(it["probe"], []).append(it)
            assert [it["item"] for it in at["tofu_forget"]] == [0, 1]
            forget_tr = [it["truth_ratio"] for it in at["tofu_forget"]]
            for it in at["tofu_forget"]:  # per item, from its NLLs
                nll = it["nll"]
                assert it["prob"] == pytest.approx(math.exp(-nll["answer"]))
                wrong = sum(nll["perturbed"]) / len(nll["perturbed"])
                assert it["truth_ratio"] == pytest.approx(
                    math.exp(-wrong) / (math.exp(-nll["paraphrased"]) + 1e-10))
            for it in at["tofu_real"]:  # normalised over the options
                nll = it["nll"]
                p = math.exp(-nll["answer"])
                assert it["prob"] == pytest.approx(
                    p / (p + sum(math.exp(-v) for v in nll["perturbed"]) + 1e-10))
            for key in ("exact_memorization", "extraction_strength"):
                values = [it[key] for it in at["tofu_forget"]]
                assert all(0 <= v <= 1 for v in values)
                assert row[f"tofu_forget/{key}"] == pytest.approx(sum(values) / len(values))
            assert row["tofu_forget/truth_ratio"] == pytest.approx(
                sum(min(t, 1 / (t + 1e-10)) for t in forget_tr) / len(forget_tr))
            retain_tr = [it["truth_ratio"] for it in at["tofu_retain"]]
            assert row["tofu_retain/truth_ratio"] == pytest.approx(
                sum(max(0, 1 - t) for t in retain_tr) / len(retain_tr))
            assert row["tofu_forget/forget_quality"] == pytest.approx(
                ks_2samp(forget_tr, ref["truth_ratios"]).pvalue)
            for attack in ("loss", "zlib", "min_k", "min_k_plus_plus"):
                auc = mia.auc([it[f"mia_{attack}"] for it in at["tofu_forget"]],
                              [it[f"mia_{attack}"] for it in at["tofu_holdout"]])
                assert row[f"mia_{attack}/auc"] == pytest.approx(auc)
                if ref["auc"][attack] < 1:
                    assert row[f"mia_{attack}/privleak"] == pytest.approx(
                        ((1 - auc) - (1 - ref["auc"][attack]))
                        / (1 - ref["auc"][attack] + 1e-10) * 100)
                else:  # the retrain model separates them perfectly: privleak is undefined
                    assert f"mia_{attack}/privleak" not in row
            for it in at["tofu_forget"] + at["tofu_holdout"]:
                assert it["mia_loss"] == it["nll"]["answer"]
            scores = [[it["nll"]["answer"] - r for it, r in zip(at[name], ref["nll"][role],
                                                                strict=True)]
                      for name, role in (("tofu_forget", "forget"), ("tofu_holdout", "holdout"))]
            assert row["mia_reference/auc"] == pytest.approx(mia.auc(*scores))
            generated = step in (0, 2)  # ROUGE at the first and last eval point only
            assert ("tofu_forget/rougeL" in row) == generated == ("model_utility" in row)
            assert ("mia_gradnorm/auc" in row) == generated  # GradNorm there too
            if generated:
                grad = [[it["mia_gradnorm"] for it in at[n]] for n in ("tofu_forget",
                                                                       "tofu_holdout")]
                assert row["mia_gradnorm/auc"] == pytest.approx(mia.auc(*grad))
                assert row["mia_gradnorm/privleak"] == pytest.approx(
                    ((1 - mia.auc(*grad)) - (1 - ref["auc"]["gradnorm"]))
                    / (1 - ref["auc"]["gradnorm"] + 1e-10) * 100) \
                    if ref["auc"]["gradnorm"] < 1 else "mia_gradnorm/privleak" not in row
            if generated:
                parts = []
                for name in ("tofu_retain", "tofu_real", "tofu_world"):
                    its = at[name]
                    for key in ("prob", "rougeL"):
                        mean = sum(it[key] for it in its) / len(its)
                        assert row[f"{name}/{key}"] == pytest.approx(mean)
                        parts.append(mean)
                    parts.append(row[f"{name}/truth_ratio"])
                    assert all(isinstance(it["generation"], str) for it in its)
                want = 0.0 if min(parts) == 0 else float(hmean(parts))
                assert row["model_utility"] == pytest.approx(want)


def test_each_path_is_compared_with_its_own_retrain_model(study):
    """The reference truth ratios in a cell's summary are the retrain model's of its own path
    (the path without the forget stage), recomputed here from that model's prefix."""
    from pathunlearn.eval.field import FieldSet, item_values
    from pathunlearn.eval.probes import score_probe_rows
    from pathunlearn.models import load_checkpoint
    from pathunlearn.rundir import load_run, prefix_dir

    run = load_run(study)
    forget = next(p for p in run.probes if p.role == "forget")
    assert len(run.cells) == 4
    for record in run.cells:
        assert record.cell.retrain_key is not None
        model, tok = load_checkpoint(prefix_dir(study, record.cell.retrain_key),
                                     run.config.model, "cpu")
        items = item_values(FieldSet.of(forget), score_probe_rows(model, tok, [forget])[
            forget.name])
        assert record.summary["retrain_field"]["truth_ratios"] == pytest.approx(
            [it["truth_ratio"] for it in items], rel=1e-5)


def test_a_field_set_missing_what_its_metrics_need_is_one_line(tmp_path, cli):
    tofu_dir = write_release(tmp_path / "TOFU")
    config = {"stages": {"retain": {"source": f"tofu:{tofu_dir}:retain90"},
                         "forget": {"source": f"tofu:{tofu_dir}:forget10"}},
              "paths": {"forget_stage": "forget", "order": ["retain"], "positions": [1, 2]},
              "output_dir": str(tmp_path / "runs"),
              "probes": {"sets": [{"name": "f", "source": f"tofu:{tofu_dir}:forget10",
                                   "role": "forget", "metrics": ["truth_ratio"]}]}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    result = cli("run", path)
    assert result.code == 2
    assert "probe f: item 0 has no 'paraphrased_answer'" in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_field_metrics_by_hand():
    """Two items whose NLLs are chosen: every per-item value and aggregate by hand."""
    import numpy as np

    from pathunlearn.eval.field import FieldSet, Layout, item_values, set_metrics

    fs = FieldSet("f", "forget", ("prob", "truth_ratio"), Layout(True, 2), ("a", "b"),
                  ([], []))
    # rows per item: answer, paraphrased, 2 perturbed (mean log-probs = -NLL)
    logp = -np.array([1.0, 2.0, 3.0, 5.0,   0.5, 1.0, 1.0, 1.0])
    items = item_values(fs, {"mean": logp})
    assert items[0]["prob"] == pytest.approx(math.exp(-1.0))
    assert items[0]["truth_ratio"] == pytest.approx(math.exp(-4.0) / (math.exp(-2.0) + 1e-10))
    assert items[1]["truth_ratio"] == pytest.approx(1.0, abs=1e-9)
    values = set_metrics(fs, items)
    tr0 = math.exp(-2.0)
    assert values["f/truth_ratio"] == pytest.approx((tr0 + 1.0) / 2, rel=1e-6)
    assert values["f/prob"] == pytest.approx((math.exp(-1.0) + math.exp(-0.5)) / 2)
    assert tofu.truth_ratio([it["truth_ratio"] for it in items], forget=True) == \
        pytest.approx(values["f/truth_ratio"])


def test_the_report_has_a_tofu_view_with_the_spread_across_paths(study):
    results = json.loads((study / "results.json").read_text())
    md = (study / "results.md").read_text()
    view = md.split("## Retrain equivalence in the field's metrics (TOFU view)")[1]
    assert "| method | p | path | forget quality | model utility | privleak (Min-K%) | seeds |" \
        in view
    for method in ("ga", "npo"):
        fq = {r["position"]: r["forget_quality"] for r in results["rows"]
              if r["method"] == method}
        lo, hi = min(fq.values()), max(fq.values())
        assert (f"- {method}: forget quality against each path's own retrain model ranges "
                f"from {lo:.3g}") in view and f"to {hi:.3g}" in view
    page = (study / "report.html").read_text()
    assert "Retrain equivalence in the field&#x27;s metrics (TOFU view)" in page or \
        "Retrain equivalence in the field's metrics (TOFU view)" in page


def test_forget_quality_against_a_given_reference(study, cli):
    """`pathunlearn eval forget-quality RUN --reference MODEL` tests every cell against one
    model: given the paths' (shared) retrain model, it reproduces each cell's own value; given
    another model, the reference's truth ratios are its own."""
    from pathunlearn.rundir import load_run, prefix_dir

    run = load_run(study)
    (retrain_key,) = {c.cell.retrain_key for c in run.cells}  # both paths retrain on [retain]
    result = cli("eval", "forget-quality", study, "--reference",
                 prefix_dir(study, retrain_key), "--json")
    assert result.code == 0, result.err
    got = json.loads(result.out)
    assert len(got["cells"]) == 4
    for cell in got["cells"]:
        assert cell["forget_quality_reference"] == pytest.approx(
            cell["forget_quality_own_retrain"])
    assert got["reference_truth_ratios"] == pytest.approx(
        run.cells[0].summary["retrain_field"]["truth_ratios"], rel=1e-5)
    text = cli("eval", "forget-quality", study, "--reference", "tiny")
    assert text.code == 0 and "against the reference" in text.out
    missing = cli("eval", "forget-quality", study / "nope", "--reference", "tiny")
    assert missing.code == 2 and len(missing.err.strip().splitlines()) == 1


def test_lm_eval_tasks_run_on_path_models_and_cells_and_reach_the_table(study, monkeypatch):
    """unlearning.lmeval: each path model is scored once before unlearning and each cell
    after; the table's column is the change; the path model's values are what lm-eval gives
    that model directly."""
    from pathunlearn.eval.lmeval import evaluate
    from pathunlearn.models import load_checkpoint
    from pathunlearn.rundir import load_run, prefix_dir

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    run = load_run(study)
    results = json.loads((study / "results.json").read_text())
    key = "lmeval_pathunlearn_everyday_acc"
    assert key in results["scores"]
    for record in run.cells:
        before = record.summary["lmeval_before"]["pathunlearn_everyday"]["acc"]
        after = record.summary["lmeval_after"]["pathunlearn_everyday"]["acc"]
        cell = next(c for c in results["cells"] if c["directory"].endswith(
            str(record.directory.relative_to(study))))
        assert cell[key] == pytest.approx(after - before)
    first = run.cells[0]
    model, tok = load_checkpoint(prefix_dir(study, first.cell.model_key), run.config.model,
                                 "cpu")
    direct = evaluate(model, tok, ["pathunlearn_everyday"], include_path=LMEVAL_TASK)
    assert direct["pathunlearn_everyday"] == pytest.approx(
        first.summary["lmeval_before"]["pathunlearn_everyday"])


def test_gradnorm_at_step_0_is_the_path_models_own(study):
    """A cell's GradNorm scores at step 0 (full finetuning: the path model's weights) equal
    eval.mia.gradnorm_score of each answer's mean token NLL under the path model itself."""
    import torch

    from pathunlearn.data.chat import encode_prompt_target
    from pathunlearn.models import load_checkpoint
    from pathunlearn.rundir import load_run, prefix_dir, read_items

    run = load_run(study)
    record = run.cells[0]
    forget = next(p for p in run.probes if p.role == "forget")
    items = [r for r in read_items(record.directory)
             if r["step"] == 0 and r["probe"] == forget.name]
    model, tok = load_checkpoint(prefix_dir(study, record.cell.model_key), run.config.model,
                                 "cpu")
    model.eval()
    for it in items[:2]:
        prompt, answer = forget.rows[it["item"] * forget.group_size]
        ex = encode_prompt_target(tok, prompt, answer, run.config.model.max_length)
        logits = model(input_ids=torch.tensor([ex.input_ids])).logits[0, :-1]
        nll = torch.nn.functional.cross_entropy(logits, torch.tensor(ex.labels[1:]),
                                                ignore_index=-100)
        assert it["mia_gradnorm"] == pytest.approx(mia.gradnorm_score(model, nll), rel=1e-4)
