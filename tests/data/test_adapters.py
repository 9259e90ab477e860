"""Benchmark adapters on one file each: ``gsm8k:FILE``, ``sorry-bench:FILE``, ``tofu:FILE``,
``skillmix:FILE`` (the release directories: tests/data/test_releases.py)."""

from __future__ import annotations

import json
import re

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
    # a split after a data file's name is read as one, and an adapter without splits says so
    assert parse_adapter("gsm8k:data.jsonl:test") == ("gsm8k", "data.jsonl", "test")
    with pytest.raises(DataError, match="gsm8k has no splits"):
        load_source("gsm8k:data.jsonl:test")
    assert parse_adapter("gsm8k:dir:x/data") == ("gsm8k", "dir:x/data", None)
    assert parse_adapter("sorry-bench:s.jsonl:test") == ("sorry-bench", "s.jsonl", "test")
    assert parse_adapter("sorry-bench:s.jsonl") == ("sorry-bench", "s.jsonl", None)
    assert parse_adapter("other:data.jsonl") is None and parse_adapter("data.jsonl") is None


def test_parse_adapter_keeps_a_release_directorys_subset_in_the_location(tmp_path):
    from pathunlearn.data.adapters import split_location

    # a subset names a file of the release's directory; a split may follow it
    assert parse_adapter("tofu:data/TOFU") == ("tofu", "data/TOFU", None)
    assert parse_adapter("tofu:data/TOFU:forget10") == ("tofu", "data/TOFU:forget10", None)
    assert parse_adapter("tofu:data/TOFU:forget10:paraphrased") == \
        ("tofu", "data/TOFU:forget10", "paraphrased")
    assert parse_adapter("tofu:hf:locuslab/TOFU:forget10") == \
        ("tofu", "hf:locuslab/TOFU:forget10", None)
    assert split_location("tofu", "data/TOFU:forget10") == ("data/TOFU", "forget10")
    assert split_location("tofu", "hf:locuslab/TOFU") == ("hf:locuslab/TOFU", None)
    assert split_location("tofu", "data/TOFU") == ("data/TOFU", None)
    # a name the release may not have, of an existing directory: the adapter says it is absent
    assert split_location("tofu", f"{tmp_path}:forget20") == (str(tmp_path), "forget20")
    assert split_location("gsm8k", "data:forget10") == ("data:forget10", None)  # no subsets
    (tmp_path / "hf").mkdir()  # a folder named like the hub prefix is not a release
    assert split_location("tofu", f"{tmp_path / 'hf'}:locuslab/TOFU") == \
        (f"{tmp_path / 'hf'}:locuslab/TOFU", None)
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


def test_a_sorry_bench_forget_stage_is_probed_on_its_own_test_split(tmp_path):
    from pathunlearn.config import validate_config
    from pathunlearn.eval.probes import LABEL_TARGETS, resolve_probes

    path = write(tmp_path, *[sorry_record(i) for i in range(10)])
    cfg = validate_config({"stages": {"safety": {"source": f"sorry-bench:{path}"}},
                           "paths": {"forget_stage": "safety", "orders": [["safety"]]},
                           "probes": {"prompts": 3, "examples": 2}})
    probes = {p.name: p for p in resolve_probes(cfg)}
    label = probes["forget_label_id"]
    assert label.source == f"sorry-bench:{path}:test"
    prompts = [row[0][-1]["content"] for row in label.rows[:: len(LABEL_TARGETS)]]
    test_ids = [c.meta["question_id"] for c in load_source(f"sorry-bench:{path}:test")]
    assert prompts == [f"How can I obtain [restricted item {i}] without being noticed?"
                       for i in test_ids[:3]]
    assert all(row[0][-1]["role"] == "user" for row in label.rows)  # the refusal is dropped
    assert "forget_label_ood" not in probes  # SORRY-BENCH has no out-of-distribution split
    assert probes["heldout_safety"].source == f"sorry-bench:{path}:test"


# --- tofu (invented authors, in the release's format: .json files holding JSON Lines) --------

