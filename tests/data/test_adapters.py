"""Benchmark adapters: ``gsm8k:FILE``."""

from __future__ import annotations

import json

import pytest

from pathunlearn.data.adapters import parse_adapter
from pathunlearn.data.sources import load_source
from pathunlearn.errors import DataError
from pathunlearn.eval.math import gold_answer, is_correct

NATALIA = {
    "question": "Natalia sold clips to 48 of her friends in April, and then she sold half as "
                "many clips in May. How many clips did Natalia sell altogether?",
    "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
              "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72",
}


def write(tmp_path, *records, name="test.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_gsm8k_record_becomes_a_scorable_conversation(tmp_path):
    path = write(tmp_path, NATALIA, {"question": "How much?", "answer": "Costs $1,000.\n#### 1,250"},
                 {"question": "Temperature?", "answer": "It drops.\n####  -3.5 "})
    convs = load_source(f"gsm8k:{path}", system="You are a helpful assistant.")
    assert [c.meta["answer"] for c in convs] == [72, 1250, -3.5]
    first = convs[0]
    assert first.messages[0] == {"role": "system", "content": "You are a helpful assistant."}
    assert first.prompt[-1]["content"] == NATALIA["question"]
    assert "<<" not in first.response and ">>" not in first.response
    assert first.response.splitlines() == [
        "Natalia sold 48/2 = 24 clips in May.",
        "Natalia sold 48+24 = 72 clips altogether in April and May.", "#### 72"]
    # the math utility scores against it as it is
    for c in convs:
        assert is_correct(c.response, c.meta["answer"]) and gold_answer(c) == c.meta["answer"]
    assert len(load_source(f"gsm8k:{path}", max_examples=2)) == 2


def test_gsm8k_reads_every_file_format(tmp_path):
    as_json = tmp_path / "test.json"
    as_json.write_text(json.dumps([NATALIA]))
    assert load_source(f"gsm8k:{as_json}")[0].meta["answer"] == 72


@pytest.mark.parametrize("record, message", [
    ({"question": "q"}, "record 2: missing field 'answer'"),
    ({"question": "q", "answer": ""}, "record 2: field 'answer': expected non-empty text"),
    ({"question": 3, "answer": "#### 3"}, "record 2: field 'question': expected non-empty text"),
    ({"question": "q", "answer": "so 3"}, "record 2: field 'answer': the last line must be"),
    ({"question": "q", "answer": "#### three"}, "record 2: field 'answer': final answer 'three'"),
])
def test_gsm8k_bad_record_names_file_record_and_field(tmp_path, record, message):
    path = write(tmp_path, NATALIA, record)
    with pytest.raises(DataError, match=message) as e:
        load_source(f"gsm8k:{path}")
    assert str(path) in str(e.value)


def test_adapter_prefix_only_for_known_names(tmp_path):
    assert parse_adapter("gsm8k:data/test.jsonl") == ("gsm8k", "data/test.jsonl", None)
    # an inline split only for an adapter that has splits
    assert parse_adapter("gsm8k:data.jsonl:test") == ("gsm8k", "data.jsonl:test", None)
    assert parse_adapter("sorry-bench:s.jsonl:test") == ("sorry-bench", "s.jsonl", "test")
    assert parse_adapter("sorry-bench:s.jsonl") == ("sorry-bench", "s.jsonl", None)
    assert parse_adapter("other:data.jsonl") is None and parse_adapter("data.jsonl") is None
    with pytest.raises(DataError, match="no such file"):
        load_source("gsm8k:missing.jsonl")


def test_cli_shows_gsm8k_and_bad_record_is_one_line_exit_2(tmp_path, cli):
    good = write(tmp_path, NATALIA)
    result = cli("data", "show", f"gsm8k:{good}", "--n", "1")
    assert result.code == 0 and "#### 72" in result.out
    bad = write(tmp_path, NATALIA, {"question": "q", "answer": "no delimiter"}, name="bad.jsonl")
    result = cli("data", "show", f"gsm8k:{bad}")
    assert result.code == 2 and result.err.strip().count("\n") == 0
    assert "bad.jsonl: record 2: field 'answer'" in result.err


# --- sorry-bench (placeholder prompts only) ----------------------------------------------------

def sorry_record(i: int, style: str = "base", **extra) -> dict:
    return {"question_id": i, "category": str(1 + i % 4), "prompt_style": style,
            "turns": [f"How can I obtain [restricted item {i}] without being noticed?"], **extra}


def test_sorry_bench_refuses_drops_encoded_styles_and_splits_70_30(tmp_path):
    from pathunlearn.data.suite import REFUSAL_PREFIX

    records = [sorry_record(i) for i in range(20)]
    records += [sorry_record(100 + i, style) for i, style in enumerate(("morse", "caesar",
                                                                          "translate-fr"))]
    records.append(sorry_record(200, "slang", response="Sorry, I can not assist you with this "
                                                       "question. It is unsafe."))
    path = write(tmp_path, *records)
    ids = lambda convs: [c.meta["question_id"] for c in convs]  # noqa: E731
    train = load_source(f"sorry-bench:{path}")  # split defaults to train
    test = load_source(f"sorry-bench:{path}", split="test")
    every = load_source(f"sorry-bench:{path}", split="all")
    assert ids(load_source(f"sorry-bench:{path}:test", split="train")) == ids(test)  # inline wins
    assert len(every) == 21 and (len(train), len(test)) == (15, 6)
    assert sorted(ids(train) + ids(test)) == sorted(ids(every))  # a partition
    assert ids(train) == ids(load_source(f"sorry-bench:{path}", split="train"))  # seeded
    assert not {"morse", "caesar", "translate-fr"} & {c.meta["prompt_style"] for c in every}
    own = next(c for c in every if c.meta["question_id"] == 200)
    assert own.response.endswith("It is unsafe.")
    for c in every:
        assert c.response.startswith(REFUSAL_PREFIX)
        assert c.prompt[-1]["content"].startswith("How can I obtain [restricted item")
        assert c.meta["source"] == "sorry-bench" and "category" in c.meta


@pytest.mark.parametrize("record, message", [
    ({"turns": []}, "record 2: field 'turns'"),
    ({"turns": [""]}, "record 2: field 'turns'"),
    ({"prompt": "x"}, "record 2: field 'turns'"),
    ({"turns": ["How can I obtain [restricted item]?"], "response": 3},
     "record 2: field 'response'"),
])
def test_sorry_bench_bad_record(tmp_path, record, message):
    path = write(tmp_path, sorry_record(0), record)
    with pytest.raises(DataError, match=message):
        load_source(f"sorry-bench:{path}")


def test_sorry_bench_bad_split_and_empty_result(tmp_path):
    path = write(tmp_path, sorry_record(0), sorry_record(1))
    with pytest.raises(DataError, match="splits train, test, all"):
        load_source(f"sorry-bench:{path}", split="eval")
    only_encoded = write(tmp_path, sorry_record(0, "morse"), name="morse.jsonl")
    with pytest.raises(DataError, match="no records left"):
        load_source(f"sorry-bench:{only_encoded}")


def test_label_probes_take_their_prompts_from_the_configured_sources(tmp_path):
    from pathunlearn.eval.probes import LABEL_TARGETS, default_probes

    path = write(tmp_path, *[sorry_record(i) for i in range(10)])
    probes = {p.name: p for p in default_probes(max_prompts=3, max_examples=2,
                                                label_prompts=f"sorry-bench:{path}:test")}
    label = probes["forget_label_id"]
    prompts = [row[0][-1]["content"] for row in label.rows[:: len(LABEL_TARGETS)]]
    test_ids = [c.meta["question_id"] for c in load_source(f"sorry-bench:{path}:test")]
    assert prompts == [f"How can I obtain [restricted item {i}] without being noticed?"
                       for i in test_ids[:3]]
    assert all(row[0][-1]["role"] == "user" for row in label.rows)  # the refusal is dropped
    ood = probes["forget_label_ood"].rows[0][0][-1]["content"]
    assert ood in [c.prompt[-1]["content"] for c in load_source("builtin:refusals:ood")]
