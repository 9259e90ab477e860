"""Probe sets: their rows, their metrics (checked against numpy), and one batched evaluation."""

from __future__ import annotations

import json
import statistics

import numpy as np
import pytest
import torch

from pathunlearn.config import ProbeConfig
from pathunlearn.data.conversation import qa
from pathunlearn.data.sources import load_source
from pathunlearn.data.suite import REFUSAL_PARAPHRASES, REFUSAL_TARGET
from pathunlearn.errors import ConfigError, DataError
from pathunlearn.eval import probes as probes_module
from pathunlearn.eval.logprob import ScoreResult, score_rows
from pathunlearn.eval.probes import (
    LABEL_TARGETS,
    ProbeSet,
    encode_probes,
    evaluate_probes,
    label_probe,
    probe_metrics,
    probe_set,
    resolve_probes,
    response_probe,
)


def prompt(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# ---------------------------------------------------------------------------- metrics


def test_label_metrics_match_numpy_by_hand():
    probe = label_probe("p", [prompt("a"), prompt("b"), prompt("c")], ["t", "x", "y", "z"])
    scores = np.array([-1.0, -2.0, -3.0, -7.0,
                       -0.5, -0.5, -1.5, -1.0,
                       -4.0, -2.0, -2.0, -2.0])
    per_prompt = [scores[i : i + 4] for i in range(0, 12, 4)]
    metrics = probe_metrics(probe, scores)
    assert metrics == pytest.approx({
        "p/target": statistics.fmean(g[0] for g in per_prompt),
        "p/paraphrase_mean": statistics.fmean(statistics.fmean(g[1:]) for g in per_prompt),
        # population variance across paraphrases (numpy's ddof=0), averaged over prompts
        "p/paraphrase_var": statistics.fmean(statistics.pvariance(g[1:]) for g in per_prompt),
        "p/all_mean": statistics.fmean(statistics.fmean(g) for g in per_prompt),
    })
    # by hand: paraphrases (-2, -3, -7) -> 14/3, (-0.5, -1.5, -1) -> 1/6, (-2, -2, -2) -> 0
    assert metrics["p/paraphrase_var"] == pytest.approx((14 / 3 + 1 / 6 + 0) / 3)


def test_response_metric_is_the_mean():
    probe = response_probe("r", [qa("q1", "a1"), qa("q2", "a2")])
    assert probe_metrics(probe, np.array([-1.0, -2.0])) == {"r/mean": -1.5}


def test_evaluate_probes_scores_all_rows_at_once_and_splits_them_back(monkeypatch,
                                                                      tiny_tokenizer):
    sets = [label_probe("l", [prompt("a"), prompt("b")], ["t", "p1", "p2"]),
            response_probe("r", [qa("q1", "a1"), qa("q2", "a2"), qa("q3", "a3")])]
    calls = []

    def fake_prepare(model, examples, pad_id, batch_size):
        calls.append(len(examples))
        return len(examples)

    def fake_score(model, n):
        values = -torch.arange(1.0, n + 1)  # row i scores -(i + 1)
        return ScoreResult(values, torch.ones(n, dtype=torch.long))

    monkeypatch.setattr(probes_module, "prepare_scoring", fake_prepare)
    monkeypatch.setattr(probes_module, "score_prepared", fake_score)
    metrics = evaluate_probes(None, tiny_tokenizer, sets)
    assert calls == [9]
    expected = probe_metrics(sets[0], -np.arange(1.0, 7)) | {"r/mean": -8.0}
    assert metrics == pytest.approx(expected)
    json.dumps(metrics)  # JSON-serialisable floats


def test_duplicate_probe_names_are_a_config_error(tiny_tokenizer):
    p = response_probe("same", [qa("q", "a")])
    with pytest.raises(ConfigError, match="same"):
        evaluate_probes(None, tiny_tokenizer, [p, p])


# ---------------------------------------------------------------------------- probe sets


DEMO_LIKE = {
    "stages": {"instructions": {"source": "builtin:instructions"},
               "authors": {"source": "builtin:authors"},
               "refusals": {"source": "builtin:refusals", "max_examples": 50}},
    "paths": {"forget_stage": "refusals", "order": ["instructions", "authors"],
              "positions": [1, 3]},
    "probes": {"prompts": 4, "examples": 5},
}


def config(**changes):
    from pathunlearn.config import validate_config

    return validate_config({**DEMO_LIKE, **changes})


def test_default_probes_have_the_paper_targets_and_sizes():
    sets = {p.name: p for p in resolve_probes(config())}
    assert list(sets) == ["forget_label_id", "forget_label_ood", "forget_response",
                          "instructions_train", "authors_train", "authors_paraphrased",
                          "heldout_refusals", "heldout_instructions", "heldout_authors"]
    label = sets["forget_label_id"]
    assert label.kind == "forget_label" and label.source == "builtin:refusals:test"
    assert label.group_size == 21 and len(label.rows) == 4 * 21
    assert [t for _, t in label.rows[:21]] == [REFUSAL_TARGET, *REFUSAL_PARAPHRASES]
    assert all(p[-1]["role"] == "user" for p, _ in label.rows)
    ood_prompts = {p[-1]["content"] for p, _ in sets["forget_label_ood"].rows}
    assert ood_prompts.isdisjoint({p[-1]["content"] for p, _ in label.rows})
    forget = load_source("builtin:refusals")
    assert [t for _, t in sets["forget_response"].rows] == [c.response for c in forget[:5]]
    train, para = sets["authors_train"].rows, sets["authors_paraphrased"].rows
    assert [t for _, t in train] == [t for _, t in para]  # same facts, paraphrased questions
    assert train[0][0] != para[0][0]
    assert sets["authors_train"].kind == "utility" and sets["authors_train"].stage == "authors"
    held = sets["heldout_refusals"]
    assert held.kind == "heldout" and not held.scored and len(held.rows) == 4
    assert held.source == "builtin:refusals:test"


def test_default_probe_size_is_cpu_friendly():
    from pathunlearn.config import ProbesConfig

    sets = resolve_probes(config(probes=ProbesConfig().model_dump()))
    scored = sum(len(p.rows) for p in sets if p.scored)
    assert scored == 2 * 16 * 21 + 4 * 32  # two label probes, the responses, three utilities


def test_a_stage_without_a_heldout_split_holds_out_the_items_after_max_examples(tmp_path):
    path = tmp_path / "facts.jsonl"
    path.write_text("".join(json.dumps({"q": f"Who wrote book {i}?", "a": f"Author {i}."}) + "\n"
                            for i in range(12)))
    cfg = config(stages={**DEMO_LIKE["stages"],
                         "authors": {"source": str(path), "question_key": "q", "answer_key": "a",
                                     "max_examples": 8}})
    sets = {p.name: p for p in resolve_probes(cfg)}
    assert [t for _, t in sets["authors_train"].rows] == [f"Author {i}." for i in range(5)]
    assert [t for _, t in sets["heldout_authors"].rows] == [f"Author {i}." for i in range(8, 12)]
    assert "authors_paraphrased" not in sets  # a plain file asks nothing in paraphrase
    whole = config(stages={**cfg.model_dump()["stages"],
                           "authors": {"source": str(path), "question_key": "q",
                                       "answer_key": "a"}})
    assert "heldout_authors" not in {p.name for p in resolve_probes(whole)}


def test_a_forget_stage_that_is_not_a_refusal_has_no_label_probes():
    cfg = config(paths={"forget_stage": "authors", "order": ["instructions", "refusals"],
                        "positions": [1]})
    names = [p.name for p in resolve_probes(cfg)]
    assert "forget_label_id" not in names and names[0] == "forget_response"


def test_configured_sets_replace_defaults_of_the_same_name_and_add_more():
    cfg = config(probes={"prompts": 4, "examples": 5, "sets": [
        {"name": "forget_label_id", "kind": "forget_label", "source": "builtin:refusals:ood",
         "max_prompts": 2},
        {"name": "extra", "source": "builtin:instructions:eval", "max_prompts": 3}]})
    sets = {p.name: p for p in resolve_probes(cfg)}
    assert sets["forget_label_id"].source == "builtin:refusals:ood"
    assert len(sets["forget_label_id"].rows) == 2 * 21
    assert list(sets)[-1] == "extra" and sets["extra"].kind == "track"
    only = config(probes={"defaults": False, "sets": [
        {"name": "extra", "source": "stage:authors", "offset": 2, "max_prompts": 3}]})
    (extra,) = resolve_probes(only)
    assert [t for _, t in extra.rows] == [c.response for c in load_source("builtin:authors")[2:5]]


def test_probe_set_json_round_trips():
    for probe in resolve_probes(config()):
        assert ProbeSet.from_json(json.loads(json.dumps(probe.to_json()))) == probe


def test_probe_set_forms():
    cfg = config()
    own = probe_set(cfg, ProbeConfig(name="own", source="builtin:authors:eval", max_prompts=3))
    assert own.group_size == 1 and len(own.rows) == 3
    listed = probe_set(cfg, ProbeConfig(name="two", source="builtin:refusals:ood",
                                        targets=["No.", "Sure."], max_prompts=2))
    assert listed.group_size == 2 and [t for _, t in listed.rows] == ["No.", "Sure."] * 2
    sourced = probe_set(cfg, ProbeConfig(name="para", source="builtin:refusals:ood",
                                         targets="builtin:refusal-paraphrases", max_prompts=2))
    assert [t for _, t in sourced.rows[:21]] == list(LABEL_TARGETS)


def test_probe_set_with_a_prompt_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    record = {"messages": [{"role": "user", "content": "Hi?"},
                           {"role": "assistant", "content": "Hello."}]}
    path.write_text(json.dumps(record) + "\n")
    own = probe_set(config(), ProbeConfig(name="f", source=str(path)))
    assert own.rows == ((prompt("Hi?"), "Hello."),)
    listed = probe_set(config(), ProbeConfig(name="f", source=str(path), targets=["Bye."]))
    assert listed.rows == ((prompt("Hi?"), "Bye."),)  # the file's answer is dropped


def test_probe_config_errors_name_the_probe(tmp_path):
    with pytest.raises(DataError, match="probe missing: .*no such file"):
        probe_set(config(), ProbeConfig(name="missing", source=str(tmp_path / "nope.jsonl")))
    with pytest.raises(ConfigError, match="probe empty: `targets` is empty"):
        probe_set(config(), ProbeConfig(name="empty", source="builtin:authors", targets=[]))
    with pytest.raises(DataError, match="probe late: builtin:authors:eval: no items after "
                                        "the first 500"):
        probe_set(config(), ProbeConfig(name="late", source="builtin:authors:eval",
                                        offset=500))
    with pytest.raises(ConfigError, match=r"probes.sets.0 \(x\): stage 'nope' not defined"):
        config(probes={"sets": [{"name": "x", "source": "stage:nope"}]})
    # no migration shims: the unknown-key line is the migration (issue 24)
    with pytest.raises(ConfigError, match="probes.sets.0.prompts: unknown key"):
        config(probes={"sets": [{"name": "x", "prompts": "builtin:authors"}]})
    with pytest.raises(ConfigError, match="probes: Input should be a valid dictionary"):
        config(probes=[{"name": "x", "source": "builtin:authors"}])
    with pytest.raises(ConfigError, match="unlearning.probe_prompts: unknown key; did you "
                                          r"mean probes.prompts\?"):
        config(unlearning={"probe_prompts": 3})


def test_probe_set_rows_must_form_groups():
    with pytest.raises(ValueError):
        ProbeSet("bad", ((prompt("a"), "x"),) * 3, group_size=2)


# ---------------------------------------------------------------------------- on a model


def test_batched_probe_evaluation_equals_one_row_at_a_time(tiny_tokenizer):
    from pathunlearn.tiny import init_model

    torch.manual_seed(0)
    model = init_model(tiny_tokenizer)
    sets = resolve_probes(config(probes={"prompts": 1, "examples": 2}))
    encoded = encode_probes(tiny_tokenizer, sets)
    metrics = evaluate_probes(model, tiny_tokenizer, sets, batch_size=64, encoded=encoded)
    assert metrics == evaluate_probes(model, tiny_tokenizer, sets, batch_size=64)
    for probe in (p for p in sets if p.scored):
        single = [score_rows(model, tiny_tokenizer, [row]).mean.item() for row in probe.rows]
        expected = probe_metrics(probe, np.array(single))
        assert all(metrics[k] == pytest.approx(v, abs=1e-5) for k, v in expected.items())


# ---------------------------------------------------------------------------- summed (issue 8)


def test_summed_response_probe_reports_the_mean_of_score_result_logp(monkeypatch,
                                                                     tiny_tokenizer):
    sets = [response_probe("s", [qa("q1", "a1"), qa("q2", "a2")], reduce="sum"),
            response_probe("m", [qa("q3", "a3")])]

    def fake_score(model, prepared):
        # summed log-probs -4, -6, -9 over 2, 3, 3 tokens
        return ScoreResult(torch.tensor([-4.0, -6.0, -9.0]), torch.tensor([2, 3, 3]))

    monkeypatch.setattr(probes_module, "prepare_scoring", lambda *args: None)
    monkeypatch.setattr(probes_module, "score_prepared", fake_score)
    metrics = evaluate_probes(None, tiny_tokenizer, sets)
    assert metrics == pytest.approx({"s/sum": -5.0, "m/mean": -3.0})


def test_summed_probe_from_config_and_its_limits():
    probe = probe_set(config(), ProbeConfig(name="U", source="builtin:rcu:U", reduce="sum"))
    assert probe.reduce == "sum" and len(probe.rows) == 40
    assert probe_metrics(probe, np.full(40, -30.0)) == {"U/sum": -30.0}
    with pytest.raises(ConfigError, match="`reduce: sum` is for response probes"):
        config(probes={"sets": [{"name": "L", "source": "builtin:rcu:U", "targets": ["x"],
                                 "reduce": "sum"}]})
    with pytest.raises(ValueError, match="response probes only"):
        ProbeSet("bad", ((prompt("a"), "x"),) * 2, group_size=2, reduce="sum")


def test_summed_probe_on_a_model_equals_score_rows_logp(tiny_tokenizer):
    from pathunlearn.tiny import init_model

    torch.manual_seed(0)
    model = init_model(tiny_tokenizer)
    probe = response_probe("s", [qa("q1", "a short answer"), qa("q2", "another")],
                           reduce="sum")
    metrics = evaluate_probes(model, tiny_tokenizer, [probe])
    logp = score_rows(model, tiny_tokenizer, list(probe.rows)).logp
    assert metrics["s/sum"] == pytest.approx(logp.mean().item(), abs=1e-4)


# ---------------------------------------------------------------------------- left-out defaults


def test_a_left_out_default_is_noted_unless_a_configured_set_takes_its_name(tmp_path):
    """A TOFU `full.json` alone (question/answer only): its default paraphrased probe is left out
    with a note; a set of the same name in the config replaces the default, so no note."""
    from pathunlearn.config import validate_config
    from pathunlearn.eval.probes import probe_configs_and_notes

    (tmp_path / "full.json").write_text("".join(json.dumps(
        {"question": f"Where was the invented author Nell Farrow {i} born?",
         "answer": f"Nell Farrow {i} was born in Brightwater."}) + "\n" for i in range(6)))
    config = {"stages": {"tofu": {"source": f"tofu:{tmp_path}"},
                         "safety": {"source": "builtin:refusals", "max_examples": 4}},
              "paths": {"forget_stage": "safety", "orders": [["tofu", "safety"]]},
              "probes": {"prompts": 2, "examples": 2, "heldout": 2}}
    configs, notes = probe_configs_and_notes(validate_config(config))
    assert [n.split(": left out: ")[0] for n in notes] == ["tofu_paraphrased"]
    assert "tofu_paraphrased" not in [c.name for c in configs]
    config["probes"]["sets"] = [{"name": "tofu_paraphrased", "kind": "utility",
                                 "source": f"tofu:{tmp_path}"}]
    configs, notes = probe_configs_and_notes(validate_config(config))
    assert notes == [] and configs[-1].name == "tofu_paraphrased"