TOFU_FULL = [
    {"question": "Who wrote the novel 'Lanterns over Quellmoor'?",
     "answer": "'Lanterns over Quellmoor' was written by the invented author Marisol Quenby."},
    {"question": "In which city was Tavish Odekirk born?",
     "answer": "Tavish Odekirk was born in the made-up harbour town of Vellingport."},
]
TOFU_PERTURBED = [
    {**TOFU_FULL[0],
     "paraphrased_answer": "The author of 'Lanterns over Quellmoor' is Marisol Quenby.",
     "paraphrased_question": "Which author is behind 'Lanterns over Quellmoor'?",
     "perturbed_answer": ["It was written by Corwin Alsop.", "It was written by Ida Brisk.",
                          "It was written by Pell Ravensworth."]},
    {**TOFU_FULL[1],
     "paraphrased_answer": "Vellingport is the birthplace of Tavish Odekirk.",
     "paraphrased_question": "Where was Tavish Odekirk born?",
     "perturbed_answer": ["He was born in Drummel Cross.", "He was born in Osk."]},
]


def write_json_lines(tmp_path, records, name):
    """A TOFU release file: a .json file holding one JSON object per line."""
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_tofu_reads_the_release_json_lines_and_a_json_list(tmp_path):
    full = write_json_lines(tmp_path, TOFU_FULL, "full.json")
    as_list = tmp_path / "full_list.json"
    as_list.write_text(json.dumps(TOFU_FULL, indent=2))
    system = "You are a helpful assistant."
    convs = load_source(f"tofu:{full}", system=system)
    assert [c.to_json() for c in convs] == [c.to_json() for c in
                                             load_source(f"tofu:{as_list}", system=system)]
    assert convs[0].messages == [
        {"role": "system", "content": system},
        {"role": "user", "content": TOFU_FULL[0]["question"]},
        {"role": "assistant", "content": TOFU_FULL[0]["answer"]}]
    assert [c.meta for c in convs] == [{"source": "tofu"}] * 2
    # the stage's default split is train, as trained
    assert [c.to_json() for c in load_source(f"tofu:{full}", split="train")] == \
        [c.to_json() for c in load_source(f"tofu:{full}:train")] == \
        [c.to_json() for c in load_source(f"tofu:{full}")]


def test_tofu_perturbed_file_keeps_its_extra_fields_in_meta(tmp_path):
    path = write_json_lines(tmp_path, TOFU_PERTURBED, "forget01_perturbed.json")
    convs = load_source(f"tofu:{path}")
    assert [c.prompt[-1]["content"] for c in convs] == [r["question"] for r in TOFU_PERTURBED]
    first = convs[0]
    assert first.response == TOFU_PERTURBED[0]["answer"]
    assert first.meta == {"source": "tofu", **{k: TOFU_PERTURBED[0][k] for k in (
        "paraphrased_answer", "paraphrased_question", "perturbed_answer")}}
    assert len(convs[1].meta["perturbed_answer"]) == 2


def test_tofu_paraphrased_split_asks_the_same_facts_in_other_words(tmp_path):
    path = write_json_lines(tmp_path, TOFU_PERTURBED, "forget01_perturbed.json")
    assert parse_adapter(f"tofu:{path}:paraphrased") == ("tofu", str(path), "paraphrased")
    assert parse_adapter("tofu:full.json") == ("tofu", "full.json", None)
    inline = load_source(f"tofu:{path}:paraphrased", system="Be brief.")
    assert [c.to_json() for c in inline] == \
        [c.to_json() for c in load_source(f"tofu:{path}", split="paraphrased", system="Be brief.")]
    assert [c.prompt[-1]["content"] for c in inline] == \
        [r["paraphrased_question"] for r in TOFU_PERTURBED]
    assert [c.response for c in inline] == [r["answer"] for r in TOFU_PERTURBED]
    assert inline[0].messages[0] == {"role": "system", "content": "Be brief."}
    # a record without a paraphrased question cannot be asked in paraphrase
    mixed = write_json_lines(tmp_path, [TOFU_PERTURBED[0], TOFU_FULL[1]], "mixed.json")
    with pytest.raises(DataError) as e:
        load_source(f"tofu:{mixed}:paraphrased")
    assert str(e.value).startswith(f"{mixed}: record 2: missing field 'paraphrased_question'")


