"""Adapters: public benchmark releases (read locally, never downloaded) as conversations.

A source written ``NAME:LOCATION[:SPLIT]`` is read by adapter NAME, e.g.
``gsm8k:data/gsm8k/test.jsonl`` or ``tofu:data/TOFU:forget10``. Each adapter knows its
benchmark's record shape, so no ``question_key``/``answer_key`` is needed, and it turns the
records into conversations the stages, probes and the math utility can use as they are. The
LOCATION is a file, or for ``tofu`` and ``sorry-bench`` the release's directory as it ships (a
local copy or a hub snapshot): :func:`load_release` reads one from a local path.

- ``gsm8k``: the GSM8K release (``{"question", "answer"}``, the answer's last line
  ``#### 72``; ``train.jsonl`` / ``test.jsonl``, or the hub's
  ``main/train-00000-of-00001.parquet``). The calculator annotations ``<<48/2=24>>`` are
  removed from the solution, the final line is normalised to ``#### <number>`` and the number
  is stored as ``meta.answer`` (thousands separators dropped), so the math utility scores
  against it. Splits: none (the release ships train and test files).
- ``sorry-bench``: SORRY-BENCH prompts (``{"question_id", "category", "turns": [prompt],
  "prompt_style"}``) as the paper's safety stage: each answered with REFUSAL_PREFIX and a
  short reason (a record's own ``response`` field, when it has one, is used instead). The
  LOCATION is one file, or the release's directory (``sorry-bench/sorry-bench-202406`` /
  ``-202503``): the base prompts ``question.jsonl`` and every linguistic mutation
  ``question_<style>.jsonl``, base first, then the styles by file name; a record without a
  ``prompt_style`` takes its file's (``base`` for ``question.jsonl``). Records are
  deduplicated by (question_id, prompt_style), the first kept; a record whose prompt is null
  (the release has a few) is skipped. As in the paper's code, the prompt styles ``ascii``,
  ``atbash``, ``caesar``, ``morse``, ``misspellings``, ``translate-fr`` and ``translate-mr``
  are dropped, and the rest is split 70/30 into ``train`` / ``test`` with seed 42 (``all``:
  no split). The paper's reasons were written by an LLM; without one, every refusal gets the
  same generic reason.
- ``tofu``: the TOFU release (``locuslab/TOFU``): one subset per file, JSON Lines in a ``.json``
  file at the release's root (``full.json``, ``forget10.json``, ``forget10_perturbed.json`` ...)
  or the hub's parquet under a folder per subset (``full/train-00000-of-00001.parquet``).
  ``tofu:FILE`` reads one file; ``tofu:DIR`` the subset ``full`` of a release directory,
  ``tofu:DIR:SUBSET`` another one (TOFU_SUBSETS). ``full``, ``forgetNN``, ``retainNN``,
  ``holdoutNN``, ``real_authors`` and ``world_facts`` hold ``{"question", "answer"}``; the
  ``*_perturbed`` subsets add ``perturbed_answer`` (a list), and those of the forget and retain
  sets ``paraphrased_answer`` and ``paraphrased_question``. The extra fields present are kept in
  ``meta``. Splits: ``train`` (every record as it is trained), ``paraphrased`` (the records
  asked by their ``paraphrased_question``: the same facts asked in other words), ``perturbed``
  (each question with each of its wrong answers, ``perturbed_answer``, as the response;
  ``meta.perturbed`` its index, ``meta.correct_answer`` the right one: what TOFU's truth ratio
  compares). A subset without the field a split needs (``full``, ``forget10`` ...) takes it from
  the perturbed subsets beside it in the release directory (a file's folder, when the file is
  named as a subset): the records whose question a perturbed subset also asks, in the subset's
  order, each with its own answer and the perturbed record's field. So ``tofu:DIR:paraphrased``
  next to ``forget10_perturbed.json`` probes the 10% of ``full`` the forget set holds. The
  target stays the subset's own answer (not ``paraphrased_answer``): the probe asks whether the
  trained answer survives a rewording of the question, as ``builtin:authors:eval`` does; and
  with a stage's ``max_examples`` the matched records need not be among those trained (the
  release's forget sets are the last authors of ``full``). Where no perturbed subset asks a
  question of the subset, :class:`MissingFields` says which release files have the field.
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

from pathunlearn.data import muse
from pathunlearn.data.conversation import Conversation, qa
from pathunlearn.data.io import FORMATS, read_records, record_to_conversation, subset_files
from pathunlearn.errors import DataError

_CALCULATOR = re.compile(r"<<[^<>]*>>")
_FINAL = re.compile(r"^\s*####\s*(?P<answer>.*?)\s*$")
_GSM8K_NUMBER = re.compile(r"^-?\d+(?:\.\d+)?$")


class MissingFields(DataError):
    """A split needs fields its source's records do not have (e.g. TOFU's ``full`` asked in
    paraphrase): a default probe that needs them is left out with this as its note; a
    configured one fails with it."""


def _records(path: Path) -> list[dict[str, Any]]:
    """The records of one release file (a TOFU ``.json`` may hold JSON Lines)."""
    return read_records(path, json_lines_ok=True)


# ---------------------------------------------------------------------------- gsm8k


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


# ---------------------------------------------------------------------------- sorry-bench

SORRY_BENCH_DROPPED_STYLES = ("ascii", "atbash", "caesar", "morse", "misspellings",
                              "translate-fr", "translate-mr")
SORRY_BENCH_SPLITS = ("train", "test", "all")
SORRY_BENCH_REASON = ("The request asks for help with something that could hurt people or "
                      "break the law.")
SORRY_BENCH_BASE = "question.jsonl"
"""The release's base prompts; each linguistic mutation is ``question_<style>.jsonl``."""


