"""Read conversations from JSON, JSONL, CSV and Parquet files; write chat-format JSONL.

A file holds records. A record is either already a conversation (a ``messages`` or
``conversations`` field holding OpenAI-style messages; in CSV a JSON string) or a
question/answer pair mapped to one with an optional system prompt. Any malformed record
raises :class:`DataError` naming the file, the record number (1-based) and the field.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import json
import os
import re
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from pathunlearn.data.conversation import ROLES, Conversation
from pathunlearn.errors import DataError, UserError
from pathunlearn.files import atomic_write

FORMATS = (".json", ".jsonl", ".csv", ".parquet")
MESSAGE_KEYS = ("messages", "conversations")
MAX_LINE_BYTES = 16 * 2**20
"""The longest line of a JSON Lines file (a record) read, and the longest record of a .json
list; longer is a DataError, not memory."""
MAX_DEPTH = 32
"""The deepest nesting of a record or a config (a conversation is 3 deep); deeper is refused."""
JSON_CHUNK = 2**20
"""How much of a .json data file (a JSON list) is read at a time; a record is decoded as soon
as it is whole, so a bad first record is refused after about one chunk."""
FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
              (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
              (stat.S_ISSOCK, "a socket"))


# ---------------------------------------------------------------------------- reading files


def open_regular(path: str | Path, error: type[UserError] = DataError,
                 prefix: str = "") -> BinaryIO:
    """``path`` opened for reading in binary, a regular file only: every config and data file
    is read through here. A missing file, a directory, a FIFO (which would block ``open``
    forever), a device or a socket is one ``error`` line ``PATH: PREFIX<what it is>``."""
    def refuse(what: str) -> UserError:
        return error(f"{path}: {prefix}{what}")

    try:
        mode = os.stat(path).st_mode  # stat never blocks, open on a FIFO does
    except FileNotFoundError:
        raise refuse("no such file") from None
    except OSError as e:
        raise refuse(f"cannot read ({e.strerror or e})") from None
    if not stat.S_ISREG(mode):
        raise refuse(f"is {_kind(mode)}, not a file")
    try:  # O_NONBLOCK: a FIFO swapped in after the stat still cannot block
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise refuse(f"cannot read ({e.strerror or e})") from None
    if not stat.S_ISREG(mode := os.fstat(fd).st_mode):
        os.close(fd)
        raise refuse(f"is {_kind(mode)}, not a file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def _kind(mode: int) -> str:
    return next((name for test, name in FILE_KINDS if test(mode)), "not a regular file")


def read_text(path: str | Path, error: type[UserError] = DataError, prefix: str = "") -> str:
    """The whole of a regular file (:func:`open_regular`) as UTF-8 text, a leading byte-order
    mark dropped; text that is not UTF-8 is one ``error`` line naming the byte offset."""
    with open_regular(path, error, prefix) as f:
        data = f.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:  # e.start counts from after the BOM: the file's byte named
        at = e.start + len(codecs.BOM_UTF8) * data.startswith(codecs.BOM_UTF8)
        raise error(f"{path}: {prefix}not UTF-8 text (byte {at})") from None


def text_lines(path: str | Path, hint: str = "") -> Iterator[tuple[int, str]]:
    """(line number, text) of each non-blank line of a regular UTF-8 file, read lazily (a
    huge file costs a line's memory, and a bad line is found without reading the rest); a
    line over :data:`MAX_LINE_BYTES` or not UTF-8 is a DataError naming its number."""
    with open_regular(path) as f:
        for lineno in itertools.count(1):
            raw = f.readline(MAX_LINE_BYTES + 1)
            if not raw:
                return
            if len(raw) > MAX_LINE_BYTES:
                raise DataError(f"{path}: line {lineno} is longer than "
                                f"{MAX_LINE_BYTES // 2**20} MiB{hint}")
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError:
                raise DataError(f"{path}: line {lineno}: not UTF-8 text") from None
            if line.strip():
                yield lineno, line


def parse_json(text: str, where: str, position: bool = True, hint: str = "") -> Any:
    """``text`` as JSON, checked by :func:`check_plain` (nesting, lone surrogates); invalid
    JSON is a DataError ``WHERE: invalid JSON[ at line L column C]: reason HINT``."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        at = f" at line {e.lineno} column {e.colno}" if position else ""
        raise DataError(f"{where}: invalid JSON{at}: {e.msg}{hint}") from None
    except RecursionError:  # json's C scanner gives up near 1000 levels
        raise DataError(f"{where}: nested deeper than {MAX_DEPTH} levels") from None
    check_plain(value, where)
    return value


def check_plain(value: Any, where: str, error: type[UserError] = DataError,
                depth: int = 0) -> None:
    """Refuse what no config or record holds but would fail far from here: nesting deeper
    than :data:`MAX_DEPTH`, and text with a lone surrogate (JSON's ``"\\ud800"``, YAML's
    ``"\\ud800"``), which no UTF-8 file can hold, so writing it (config.yaml, a cache)
    would fail after work began."""
    if depth > MAX_DEPTH:
        raise error(f"{where}: nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise error(f"{where}: text {value[max(0, e.start - 20):e.start]!r} is followed "
                        f"by a lone surrogate (\\u{ord(value[e.start]):04x}), not text") \
                from None
    elif isinstance(value, dict):
        for k, v in value.items():
            check_plain(k, where, error, depth + 1)
            check_plain(v, where, error, depth + 1)
    elif isinstance(value, list | tuple):
        for v in value:
            check_plain(v, where, error, depth + 1)


# ---------------------------------------------------------------------------- records


def read_records(path: str | Path, json_lines_ok: bool = False) -> list[dict[str, Any]]:
    """The records of a data file as dicts, by extension: .json (a list), .jsonl, .csv, .parquet.

    With ``json_lines_ok`` a .json file may also hold JSON Lines (as benchmark releases such as
    TOFU ship them): it is read as a list when its first non-space character is ``[``, else
    one object per line."""
    return list(iter_records(path, json_lines_ok))


def iter_records(path: str | Path, json_lines_ok: bool = False) -> Iterator[dict[str, Any]]:
    """The records of :func:`read_records` one at a time, read lazily where the format allows
    (a JSON list, JSON Lines, CSV): a bad record stops the read there."""
    path = Path(path)
    if path.suffix not in FORMATS:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; use one of {FORMATS}")
    open_regular(path).close()  # a FIFO, a directory, a missing file: before any reader
    reader = {".json": _read_json, ".jsonl": _read_jsonl, ".csv": _read_csv,
              ".parquet": _read_parquet}[path.suffix]
    if json_lines_ok and path.suffix == ".json" and not _starts_with_list(path):
        reader = _read_json_lines_in_json
    for i, r in enumerate(reader(path), 1):
        if not isinstance(r, dict):
            raise DataError(f"{path}: record {i}: expected an object, got {type(r).__name__}")
        yield r


def _read_json(path: Path) -> Iterator[Any]:
    """The records of a .json file holding one JSON list, read and decoded one at a time
    (:class:`JsonListReader`), each checked by :func:`check_plain`; an error inside a record
    is the error json.loads would give for the whole file with ``(record N)`` added."""
    with open_regular(path) as f:
        for index, record in enumerate(JsonListReader(f, path, JSON_CHUNK), 1):
            try:
                check_plain(record, str(path), depth=1)
            except DataError as e:
                raise DataError(f"{e} (record {index})") from None
            yield record


_NOT_WHITESPACE = re.compile(r"[^ \t\n\r]")  # JSON's whitespace, as json's scanner has it
_DELIMITER = re.compile(r"[ \t\n\r]*(?:(,)[ \t\n\r]*|\])")
_CUT_MARGIN = 16
"""A decode error this close to the end of what was read may be the cut (``1.`` of ``1.5``,
``\\u12`` of ``\\u1234``, ``-Infin`` of ``-Infinity``), so more is read before it counts."""


class _TooLong(Exception):
    """A value still incomplete after :data:`MAX_LINE_BYTES` of text."""


class JsonListReader:
    """Iterate over the elements of the JSON list in the binary file ``f``, decoding each
    as soon as it is whole: the file is read ``chunk`` bytes at a time and decoded as UTF-8
    incrementally (a character split by a chunk waits for its other bytes), so memory is
    bounded by the largest element (at most :data:`MAX_LINE_BYTES` of text, else a
    DataError). Invalid JSON is a DataError with the message, line and column
    ``json.loads`` gives for the whole file; ``(record N)`` is added when inside element N.

    ``json.JSONDecoder.raw_decode`` decodes one element at a time. A decode that stops near the
    end of the text read so far may be the cut rather than the file (a number that goes on, a
    string or escape not yet closed): it is retried with more text, the read size doubling
    with the element's length so a long element costs linear time."""

    def __init__(self, f: BinaryIO, path: str | Path, chunk: int = JSON_CHUNK):
        self.f, self.path, self.chunk = f, path, chunk
        self.text = codecs.getincrementaldecoder("utf-8-sig")()  # the BOM Excel writes dropped
        self.decoder = json.JSONDecoder()
        self.buf, self.pos, self.eof = "", 0, False
        self.bytes_read = 0
        self.lines = 0  # newlines before buf[0]
        self.column = 0  # characters of the current line before buf[0]

    def __iter__(self) -> Iterator[Any]:
        first = self._peek()
        if first != "[":
            self._not_a_list(first)
        self.pos += 1
        if self._peek() == "]":
            self.pos += 1
        else:
            yield from self._elements()
        if self._peek():
            raise self._invalid("Extra data", self.pos)

    def _elements(self) -> Iterator[Any]:
        """The list's elements from ``pos`` (the first one's start) to its ``]``, consumed."""
        for index in itertools.count(1):
            try:
                record = self._value(index)
            except _TooLong:
                raise DataError(f"{self.path}: record {index} is longer than "
                                f"{MAX_LINE_BYTES // 2**20} MiB") from None
            yield record
            match = _DELIMITER.match(self.buf, self.pos)  # the common case, in one step
            if match and match.end() < len(self.buf):
                self.pos = match.end()
                if match[1] is None:  # the list's ']'
                    return
                continue
            after = self._peek()  # the delimiter or the next value is past what was read
            if after not in (",", "]"):  # '' (the end of the file) included
                raise self._invalid("Expecting ',' delimiter", self.pos)
            self.pos += 1
            if after == "]":
                return
            self._peek()  # raw_decode starts at a value, not the whitespace before it

    def _not_a_list(self, first: str) -> None:
        """Refuse a file whose top-level value is not a list, with json.loads' error when the
        file is not JSON at all (its first value read as any element is, so bounded)."""
        if first == "\ufeff" and not (self.pos or self.lines or self.column):  # a second BOM
            raise self._invalid("Unexpected UTF-8 BOM (decode using utf-8-sig)", 0)
        try:
            value = self._value(None)
        except _TooLong:  # a huge object: not a list, whatever else is wrong with it
            value = {"{": {}, '"': ""}.get(first, 0.0)
        else:
            if self._peek():
                raise self._invalid("Extra data", self.pos)
            check_plain(value, str(self.path))
        raise DataError(f"{self.path}: a .json data file must hold a list of records, got "
                        f"{type(value).__name__}")

    def _value(self, index: int | None) -> Any:
        """The JSON value at ``pos``, consumed; more is read while it may be incomplete."""
        while True:
            try:
                value, end = self.decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as e:
                if self.eof or not (e.pos + _CUT_MARGIN > len(self.buf)
                                    or e.msg.startswith("Unterminated string")):
                    raise self._invalid(e.msg, e.pos, index) from None
            except RecursionError:  # json's C scanner gives up near 1000 levels
                at = f" (record {index})" if index else ""
                raise DataError(f"{self.path}: nested deeper than {MAX_DEPTH} levels{at}") \
                    from None
            else:  # a number may go on past the cut: only the end of the file is sure
                if self.eof or end + _CUT_MARGIN <= len(self.buf):
                    self.pos = end
                    return value
            pending = len(self.buf) - self.pos
            if pending > MAX_LINE_BYTES or (
                    4 * pending > MAX_LINE_BYTES
                    and len(self.buf[self.pos:].encode()) > MAX_LINE_BYTES):
                raise _TooLong
            self._read(max(self.chunk, min(pending, MAX_LINE_BYTES + 1 - pending)))

    def _peek(self) -> str:
        """The next character after whitespace, not consumed; '' at the end of the file."""
        while not (match := _NOT_WHITESPACE.search(self.buf, self.pos)):
            self.pos = len(self.buf)
            if self.eof:
                return ""
            self._read(self.chunk)
        self.pos = match.start()
        return self.buf[self.pos]

    def _read(self, size: int) -> None:
        """Drop the text before ``pos`` (counting its lines) and append ``size`` more bytes."""
        done = self.buf[:self.pos]
        newline = done.rfind("\n")
        if newline < 0:
            self.column += len(done)
        else:
            self.lines += done.count("\n")
            self.column = len(done) - newline - 1
        raw = self.f.read(size)
        self.bytes_read += len(raw)
        try:
            text = self.text.decode(raw, final=not raw)
        except UnicodeDecodeError as e:  # e.object: the bytes held back and these
            at = self.bytes_read - len(e.object) + e.start
            raise DataError(f"{self.path}: not UTF-8 text (byte {at})") from None
        self.buf, self.pos, self.eof = self.buf[self.pos:] + text, 0, not raw

    def _invalid(self, msg: str, pos: int, index: int | None = None) -> DataError:
        """json.loads' error for the whole file: line and column count from its start."""
        before = self.buf[:pos]
        newline = before.rfind("\n")
        line = self.lines + before.count("\n") + 1
        column = pos - newline if newline >= 0 else self.column + pos + 1
        at = f" (record {index})" if index else ""
        return DataError(f"{self.path}: invalid JSON at line {line} column {column}: {msg}{at}")


def _starts_with_list(path: Path) -> bool:
    """Whether the first non-whitespace byte of the file is ``[`` (read in chunks, not whole)."""
    with open_regular(path) as f:
        while chunk := f.read(4096):
            if stripped := chunk.removeprefix(b"\xef\xbb\xbf").lstrip():
                return stripped.startswith(b"[")
    return False


def _read_json_lines_in_json(path: Path) -> Iterator[Any]:
    return _read_jsonl(path, hint=" (a .json file here holds a JSON list or JSON Lines, one "
                                  "object per line)")


def _read_jsonl(path: Path, hint: str = "") -> Iterator[Any]:
    for n, (lineno, line) in enumerate(text_lines(path, hint), 1):
        yield parse_json(line, f"{path}: record {n} (line {lineno})", position=False, hint=hint)


def _read_csv(path: Path) -> Iterator[Any]:
    with open_regular(path) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")  # Excel writes a BOM
        try:
            for i, row in enumerate(csv.DictReader(text), 1):
                yield _csv_row(row, path, i)
        except UnicodeDecodeError:
            raise DataError(f"{path}: not UTF-8 text") from None
        except csv.Error as e:
            raise DataError(f"{path}: malformed CSV: {e}") from None


def _csv_row(row: dict[str | None, Any], path: Path, i: int) -> dict[str, Any]:
    if None in row:  # more cells than header columns
        raise DataError(f"{path}: record {i}: more fields than the header has columns")
    check_plain(row, f"{path}: record {i}")
    for key in MESSAGE_KEYS:  # a conversation column in CSV is a JSON string
        if isinstance(row.get(key), str):
            row[key] = parse_json(row[key], f"{path}: record {i}: field '{key}'")
    return row


def _read_parquet(path: Path) -> Iterator[Any]:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise DataError(f"{path}: cannot read Parquet: {' '.join(str(e).split())}") from None
    for i, row in enumerate(rows, 1):
        check_plain(row, f"{path}: record {i}")
        yield row


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
        if role == "assistant" and not content.strip():  # a target of no tokens (issue 25)
            raise DataError(f"{at}.content: empty assistant message (nothing to train on or "
                            "score)")
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
    conversations = [record_to_conversation(r, f"{path}: record {i}", question_key, answer_key,
                                            system)
                     for i, r in enumerate(iter_records(path), 1)]  # stops at a bad record
    if not conversations:
        raise DataError(f"{path}: no records")
    return conversations


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> None:
    """Write records as JSON lines, atomically (temp file in the same directory, then rename)."""
    with atomic_write(path) as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def iter_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """Yield the JSON values of a JSONL file (metrics, results), one line at a time; a line
    that is not JSON is a DataError naming the file and the line."""
    for lineno, line in text_lines(path):
        yield parse_json(line, f"{path}: line {lineno}", position=False)


def subset_files(directory: Path, subset: str) -> list[Path]:
    """The files of one subset of a release directory (TOFU's, WMDP's): ``SUBSET.json`` (or
    ``.jsonl``, ``.csv``, ``.parquet``) at its root, else the parquet files under ``SUBSET/``
    (the hub's layout, shards in name order); [] when the directory has neither."""
    for suffix in FORMATS:
        if (directory / f"{subset}{suffix}").is_file():
            return [directory / f"{subset}{suffix}"]
    folder = directory / subset
    return sorted(folder.rglob("*.parquet")) if folder.is_dir() else []
