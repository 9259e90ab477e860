"""Stages of ``kind: text`` (raw documents, every token a target): the windows a document is cut
into (hand-counted), rendering without a chat template, the files a text stage reads, its one
line errors, and its key (a chat stage's identity is what it was before text stages)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from pathunlearn.config import StageConfig, validate_config
from pathunlearn.data.chat import (
    IGNORE_INDEX,
    encode_conversation,
    render,
    text_windows,
    tokenize_conversations,
)
from pathunlearn.data.conversation import document, qa
from pathunlearn.data.sources import load_stage
from pathunlearn.errors import DataError
from pathunlearn.keys import stage_identity
from pathunlearn.tiny import tiny_dir

X = IGNORE_INDEX


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_dir())


def targets(windows) -> list[int]:
    """Every token that is predicted (labels shift by one: position 0 never is)."""
    return [x for w in windows for x in w.labels[1:] if x != X]


def test_windows_without_bos_overlap_by_one_token_so_every_token_is_a_target_once():
    ids = list(range(10))
    windows = text_windows(ids, list(ids), 4)
    assert [w.input_ids for w in windows] == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]
    assert [w.labels for w in windows] == [[X, 1, 2, 3], [X, 4, 5, 6], [X, 7, 8, 9]]
    assert targets(windows) == list(range(1, 10))
    # the tail is kept, shorter: 0..7 -> [0..3], [3..6], [6, 7]
    tail = text_windows(list(range(8)), list(range(8)), 4)
    assert [w.input_ids for w in tail] == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7]]
    assert targets(tail) == list(range(1, 8))


def test_windows_with_bos_start_each_with_bos_as_muse_chunks_its_corpora():
    bos = 99
    ids = [bos, *range(1, 8)]
    labels = [X, *range(1, 8)]
    windows = text_windows(ids, labels, 4, bos)
    assert [w.input_ids for w in windows] == [[bos, 1, 2, 3], [bos, 4, 5, 6], [bos, 7]]
    assert targets(windows) == list(range(1, 8))
    assert all(len(w.input_ids) <= 4 for w in windows)
    # short enough: one example, as it is
    assert text_windows([bos, 1, 2], [X, 1, 2], 4, bos)[0].input_ids == [bos, 1, 2]


def test_a_window_without_a_target_is_dropped():
    # a long prefix (no labels) then a short continuation
    ids, labels = list(range(9)), [X] * 7 + [7, 8]
    windows = text_windows(ids, labels, 4)
    assert [w.input_ids for w in windows] == [[6, 7, 8]]
    assert targets(windows) == [7, 8]


def test_a_document_is_rendered_without_chat_template_and_learned_on_every_token(tok):
    doc = document("Plain text about ships. " * 8)
    assert render(tok, doc.messages) == (tok.bos_token or "") + doc.response
    assert "<|im_start|>" not in render(tok, doc.messages)
    examples, truncated = tokenize_conversations(tok, [doc], 16)
    whole = tok(doc.response.rstrip(), add_special_tokens=False)["input_ids"]
    assert truncated == 0 and len(examples) > 1
    assert all(len(e.input_ids) <= 16 for e in examples)
    assert targets(examples) == whole[1:]  # every token but the first (never predicted)


def test_chat_conversations_tokenise_as_before(tok):
    chat = [qa("What is 2 + 2?", "It is 4."), qa("Name a colour.", "Blue " * 40)]
    examples, truncated = tokenize_conversations(tok, chat, 24)
    assert examples == [encode_conversation(tok, c.messages, 24) for c in chat]
    assert truncated == 1 and examples[1].truncated


def test_raw_text_with_a_prefix_scores_only_its_continuation(tok):
    item = document(" over the lazy dog", prefix="The quick brown fox jumps")
    examples, _ = tokenize_conversations(tok, [item], 64)
    text = tok.decode([t for t in examples[0].labels if t != X])
    assert text.strip() == "over the lazy dog"
    assert item.prompt == [{"role": "text", "content": "The quick brown fox jumps"}]


# ---------------------------------------------------------------------------- files


def stage(source, **kw) -> StageConfig:
    return StageConfig(source=str(source), kind="text", **kw)


def test_a_txt_file_is_one_document(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("First paragraph.\n\nSecond paragraph.\n")
    docs = load_stage(stage(path))
    assert len(docs) == 1 and docs[0].response == "First paragraph.\n\nSecond paragraph.\n"
    assert docs[0].is_text


def test_records_files_give_one_document_per_record_from_text_or_text_key(tmp_path):
    rows = [{"text": f"Document {i}.", "body": f"Body {i}.", "id": i} for i in range(3)]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "a.json").write_text(json.dumps(rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    (tmp_path / "a.csv").write_text("text,body\n" + "".join(
        f"{r['text']},{r['body']}\n" for r in rows))
    for suffix in (".jsonl", ".json", ".parquet", ".csv"):
        docs = load_stage(stage(tmp_path / f"a{suffix}"))
        assert [d.response for d in docs] == ["Document 0.", "Document 1.", "Document 2."]
        bodies = load_stage(stage(tmp_path / f"a{suffix}", text_key="body", max_examples=2))
        assert [d.response for d in bodies] == ["Body 0.", "Body 1."]


def test_conversations_read_as_text_are_one_document_each(tmp_path):
    docs = load_stage(StageConfig(source="builtin:authors", kind="text", max_examples=2))
    chat = load_stage(StageConfig(source="builtin:authors", max_examples=2))
    assert [d.response for d in docs] == ["\n\n".join(m["content"] for m in c.messages)
                                          for c in chat]


@pytest.mark.parametrize("record, message", [
    ({"body": "x"}, "record 2: missing field 'text'"),
    ({"text": 3}, "record 2: field 'text': expected non-empty text, got int"),
    ({"text": "  "}, "record 2: field 'text': expected non-empty text"),
])
def test_a_bad_record_is_one_line_naming_file_record_and_key(tmp_path, record, message):
    path = tmp_path / "docs.jsonl"
    path.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(DataError) as e:
        load_stage(stage(path))
    assert f"{path}: {message}" in str(e.value) and "\n" not in str(e.value)


def test_text_only_settings_are_refused_elsewhere(tmp_path):
    with pytest.raises(ValidationError, match="text_key"):
        StageConfig(source="a.jsonl", text_key="body")
    with pytest.raises(ValidationError, match="system"):
        StageConfig(source="a.jsonl", kind="text", system="Be brief.")
    with pytest.raises(DataError, match="text_key names the field of a records file"):
        load_stage(StageConfig(source="builtin:authors", kind="text", text_key="body"))
    with pytest.raises(DataError, match="an empty text file|empty text file"):
        (tmp_path / "e.txt").write_text("\n")
        load_stage(stage(tmp_path / "e.txt"))


# ---------------------------------------------------------------------------- keys


def config(**stage):
    return validate_config({
        "stages": {"a": {"source": "builtin:instructions", **stage},
                   "f": {"source": "builtin:refusals"}},
        "paths": {"forget_stage": "f", "order": ["a"], "positions": [1, 2]}})


def test_a_chat_stage_keys_as_before_and_a_text_stage_apart():
    chat = stage_identity(config(), "a")
    assert "kind" not in chat and "text_key" not in chat  # what every prefix key held before
    assert chat == {"name": "a", **{k: v for k, v in StageConfig(
        source="builtin:instructions").model_dump(mode="json").items()
        if k not in ("kind", "text_key")}}
    text = stage_identity(config(kind="text"), "a")
    assert text["kind"] == "text" and text != chat