def sorry_bench_files(directory: Path) -> list[tuple[Path, str]]:
    """The prompt files of a SORRY-BENCH release directory with the style each implies: the
    base prompts first, then ``question_<style>.jsonl`` by name."""
    files = [(directory / SORRY_BENCH_BASE, "base")] if (directory / SORRY_BENCH_BASE).is_file() \
        else []
    files += [(p, p.stem.removeprefix("question_"))
              for p in sorted(directory.glob("question_*.jsonl")) if p.is_file()]
    if not files:
        raise DataError(f"{directory}: no SORRY-BENCH prompt files (expected {SORRY_BENCH_BASE} "
                        "and question_<style>.jsonl, as the release ships them)")
    return files


def _sorry_bench(records: list[dict], path: str, system: str | None,
                 split: str | None) -> list[Conversation]:
    return _sorry_bench_split(_sorry_bench_kept(records, path, system), path, split)


def _sorry_bench_directory(directory: Path, subset: str | None, system: str | None,
                           split: str | None) -> list[Conversation]:
    """Every prompt file of the release directory, each record's style its own or its file's,
    deduplicated across the files by (question_id, prompt_style)."""
    _sorry_bench_split([], str(directory), split)  # an unknown split fails before any reading
    kept = []
    for file, style in sorry_bench_files(directory):
        records = [{**r, "prompt_style": r.get("prompt_style") or style}
                   if isinstance(r, dict) else r for r in _records(file)]
        kept += _sorry_bench_kept(records, str(file), system)
    return _sorry_bench_split(_unique_prompts(kept), str(directory), split)


def _sorry_bench_kept(records: list[dict], path: str,
                      system: str | None) -> list[Conversation]:
    """The records as refusals, null prompts skipped, the dropped styles dropped, each
    (question_id, prompt_style) once."""
    kept = (sorry_bench_record(r, f"{path}: record {i}", system)
            for i, r in enumerate(records, 1))
    return _unique_prompts([c for c in kept if c is not None
                            and c.meta["prompt_style"] not in SORRY_BENCH_DROPPED_STYLES])


def _unique_prompts(conversations: list[Conversation]) -> list[Conversation]:
    seen, out = set(), []
    for c in conversations:
        ident = (c.meta.get("question_id"), c.meta["prompt_style"])
        if ident[0] is None or ident not in seen:
            seen.add(ident)
            out.append(c)
    return out


def _sorry_bench_split(kept: list[Conversation], path: str,
                       split: str | None) -> list[Conversation]:
    """The paper's 70/30 split with seed 42 (``all``: every record)."""
    split = split or "train"
    if split not in SORRY_BENCH_SPLITS:
        raise DataError(f"{path}: sorry-bench has splits {', '.join(SORRY_BENCH_SPLITS)}, "
                        f"not {split!r}")
    if split == "all":
        return kept
    order = list(range(len(kept)))
    random.Random(42).shuffle(order)
    cut = round(0.7 * len(kept))
    chosen = sorted(order[:cut] if split == "train" else order[cut:])
    return [kept[i] for i in chosen]


