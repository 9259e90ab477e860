"""Multiple-choice probes (pathunlearn.eval.choice): the metrics by hand, and a choice probe's
accuracy on a fixed model equal to a count made here from each choice's log-likelihood
computed directly (one forward per choice, no batching, no shared prefixes).

The questions are invented placeholders in WMDP's schema (question, choices, answer); nothing
of WMDP is used."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from pathunlearn.config import ProbeConfig
from pathunlearn.data.chat import encode_prompt_target
from pathunlearn.data.conversation import Conversation, qa
from pathunlearn.data.sources import load_source
from pathunlearn.errors import DataError
from pathunlearn.eval.choice import choice_metrics, choice_rows
from pathunlearn.eval.probes import ProbeSet, evaluate_probes, probe_set

QUESTIONS = [
    ("Which port does [placeholder service] use by default?", ["21", "8080", "443", "7"]),
    ("Which colour is [placeholder fruit] when ripe?", ["red", "a deep shade of blue",
                                                        "green", "yellow"]),
    ("How many legs does [placeholder animal] have?", ["two", "four", "six legs in all", "8"]),
    ("Which file stores [placeholder setting]?", ["config.ini", "a", "settings.yaml",
                                                 "the registry"]),
    ("What does [placeholder tool] print first?", ["hello", "nothing at all", "42", "usage"]),
    ("Which day is [placeholder holiday] on?", ["Monday", "Fri", "the first Sunday", "Tue"]),
]


# ---------------------------------------------------------------------------- by hand


def test_choice_metrics_by_hand():
    # two questions of three choices; continuations of lengths (1, 4, 2) and (3, 1, 1)
    logp = np.array([[-2.0, -3.0, -4.0],
                     [-6.0, -1.0, -2.0]])
    texts = ["a", "bbbb", "cc", "ddd", "e", "f"]
    metrics = choice_metrics("q", logp, [1, 0], texts)
    # acc: argmaxes 0 and 1 -> both wrong (answers 1 and 0)
    assert metrics["q/acc"] == 0.0
    # acc_norm: (-2, -0.75, -2) -> 1 (right); (-2, -1, -2) -> 1 (wrong): 1 of 2
    assert metrics["q/acc_norm"] == 0.5
    p0 = math.exp(-3) / (math.exp(-2) + math.exp(-3) + math.exp(-4))
    p1 = math.exp(-6) / (math.exp(-6) + math.exp(-1) + math.exp(-2))
    assert metrics["q/p_correct"] == pytest.approx((p0 + p1) / 2, rel=1e-12)


def test_ties_go_to_the_first_choice_and_large_logps_do_not_overflow():
    metrics = choice_metrics("q", np.array([[-5000.0, -5000.0]]), [0], ["x", "y"])
    assert metrics == {"q/acc": 1.0, "q/acc_norm": 1.0, "q/p_correct": 0.5}


def mcq(prompt: str, letter: str, choices: list[str], answer: int) -> Conversation:
    return Conversation(qa(prompt, letter).messages, {"choices": choices, "answer": answer})


def test_rows_are_each_prompt_with_each_letter_or_text():
    items = [mcq("Q1\nA. x\nB. yy\nAnswer:", "B", ["x", "yy"], 1),
             mcq("Q2\nA. z\nB. w\nAnswer:", "A", ["z", "w"], 0)]
    rows, answers, size = choice_rows(items)
    assert size == 2 and answers == [1, 0]
    assert [t for _, t in rows] == ["A", "B", "A", "B"]
    assert rows[0][0] == rows[1][0] == items[0].prompt and rows[2][0] == items[1].prompt
    assert [t for _, t in choice_rows(items, "text")[0]] == ["x", "yy", "z", "w"]


def test_items_without_choices_or_of_uneven_size_are_one_line():
    with pytest.raises(DataError, match="item 1 is not a multiple-choice question"):
        choice_rows([qa("q", "a")])
    uneven = [mcq("q", "A", ["x", "y"], 0), mcq("q", "A", ["x", "y", "z"], 0)]
    with pytest.raises(DataError, match="item 2 has 3 choices, item 1 has 2"):
        choice_rows(uneven)


@pytest.mark.parametrize("fields,message", [
    ({"targets": ["x"]}, "no `targets`"),
    ({"reduce": "sum"}, "no `targets`"),
    ({"metrics": ["prob"], "role": "forget"}, "no `targets`"),
])
def test_a_choice_probe_config_takes_no_targets_metrics_or_sum(fields, message):
    with pytest.raises(ValidationError, match=message):
        ProbeConfig(name="c", kind="choice", source="wmdp:x.jsonl", **fields)
    with pytest.raises(ValidationError, match="`continuation` is for `kind: choice`"):
        ProbeConfig(name="c", source="x.jsonl", continuation="text")


def test_a_choice_set_round_trips_through_json():
    probe = ProbeSet("c", (([], "A"), ([], "B")), 2, "sum", kind="choice", answers=(1,))
    data = json.loads(json.dumps(probe.to_json()))
    assert data["answers"] == [1] and ProbeSet.from_json(data) == probe
    with pytest.raises(ValueError, match="one answer index"):
        ProbeSet("c", (([], "A"), ([], "B")), 2, "sum", kind="choice", answers=(2,))


# ---------------------------------------------------------------------------- on a model


@pytest.fixture(scope="module")
def model(tiny_tokenizer):
    from pathunlearn.tiny import init_model

    torch.manual_seed(0)
    return init_model(tiny_tokenizer)


def direct_ll(model, tokenizer, prompt, target) -> float:
    """log pi(target | prompt) of one row, computed alone: one forward, the target tokens'
    log-probabilities summed."""
    ex = encode_prompt_target(tokenizer, prompt, target, max_length=256)
    ids, labels = torch.tensor([ex.input_ids]), torch.tensor(ex.labels[1:])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
    keep = labels != -100
    return float(logp[keep].gather(-1, labels[keep][:, None]).sum())


@pytest.mark.parametrize("continuation", ["letter", "text"])
def test_accuracy_equals_a_hand_count_on_a_fixed_model(model, tiny_tokenizer, tmp_path,
                                                       continuation):
    from pathunlearn.data.wmdp import LETTERS, mcq_prompt

    # each choice's log-likelihood, one row at a time
    prompts = [[{"role": "user", "content": mcq_prompt(q, c)}] for q, c in QUESTIONS]
    texts = [list(LETTERS[:4]) if continuation == "letter" else c for _, c in QUESTIONS]
    ll = [[direct_ll(model, tiny_tokenizer, p, t) for t in ts] for p, ts in zip(
        prompts, texts, strict=True)]
    best = [max(range(4), key=lambda j, row=row: row[j]) for row in ll]
    best_norm = [max(range(4), key=lambda j, row=row, ts=ts: row[j] / len(ts[j]))
                 for row, ts in zip(ll, texts, strict=True)]
    # the answers: the model's choice for questions 0, 2, 3; another one for 1, 4, 5
    answers = [best[0], (best[1] + 1) % 4, best[2], best[3], (best[4] + 2) % 4,
               (best[5] + 3) % 4]
    expected_acc = 3 / 6  # counted: questions 0, 2 and 3
    expected_norm = sum(best_norm[i] == answers[i] for i in range(6)) / 6
    probs = [math.exp(row[a]) / sum(math.exp(x) for x in row) for row, a in zip(
        ll, answers, strict=True)]

    source = tmp_path / "questions.jsonl"
    source.write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n"
                              for (q, c), a in zip(QUESTIONS, answers, strict=True)))
    config = ProbeConfig(name="mcq", kind="choice", source=f"wmdp:{source}",
                         continuation=None if continuation == "letter" else "text")
    probe = probe_set(None, config)
    assert probe.group_size == 4 and probe.answers == tuple(answers)
    metrics = evaluate_probes(model, tiny_tokenizer, [probe])
    assert metrics["mcq/acc"] == expected_acc
    assert metrics["mcq/acc_norm"] == expected_norm
    if continuation == "letter":  # one character each: normalising changes nothing
        assert metrics["mcq/acc_norm"] == metrics["mcq/acc"]
    assert metrics["mcq/p_correct"] == pytest.approx(sum(probs) / 6, rel=1e-4)
    assert set(metrics) == {"mcq/acc", "mcq/acc_norm", "mcq/p_correct"}


def test_a_choice_probe_reads_the_adapters_prompt(tmp_path):
    source = tmp_path / "q.jsonl"
    source.write_text(json.dumps({"question": " Which port does [placeholder service] use? ",
                                  "choices": ["1", "2", "3", "4"], "answer": 3}) + "\n")
    (item,) = load_source(f"wmdp:{source}")
    assert item.prompt[-1]["content"] == ("Which port does [placeholder service] use?\nA. 1\n"
                                          "B. 2\nC. 3\nD. 4\nAnswer:")
    assert item.response == "D" and item.meta["choices"] == ["1", "2", "3", "4"]
