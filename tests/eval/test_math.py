"""Answer extraction, scoring, prompts and the `eval math` command."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest
import torch

from pathunlearn.data.conversation import Conversation, qa
from pathunlearn.errors import DataError
from pathunlearn.eval.math import (
    MATH_PROMPT,
    QuestionResult,
    evaluate_math,
    extract_answer,
    gold_answer,
    is_correct,
    math_prompt,
    parse_number,
    question_messages,
    shuffled_baseline,
    to_number,
)

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------
# extraction


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3 + 4 = 7\n#### 7", 7),
        ("#### 1,234", 1234),
        ("#### 1,234,567.5", Fraction("1234567.5")),
        ("####\n$42", 42),
        ("####\n\n  42  \n", 42),  # the next non-blank line, spaces around the number
        ("#### 42 apples", 42),
        ("#### 42 dollars.\nThat is the answer.", 42),  # units, trailing words and lines
        ("#### -3", -3),
        ("#### \u22123", -3),  # unicode minus
        ("#### +5", 5),
        ("#### -$3", -3),
        ("#### $-3", -3),
        ("#### 3.50", Fraction(7, 2)),
        ("#### .5", Fraction(1, 2)),
        ("#### 6/3", 2),
        ("#### 1/2", Fraction(1, 2)),  # not whole: kept as the number it is
        ("#### 50%", 50),
        ("#### **42**", 42),
        ("#### €1,000", 1000),
        ("#### 42.", 42),
        ("#### The answer is 42", 42),
        ("#### 7\nmore steps\n#### 9", 9),  # several delimiters: the last one counts
        ("The answer is 5 #### 7", 7),  # inline form
        ("### Problem\n2 + 2\n#### 4", 4),  # '###' is a heading, not a delimiter
        ("####\n- 42", 42),  # a markdown bullet is not a minus sign
        ("#### 1 000", 1000),  # thousands grouped by a space, a thin space, a no-break space
        ("#### 1\u2009234\u2009567", 1234567),
        ("#### 12\u00a0500 dollars", 12500),
        ("#### 5 10", 5),  # not a group of three digits: the first number
        ("#### 2e3", 2000),  # exponent forms
        ("#### 1.5E-2", Fraction(3, 200)),
        ("#### 4e\u22121", Fraction(2, 5)),
        ("#### 2 eggs", 2),  # an 'e' starting a word is no exponent
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "The answer is 42.",  # no delimiter
        "####",  # delimiter followed by nothing
        "#### \n\n   ",
        "#### forty-two",
        "#### 7\n####",  # the last delimiter has no number
        "##### 5",  # five '#' is not the delimiter
        "#### 3/0",
        "",
    ],
)
def test_extract_answer_none(text):
    assert extract_answer(text) is None


def test_numbers_compare_by_value():
    assert extract_answer("#### 42.0") == 42
    assert extract_answer("#### 1,000") == extract_answer("#### 1000")
    assert extract_answer("#### 0.1") == Fraction(1, 10)  # exact, no binary rounding
    assert parse_number("costs $ 12 each") == 12
    assert parse_number("no digits") is None


@pytest.mark.parametrize(
    ("answer", "expected"),
    [(42, 42), (42.0, 42), (0.1, Fraction(1, 10)), ("1,234", 1234), ("-3", -3),
     (Fraction(1, 2), Fraction(1, 2)), (None, None), (True, None), (float("nan"), None)],
)
def test_to_number(answer, expected):
    assert to_number(answer) == expected


def test_is_correct():
    assert is_correct("steps\n#### 1,234", 1234)
    assert is_correct("#### 42.0", "42")
    assert is_correct("#### 6/3", 2.0)
    assert not is_correct("#### 41", 42)
    assert not is_correct("42", 42)  # no delimiter: wrong
    assert not is_correct("#### 42", None)


# ---------------------------------------------------------------------------------------------
# prompts and gold answers


def test_math_prompt_styles():
    assert math_prompt("What is 2 + 2?", "plain") == "What is 2 + 2?"
    paper = math_prompt("What is 2 + 2?")
    assert paper == MATH_PROMPT.format(question="What is 2 + 2?")
    for part in ("### Problem\nWhat is 2 + 2?", "### Output Requirement", '"####"', "#### 42"):
        assert part in paper
    with pytest.raises(ValueError):
        math_prompt("x", "fancy")


def test_question_messages_keep_system_and_drop_answer():
    conv = qa("What is 2 + 2?", "2 + 2 = 4\n#### 4", system="Be brief.")
    messages = question_messages(conv, "paper")
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[0]["content"] == "Be brief."
    assert messages[1]["content"] == math_prompt("What is 2 + 2?")
    assert conv.messages[1]["content"] == "What is 2 + 2?"  # the conversation is untouched
    bare = Conversation([{"role": "user", "content": "1 + 1?"}], meta={"answer": 2})
    assert question_messages(bare, "plain") == [{"role": "user", "content": "1 + 1?"}]


def test_gold_answer_from_meta_or_reference():
    with_meta = Conversation(qa("q", "#### 5").messages, meta={"answer": 7})
    assert gold_answer(with_meta) == 7  # meta wins
    assert gold_answer(qa("q", "so 2 + 3 = 5\n#### 5")) == 5
    assert gold_answer(qa("q", "five")) is None


def test_builtin_arithmetic_reference_answers_score_correct():
    from pathunlearn.data.sources import load_source

    for conv in load_source("builtin:arithmetic:test"):
        assert is_correct(conv.response, conv.meta["answer"])


# ---------------------------------------------------------------------------------------------
# scoring


def _result(answer, extracted):
    return QuestionResult("q", Fraction(answer), ["r"] * len(extracted),
                          [None if x is None else Fraction(x) for x in extracted])


def test_question_accuracy_and_no_answer():
    r = _result(3, [3, 3, None, 4])
    assert r.correct == [True, True, False, False]
    assert r.accuracy == 0.5 and r.no_answer == 0.25


def test_shuffled_baseline_by_hand():
    # golds 1, 1, 2; question 0 answers 1 and 2: against the others' golds (1, 2) it scores
    # (1 + 1) / (2 samples * 2 others) = 0.5; question 1 answers 2, 2: (2) / 4 = 0.5;
    # question 2 answers 1, 9: golds of the others are 1, 1 -> (2) / 4 = 0.5
    questions = [_result(1, [1, 2]), _result(1, [2, 2]), _result(2, [1, 9])]
    assert shuffled_baseline(questions) == pytest.approx(0.5)
    # a perfect model whose answers are all distinct scores 0 against shuffled answers
    assert shuffled_baseline([_result(1, [1]), _result(2, [2]), _result(3, [3])]) == 0
    assert shuffled_baseline([_result(1, [1])]) is None


def test_evaluate_math_bookkeeping(monkeypatch, tiny_tokenizer):
    """With a stubbed generator (no model): the scores, the JSON and the data errors."""
    import pathunlearn.eval.generate as gen

    def fake_generate(model, tokenizer, prompts, *, n, **kwargs):
        return [["#### 4", "#### 5", "no delimiter"][:n] for _ in prompts]

    monkeypatch.setattr(gen, "generate", fake_generate)
    convs = [qa("2 + 2?", "#### 4"), qa("2 + 3?", "#### 5")]
    result = evaluate_math(None, tiny_tokenizer, convs, n=3, prompt_style="plain")
    assert result.num_questions == 2 and result.n == 3
    assert result.accuracy == pytest.approx(1 / 3)
    assert result.no_answer_rate == pytest.approx(1 / 3)
    assert result.shuffled_accuracy == pytest.approx(1 / 3)
    data = json.loads(json.dumps(result.to_json()))
    assert data["questions"][0]["extracted"] == [4, 5, None]
    assert data["questions"][1]["correct"] == [False, True, False]
    assert evaluate_math(None, tiny_tokenizer, convs, n=3, greedy=True).n == 1
    with pytest.raises(DataError, match="record 1"):
        evaluate_math(None, tiny_tokenizer, [convs[0], qa("q", "no answer")])


def test_experiment_math_settings_reach_the_sampler(monkeypatch, tiny_tokenizer):
    """unlearning.math (samples, temperature, top-p, greedy, prompt) drives measure_math."""
    import pathunlearn.eval.generate as gen
    from pathunlearn.config import builtin_config_path, load_config
    from pathunlearn.eval.math import measure_math

    seen = {}

    def fake_generate(model, tokenizer, prompts, *, n, **kwargs):
        seen.update(kwargs, n=n, prompt=prompts[0][-1]["content"], count=len(prompts))
        return [["#### 1"] * n for _ in prompts]

    monkeypatch.setattr(gen, "generate", fake_generate)
    cfg = load_config(builtin_config_path("demo"), ["unlearning.math.questions=7",
                                                     "unlearning.math.greedy=false",
                                                     "unlearning.math.samples=3",
                                                     "unlearning.math.temperature=0.5",
                                                     "unlearning.math.top_p=0.9"])
    result = measure_math(cfg.unlearning.math, None, tiny_tokenizer, seed=4)
    assert result.n == 3 and result.num_questions == 7 and seen["count"] == 7
    assert (seen["temperature"], seen["top_p"], seen["greedy"], seen["seed"]) == (0.5, 0.9,
                                                                                False, 4)
    assert not seen["prompt"].startswith("Solve the following")  # built-in source: plain
    demo = load_config(builtin_config_path("demo"))
    assert measure_math(demo.unlearning.math, None, tiny_tokenizer, seed=0).n == 1
    assert seen["greedy"] is True
    off = load_config(builtin_config_path("demo"), ["unlearning.math.questions=0"])
    assert measure_math(off.unlearning.math, None, tiny_tokenizer, seed=0) is None


# ---------------------------------------------------------------------------------------------
# the command


@pytest.fixture
def saved_model(tmp_path, tiny_tokenizer):
    from pathunlearn.models import save_checkpoint
    from pathunlearn.tiny import init_model

    torch.manual_seed(0)
    save_checkpoint(init_model(tiny_tokenizer), tiny_tokenizer, tmp_path / "model")
    return tmp_path / "model"


def test_cli_eval_math_json(cli, saved_model):
    r = cli("eval", "math", saved_model, "--n", "1", "--max-questions", "3",
            "--max-new-tokens", "8", "--prompt", "plain", "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert report["num_questions"] == 3 and report["n"] == 1
    assert 0 <= report["accuracy"] <= 1 and 0 <= report["no_answer_rate"] <= 1
    assert len(report["questions"][0]["responses"]) == 1


def test_cli_eval_math_text(cli, saved_model):
    r = cli("eval", "math", saved_model, "--n", "2", "--max-questions", "2",
            "--max-new-tokens", "4")
    assert r.code == 0, r.err
    assert "accuracy:" in r.out and "no answer:" in r.out and "shuffled baseline:" in r.out


def test_cli_eval_math_missing_directory(cli, tmp_path):
    r = cli("eval", "math", tmp_path / "nope")
    assert r.code == 2
    assert len(r.err.strip().splitlines()) == 1 and "config.json" in r.err


def test_cli_eval_math_data_without_answers(cli, saved_model, tmp_path):
    data = tmp_path / "q.jsonl"
    data.write_text(json.dumps(qa("What is 2 + 2?", "four").to_json()) + "\n")
    r = cli("eval", "math", saved_model, "--data", data, "--n", "1")
    assert r.code == 2
    assert len(r.err.strip().splitlines()) == 1 and "no answer" in r.err


def test_cli_eval_math_bad_prompt_style(cli, saved_model):
    r = cli("eval", "math", saved_model, "--prompt", "fancy")
    assert r.code == 2 and "--prompt" in r.err


def test_a_user_template_is_the_prompt():
    """Issue 13: the exact prompt is the user's to give, with {question} where it goes."""
    from pathunlearn.config import MathConfig, validate_model
    from pathunlearn.errors import ConfigError

    template = "Q: {question}\nAnswer with '#### N' at the end. {not a field}"
    assert math_prompt("  What is 2+2? ", template) == (
        "Q: What is 2+2?\nAnswer with '#### N' at the end. {not a field}")
    assert MathConfig(prompt=template).prompt == template
    with pytest.raises(ConfigError, match="template containing"):
        validate_model(MathConfig, {"prompt": "Solve it."})