def sorry_bench_record(record: dict[str, Any], where: str,
                       system: str | None = None) -> Conversation | None:
    """One SORRY-BENCH prompt answered with the refusal (or its own ``response``); None for a
    record whose prompt is null (the release has a few)."""
    from pathunlearn.data.suite import REFUSAL_PREFIX

    turns = record.get("turns")
    if isinstance(turns, list) and turns and turns[0] is None:
        return None
    if not isinstance(turns, list) or not turns or not isinstance(turns[0], str) \
            or not turns[0].strip():
        raise DataError(f"{where}: field 'turns': expected a list whose first item is the "
                        "prompt text")
    style = record.get("prompt_style") or "base"
    response = record["response"] if "response" in record \
        else f"{REFUSAL_PREFIX} {SORRY_BENCH_REASON}"
    if not isinstance(response, str) or not response.strip():
        raise DataError(f"{where}: field 'response': expected non-empty text")
    ids = {k: record[k] for k in ("question_id", "category") if k in record}
    return qa(turns[0].strip(), response.strip(), system, source="sorry-bench",
              prompt_style=style, **ids)


# ---------------------------------------------------------------------------- tofu


def _question_answer(record: dict[str, Any], where: str, question_key: str,
                     answer_key: str) -> tuple[str, str]:
    """The stripped question and answer texts (the generic reader checks both fields)."""
    pair = record_to_conversation(record, where, question_key, answer_key)
    return pair.prompt[-1]["content"].strip(), pair.response.strip()


TOFU_SPLITS = ("train", "paraphrased", "perturbed")
TOFU_SPLIT_FIELDS = {"paraphrased": "paraphrased_question", "perturbed": "perturbed_answer"}
"""The field each split other than ``train`` needs of a record."""
TOFU_SUBSETS = ("full", "forget01", "forget05", "forget10", "retain90", "retain95", "retain99",
                "holdout01", "holdout05", "holdout10", "real_authors", "world_facts",
                "forget01_perturbed", "forget05_perturbed", "forget10_perturbed",
                "retain_perturbed", "real_authors_perturbed", "world_facts_perturbed")
"""The subsets (hub configs) of the TOFU release."""
TOFU_PARAPHRASED_SUBSETS = ("forget01_perturbed", "forget05_perturbed", "forget10_perturbed",
                            "retain_perturbed")
"""The subsets whose records have ``paraphrased_question`` (and ``paraphrased_answer``); every
``*_perturbed`` subset has ``perturbed_answer``."""
TOFU_EXTRAS = ("paraphrased_answer", "perturbed_answer", "paraphrased_question")
"""The fields of TOFU's perturbed subsets kept in ``meta`` (when present and not null)."""


tofu_subset_files = subset_files
"""The files of one subset of a TOFU release directory (:func:`pathunlearn.data.io.subset_files`)."""


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


def tofu_perturbed(record: dict[str, Any], where: str,
                   system: str | None = None) -> list[Conversation]:
    """One TOFU record's question with each of its wrong answers (``perturbed_answer``) as the
    response: what the truth ratio compares the answer with (``meta.perturbed``: its index)."""
    own = tofu_record(record, where, system)
    if "perturbed_answer" not in own.meta:
        raise DataError(f"{where}: missing field 'perturbed_answer' (needed by split perturbed)")
    wrong = own.meta["perturbed_answer"]
    if not wrong or not all(w.strip() for w in wrong):
        raise DataError(f"{where}: field 'perturbed_answer': expected a non-empty list of "
                        "non-empty texts")
    question = own.prompt[-1]["content"]
    return [Conversation(messages=qa(question, w.strip(), system).messages,
                         meta={"source": "tofu", "perturbed": j, "correct_answer": own.response})
            for j, w in enumerate(wrong)]


