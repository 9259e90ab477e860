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
- ``tofu``: the TOFU release (``full.json``, ``forget01.json``, ``retain90.json``,
  ``forget05_perturbed.json`` ...; ``{"question", "answer"}``, the perturbed/eval files also
  ``paraphrased_answer``, ``perturbed_answer`` (a list) and some ``paraphrased_question``).
  The extra fields present are kept in ``meta``. Splits: ``train`` (every record as it is
  trained), ``paraphrased`` (the same records in the same order, each asked by its
  ``paraphrased_question``: probes of the same facts asked in other words).
- ``skillmix``: Instruct-SkillMix-SDD records (``data/ism_sdd_k2_1K.json`` ...), question and
  answer read from the first pair a record has of ``input``/``output`` (the defaults of the
  paper's ``convert_format.py``), ``instruction``/``output``, ``instruction``/``response``;
  any other field that is a JSON scalar or a list of scalars (skills, category ...) goes to
  ``meta``. Splits: none (a stage's ``split`` is ignored, as for ``gsm8k``).

Every adapter reads .json (a list, or JSON Lines as TOFU ships it: one object per line),
.jsonl, .csv and .parquet files, and puts the stage's ``system`` prompt before each question.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pathunlearn.data.conversation import Conversation, qa
from pathunlearn.data.io import FORMATS, read_records, record_to_conversation
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


def _question_answer(record: dict[str, Any], where: str, question_key: str,
                     answer_key: str) -> tuple[str, str]:
    """The stripped question and answer texts (the generic reader checks both fields)."""
    pair = record_to_conversation(record, where, question_key, answer_key)
    return pair.prompt[-1]["content"].strip(), pair.response.strip()


TOFU_SPLITS = ("train", "paraphrased")
TOFU_EXTRAS = ("paraphrased_answer", "perturbed_answer", "paraphrased_question")
"""The fields of TOFU's perturbed/eval files kept in ``meta`` (when present and not null)."""


def tofu_record(record: dict[str, Any], where: str, system: str | None = None,
                paraphrased: bool = False) -> Conversation:
    """One TOFU record as a conversation, its extra fields in ``meta``; ``paraphrased``: asked
    by its ``paraphrased_question``."""
    if paraphrased and record.get("paraphrased_question") is None:
        raise DataError(f"{where}: missing field 'paraphrased_question' (needed by split "
                        "paraphrased)")
    question, answer = _question_answer(record, where, "question", "answer")
    if paraphrased:
        question, _ = _question_answer(record, where, "paraphrased_question", "answer")
    extras: dict[str, Any] = {}
    for key in TOFU_EXTRAS:
        value = record.get(key)
        if value is None:  # absent (or a null cell of a Parquet column)
            continue
        if key == "perturbed_answer":
            if not isinstance(value, list):
                raise DataError(f"{where}: field 'perturbed_answer': expected a list of texts, "
                                f"got {type(value).__name__}")
            for j, item in enumerate(value):
                if not isinstance(item, str):
                    raise DataError(f"{where}: field 'perturbed_answer'[{j}]: expected text, "
                                    f"got {type(item).__name__}")
            value = list(value)
        elif not isinstance(value, str):
            raise DataError(f"{where}: field '{key}': expected text, got {type(value).__name__}")
        extras[key] = value
    return qa(question, answer, system, source="tofu", **extras)


def _tofu(records: list[dict], path: str, system: str | None,
          split: str | None) -> list[Conversation]:
    split = split or "train"
    if split not in TOFU_SPLITS:
        raise DataError(f"{path}: tofu has splits {', '.join(TOFU_SPLITS)}, not {split!r}")
    return [tofu_record(r, f"{path}: record {i}", system, paraphrased=split == "paraphrased")
            for i, r in enumerate(records, 1)]


SKILLMIX_FIELDS = (("input", "output"), ("instruction", "output"), ("instruction", "response"))
"""(question, answer) field pairs a SkillMix record may use, in order of preference."""


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def skillmix_record(record: dict[str, Any], where: str,
                    system: str | None = None) -> Conversation:
    """One Instruct-SkillMix record as a conversation; its other fields that are scalars or lists
    of scalars go to ``meta`` (``meta.source`` is ``skillmix``)."""
    present = {k for k, v in record.items() if v is not None}  # a null Parquet cell: absent
    keys = next((pair for pair in SKILLMIX_FIELDS if set(pair) <= present), None)
    if keys is None:
        accepted = ", ".join(f"'{q}' + '{a}'" for q, a in SKILLMIX_FIELDS)
        fields = ", ".join(f"'{k}'" for k in sorted(present)[:8]) + (" ..." * (len(present) > 8))
        raise DataError(f"{where}: no question/answer fields: expected {accepted} (the record "
                        f"has {fields or 'no fields'})")
    question, answer = _question_answer(record, where, *keys)
    meta = {k: list(v) if isinstance(v, list) else v for k, v in record.items()
            if k not in keys and v is not None
            and (_scalar(v) or isinstance(v, list) and all(_scalar(x) for x in v))}
    meta["source"] = "skillmix"
    return Conversation(messages=qa(question, answer, system).messages, meta=meta)


def _skillmix(records: list[dict], path: str, system: str | None,
              split: str | None) -> list[Conversation]:
    return [skillmix_record(r, f"{path}: record {i}", system) for i, r in enumerate(records, 1)]


ADAPTERS: dict[str, Callable[[list[dict], str, str | None, str | None], list[Conversation]]] = {
    "gsm8k": _gsm8k,
    "sorry-bench": _sorry_bench,
    "tofu": _tofu,
    "skillmix": _skillmix,
}
"""Adapter name -> reader of a file's records (records, path, system prompt, split)."""


ADAPTER_SPLITS: dict[str, tuple[str, ...]] = {"sorry-bench": SORRY_BENCH_SPLITS,
                                              "tofu": TOFU_SPLITS}
"""The splits of the adapters that have any; ``NAME:FILE:SPLIT`` picks one inline."""

ADAPTER_SPLIT_ROLES: dict[str, dict[str, str]] = {"sorry-bench": {"heldout": "test"},
                                                  "tofu": {"paraphrased": "paraphrased"}}
"""What an adapter's splits are for the default probes (see ``data.suite.SPLIT_ROLES``)."""


def parse_adapter(spec: str) -> tuple[str, str, str | None] | None:
    """``gsm8k:path/test.jsonl`` -> (``gsm8k``, ``path/test.jsonl``, None);
    ``sorry-bench:sorry.jsonl:test`` -> (``sorry-bench``, ``sorry.jsonl``, ``test``) (an inline
    split only for an adapter with splits); None when ``spec`` does not start with a known
    adapter name."""
    name, sep, path = spec.partition(":")
    if not sep or name not in ADAPTERS:
        return None
    head, sep, tail = path.rpartition(":")
    if sep and (tail in ADAPTER_SPLITS.get(name, ()) or Path(head).suffix in FORMATS):
        return name, head, tail  # a split the adapter may not have: load_adapted says so
    return name, path, None


def load_adapted(name: str, path: str | Path, system: str | None = None,
                 split: str | None = None) -> list[Conversation]:
    """The records of ``path`` read by adapter ``name`` (``split`` where it has splits); a
    :class:`DataError` names the file, the record (1-based) and the field of a bad record."""
    records = read_records(path, json_lines_ok=True)
    if not records:
        raise DataError(f"{path}: no records")
    conversations = ADAPTERS[name](records, str(path), system, split)
    if not conversations:
        raise DataError(f"{path}: no records left for {name} split {split or 'train'}")
    return conversations
