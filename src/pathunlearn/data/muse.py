"""MUSE News / Books (``muse:``): the corpora as text stages, the QA pairs, the verbatim
prompts and the privacy-leak sets as probe items.

The release, as found (search tool, stored copies of the public pages and repositories):

- hub datasets ``muse-bench/MUSE-News`` and ``muse-bench/MUSE-Books``, license cc-by-4.0; the
  dataset card's ``dataset_info`` / ``configs`` (``README.md`` of the hub repository, main
  branch) and the subset descriptions of ``jaechan-repo/muse_bench: data/bbc/readme.md``;
- seven subsets (hub configs), one folder each, one parquet file per split on the main branch:
  ``<subset>/<split>-00000-of-00001.parquet`` (``configs: data_files: path: privleak/forget-*``);
  older commits also ship JSON copies (``verbmem/forget.json``, ``privleak/forget.json``,
  ``knowmem/forget-qa.json``) and the GitHub repository ``swj0419/muse_bench`` reads
  ``data/news/knowmem/forget_qa.json`` (its ``constants.py``), ``raw/forget.txt`` corpora;
- ``raw``: ``{"text"}``, splits ``forget``, ``retain1``, ``retain2``, ``holdout`` (News: 889 /
  1777 / 1778 / 3043 articles; Books: 4 / 12 / 13 / 3 books); ``train`` (what the target model
  was trained on): ``{"text"}``, ``forget``, ``retain1``, ``retain2``;
- ``knowmem``: ``{"question", "answer"}``, splits ``forget_qa``, ``forget_qa_icl`` and, News,
  ``retain_qa``, ``retain_qa_icl`` (Books and older News: ``retain2_qa``, ``retain2_qa_icl``);
  the ``_icl`` splits are the 10 in-context examples MUSE puts before each question;
- ``verbmem``: ``{"prompt", "gt"}`` (older uploads also ``rougeL_target``, a float; ignored),
  split ``forget``: 100 excerpts of the forget corpus, the prompt and its true continuation;
- ``privleak``: ``{"text"}``, splits ``forget``, ``holdout`` and ``retain`` (News main) or
  ``retain2`` (Books, older News);
- ``scal`` (nested forget sets) and ``sust`` (disjoint ones): ``{"text"}``, splits
  ``forget_1`` .. ``forget_4``.

What each becomes here:

- ``raw``, ``train``, ``scal``, ``sust``, ``privleak``: documents (raw text, every token a
  target: :func:`~pathunlearn.data.conversation.document`): a stage of ``kind: text`` learns
  or unlearns them, a probe set with ``metrics: [mia]`` and role ``forget`` / ``holdout``
  (``privleak:forget`` / ``privleak:holdout``) gives MUSE's privleak (Min-K% AUC against the
  path's retrain model, pathunlearn.eval.field);
- ``knowmem``: question/answer conversations (the stage's ``system`` prompt before each):
  a probe set with ``metrics: [rouge]`` scores the greedy answer with ROUGE (role
  ``knowmem_forget`` / ``knowmem_retain``: MUSE's criteria C2 / C4);
- ``verbmem``: raw text whose prefix is ``prompt`` and continuation ``gt``: a probe set with
  ``metrics: [rouge]`` generates from the raw prompt (no chat template) and scores the
  continuation against ``gt`` (role ``verbmem``: C1).

docs/muse.md gives the criteria (ROUGE-L F1 as MUSE scores it, ``<set>/rougeL_f1``) and the
scalability / sustainability how-tos.

Where pathunlearn differs from MUSE's own evaluation (``swj0419/muse_bench``: ``eval.py``,
``verbmem/get_rouge.py``, ``knowmem/get_rouge_qa.py``): knowmem questions are asked as chat
turns, not after MUSE's raw few-shot prompt (``Question: q\\nAnswer: a`` x 10 from the ``_icl``
split); the generations are ``probes.rouge_tokens`` long (MUSE: 128 for verbmem, 32 for
knowmem) and ``gt`` is not cut to the generation's length; a probe item is cut to
``model.max_length`` from the left; privleak compares with the path's own retrain model.

A source is ``muse:DIR:SUBSET:SPLIT`` (a local copy in the hub's layout, or the GitHub one),
``muse:FILE`` (one file; its folder names the subset, as in the release), or
``muse:hf:muse-bench/MUSE-News:SUBSET:SPLIT`` (the hub's snapshot in the HF cache,
:mod:`pathunlearn.hub`). A split not in :data:`MUSE_SPLITS` can be given as a stage's
``split`` (``source: muse:DIR:raw``, ``split: ...``). Nothing of MUSE ships with pathunlearn.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pathunlearn.data.conversation import Conversation, document, qa
from pathunlearn.data.io import FORMATS, read_records, read_text
from pathunlearn.errors import DataError

MUSE_TEXT_SUBSETS = ("raw", "train", "privleak", "scal", "sust")
"""The subsets of documents (``{"text"}``)."""
MUSE_SUBSETS = (*MUSE_TEXT_SUBSETS, "knowmem", "verbmem")
MUSE_SUBSET_SPLITS: dict[str, tuple[str, ...]] = {
    "raw": ("forget", "retain1", "retain2", "holdout"),
    "train": ("forget", "retain1", "retain2"),
    "privleak": ("forget", "holdout", "retain", "retain2"),
    "scal": ("forget_1", "forget_2", "forget_3", "forget_4"),
    "sust": ("forget_1", "forget_2", "forget_3", "forget_4"),
    "knowmem": ("forget_qa", "forget_qa_icl", "retain_qa", "retain_qa_icl", "retain2_qa",
                "retain2_qa_icl"),
    "verbmem": ("forget",),
}
"""The splits each subset has in MUSE-News or MUSE-Books (a release has some of them)."""
MUSE_SPLITS = tuple(dict.fromkeys(s for splits in MUSE_SUBSET_SPLITS.values() for s in splits))
"""Every split name, for ``muse:DIR:SUBSET:SPLIT``."""


def muse_record(record: dict[str, Any], where: str, subset: str,
                system: str | None = None) -> Conversation:
    """One record of ``subset`` (module docstring); a missing or bad field is a DataError
    naming ``where`` and the field."""
    if subset == "knowmem":
        question, answer = (_text(record, where, key) for key in ("question", "answer"))
        return qa(question.strip(), answer.strip(), system, source="muse", subset=subset)
    if subset == "verbmem":
        prompt, gt = (_text(record, where, key) for key in ("prompt", "gt"))
        return document(gt, prefix=prompt, source="muse", subset=subset)
    return document(_text(record, where, "text"), source="muse", subset=subset)


def _text(record: dict[str, Any], where: str, key: str) -> str:
    if not isinstance(record, dict) or record.get(key) is None:  # a null Parquet cell: absent
        raise DataError(f"{where}: missing field '{key}'")
    if not isinstance(record[key], str) or not record[key].strip():
        raise DataError(f"{where}: field '{key}': expected non-empty text, got "
                        f"{type(record[key]).__name__}")
    return record[key]


def split_files(directory: Path, subset: str, split: str) -> list[Path]:
    """The files of one split: the hub's parquet shards ``SUBSET/SPLIT-*.parquet``, else
    ``SUBSET/SPLIT.{json,jsonl,csv,parquet,txt}`` (also with ``-`` for ``_``, as the older
    JSON uploads name them: ``knowmem/forget-qa.json``); [] when there is none."""
    folder = directory / subset
    shards = sorted(folder.glob(f"{split}-*.parquet"))
    if shards:
        return shards
    for name in dict.fromkeys((split, split.replace("_", "-"))):
        for suffix in (*FORMATS, ".txt"):
            if (folder / f"{name}{suffix}").is_file():
                return [folder / f"{name}{suffix}"]
    return []


def present_splits(directory: Path, subset: str) -> list[str]:
    """The known splits of ``subset`` the directory holds."""
    return [s for s in MUSE_SUBSET_SPLITS.get(subset, ()) if split_files(directory, subset, s)]


def read_file(file: Path, subset: str, system: str | None) -> list[Conversation]:
    """The items of one release file (a ``.txt`` of a text subset: one document)."""
    if file.suffix == ".txt":
        if subset not in MUSE_TEXT_SUBSETS:
            raise DataError(f"{file}: a .txt file is a corpus; {subset} holds records")
        text = read_text(file)
        if not text.strip():
            raise DataError(f"{file}: empty text file")
        return [document(text, source="muse", subset=subset)]
    records = read_records(file, json_lines_ok=True)
    return [muse_record(r, f"{file}: record {i}", subset, system)
            for i, r in enumerate(records, 1)]


def _checked(directory: Path, subset: str | None, split: str | None) -> tuple[str, str]:
    """(subset, split), or the DataError that says what to name."""
    if subset is None or subset not in MUSE_SUBSETS:
        have = [s for s in MUSE_SUBSETS if (directory / s).is_dir()]
        what = "name a MUSE subset" if subset is None else f"no MUSE subset {subset!r}"
        raise DataError(f"{directory}: {what} (muse:{directory}:SUBSET:SPLIT; it has "
                        f"{', '.join(have) or 'none of ' + ', '.join(MUSE_SUBSETS)})")
    if split is None or split == "train" and not split_files(directory, subset, split):
        raise DataError(f"{directory}: muse {subset} needs a split (muse:{directory}:{subset}"
                        f":SPLIT; it has {', '.join(present_splits(directory, subset)) or 'none'})")
    return subset, split


def muse_directory(directory: Path, subset: str | None, system: str | None,
                   split: str | None) -> list[Conversation]:
    """The items of one split of one subset of a release directory (the registry's reader)."""
    subset, split = _checked(directory, subset, split)
    files = split_files(directory, subset, split)
    if not files:
        raise DataError(f"{directory / subset}: no MUSE split {split!r} (neither "
                        f"{split}-*.parquet nor {split}.json); it has "
                        f"{', '.join(present_splits(directory, subset)) or 'none'}")
    items = [c for f in files for c in read_file(f, subset, system)]
    if not items:
        raise DataError(f"{directory / subset}: split {split}: no records")
    return items


def muse_records(records: list[dict], path: str, system: str | None,
                 split: str | None) -> list[Conversation]:
    """The records of one file (``muse:FILE``), read as the subset its folder is."""
    subset = Path(path).parent.name
    if subset not in MUSE_SUBSETS:
        raise DataError(f"{path}: its folder ({subset!r}) is not a MUSE subset ("
                        f"{', '.join(MUSE_SUBSETS)}); keep the release's layout or write "
                        "muse:DIR:SUBSET:SPLIT")
    return [muse_record(r, f"{path}: record {i}", subset, system)
            for i, r in enumerate(records, 1)]


def muse_files(directory: Path, subset: str | None) -> list[Path]:
    """Every file of ``subset`` (every subset's, for None) of a release directory: what a
    source of it is keyed on."""
    subsets = MUSE_SUBSETS if subset is None else (subset,)
    return [f for s in subsets for f in sorted((directory / s).rglob("*"))
            if f.is_file() and f.suffix in (*FORMATS, ".txt")]