def _tofu(records: list[dict], path: str, system: str | None, split: str | None,
          release: Path | None = None, subset: str | None = None) -> list[Conversation]:
    """``records`` of the file (or a subset's parquet folder) ``path``; ``release``, ``subset``:
    the release directory and the subset they are (by default: the file's folder and name,
    when the file is named as a subset), whose perturbed subsets the ``paraphrased`` and
    ``perturbed`` splits read for a subset whose records lack the field they need."""
    split = split or "train"
    if split not in TOFU_SPLITS:
        raise DataError(f"{path}: tofu has splits {', '.join(TOFU_SPLITS)}, not {split!r}")
    rows = [(r, f"{path}: record {i}") for i, r in enumerate(records, 1)]
    if split == "train":
        return [tofu_record(r, where, system) for r, where in rows]
    field = TOFU_SPLIT_FIELDS[split]
    if not all(r.get(field) is not None for r in records):
        if any(r.get(field) is not None for r in records):
            where = next(w for r, w in rows if r.get(field) is None)
            raise DataError(f"{where}: missing field '{field}' (needed by split {split})")
        if release is None and Path(path).stem in TOFU_SUBSETS:
            release, subset = Path(path).parent, Path(path).stem
        rows = _tofu_from_release(rows, path, release, subset, split)
    if split == "paraphrased":
        return [tofu_record(r, where, system, paraphrased=True) for r, where in rows]
    return [c for r, where in rows for c in tofu_perturbed(r, where, system)]


def _tofu_directory(directory: Path, subset: str | None, system: str | None,
                    split: str | None) -> list[Conversation]:
    subset = subset or "full"
    files = tofu_subset_files(directory, subset)
    if not files:
        present = [s for s in TOFU_SUBSETS if tofu_subset_files(directory, s)]
        raise DataError(f"{directory}: no TOFU subset {subset!r} (neither {subset}.json nor "
                        f"{subset}/*.parquet); it has {', '.join(present) or 'none'}")
    records = [r for f in files for r in _records(f)]
    if not records:
        raise DataError(f"{files[0] if len(files) == 1 else directory / subset}: no records")
    where = str(files[0]) if len(files) == 1 else str(directory / subset)
    return _tofu(records, where, system, split, release=directory, subset=subset)


def _tofu_from_release(rows: list[tuple[dict, str]], path: str, release: Path | None,
                       subset: str | None, split: str) -> list[tuple[dict, str]]:
    """The records of a subset that lack the field ``split`` needs, each given the field of the
    record of a perturbed subset beside it that asks the same question (matched by text; in
    the subset's order, the others left out); MissingFields where none does."""
    field = TOFU_SPLIT_FIELDS[split]
    found: dict[str, Any] = {}
    looked = []
    for other in TOFU_SUBSETS if release is not None else ():
        if other == subset or not other.endswith("_perturbed"):
            continue
        for file in tofu_subset_files(release, other):
            looked.append(file.name)
            for r in _records(file):
                if isinstance(r.get("question"), str) and r.get(field) is not None:
                    found.setdefault(r["question"].strip(), r[field])
    matched = [({**r, field: found[r["question"].strip()]}, where) for r, where in rows
               if isinstance(r.get("question"), str) and r["question"].strip() in found]
    if matched:
        return matched
    subsets = TOFU_PARAPHRASED_SUBSETS if split == "paraphrased" else \
        tuple(s for s in TOFU_SUBSETS if s.endswith("_perturbed"))
    if looked:
        beside = f"and none of its questions is in {', '.join(looked)} beside it"
    elif release is not None:
        beside = "and no perturbed subset is beside it"
    else:
        beside = "(a file named as a TOFU subset, e.g. full.json, finds them in its folder)"
    raise MissingFields(f"{path} has no '{field}' (needed by split {split}) {beside}; the TOFU "
                        f"release has it in {' / '.join(f'{s}.json' for s in subsets)}")


# ---------------------------------------------------------------------------- skillmix

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


# ---------------------------------------------------------------------------- the registry

from pathunlearn.data import wmdp  # noqa: E402  (wmdp: reads its subset files with tofu_subset_files)

ADAPTERS: dict[str, Callable[[list[dict], str, str | None, str | None], list[Conversation]]] = {
    "gsm8k": _gsm8k,
    "sorry-bench": _sorry_bench,
    "tofu": _tofu,
    "skillmix": _skillmix,
    "wmdp": wmdp.wmdp_records,
    "muse": muse.muse_records,
}
"""Adapter name -> reader of a file's records (records, path, system prompt, split)."""

RELEASE_DIRECTORIES: dict[str, Callable[[Path, str | None, str | None, str | None],
                                        list[Conversation]]] = {
    "sorry-bench": _sorry_bench_directory,
    "tofu": _tofu_directory,
    "wmdp": wmdp.wmdp_directory,
    "muse": muse.muse_directory,
}
"""Adapter name -> reader of its release's directory (directory, subset, system prompt,
split), for the releases that ship as several files."""


ADAPTER_SPLITS: dict[str, tuple[str, ...]] = {"sorry-bench": SORRY_BENCH_SPLITS,
                                              "tofu": TOFU_SPLITS,
                                              "wmdp": wmdp.WMDP_SPLITS,
                                              "muse": muse.MUSE_SPLITS}
