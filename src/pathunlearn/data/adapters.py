"""Adapters: public benchmark files (read locally, never downloaded) as conversations.

A source written ``NAME:FILE`` is read by adapter NAME, e.g. ``gsm8k:data/gsm8k/test.jsonl``.
Each adapter knows its benchmark's record shape, so no ``question_key``/``answer_key`` is
needed, and it turns the records into conversations the stages, probes and the math utility
can use as they are.

- ``gsm8k``: the GSM8K release (``{"question", "answer"}``, the answer's last line
  ``#### 72``). The calculator annotations ``<<48/2=24>>`` are removed from the solution, the
  final line is normalised to ``#### <number>`` and the number is stored as ``meta.answer``
  (thousands separators dropped), so the math utility scores against it. Splits: none (the
  release ships train and test files).
- ``sorry-bench``: SORRY-BENCH prompts (``{"question_id", "category", "turns": [prompt],
  "prompt_style"}``) as the paper's safety stage: each answered with REFUSAL_PREFIX and a
  short reason (a record's own ``response`` field, when it has one, is used instead). As in
  the paper's code, the prompt styles ``ascii``, ``atbash``, ``caesar``, ``morse``,
  ``misspellings``, ``translate-fr`` and ``translate-mr`` are dropped, and the rest is split
  70/30 into ``train`` / ``test`` with seed 42 (``all``: no split). The paper's reasons were
  written by an LLM; without one, every refusal gets the same generic reason.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pathunlearn.data.conversation import Conversation, qa
from pathunlearn.data.io import read_records, record_to_conversation
from pathunlearn.errors import DataError

_CALCULATOR = re.compile(r"<<[^<>]*>>")
_FINAL = re.compile(r"^\s*####\s*(?P<answer>.*?)\s*$")
_GSM8K_NUMBER = re.compile(r"^-?\d+(?:\.\d+)?$")


def gsm8k_record(record: dict[str, Any], where: str, system: str | None = None) -> Conversation:
    """One GSM8K record as a conversation whose response ends with ``#### <answer>``."""
    # the generic question/answer reader checks both fields
    pair = record_to_conversation(record, where, "question", "answer")
    question, answer = pair.prompt[-1]["content"].strip(), pair.response.strip()
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


def _gsm8k(records: list[dict], path: str, system: str | None,
           split: str | None) -> list[Conversation]:
    return [gsm8k_record(r, f"{path}: record {i}", system) for i, r in enumerate(records, 1)]


SORRY_BENCH_DROPPED_STYLES = ("ascii", "atbash", "caesar", "morse", "misspellings",
                              "translate-fr", "translate-mr")
SORRY_BENCH_SPLITS = ("train", "test", "all")
SORRY_BENCH_REASON = ("The request asks for help with something that could hurt people or "
                      "break the law.")


def _sorry_bench(records: list[dict], path: str, system: str | None,
                 split: str | None) -> list[Conversation]:
    from pathunlearn.data.suite import REFUSAL_PREFIX

    split = split or "train"
    if split not in SORRY_BENCH_SPLITS:
        raise DataError(f"{path}: sorry-bench has splits {', '.join(SORRY_BENCH_SPLITS)}, "
                        f"not {split!r}")
    kept = []
    for i, r in enumerate(records, 1):
        where = f"{path}: record {i}"
        turns = r.get("turns")
        if not isinstance(turns, list) or not turns or not isinstance(turns[0], str) \
                or not turns[0].strip():
            raise DataError(f"{where}: field 'turns': expected a list whose first item is the "
                            "prompt text")
        style = r.get("prompt_style", "base")
        if style in SORRY_BENCH_DROPPED_STYLES:
            continue
        response = r["response"] if "response" in r else f"{REFUSAL_PREFIX} {SORRY_BENCH_REASON}"
        if not isinstance(response, str) or not response.strip():
            raise DataError(f"{where}: field 'response': expected non-empty text")
        ids = {k: r[k] for k in ("question_id", "category") if k in r}
        kept.append(qa(turns[0].strip(), response.strip(), system, source="sorry-bench",
                       prompt_style=style, **ids))
    if split == "all":
        return kept
    order = list(range(len(kept)))
    random.Random(42).shuffle(order)
    cut = round(0.7 * len(kept))
    chosen = sorted(order[:cut] if split == "train" else order[cut:])
    return [kept[i] for i in chosen]


ADAPTERS: dict[str, Callable[[list[dict], str, str | None, str | None], list[Conversation]]] = {
    "gsm8k": _gsm8k,
    "sorry-bench": _sorry_bench,
}
"""Adapter name -> reader of a file's records (records, path, system prompt, split)."""


ADAPTER_SPLITS: dict[str, tuple[str, ...]] = {"sorry-bench": SORRY_BENCH_SPLITS}
"""The splits of the adapters that have any; ``NAME:FILE:SPLIT`` picks one inline."""


def parse_adapter(spec: str) -> tuple[str, str, str | None] | None:
    """``gsm8k:path/test.jsonl`` -> (``gsm8k``, ``path/test.jsonl``, None);
    ``sorry-bench:sorry.jsonl:test`` -> (``sorry-bench``, ``sorry.jsonl``, ``test``) (an inline
    split only for an adapter with splits); None when ``spec`` does not start with a known
    adapter name."""
    name, sep, path = spec.partition(":")
    if not sep or name not in ADAPTERS:
        return None
    head, sep, tail = path.rpartition(":")
    if sep and tail in ADAPTER_SPLITS.get(name, ()):
        return name, head, tail
    return name, path, None


def load_adapted(name: str, path: str | Path, system: str | None = None,
                 split: str | None = None) -> list[Conversation]:
    """The records of ``path`` read by adapter ``name`` (``split`` where it has splits); a
    :class:`DataError` names the file, the record (1-based) and the field of a bad record."""
    records = read_records(path)
    if not records:
        raise DataError(f"{path}: no records")
    conversations = ADAPTERS[name](records, str(path), system, split)
    if not conversations:
        raise DataError(f"{path}: no records left for {name} split {split or 'train'}")
    return conversations