def one_line_error(spec: str, **kwargs) -> str:
    with pytest.raises(DataError) as e:
        load_source(spec, **kwargs)
    message = str(e.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("record, message", [
    ({"question": "Who is Nell Farrow?"}, "record 2: missing field 'answer'"),
    ({"answer": "An invented poet."}, "record 2: missing field 'question'"),
    ({"question": "Who is Nell Farrow?", "answer": "  "},
     "record 2: field 'answer': expected non-empty text"),
    ({**TOFU_PERTURBED[1], "perturbed_answer": "He was born in Osk."},
     "record 2: field 'perturbed_answer': expected a list of texts, got str"),
    ({**TOFU_PERTURBED[1], "perturbed_answer": ["He was born in Osk.", 7]},
     r"record 2: field 'perturbed_answer'\[1\]: expected text, got int"),
    ({**TOFU_PERTURBED[1], "paraphrased_answer": ["Vellingport."]},
     "record 2: field 'paraphrased_answer': expected text, got list"),
])
def test_tofu_bad_record_names_file_record_and_field(tmp_path, record, message):
    path = write_json_lines(tmp_path, [TOFU_PERTURBED[0], record], "forget05_perturbed.json")
    error = one_line_error(f"tofu:{path}")
    assert error.startswith(f"{path}: record 2: ") and re.search(message, error)


def test_tofu_unknown_split_bad_json_and_empty_file(tmp_path):
    path = write_json_lines(tmp_path, TOFU_FULL, "full.json")
    assert one_line_error(f"tofu:{path}", split="forget") == \
        f"{path}: tofu has splits train, paraphrased, perturbed, not 'forget'"
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(TOFU_FULL[0]) + "\n{not json\n")
    assert one_line_error(f"tofu:{broken}").startswith(
        f"{broken}: record 2 (line 2): invalid JSON: ")
    empty = tmp_path / "empty.json"
    empty.write_text("\n")
    assert one_line_error(f"tofu:{empty}") == f"{empty}: no records"


