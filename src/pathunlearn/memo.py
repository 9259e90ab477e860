"""What the cells of one invocation compute once: values that depend on the run's tokenizer and
data but on no model's weights (a stage's or a probe set's token ids, the probes' scoring
batches and tries), kept by :class:`Memo` under a key that names everything they depend on.

Every cell of a run tokenises with the same tokenizer (each path model's checkpoint carries
the base model's), so the cells of a run share these; :func:`tokenizer_key` is part of every
key all the same, so a memo handed a different tokenizer computes afresh rather than return
another tokenizer's ids.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")


class Memo:
    """``once(key, make)``: ``make()``'s value, computed at the first call with ``key`` and
    returned again (the same object: callers must not mutate it) for every later one."""

    def __init__(self) -> None:
        self._values: dict[Hashable, Any] = {}
        self.computed = 0
        """How many values were computed (a test reads it; the rest were reused)."""

    def once(self, key: Hashable, make: Callable[[], T]) -> T:
        if key not in self._values:
            self._values[key] = make()
            self.computed += 1
        return self._values[key]

    def __len__(self) -> int:
        return len(self._values)


def tokenizer_key(tokenizer) -> tuple:
    """What distinguishes one tokenizer's encodings from another's: its class, vocabulary
    size, special ids and chat template."""
    return (type(tokenizer).__name__, len(tokenizer), tokenizer.pad_token_id,
            tokenizer.eos_token_id, tokenizer.bos_token_id,
            getattr(tokenizer, "chat_template", None))


def once(memo: Memo | None, key: Hashable, make: Callable[[], T]) -> T:
    """``memo.once(key, make)``, or ``make()`` without a memo."""
    return make() if memo is None else memo.once(key, make)
