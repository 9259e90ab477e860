"""The documents of a stage of ``kind: text``: raw text, learned (or unlearned) on every token.

A text stage's source is read as documents (each a
:func:`~pathunlearn.data.conversation.document`: no chat template, every token a target, cut
into windows of ``model.max_length`` tokens by :func:`pathunlearn.data.chat.tokenize_conversations`):

- a ``.txt`` file: the whole file is **one document** (a corpus or a book, as MUSE's own
  ``raw/*.txt`` files are read: one stream, chunked), UTF-8; an empty file is an error. For
  many short documents use a records file;
- a records file (``.jsonl``, ``.json``, ``.csv``, ``.parquet``): one document per record, its
  ``text_key`` field (default ``text``); a record without it, or whose value is not non-empty
  text, is a DataError naming the file, the record (1-based) and the field. With
  ``question_key``/``answer_key`` the records are read as question/answer conversations and
  each becomes one document (below);
- any other source (``builtin:NAME``, ``ADAPTER:LOCATION``, a hub dataset): what it gives; raw
  text (``muse:DIR:raw:forget``) as it is, a conversation as one document, the contents of its
  turns joined by a blank line (so a chat corpus can be learned as plain text).
"""

from __future__ import annotations

from pathlib import Path

from pathunlearn.data.conversation import Conversation, document
from pathunlearn.data.io import iter_records, read_text
from pathunlearn.errors import DataError

TEXT_SUFFIX = ".txt"
DEFAULT_TEXT_KEY = "text"
"""The field of a record that holds its document, unless a stage's ``text_key`` names another."""


def as_document(conversation: Conversation) -> Conversation:
    """Raw text as it is; a conversation as one document: its turns' contents, joined by a
    blank line (its ``meta`` kept)."""
    if conversation.is_text:
        return conversation
    text = "\n\n".join(m["content"] for m in conversation.messages)
    return document(text, **conversation.meta)


def text_records(path: str | Path, text_key: str | None = None) -> list[Conversation]:
    """One document per record of a records file: its ``text_key`` field (default ``text``)."""
    key = text_key or DEFAULT_TEXT_KEY
    out = []
    for i, record in enumerate(iter_records(path), 1):
        out.append(document(record_text(record, f"{path}: record {i}", key)))
    if not out:
        raise DataError(f"{path}: no records")
    return out


def record_text(record: dict, where: str, key: str) -> str:
    """The document of one record: its field ``key``, non-empty text."""
    if record.get(key) is None:
        fields = ", ".join(f"'{k}'" for k in list(record)[:8]) or "none"
        raise DataError(f"{where}: missing field '{key}' (the document of a text stage; the "
                        f"record has {fields}; set the stage's text_key)")
    if not isinstance(record[key], str) or not record[key].strip():
        raise DataError(f"{where}: field '{key}': expected non-empty text, got "
                        f"{type(record[key]).__name__}")
    return record[key]


def text_file(path: str | Path) -> list[Conversation]:
    """A ``.txt`` file as one document."""
    text = read_text(path)
    if not text.strip():
        raise DataError(f"{path}: empty text file (a text stage's .txt is one document)")
    return [document(text, source=Path(path).name)]