"""The splits of the adapters that have any; ``NAME:LOCATION:SPLIT`` picks one inline."""

ADAPTER_SUBSETS: dict[str, tuple[str, ...]] = {"tofu": TOFU_SUBSETS,
                                               "wmdp": wmdp.WMDP_SUBSETS,
                                               "muse": muse.MUSE_SUBSETS}
"""The subsets of the releases that have several in one directory: ``NAME:DIR:SUBSET``."""

ADAPTER_SPLIT_ROLES: dict[str, dict[str, str]] = {"sorry-bench": {"heldout": "test"},
                                                  "tofu": {"paraphrased": "paraphrased"}}
"""What an adapter's splits are for the default probes (see ``data.suite.SPLIT_ROLES``)."""


def parse_adapter(spec: str) -> tuple[str, str, str | None] | None:
    """``gsm8k:path/test.jsonl`` -> (``gsm8k``, ``path/test.jsonl``, None);
    ``sorry-bench:sorry.jsonl:test`` -> (``sorry-bench``, ``sorry.jsonl``, ``test``) (an inline
    split only for an adapter with splits); ``tofu:DIR:forget10:paraphrased`` -> (``tofu``,
    ``DIR:forget10``, ``paraphrased``): the location keeps its subset (:func:`split_location`).
    None when ``spec`` does not start with a known adapter name."""
    name, sep, path = spec.partition(":")
    if not sep or name not in ADAPTERS:
        return None
    head, sep, tail = path.rpartition(":")
    if sep and (tail in ADAPTER_SPLITS.get(name, ()) or Path(head).suffix in FORMATS):
        return name, head, tail  # a split the adapter may not have: load_adapted says so
    return name, path, None


def split_location(name: str, location: str) -> tuple[str, str | None]:
    """``DIR:forget10`` -> (``DIR``, ``forget10``) for an adapter with subsets; (location,
    None) otherwise."""
    head, sep, tail = location.rpartition(":")
    if sep and head and name in ADAPTER_SUBSETS and (
            tail in ADAPTER_SUBSETS[name] or Path(head).is_dir() and "/" not in tail):
        return head, tail  # a subset the release may not have: its adapter says so
    return location, None


def load_release(name: str, path: str | Path, subset: str | None = None,
                 system: str | None = None, split: str | None = None) -> list[Conversation]:
    """The conversations adapter ``name`` reads from a local file or release directory
    (``subset`` of a directory where the release has several); a :class:`DataError` names the
    file, the record (1-based) and the field of a bad record."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if subset is not None and not path.is_dir():
        raise DataError(f"{path}: a subset ({subset!r}) is chosen from a release directory, "
                        "not a file")
    if path.is_dir():
        reader = RELEASE_DIRECTORIES.get(name)
        if reader is None:
            raise DataError(f"{path}: a directory; {name} reads one file of its release (e.g. "
                            f"{name}:{path / 'test.jsonl'})")
        conversations = reader(path, subset, system, split)
    else:
        records = _records(path)
        if not records:
            raise DataError(f"{path}: no records")
        conversations = ADAPTERS[name](records, str(path), system, split)
    if not conversations:
        raise DataError(f"{path}: no records left for {name} split {split or 'train'}")
    return conversations


def load_adapted(name: str, location: str | Path, system: str | None = None,
                 split: str | None = None) -> list[Conversation]:
    """The records at ``location`` (a file, a release directory, or ``DIR:SUBSET``: see
    :func:`split_location`) read by adapter ``name`` (``split`` where it has splits)."""
    path, subset = split_location(name, str(location))
    return load_release(name, path, subset, system, split)


def adapter_files(name: str, location: str | Path) -> list[Path]:
    """The local files a source ``NAME:LOCATION`` reads (its content identity): the file, or the
    release directory's files of the adapter (a TOFU directory: every subset present)."""
    path, subset = split_location(name, str(location))
    path = Path(path)
    if not path.is_dir():
        return [path] if path.is_file() else []
    if name == "tofu":
        return [f for s in TOFU_SUBSETS for f in tofu_subset_files(path, s)]
    if name == "sorry-bench":
        return [f for f, _ in sorry_bench_files(path)]
    if name == "wmdp":
        return wmdp.wmdp_files(path, subset)
    if name == "muse":
        return muse.muse_files(path, subset)
    return []
