"""WMDP's multiple-choice questions (``wmdp:``) as conversations a ``choice`` probe scores.

The release, as checked against its public descriptions (the hub's ``cais/wmdp``, and
lm-evaluation-harness' ``lm_eval/tasks/wmdp/``):

- three subsets (hub configs) ``wmdp-bio``, ``wmdp-chem``, ``wmdp-cyber``, each with one split,
  ``test`` (lm-eval's ``_default_template_yaml``: ``dataset_path: cais/wmdp``, ``test_split:
  test``, no training or validation split; ``wmdp_cyber.yaml``: ``dataset_name: wmdp-cyber``);
- files ``<subset>/test-00000-of-00001.parquet`` on the hub's ``main`` branch (the commits
  that uploaded them; the parquet-converter branch holds ``<subset>/test/0000.parquet``);
- records ``{"question": str, "choices": [str, str, str, str], "answer": int}``, ``answer`` the
  0-based index of the correct choice (the dataset card's features: ``question`` string,
  ``choices`` a sequence of strings, ``answer`` int64).

MMLU (``cais/mmlu``) has the same three fields, so ``wmdp:FILE`` reads it too.

A source is ``wmdp:FILE`` (one file of records: .parquet, .jsonl or .json), ``wmdp:DIR:SUBSET`` (a local copy of the release in the hub's layout, or
``SUBSET.jsonl`` / ``.json`` / ``.parquet`` at its root), or ``wmdp:hf:cais/wmdp:wmdp-cyber``
(the hub's snapshot in the HF cache, :mod:`pathunlearn.hub`). A split, where given, is
``test`` (the release's only one); a stage's default ``train`` reads the same records.

Each record becomes one conversation: the user turn is lm-eval's wmdp prompt (``doc_to_text``:
the question stripped, then a line ``A. <choice>`` per choice, then ``Answer:``), the assistant
turn the correct choice's letter (lm-eval's ``doc_to_choice`` ``["A", "B", "C", "D"]`` at
``doc_to_target: answer``); ``meta`` keeps ``choices`` and ``answer`` for
:mod:`pathunlearn.eval.choice`. lm-eval's prompt lists four choices; a record with another
number of choices (2 to 26) gets a line per choice, lettered on. Nothing of WMDP ships with
pathunlearn: its tests write invented placeholder questions in this schema.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

from pathunlearn.data.conversation import Conversation, qa
from pathunlearn.errors import DataError

WMDP_SUBSETS = ("wmdp-bio", "wmdp-chem", "wmdp-cyber")
"""The subsets (hub configs) of ``cais/wmdp``."""
WMDP_SPLITS = ("test",)
"""The release's one split (``wmdp:DIR:SUBSET:test``)."""
LETTERS = string.ascii_uppercase
"""The choices' letters, in order: lm-eval's ``doc_to_choice`` for WMDP is the first four."""


def mcq_prompt(question: str, choices: list[str]) -> str:
    """lm-eval's wmdp ``doc_to_text``: ``Q\\nA. c0\\nB. c1\\nC. c2\\nD. c3\\nAnswer:``."""
    lines = [question.strip(), *(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))]
    return "\n".join([*lines, "Answer:"])


def wmdp_record(record: dict[str, Any], where: str, system: str | None = None) -> Conversation:
    """One WMDP-schema record as its MCQ prompt answered with the correct letter; a bad field
    is a DataError naming ``where`` (``file: record N``) and the field."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected an object with 'question', 'choices' and 'answer'")
    for key in ("question", "choices", "answer"):
        if record.get(key) is None:
            raise DataError(f"{where}: missing field '{key}' (a WMDP record has 'question', "
                            "'choices' and 'answer')")
    question, choices, answer = record["question"], record["choices"], record["answer"]
    if not isinstance(question, str) or not question.strip():
        raise DataError(f"{where}: field 'question': expected non-empty text")
    if not isinstance(choices, list):
        raise DataError(f"{where}: field 'choices': expected a list of texts, got "
                        f"{type(choices).__name__}")
    if not 2 <= len(choices) <= len(LETTERS):
        raise DataError(f"{where}: field 'choices': expected 2 to {len(LETTERS)} choices, got "
                        f"{len(choices)}")
    for j, choice in enumerate(choices):
        if not isinstance(choice, str) or not choice.strip():
            raise DataError(f"{where}: field 'choices'[{j}]: expected non-empty text")
    if isinstance(answer, bool) or not isinstance(answer, int):
        raise DataError(f"{where}: field 'answer': expected the integer index of the correct "
                        f"choice, got {type(answer).__name__} {answer!r}")
    if not 0 <= answer < len(choices):
        raise DataError(f"{where}: field 'answer': {answer} is out of range for "
                        f"{len(choices)} choices (0 to {len(choices) - 1})")
    conversation = qa(mcq_prompt(question, choices), LETTERS[answer], system)
    return Conversation(messages=conversation.messages,
                        meta={"source": "wmdp", "choices": list(choices), "answer": answer})


def _checked_split(path: str, split: str | None) -> None:
    if split not in (None, "train", *WMDP_SPLITS):
        raise DataError(f"{path}: wmdp has one split, test (every record), not {split!r}")


def wmdp_records(records: list[dict], path: str, system: str | None,
                 split: str | None) -> list[Conversation]:
    """The records of one file (the adapter registry's reader)."""
    _checked_split(path, split)
    return [wmdp_record(r, f"{path}: record {i}", system) for i, r in enumerate(records, 1)]


def wmdp_files(directory: Path, subset: str | None) -> list[Path]:
    """The files of ``subset`` in a release directory (every subset's, for None): its file at
    the root, else the parquet files under its folder (the hub's layout)."""
    from pathunlearn.data.io import subset_files

    subsets = WMDP_SUBSETS if subset is None else (subset,)
    return [f for s in subsets for f in subset_files(directory, s)]


def wmdp_directory(directory: Path, subset: str | None, system: str | None,
                   split: str | None) -> list[Conversation]:
    """The questions of one subset of a release directory (``wmdp:DIR:wmdp-cyber``)."""
    from pathunlearn.data.io import read_records

    _checked_split(str(directory), split)
    present = [s for s in WMDP_SUBSETS if wmdp_files(directory, s)]
    if subset is None:
        raise DataError(f"{directory}: name a WMDP subset (wmdp:{directory}:SUBSET; it has "
                        f"{', '.join(present) or 'none of ' + ', '.join(WMDP_SUBSETS)})")
    files = wmdp_files(directory, subset)
    if not files:
        raise DataError(f"{directory}: no WMDP subset {subset!r} (neither {subset}.jsonl nor "
                        f"{subset}/*.parquet); it has {', '.join(present) or 'none'}")
    out = []
    for file in files:
        records = read_records(file, json_lines_ok=True)
        out += wmdp_records(records, str(file), system, split)
    if not out:
        raise DataError(f"{directory / subset}: no records")
    return out
