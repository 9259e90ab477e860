"""Reading chat data: every format, and malformed files named by file, record and field."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pathunlearn.data.io import load_conversations, read_records
from pathunlearn.errors import DataError

CONV = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"}]


def test_every_format_reads_the_same_conversation(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([{"messages": CONV}]))
    (tmp_path / "a.jsonl").write_text(json.dumps({"conversations": CONV}) + "\n\n")
    (tmp_path / "a.csv").write_text('messages\n"' + json.dumps(CONV).replace('"', '""') + '"\n')
    pq.write_table(pa.Table.from_pylist([{"messages": CONV}]), tmp_path / "a.parquet")
    for ext in ("json", "jsonl", "csv", "parquet"):
        convs = load_conversations(tmp_path / f"a.{ext}")
        assert [c.messages for c in convs] == [CONV], ext


def test_question_answer_records_with_system_prompt(tmp_path):
    (tmp_path / "qa.csv").write_text("input,output\nWhat is 1+1?,2\nName a colour.,Red\n")
    convs = load_conversations(tmp_path / "qa.csv", "input", "output", system="Be brief.")
    assert convs[1].messages == [{"role": "system", "content": "Be brief."},
                                 {"role": "user", "content": "Name a colour."},
                                 {"role": "assistant", "content": "Red"}]


def test_sharegpt_style_keys_are_accepted(tmp_path):
    (tmp_path / "s.jsonl").write_text(json.dumps(
        {"conversations": [{"from": "user", "value": "hi"}, {"from": "assistant", "value": "yo"}]}))
    assert load_conversations(tmp_path / "s.jsonl")[0].response == "yo"


def _jsonl(*records):
    return "\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n"


GOOD = {"messages": CONV}
MALFORMED = [
    # (file name, content, expected fragments of the one-line error)
    ("bad.jsonl", _jsonl(GOOD, "{not json"), ["record 2 (line 2)", "invalid JSON"]),
    ("bad.jsonl", _jsonl(GOOD, GOOD, {"text": "x"}), ["record 3", "no 'messages' or 'conversations'"]),
    ("bad.jsonl", _jsonl({"messages": [{"role": "bot", "content": "x"}]}),
     ["record 1", "field 'messages'[0].role", "'bot'"]),
    ("bad.jsonl", _jsonl(GOOD, {"messages": [{"role": "user", "content": 5},
                                             {"role": "assistant", "content": "x"}]}),
     ["record 2", "field 'messages'[0].content", "expected text"]),
    ("bad.jsonl", _jsonl({"messages": [{"role": "user", "content": "only a question"}]}),
     ["record 1", "field 'messages'", "no assistant message"]),
    ("bad.jsonl", _jsonl({"messages": "hello"}), ["record 1", "field 'messages'", "non-empty list"]),
    ("bad.jsonl", _jsonl({"messages": ["hello"]}), ["record 1", "'messages'[0]", "object"]),
    ("bad.json", json.dumps({"messages": CONV}), ["must hold a list"]),
    ("bad.json", json.dumps([GOOD, 3]), ["record 2", "expected an object"]),
    ("bad.json", "[{\"messages\": ", ["invalid JSON at line 1"]),
    ("bad.csv", 'messages\n"[{""role"": ""user""}"\n', ["record 1", "field 'messages'", "invalid JSON"]),
    ("bad.csv", "a,b\n1,2,3\n", ["record 1", "more fields"]),
    ("bad.parquet", "not parquet at all", ["cannot read Parquet"]),
    ("bad.txt", "hello", ["unsupported file type"]),
    ("empty.jsonl", "\n", ["no records"]),
]


@pytest.mark.parametrize("name,content,fragments", MALFORMED, ids=range(len(MALFORMED)))
def test_malformed_file_names_file_record_field(tmp_path, name, content, fragments):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError) as e:
        load_conversations(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg
    for f in fragments:
        assert f in msg, (f, msg)


def test_qa_records_missing_or_empty_field(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text(_jsonl({"input": "q", "output": "a"}, {"input": "q2"}))
    with pytest.raises(DataError, match=r"record 2: missing field 'output'"):
        load_conversations(path, "input", "output")
    path.write_text(_jsonl({"input": "q", "output": ""}))
    with pytest.raises(DataError, match=r"record 1: field 'output': expected non-empty text"):
        load_conversations(path, "input", "output")


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_records(tmp_path / "x.jsonl")


def test_convert_writes_chat_format_and_reads_back(tmp_path, cli):
    src = tmp_path / "pairs.json"
    src.write_text(json.dumps([{"input": "What is 3*3?", "output": "9"},
                               {"input": "Say hi.", "output": "Hi!"}]))
    out = tmp_path / "chat.jsonl"
    result = cli("data", "convert", src, out, "--question-key", "input", "--answer-key", "output",
                 "--system", "You are a helpful assistant.")
    assert result.code == 0, result.err
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert lines[0] == {"messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is 3*3?"}, {"role": "assistant", "content": "9"}]}
    back = load_conversations(out)
    assert [c.response for c in back] == ["9", "Hi!"]


def test_convert_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, cli):
    src = tmp_path / "pairs.jsonl"
    src.write_text(_jsonl({"input": "q", "output": "a"}, {"input": "q2", "answer": "a2"}))
    out = tmp_path / "chat.jsonl"
    out.write_text("precious\n")
    result = cli("data", "convert", src, out, "--question-key", "input", "--answer-key", "output")
    assert result.code == 2
    assert result.err.strip().count("\n") == 0
    assert "record 2: missing field 'output'" in result.err
    assert out.read_text() == "precious\n"  # nothing already produced is lost
    assert list(tmp_path.glob(".chat.jsonl*")) == []


# ---- issue 25: what every data read refuses, at the one reader (data/io.py)

def test_only_regular_files_are_read_and_a_fifo_does_not_block(tmp_path):
    import os

    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)  # open() on it would wait for a writer forever
    (tmp_path / "dir.jsonl").mkdir()
    for path, what in ((fifo, "is a FIFO, not a file"), (tmp_path / "dir.jsonl",
                                                          "is a directory, not a file"),
                       (tmp_path / "none.jsonl", "no such file")):
        with pytest.raises(DataError, match=what):
            load_conversations(path)


def test_a_byte_order_mark_is_not_part_of_the_first_column_or_record(tmp_path):
    (tmp_path / "qa.csv").write_bytes(b"\xef\xbb\xbfquestion,answer\nWhat is 1+1?,2\n")
    (tmp_path / "a.jsonl").write_bytes(b"\xef\xbb\xbf" + json.dumps({"messages": CONV}).encode())
    assert load_conversations(tmp_path / "qa.csv", "question", "answer")[0].response == "2"
    assert load_conversations(tmp_path / "a.jsonl")[0].messages == CONV


@pytest.mark.parametrize("name,content,fragment", [
    ("deep.jsonl", "[" * 100_000 + "]" * 100_000, "record 1 (line 1): nested deeper than 32"),
    ("deep.json", "[" * 100_000 + "]" * 100_000, "nested deeper than 32"),
    ("deep40.json", json.dumps([{"messages": CONV, "meta": json.loads("[" * 40 + "]" * 40)}]),
     "nested deeper than 32"),  # deep enough to be absurd, not to crash json
    ("surrogate.jsonl", '{"messages": [{"role": "user", "content": "a\\ud800"}, '
                        '{"role": "assistant", "content": "b"}]}', "lone surrogate (\\ud800)"),
    ("surrogate.csv", 'question,answer\n"x\\ud800",y\n', None),  # CSV holds no escapes: text
    ("empty_target.jsonl", json.dumps({"messages": [{"role": "user", "content": "q"},
                                                    {"role": "assistant", "content": " "}]}),
     "record 1: field 'messages'[1].content: empty assistant message"),
], ids=["deep.jsonl", "deep.json", "deep40.json", "surrogate.jsonl", "surrogate.csv",
        "empty_target"])
def test_nesting_surrogates_and_empty_targets_are_one_line(tmp_path, name, content, fragment):
    path = tmp_path / name
    path.write_text(content)
    if fragment is None:
        assert load_conversations(path, "question", "answer")[0].prompt[-1]["content"] == \
            "x\\ud800"
        return
    with pytest.raises(DataError) as e:
        load_conversations(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)
    assert fragment in str(e.value)


def test_a_huge_line_is_refused_without_reading_it_whole(tmp_path, monkeypatch):
    from pathunlearn.data import io

    monkeypatch.setattr(io, "MAX_LINE_BYTES", 1000)
    path = tmp_path / "long.jsonl"
    path.write_text(json.dumps({"messages": CONV}) + "\n" + "x" * 5000 + "\n")
    with pytest.raises(DataError, match="line 2 is longer than"):
        load_conversations(path)


def test_a_bad_first_record_stops_the_read(tmp_path, monkeypatch):
    # the records after a bad one are never parsed (a 2 GB file is refused in its first line)
    from pathunlearn.data import io

    parsed = []
    real = io.parse_json
    monkeypatch.setattr(io, "parse_json", lambda *a, **k: parsed.append(1) or real(*a, **k))
    path = tmp_path / "big.jsonl"
    path.write_text(_jsonl({"messages": [{"role": "user", "content": "q"}]},
                           *[{"messages": CONV}] * 1000))
    with pytest.raises(DataError, match="record 1: field 'messages': no assistant message"):
        load_conversations(path)
    assert len(parsed) == 1
