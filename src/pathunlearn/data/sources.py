"""Resolve a source string to conversations: ``builtin:NAME[:SPLIT]``, ``ADAPTER:FILE`` (a
benchmark file read by :mod:`pathunlearn.data.adapters`, e.g. ``gsm8k:test.jsonl``), a local
file, or a dataset on the Hugging Face hub (``hf:ORG/NAME[:SUBSET[:SPLIT]]``, also as an
adapter's location: ``tofu:hf:locuslab/TOFU``), resolved into the HF cache (:func:`localize`)."""

from __future__ import annotations

from pathlib import Path

from pathunlearn import hub
from pathunlearn.data.adapters import parse_adapter
from pathunlearn.data.conversation import Conversation
from pathunlearn.data.io import FORMATS, load_conversations
from pathunlearn.errors import DataError

BUILTIN_PREFIX = "builtin:"
HUB_PREFIX = hub.DATASET_PREFIX
"""A dataset on the Hugging Face hub: ``hf:ORG/NAME[@REVISION][:SUBSET[:SPLIT]]``."""


def parse_builtin(spec: str, split: str | None = None) -> tuple[str, str | None]:
    """``builtin:authors:eval`` -> (``authors``, ``eval``); an explicit split in the string wins."""
    name, _, inline_split = spec.removeprefix(BUILTIN_PREFIX).partition(":")
    return name, inline_split or split


def load_source(
    spec: str,
    split: str | None = None,
    seed: int = 0,
    question_key: str | None = None,
    answer_key: str | None = None,
    system: str | None = None,
    max_examples: int | None = None,
) -> list[Conversation]:
    """Conversations of a built-in source or a local data file, first ``max_examples`` only."""
    spec = localize(spec)
    if spec.startswith(BUILTIN_PREFIX):
        from pathunlearn.data.suite import load_builtin

        name, split = parse_builtin(spec, split)
        conversations = load_builtin(name, split or "train", seed=seed)
    elif (adapted := parse_adapter(spec)) is not None:
        from pathunlearn.data.adapters import ADAPTER_SPLITS, load_adapted

        name, path, inline_split = adapted
        if inline_split is not None and name not in ADAPTER_SPLITS:
            raise DataError(f"{spec}: {name} has no splits (got {inline_split!r}); drop the "
                            f"':{inline_split}'")
        conversations = load_adapted(name, path, system=system, split=inline_split or split)
    else:
        if not Path(spec).exists():
            raise DataError(f"{spec}: no such file (built-in sources are written builtin:NAME)")
        conversations = load_conversations(spec, question_key, answer_key, system)
    return conversations[:max_examples] if max_examples else conversations


def hub_part(spec: str) -> str | None:
    """The ``hf:ORG/NAME[...]`` part of a source (``hf:...`` itself, or the location of an
    adapter's ``tofu:hf:...``); None when it names no hub dataset."""
    if spec.startswith(HUB_PREFIX):
        return spec
    adapted = parse_adapter(spec)
    if adapted is not None and adapted[1].startswith(HUB_PREFIX):
        from pathunlearn.data.adapters import split_location

        return split_location(adapted[0], adapted[1])[0]
    return None


def localize(spec: str) -> str:
    """``spec`` with its hub dataset (``hf:ORG/NAME[@REV][:SUBSET[:SPLIT]]``, see
    :mod:`pathunlearn.hub`) replaced by the local path of its snapshot in the HF cache, so
    everything downstream reads local files: ``hf:openai/gsm8k:main:test`` -> the snapshot's
    ``main/test-00000-of-00001.parquet``; ``tofu:hf:locuslab/TOFU:forget10`` -> ``tofu:SNAPSHOT
    :forget10`` (an adapter whose release has subsets reads the snapshot's directory, as it
    reads a local copy of the release). Any other spec is returned as it is."""
    if spec.startswith(HUB_PREFIX):
        path = hub.resolve_dataset(spec)
        if path.is_dir():
            ref = hub.dataset_ref(spec)[0]
            raise DataError(f"{spec}: a whole dataset; name its subset and split "
                            f"(hf:{ref.label}:SUBSET[:SPLIT]; it has "
                            f"{', '.join(hub.subsets(path)) or 'no data files'})")
        return str(path)
    adapted = parse_adapter(spec)
    if adapted is None or not adapted[1].startswith(HUB_PREFIX):
        return spec
    from pathunlearn.data.adapters import ADAPTER_SUBSETS, split_location

    name, location, split = adapted
    release, subset = split_location(name, location)
    if name in ADAPTER_SUBSETS:  # a release directory: the adapter picks the subset's files
        local = str(hub.resolve_dataset(release)) + (f":{subset}" if subset else "")
    else:
        local = str(hub.resolve_dataset(location))
    return f"{name}:{local}" + (f":{split}" if split is not None else "")


