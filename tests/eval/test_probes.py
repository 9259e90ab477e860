"""Probe sets: their rows, their metrics (checked against numpy), and one batched evaluation."""

from __future__ import annotations

import json
import statistics

import numpy as np
import pytest
import torch

from pathunlearn.config import ProbeConfig
from pathunlearn.data.conversation import qa
from pathunlearn.data.suite import REFUSAL_PARAPHRASES, REFUSAL_TARGET
from pathunlearn.errors import ConfigError, DataError
from pathunlearn.eval import probes as probes_module
from pathunlearn.eval.logprob import ScoreResult, score_rows
from pathunlearn.eval.probes import (
    LABEL_TARGETS,
    ProbeSet,
    default_probes,
    encode_probes,
    evaluate_probes,
    label_probe,
    probe_metrics,
    probes_from_config,
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

    def fake_score(model, examples, pad_id, batch_size):
        calls.append(len(examples))
        values = -torch.arange(1.0, len(examples) + 1)  # row i scores -(i + 1)
        return ScoreResult(values, torch.ones(len(examples), dtype=torch.long))

    monkeypatch.setattr(probes_module, "score_examples", fake_score)
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


def test_default_probes_have_the_paper_targets_and_sizes():
    forget = [qa(f"q{i}", f"a{i}") for i in range(50)]
    sets = {p.name: p for p in default_probes(forget, max_prompts=4, max_examples=5)}
    assert list(sets) == ["forget_label_id", "forget_label_ood", "forget_response",
                          "authors_train", "authors_eval"]
    label = sets["forget_label_id"]
    assert label.group_size == 21 and len(label.rows) == 4 * 21
    assert [t for _, t in label.rows[:21]] == [REFUSAL_TARGET, *REFUSAL_PARAPHRASES]
    assert all(p[-1]["role"] == "user" for p, _ in label.rows)
    ood_prompts = {p[-1]["content"] for p, _ in sets["forget_label_ood"].rows}
    assert ood_prompts.isdisjoint({p[-1]["content"] for p, _ in label.rows})
    assert [t for _, t in sets["forget_response"].rows] == [f"a{i}" for i in range(5)]
    train, evals = sets["authors_train"].rows, sets["authors_eval"].rows
    assert [t for _, t in train] == [t for _, t in evals]  # same facts, paraphrased questions
    assert train[0][0] != evals[0][0]


def test_default_probe_size_is_cpu_friendly():
    assert sum(len(p.rows) for p in default_probes()) == 2 * 16 * 21 + 3 * 32


def test_probe_from_config_forms():
    own = probes_from_config(ProbeConfig(name="own", prompts="builtin:authors:eval",
                                         max_prompts=3))
    assert own.group_size == 1 and len(own.rows) == 3
    listed = probes_from_config(ProbeConfig(name="two", prompts="builtin:refusals:ood",
                                            targets=["No.", "Sure."], max_prompts=2))
    assert listed.group_size == 2 and [t for _, t in listed.rows] == ["No.", "Sure."] * 2
    sourced = probes_from_config(ProbeConfig(name="para", prompts="builtin:refusals:ood",
                                             targets="builtin:refusal-paraphrases",
                                             max_prompts=2))
    assert [t for _, t in sourced.rows[:21]] == list(LABEL_TARGETS)


def test_probe_from_config_with_a_prompt_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    record = {"messages": [{"role": "user", "content": "Hi?"},
                           {"role": "assistant", "content": "Hello."}]}
    path.write_text(json.dumps(record) + "\n")
    own = probes_from_config(ProbeConfig(name="f", prompts=str(path)))
    assert own.rows == ((prompt("Hi?"), "Hello."),)
    listed = probes_from_config(ProbeConfig(name="f", prompts=str(path), targets=["Bye."]))
    assert listed.rows == ((prompt("Hi?"), "Bye."),)  # the file's answer is dropped


def test_probe_config_errors_name_the_probe(tmp_path):
    with pytest.raises(DataError, match="probe missing: .*no such file"):
        probes_from_config(ProbeConfig(name="missing", prompts=str(tmp_path / "nope.jsonl")))
    with pytest.raises(ConfigError, match="probe empty: `targets` is empty"):
        probes_from_config(ProbeConfig(name="empty", prompts="builtin:authors", targets=[]))


def test_probe_set_rows_must_form_groups():
    with pytest.raises(ValueError):
        ProbeSet("bad", ((prompt("a"), "x"),) * 3, group_size=2)


# ---------------------------------------------------------------------------- on a model


def test_batched_probe_evaluation_equals_one_row_at_a_time(tiny_tokenizer):
    from pathunlearn.tiny import init_model

    torch.manual_seed(0)
    model = init_model(tiny_tokenizer)
    sets = default_probes(max_prompts=1, max_examples=2)
    encoded = encode_probes(tiny_tokenizer, sets)
    metrics = evaluate_probes(model, tiny_tokenizer, sets, batch_size=64, encoded=encoded)
    assert metrics == evaluate_probes(model, tiny_tokenizer, sets, batch_size=64)
    for probe in sets:
        single = [score_rows(model, tiny_tokenizer, [row]).mean.item() for row in probe.rows]
        expected = probe_metrics(probe, np.array(single))
        assert all(metrics[k] == pytest.approx(v, abs=1e-5) for k, v in expected.items())


# ---------------------------------------------------------------------------- summed (issue 8)


def test_summed_response_probe_reports_the_mean_of_score_result_logp(monkeypatch,
                                                                     tiny_tokenizer):
    sets = [response_probe("s", [qa("q1", "a1"), qa("q2", "a2")], reduce="sum"),
            response_probe("m", [qa("q3", "a3")])]

    def fake_score(model, examples, pad_id, batch_size):
        # summed log-probs -4, -6, -9 over 2, 3, 3 tokens
        return ScoreResult(torch.tensor([-4.0, -6.0, -9.0]), torch.tensor([2, 3, 3]))

    monkeypatch.setattr(probes_module, "score_examples", fake_score)
    metrics = evaluate_probes(None, tiny_tokenizer, sets)
    assert metrics == pytest.approx({"s/sum": -5.0, "m/mean": -3.0})


def test_summed_probe_from_config_and_its_limits():
    probe = probes_from_config(ProbeConfig(name="U", prompts="builtin:rcu:U", reduce="sum"))
    assert probe.reduce == "sum" and len(probe.rows) == 40
    assert probe_metrics(probe, np.full(40, -30.0)) == {"U/sum": -30.0}
    with pytest.raises(ConfigError, match="probe L: `reduce: sum` needs `targets: null`"):
        probes_from_config(ProbeConfig(name="L", prompts="builtin:rcu:U", targets=["x"],
                                       reduce="sum"))
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
