"""Adapters: public benchmark files (read locally, never downloaded) as conversations.

A source written ``NAME:FILE`` is read by adapter NAME, e.g. ``gsm8k:data/gsm8k/test.jsonl``.
Each adapter knows its benchmark's record shape, so no ``question_key``/``answer_key`` is
needed, and it turns the records into conversations the stages, probes and the math utility
can use as they are.

- ``gsm8k``: the GSM8K release (``{"question", "answer"}``, the answer's last line
  ``#### 72``). The calculator annotations ``<<48/2=24>>`` are removed from the solution, the
  final line is normalised to ``#### <number>`` and the number is stored as ``meta.answer``
  (thousands separators dropped), so the math utility scores against it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pathunlearn.data.conversation import Conversation, qa
from pathunlearn.data.io import read_records
from pathunlearn.errors import DataError

_CALCULATOR = re.compile(r"<<[^<>]*>>")
_FINAL = re.compile(r"^\s*####\s*(?P<answer>.*?)\s*$")
_GSM8K_NUMBER = re.compile(r"^-?\d+(?:\.\d+)?$")


def _text(record: dict[str, Any], key: str, where: str) -> str:
    value = record.get(key)
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: field '{key}': expected non-empty text"
                        if key in record else f"{where}: missing field '{key}'")
    return value.strip()


def gsm8k_record(record: dict[str, Any], where: str, system: str | None = None) -> Conversation:
    """One GSM8K record as a conversation whose response ends with ``#### <answer>``."""
    question, answer = _text(record, "question", where), _text(record, "answer", where)
    lines = answer.splitlines()
    final = _FINAL.match(lines[-1])
    if final is None:
        raise DataError(f"{where}: field 'answer': the last line must be '#### <number>'")
    number = final["answer"].replace(",", "")
    if not _GSM8K_NUMBER.match(number):
        raise DataError(f"{where}: field 'answer': final answer {final['answer']!r} is not a "
                        "number")
    steps = [_CALCULATOR.sub("", line).rstrip() for line in lines[:-1]]
    solution = "\n".join([*(s for s in steps if s.strip()), f"#### {number}"])
    value: int | float = float(number) if "." in number else int(number)
    conv = qa(question, solution, system)
    return Conversation(messages=conv.messages, meta={"answer": value, "source": "gsm8k"})


ADAPTERS: dict[str, Callable[[dict[str, Any], str, str | None], Conversation]] = {
    "gsm8k": gsm8k_record,
}
"""Adapter name -> record reader (record, "file: record N", system prompt or None)."""


def parse_adapter(spec: str) -> tuple[str, str] | None:
    """``gsm8k:path/test.jsonl`` -> (``gsm8k``, ``path/test.jsonl``); None when ``spec`` does
    not start with a known adapter name."""
    name, sep, path = spec.partition(":")
    return (name, path) if sep and name in ADAPTERS else None


def load_adapted(name: str, path: str | Path, system: str | None = None) -> list[Conversation]:
    """The records of ``path`` read by adapter ``name``; a :class:`DataError` names the file,
    the record (1-based) and the field of the first bad record."""
    records = read_records(path)
    if not records:
        raise DataError(f"{path}: no records")
    reader = ADAPTERS[name]
    return [reader(r, f"{path}: record {i}", system) for i, r in enumerate(records, 1)]
