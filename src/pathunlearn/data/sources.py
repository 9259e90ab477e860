"""Resolve a source string to conversations: ``builtin:NAME[:SPLIT]``, ``ADAPTER:FILE`` (a
benchmark file read by :mod:`pathunlearn.data.adapters`, e.g. ``gsm8k:test.jsonl``) or a local
file."""

from __future__ import annotations

from pathlib import Path

from pathunlearn.data.adapters import parse_adapter
from pathunlearn.data.conversation import Conversation
from pathunlearn.data.io import load_conversations
from pathunlearn.errors import DataError

BUILTIN_PREFIX = "builtin:"


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


def load_stage(stage, cut: bool = True) -> list[Conversation]:
    """The conversations of a stage (a :class:`pathunlearn.config.StageConfig`), exactly as
    staged training and unlearning read them; ``cut=False``: all of the source's items, also
    those after the stage's ``max_examples`` (which no training sees)."""
    return load_source(stage.source, split=stage.split, question_key=stage.question_key,
                       answer_key=stage.answer_key, system=stage.system,
                       max_examples=stage.max_examples if cut else None)


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
