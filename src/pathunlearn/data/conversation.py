"""The one data type every source produces: a conversation in the OpenAI chat format.

A conversation is a list of messages ``{"role": "system"|"user"|"assistant", "content": str}``
plus free-form ``meta`` (an arithmetic answer, an author id, a prompt style ...). Written to
JSONL it is ``{"messages": [...], "meta": {...}}``, which OpenAI-format readers accept.

Raw text (a stage of ``kind: text``, a MUSE document or verbatim-memorisation prompt) has the
same shape: a ``text`` turn (:data:`TEXT_ROLE`, the prefix: given, never a target; empty for a
whole document) and one assistant turn (the continuation: every token a target). It is rendered
as the two texts one after the other, the tokenizer's BOS before them, with no chat template
(:func:`pathunlearn.data.chat.render`), so every reader of conversations (training, probes,
generation) reads it unchanged: its ``prompt`` is the prefix, its ``response`` the text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "user", "assistant")
TEXT_ROLE = "text"
"""The role of raw text: the prefix of a document or a continuation, rendered without a chat
template; only ever the first message, followed by one assistant turn."""


@dataclass(frozen=True)
class Conversation:
    """One training or evaluation example as OpenAI-style chat messages."""

    messages: list[dict[str, str]]
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        record: dict[str, Any] = {"messages": [dict(m) for m in self.messages]}
        if self.meta:
            record["meta"] = dict(self.meta)
        return record

    @property
    def is_text(self) -> bool:
        """Raw text (a prefix and its continuation), not a chat."""
        return is_text(self.messages)

    @property
    def prompt(self) -> list[dict[str, str]]:
        """The messages before the last assistant turn (what the model is asked)."""
        last = max(i for i, m in enumerate(self.messages) if m["role"] == "assistant")
        return self.messages[:last]

    @property
    def response(self) -> str:
        """The content of the last assistant turn."""
        return next(m["content"] for m in reversed(self.messages) if m["role"] == "assistant")


def qa(question: str, answer: str, system: str | None = None, **meta: Any) -> Conversation:
    """A single-turn conversation: optional system prompt, user question, assistant answer."""
    messages = [] if system is None else [{"role": "system", "content": system}]
    messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return Conversation(messages=messages, meta=dict(meta))


def is_text(messages: list[dict[str, str]]) -> bool:
    """Whether ``messages`` are raw text (their first message has the :data:`TEXT_ROLE`)."""
    return bool(messages) and messages[0]["role"] == TEXT_ROLE


def document(text: str, prefix: str = "", **meta: Any) -> Conversation:
    """Raw text: ``prefix`` (never a target; empty: the whole of ``text`` is learned) then
    ``text``, every token of it a target."""
    return Conversation(messages=[{"role": TEXT_ROLE, "content": prefix},
                                  {"role": "assistant", "content": text}], meta=dict(meta))
