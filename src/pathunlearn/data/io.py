"""Read conversations from JSON, JSONL, CSV and Parquet files; write chat-format JSONL.

A file holds records. A record is either already a conversation (a ``messages`` or
``conversations`` field holding OpenAI-style messages; in CSV a JSON string) or a
question/answer pair mapped to one with an optional system prompt. Any malformed record
raises :class:`DataError` naming the file, the record number (1-based) and the field.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pathunlearn.data.conversation import ROLES, Conversation
from pathunlearn.errors import DataError
from pathunlearn.files import atomic_write

FORMATS = (".json", ".jsonl", ".csv", ".parquet")
MESSAGE_KEYS = ("messages", "conversations")


def read_records(path: str | Path, json_lines_ok: bool = False) -> list[dict[str, Any]]:
    """The records of a data file as dicts, by extension: .json (a list), .jsonl, .csv, .parquet.

    With ``json_lines_ok`` a .json file may also hold JSON Lines (as benchmark releases such as
    TOFU ship them): it is read as a list when its first non-space character is ``[``, else
    one object per line."""
    path = Path(path)
    if path.suffix not in FORMATS:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; use one of {FORMATS}")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    reader = {".json": _read_json, ".jsonl": _read_jsonl, ".csv": _read_csv,
              ".parquet": _read_parquet}[path.suffix]
    if json_lines_ok and path.suffix == ".json" and not _starts_with_list(path):
        reader = _read_json_lines_in_json
    records = reader(path)
    for i, r in enumerate(records, 1):
        if not isinstance(r, dict):
            raise DataError(f"{path}: record {i}: expected an object, got {type(r).__name__}")
    return records


def _read_json(path: Path) -> list[Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: a .json data file must hold a list of records, got {type(data).__name__}")
    return data


def _starts_with_list(path: Path) -> bool:
    """Whether the first non-whitespace byte of the file is ``[`` (read in chunks, not whole)."""
    with path.open("rb") as f:
        while chunk := f.read(4096):
            if stripped := chunk.lstrip():
                return stripped.startswith(b"[")
    return False


def _read_json_lines_in_json(path: Path) -> list[Any]:
    return _read_jsonl(path, hint=" (a .json file here holds a JSON list or JSON Lines, one "
                                  "object per line)")


def _read_jsonl(path: Path, hint: str = "") -> list[Any]:
    records = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            n = len(records) + 1
            raise DataError(f"{path}: record {n} (line {lineno}): invalid JSON: {e.msg}{hint}") from None
    return records


def _read_csv(path: Path) -> list[Any]:
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None
    except csv.Error as e:
        raise DataError(f"{path}: malformed CSV: {e}") from None
    for i, row in enumerate(rows, 1):
        if None in row:  # more cells than header columns
            raise DataError(f"{path}: record {i}: more fields than the header has columns")
        for key in MESSAGE_KEYS:  # a conversation column in CSV is a JSON string
            if isinstance(row.get(key), str):
                try:
                    row[key] = json.loads(row[key])
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}: record {i}: field '{key}': not valid JSON ({e.msg})") from None
    return rows


def _read_parquet(path: Path) -> list[Any]:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise DataError(f"{path}: cannot read Parquet: {' '.join(str(e).split())}") from None


def record_to_conversation(
    record: dict[str, Any],
    where: str,
    question_key: str | None = None,
    answer_key: str | None = None,
    system: str | None = None,
) -> Conversation:
    """Map one record to a conversation; ``where`` ("file: record N") prefixes every error."""
    if question_key is not None:
        return _qa_record(record, where, question_key, answer_key or "", system)
    key = next((k for k in MESSAGE_KEYS if k in record), None)
    if key is None:
        raise DataError(f"{where}: no 'messages' or 'conversations' field (for question/answer "
                        f"records set a stage's question_key and answer_key, or pass "
                        f"--question-key and --answer-key)")
    messages = _check_messages(record[key], f"{where}: field '{key}'")
    meta = record.get("meta") if isinstance(record.get("meta"), dict) else {}
    return Conversation(messages=messages, meta=meta)


def _qa_record(record: dict[str, Any], where: str, qkey: str, akey: str,
               system: str | None) -> Conversation:
    for key in (qkey, akey):
        if key not in record:
            raise DataError(f"{where}: missing field '{key}'")
        if not isinstance(record[key], str) or not record[key].strip():
            raise DataError(f"{where}: field '{key}': expected non-empty text")
    messages = [] if system is None else [{"role": "system", "content": system}]
    messages += [{"role": "user", "content": record[qkey]},
                 {"role": "assistant", "content": record[akey]}]
    return Conversation(messages=messages)


def _check_messages(messages: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: expected a non-empty list of messages")
    out = []
    for j, m in enumerate(messages):
        at = f"{where}[{j}]"
        if not isinstance(m, dict):
            raise DataError(f"{at}: expected an object with 'role' and 'content'")
        role = m.get("role", m.get("from"))
        content = m.get("content", m.get("value"))
        if role not in ROLES:
            raise DataError(f"{at}.role: expected one of {'/'.join(ROLES)}, got {role!r}")
        if not isinstance(content, str):
            raise DataError(f"{at}.content: expected text, got {type(content).__name__}")
        out.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in out):
        raise DataError(f"{where}: no assistant message (nothing to train on)")
    return out


def load_conversations(
    path: str | Path,
    question_key: str | None = None,
    answer_key: str | None = None,
    system: str | None = None,
) -> list[Conversation]:
    """Read a data file into conversations (see the module docstring for the accepted shapes)."""
    records = read_records(path)
    if not records:
        raise DataError(f"{path}: no records")
    return [record_to_conversation(r, f"{path}: record {i}", question_key, answer_key, system)
            for i, r in enumerate(records, 1)]


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> None:
    """Write records as JSON lines, atomically (temp file in the same directory, then rename)."""
    with atomic_write(path) as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def iter_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """Yield the JSON objects of a JSONL file (metrics, results)."""
    with Path(path).open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)