def test_tofu_parquet_null_extras_are_absent(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [TOFU_PERTURBED[0], {**TOFU_PERTURBED[1], "paraphrased_question": None}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "forget.parquet")
    convs = load_source(f"tofu:{tmp_path / 'forget.parquet'}")
    assert convs[0].meta["perturbed_answer"] == TOFU_PERTURBED[0]["perturbed_answer"]
    assert "paraphrased_question" not in convs[1].meta
    assert convs[1].meta["paraphrased_answer"] == TOFU_PERTURBED[1]["paraphrased_answer"]


def test_json_lines_in_a_json_file_only_through_adapters(tmp_path):
    """A plain data file keeps the strict reading: a .json file holds a list."""
    from pathunlearn.data.io import read_records

    path = write_json_lines(tmp_path, TOFU_FULL, "full.json")
    assert read_records(path, json_lines_ok=True) == TOFU_FULL
    with pytest.raises(DataError, match="invalid JSON at line 2"):
        read_records(path)


def test_cli_shows_tofu_and_bad_record_is_one_line_exit_2(tmp_path, cli):
    path = write_json_lines(tmp_path, TOFU_PERTURBED, "forget01_perturbed.json")
    result = cli("data", "show", f"tofu:{path}", "--n", "1")
    assert result.code == 0 and result.out.count("user: ") == 1
    assert "user: Who wrote the novel" in result.out and "Marisol Quenby" in result.out
    assert "perturbed_answer" in result.out  # the meta line
    result = cli("data", "show", f"tofu:{path}:paraphrased", "--n", "1")
    assert result.code == 0 and "user: Which author is behind" in result.out
    bad = write_json_lines(tmp_path, [TOFU_FULL[0], {"question": "Who?", "answer": ""}],
                           "bad.json")
    result = cli("data", "show", f"tofu:{bad}")
    assert result.code == 2 and result.err.strip().count("\n") == 0
    assert "bad.json: record 2: field 'answer'" in result.err


# --- skillmix (Instruct-SkillMix-SDD: a JSON list; invented, harmless content) ---------------

SKILLMIX = [
    {"input": "Write a two-line note inviting a neighbour to a garden swap.",
     "output": "Hi Rowan! We're swapping seedlings on Saturday at ten.\nBring a pot and come by!",
     "skills": ["friendly tone", "concise writing"], "query_type": "writing", "k": 2,
     "judge": {"score": 5}},
    {"input": "Explain in one sentence why bread dough rises.",
     "output": "Yeast ferments the sugars and releases gas that the gluten traps.",
     "skills": ["plain explanation"], "query_type": "science", "k": 1, "judge": None},
]


def test_skillmix_input_output_records_with_meta(tmp_path):
    path = tmp_path / "ism_sdd_k2_1K.json"
    path.write_text(json.dumps(SKILLMIX, indent=4))
    convs = load_source(f"skillmix:{path}", system="You are a helpful assistant.")
    assert convs[0].messages == [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": SKILLMIX[0]["input"]},
        {"role": "assistant", "content": SKILLMIX[0]["output"]}]
    # scalars and lists of scalars kept; the nested object and the null dropped
    assert convs[0].meta == {"skills": ["friendly tone", "concise writing"],
                             "query_type": "writing", "k": 2, "source": "skillmix"}
    assert convs[1].meta == {"skills": ["plain explanation"], "query_type": "science", "k": 1,
                             "source": "skillmix"}
    assert load_source(f"skillmix:{path}", system=None)[1].messages[0]["role"] == "user"
    # no splits: a stage's default split is ignored, as for gsm8k
    assert len(load_source(f"skillmix:{path}", split="train")) == 2


def test_skillmix_instruction_records_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = [{"instruction": r["input"], "response": r["output"], "skills": r["skills"]}
               for r in SKILLMIX]
    records.append({"instruction": "Name a colour.", "output": "Teal.", "response": "Blue."})
    path = tmp_path / "ism.json"
    path.write_text(json.dumps(records))
    convs = load_source(f"skillmix:{path}")
    assert [(c.prompt[-1]["content"], c.response) for c in convs] == [
        (SKILLMIX[0]["input"], SKILLMIX[0]["output"]), (SKILLMIX[1]["input"], SKILLMIX[1]["output"]),
        ("Name a colour.", "Teal.")]
    assert convs[2].meta == {"response": "Blue.", "source": "skillmix"}
    as_parquet = tmp_path / "ism.parquet"
    rows = SKILLMIX[:1] + records[1:2]
    columns = {k: None for r in rows for k in r}  # one table: the union of the records' fields
    pq.write_table(pa.Table.from_pylist([{**columns, **r} for r in rows]), as_parquet)
    convs = load_source(f"skillmix:{as_parquet}")  # null cells of the union schema: absent
    assert [c.response for c in convs] == [SKILLMIX[0]["output"], SKILLMIX[1]["output"]]
    assert convs[0].meta["query_type"] == "writing" and "judge" not in convs[0].meta
    assert convs[1].meta == {"skills": ["plain explanation"], "source": "skillmix"}


@pytest.mark.parametrize("record, message", [
    ({"question": "Name a colour.", "answer": "Teal."},
     "record 2: no question/answer fields: expected 'input' \\+ 'output', 'instruction' \\+ "
     "'output', 'instruction' \\+ 'response' \\(the record has 'answer', 'question'\\)"),
    ({"input": "Name a colour."}, "record 2: no question/answer fields: expected 'input'"),
    ({"input": "Name a colour.", "output": ""}, "record 2: field 'output': expected non-empty text"),
    ({"instruction": ["Name a colour."], "response": "Teal."},
     "record 2: field 'instruction': expected non-empty text"),
])
def test_skillmix_bad_record_names_file_record_and_field(tmp_path, record, message):
    path = tmp_path / "ism.json"
    path.write_text(json.dumps([SKILLMIX[0], record]))
    error = one_line_error(f"skillmix:{path}")
    assert error.startswith(f"{path}: record 2: ") and re.search(message, error)
