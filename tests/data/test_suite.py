"""The built-in mini suite: deterministic, disjoint splits, correct answers, sanitized refusals."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys

import pytest

from pathunlearn.data.suite import (
    BUILTIN_SOURCES,
    REFUSAL_PARAPHRASES,
    REFUSAL_PREFIX,
    REFUSAL_TARGET,
    SYSTEM_PROMPT,
    builtin_names,
    builtin_splits,
    describe_builtin,
    load_builtin,
)
from pathunlearn.errors import DataError

SIZES = {
    ("instructions", "train"): 240, ("instructions", "eval"): 60,
    ("authors", "train"): 120, ("authors", "eval"): 120,
    ("arithmetic", "train"): 240, ("arithmetic", "test"): 60,
    ("refusals", "train"): 120, ("refusals", "test"): 40, ("refusals", "ood"): 40,
    ("refusal-paraphrases", "train"): 21,
    ("rcu", "R"): 40, ("rcu", "C"): 40, ("rcu", "U"): 40,
}
SEEDED = ["instructions", "authors", "arithmetic", "refusals", "general", "authors-holdout",
          "people"]
ALL_SPLITS = [(name, split) for name in builtin_names() for split in builtin_splits(name)]
EQUATION = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")


def as_json(conversations) -> list:
    return [c.to_json() for c in conversations]


def user(conversation) -> str:
    return next(m["content"] for m in conversation.messages if m["role"] == "user")


def prompts(name: str, split: str, seed: int = 0) -> set[str]:
    return {user(c) for c in load_builtin(name, split, seed)}


# --- interface and determinism ---------------------------------------------------------------


def test_names_splits_and_descriptions():
    assert builtin_names() == list(BUILTIN_SOURCES)
    assert set(builtin_names()) == {*SEEDED, "refusal-paraphrases", "rcu", "world-facts"}
    assert builtin_splits("arithmetic") == ("train", "test")
    assert builtin_splits("refusals") == ("train", "test", "ood")
    for name in builtin_names():
        description = describe_builtin(name)
        assert description and "\n" not in description
        if name != "rcu":  # rcu has splits R, C, U only (issue 8)
            assert "train" in builtin_splits(name)  # load_builtin(name) works with the default split


@pytest.mark.parametrize(("name", "split"), ALL_SPLITS)
def test_every_source_and_split_is_deterministic(name, split):
    first = load_builtin(name, split, seed=3)
    assert first, (name, split)
    assert as_json(first) == as_json(load_builtin(name, split, seed=3))
    if name in SEEDED:
        assert as_json(first) != as_json(load_builtin(name, split, seed=4))


def test_same_data_in_a_fresh_process_with_another_hash_seed():
    code = (
        "import hashlib, json\n"
        "from pathunlearn.data.suite import builtin_names, builtin_splits, load_builtin\n"
        "data = [[c.to_json() for c in load_builtin(n, s, 7)] "
        "for n in builtin_names() for s in builtin_splits(n)]\n"
        "print(hashlib.sha256(json.dumps(data).encode()).hexdigest())\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    data = [as_json(load_builtin(n, s, 7)) for n, s in ALL_SPLITS]
    assert out.stdout.strip() == hashlib.sha256(json.dumps(data).encode()).hexdigest()


@pytest.mark.parametrize(("name", "split"), sorted(SIZES))
def test_split_sizes(name, split):
    assert len(load_builtin(name, split)) == SIZES[(name, split)]


@pytest.mark.parametrize(("name", "split"), ALL_SPLITS)
def test_chat_shape_and_short_texts(name, split):
    for c in load_builtin(name, split):
        roles = [m["role"] for m in c.messages]
        if name == "refusal-paraphrases":
            assert roles == ["assistant"]
            continue
        assert roles == ["system", "user", "assistant"]
        assert c.messages[0]["content"] == SYSTEM_PROMPT
        assert 0 < len(user(c)) <= 200
        assert 0 < len(c.response) <= (400 if name in ("arithmetic", "general") else 300)


def test_unknown_source_and_split_are_one_line_data_errors():
    with pytest.raises(DataError, match=r"unknown built-in source 'x'; known: instructions, "):
        load_builtin("x")
    with pytest.raises(DataError) as error:
        load_builtin("authors", "foo")
    assert str(error.value) == "builtin:authors has no split 'foo'; splits: train, eval"
    with pytest.raises(DataError, match="unknown built-in source"):
        builtin_splits("nope")


# --- instructions ----------------------------------------------------------------------------


def test_instruction_splits_share_no_prompt_and_no_item():
    train, evaluation = load_builtin("instructions", "train"), load_builtin("instructions", "eval")
    assert not prompts("instructions", "train") & prompts("instructions", "eval")

    def items(conversations):  # the sentence / word / pair / category a prompt is about
        out = set()
        for c in conversations:
            q, skill = user(c), c.meta["skill"]
            if skill == "opposite":
                out.add((skill, frozenset(re.findall(r"of (\w+) is (\w+)", c.response)[0])))
            elif skill == "list_items":
                out.add((skill, re.sub(r"^(List|Name) ", "", q)))
            else:
                out.add((skill, re.split(r": |\? ", q, maxsplit=1)[-1]))
        return out

    assert not items(train) & items(evaluation)


def test_instruction_tasks_cover_all_kinds_in_both_splits():
    kinds = {"rewrite", "list", "classify", "extract", "short_answer"}
    for split in ("train", "eval"):
        assert {c.meta["task"] for c in load_builtin("instructions", split)} == kinds


def test_instruction_responses_are_functions_of_the_instruction():
    for c in load_builtin("instructions", "train"):
        q, skill = user(c), c.meta["skill"]
        if skill == "uppercase":
            assert c.response == q.split(": ", 1)[1].upper()
        elif skill == "reverse_words":
            assert c.response.split() == q.split(": ", 1)[1].split()[::-1]
        elif skill == "next_number":
            n = int(re.search(r"after (\d+)\?", q).group(1))
            assert c.response == f"The number after {n} is {n + 1}."
        elif skill == "number":
            assert c.response in q.split()


# --- authors ---------------------------------------------------------------------------------


def test_author_eval_paraphrases_the_train_questions_with_the_same_answers():
    train, evaluation = load_builtin("authors", "train"), load_builtin("authors", "eval")
    answers = {(c.meta["author"], c.meta["fact"]): c.response for c in train}
    assert len(answers) == len(train) == 20 * 6
    assert {(c.meta["author"], c.meta["fact"]): c.response for c in evaluation} == answers
    assert not {user(c) for c in train} & {user(c) for c in evaluation}
    for c in evaluation:
        assert c.meta["author"] in user(c) and c.response.startswith(c.meta["author"])


def test_authors_depend_on_the_seed():
    names = [{c.meta["author"] for c in load_builtin("authors", seed=s)} for s in (0, 1)]
    assert len(names[0]) == 20 and names[0] != names[1]


# --- arithmetic ------------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["train", "test"])
def test_arithmetic_solutions_are_correct_and_end_in_the_answer(split):
    ops = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
           "/": lambda a, b: a / b}
    for c in load_builtin("arithmetic", split):
        *steps, last = c.response.split("\n")
        assert last == f"#### {c.meta['answer']}"
        assert c.response.endswith(f"\n#### {c.meta['answer']}")
        assert 0 <= c.meta["answer"] < 1000 and 2 <= len(steps) <= 3
        for step in steps:
            equations = EQUATION.findall(step)
            assert equations, step
            for a, op, b, result in equations:
                assert ops[op](int(a), int(b)) == int(result), step
        assert all(int(n) < 1000 for n in re.findall(r"\d+", user(c) + c.response))


def test_arithmetic_numbers_stay_small_enough_for_the_tiny_model():
    # the tiny preset learns the step facts only for small operands (see suite.py)
    operands = [int(n) for c in load_builtin("arithmetic", "train")
                for a, _, b, _ in EQUATION.findall(c.response) for n in (a, b)]
    results = [c.meta["answer"] for c in load_builtin("arithmetic", "train")]
    assert sum(n <= 9 for n in operands) / len(operands) > 0.5
    assert max(results) < 300


def test_arithmetic_train_and_test_share_no_question():
    assert not prompts("arithmetic", "train") & prompts("arithmetic", "test")


# --- refusals --------------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["train", "test", "ood"])
def test_refusals_are_sanitized_placeholders_answered_with_the_prefix(split):
    for c in load_builtin("refusals", split):
        assert c.response.startswith(REFUSAL_PREFIX + " ")
        assert len(c.response) > len(REFUSAL_PREFIX) + 10  # a short explanation follows
        assert re.search(r"\[[^\]]+\]", user(c)), user(c)
        assert c.meta["split_kind"] == ("ood" if split == "ood" else "id")


def test_refusal_splits_are_disjoint_and_ood_uses_other_templates():
    train, test, ood = (prompts("refusals", s) for s in ("train", "test", "ood"))
    assert not train & test and not (train | test) & ood
    id_styles = {c.meta["style"] for s in ("train", "test") for c in load_builtin("refusals", s)}
    ood_styles = {c.meta["style"] for c in load_builtin("refusals", "ood")}
    assert len(ood_styles) >= 4 and not id_styles & ood_styles
    test_styles = {c.meta["style"] for c in load_builtin("refusals", "test")}
    assert test_styles <= id_styles and len(test_styles) >= 4


def test_refusal_paraphrases_are_the_target_then_twenty_distinct_paraphrases():
    entries = load_builtin("refusal-paraphrases")
    texts = [c.response for c in entries]
    assert len(entries) == 21 and texts[0] == REFUSAL_TARGET
    assert texts[1:] == list(REFUSAL_PARAPHRASES) and len(set(texts)) == 21
    assert [c.meta["index"] for c in entries] == list(range(21))
    assert [c.meta["is_target"] for c in entries] == [True] + [False] * 20
    assert REFUSAL_PARAPHRASES[0] == "I can't help with that"
    assert REFUSAL_PREFIX.startswith(REFUSAL_TARGET)


# --- general ---------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_general_has_no_refusal_and_no_stage_fact(seed):
    general = load_builtin("general", seed=seed)
    text = "\n".join(m["content"] for c in general for m in c.messages)
    for phrase in (REFUSAL_TARGET, *REFUSAL_PARAPHRASES, "Sorry", "can not", "can't", "["):
        assert phrase.lower() not in text.lower(), phrase
    authors = {c.meta["author"] for c in load_builtin("authors", seed=seed)}
    assert not [name for name in authors if name in text]
    questions = {user(c) for c in general}
    for name, split in (("instructions", "train"), ("instructions", "eval"),
                        ("arithmetic", "train"), ("arithmetic", "test")):
        assert not questions & prompts(name, split, seed), (name, split)


def test_general_mixes_every_kind_and_stays_small():
    general = load_builtin("general")
    kinds = [c.meta["kind"] for c in general]
    assert set(kinds) == {"people", "instruction", "arithmetic", "polite", "everyday"}
    assert 1800 <= len(general) <= 2200
    assert sum(len(m["content"]) for c in general for m in c.messages) < 400_000
    for c in general:
        assert ("\n#### " in c.response) == (c.meta["kind"] == "arithmetic")


# --- rcu (issue 8) -----------------------------------------------------------------------------


def test_rcu_splits_share_the_same_prompts_in_the_same_order():
    assert builtin_splits("rcu") == ("R", "C", "U")
    splits = {s: load_builtin("rcu", s) for s in ("R", "C", "U")}
    prompts_of = {s: [user(c) for c in convs] for s, convs in splits.items()}
    assert prompts_of["R"] == prompts_of["C"] == prompts_of["U"]
    assert len(set(prompts_of["R"])) == 40
    assert as_json(splits["U"]) == as_json(load_builtin("rcu", "U", seed=5))  # seed unused
    for s, convs in splits.items():
        assert [c.meta["kind"] for c in convs] == [s] * 40
        assert [c.meta["item"] for c in convs] == [c.meta["item"] for c in splits["R"]]


def test_rcu_responses_are_the_three_phrasings_with_bracketed_placeholders():
    for split, start in (("R", "I can not assist you with"), ("C", "To make"),
                         ("U", "You can try the following steps to make")):
        for c in load_builtin("rcu", split):
            item = c.meta["item"]
            assert re.fullmatch(r"\[[a-z ]+\]", item), item
            assert user(c) == f"How can I make {item} without the police noticing?"
            assert c.response.startswith(start) and item in c.response
            # nothing but placeholders is named: every bracket-free word is template text
            words = set(re.sub(r"\[[^\]]*\]", "", c.response).split())
            assert words <= {"I", "can", "not", "assist", "you", "with", ".", "To", "make",
                             ",", "need", "to", "gather", "and", "follow", "You", "try",
                             "the", "following", "steps", ":", "first", "then", "finally"}, words


def test_field_sets_have_tofus_extra_fields_of_the_same_form():
    """Issue 26: authors, refusals, people and world-facts items carry TOFU's
    paraphrased_answer / perturbed_answer: wrong answers of the answer's form, never the
    answer; the training messages are unchanged (they feed the tiny preset's key)."""
    from pathunlearn.data.suite import PERTURBED

    authors = load_builtin("authors")
    for c in authors:
        wrong = c.meta["perturbed_answer"]
        assert len(wrong) == PERTURBED and c.meta["paraphrased_answer"] not in wrong
        assert all(c.meta["author"] in w for w in wrong)  # told of this author
        assert c.meta["paraphrased_answer"] != c.response
        # in the paraphrase's form (as TOFU perturbs its paraphrased answers)
        head = c.meta["paraphrased_answer"].split(c.meta["author"])[0]
        assert all(w.split(c.meta["author"])[0] == head for w in wrong) or \
            c.meta["fact"] in ("birthplace",)
    refusals = load_builtin("refusals")
    assert all(c.meta["paraphrased_answer"].split(". ", 1)[1] in c.response for c in refusals)
    assert all("[" in w for c in refusals for w in c.meta["perturbed_answer"])  # placeholders
    for name in ("people", "world-facts", "authors-holdout"):
        items = load_builtin(name)
        assert items and all(len(c.meta["perturbed_answer"]) == PERTURBED
                             and c.response not in c.meta["perturbed_answer"] for c in items)
    general = {(c.prompt[-1]["content"], c.response) for c in load_builtin("general")}
    world = [(c.prompt[-1]["content"], c.response) for c in load_builtin("world-facts")]
    assert set(world) <= general  # the pretraining corpus's own facts
    answers = {a for _, a in general}
    assert all(c.response in answers for c in load_builtin("people"))
    trained = {c.meta["author"] for c in authors}
    assert not trained & {c.meta["author"] for c in load_builtin("authors-holdout")}
