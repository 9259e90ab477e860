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
        from pathunlearn.data.adapters import load_adapted

        name, path, inline_split = adapted
        conversations = load_adapted(name, path, system=system, split=inline_split or split)
    else:
        if not Path(spec).exists():
            raise DataError(f"{spec}: no such file (built-in sources are written builtin:NAME)")
        conversations = load_conversations(spec, question_key, answer_key, system)
    return conversations[:max_examples] if max_examples else conversations


def load_stage(stage) -> list[Conversation]:
    """The conversations of a stage (a :class:`pathunlearn.config.StageConfig`), exactly as
    staged training and unlearning read them."""
    return load_source(stage.source, split=stage.split, question_key=stage.question_key,
                       answer_key=stage.answer_key, system=stage.system,
                       max_examples=stage.max_examples)