def load_stage(stage, cut: bool = True) -> list[Conversation]:
    """The conversations of a stage (a :class:`pathunlearn.config.StageConfig`), exactly as
    staged training and unlearning read them; ``cut=False``: all of the source's items, also
    those after the stage's ``max_examples`` (which no training sees). A stage of ``kind:
    text`` reads documents (:mod:`pathunlearn.data.text`); a chat stage whose source gives raw
    text is an error that says so."""
    max_examples = stage.max_examples if cut else None
    if getattr(stage, "kind", "chat") == "text":
        return load_text_source(stage.source, split=stage.split, text_key=stage.text_key,
                                question_key=stage.question_key, answer_key=stage.answer_key,
                                max_examples=max_examples)
    conversations = load_source(stage.source, split=stage.split, question_key=stage.question_key,
                                answer_key=stage.answer_key, system=stage.system,
                                max_examples=max_examples)
    if conversations and conversations[0].is_text:
        raise DataError(f"{stage.source}: raw text (documents), not conversations: give the "
                        "stage kind: text")
    return conversations


def split_with_role(spec: str, split: str | None, role: str) -> str | None:
    """The source spec of the split of ``spec`` (read with ``split``) that plays ``role``
    (``data.suite.SPLIT_ROLES``: heldout, paraphrased, ood), e.g. ``builtin:refusals`` ->
    ``builtin:refusals:test`` for heldout; None when the source has no such split, or it is
    the split already read."""
    if spec.startswith(BUILTIN_PREFIX):
        from pathunlearn.data.suite import builtin_split_role

        name, current = parse_builtin(spec, split)
        wanted = builtin_split_role(name, role)
        return f"{BUILTIN_PREFIX}{name}:{wanted}" if wanted and wanted != (current or
                                                                           "train") else None
    if (adapted := parse_adapter(spec)) is not None:
        from pathunlearn.data.adapters import ADAPTER_SPLIT_ROLES

        name, path, inline = adapted
        wanted = ADAPTER_SPLIT_ROLES.get(name, {}).get(role)
        return f"{name}:{path}:{wanted}" if wanted and wanted != (inline or split or
                                                                  "train") else None
    return None


def load_text_source(spec: str, split: str | None = None, text_key: str | None = None,
                     question_key: str | None = None, answer_key: str | None = None,
                     max_examples: int | None = None) -> list[Conversation]:
    """The documents of a text stage's source (module docstring), the first ``max_examples``."""
    from pathunlearn.data.text import TEXT_SUFFIX, as_document, text_file, text_records

    local = localize(spec)
    plain = not local.startswith(BUILTIN_PREFIX) and parse_adapter(local) is None
    if text_key is not None and not (plain and Path(local).suffix in FORMATS):
        raise DataError(f"{spec}: text_key names the field of a records file ("
                        f"{', '.join(FORMATS)}); this source is read as it comes")
    if plain and Path(local).suffix == TEXT_SUFFIX:
        documents = text_file(local)
    elif plain and question_key is None:
        if not Path(local).exists():
            raise DataError(f"{spec}: no such file (built-in sources are written builtin:NAME)")
        documents = text_records(local, text_key)
    elif plain:
        documents = [as_document(c) for c in load_conversations(local, question_key,
                                                                answer_key)]
    else:
        documents = [as_document(c) for c in load_source(local, split=split)]
    return documents[:max_examples] if max_examples else documents
