"""The one data type every source produces: a conversation in the OpenAI chat format.

A conversation is a list of messages ``{"role": "system"|"user"|"assistant", "content": str}``
plus free-form ``meta`` (an arithmetic answer, an author id, a prompt style ...). Written to
JSONL it is ``{"messages": [...], "meta": {...}}``, which OpenAI-format readers accept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "user", "assistant")


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
