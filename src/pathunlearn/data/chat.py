"""Conversations to token ids with assistant-only labels.

Rendering uses the tokenizer's own chat template (Llama 3, Qwen 2.5, the tiny preset's
ChatML ...). A tokenizer without one gets :data:`FALLBACK_CHAT_TEMPLATE`::

    <bos>### System:
    {system}

    ### User:
    {user}

    ### Assistant:
    {assistant}<eos>

Labels: the character spans of each assistant turn are found by rendering the conversation
up to the turn with the generation prompt (where the answer starts) and up to the end of the
turn (where it ends, trailing whitespace dropped, so the end-of-turn token is learned). Every
token that overlaps such a span keeps its id as label; all other tokens get -100.
"""

from __future__ import annotations

from dataclasses import dataclass

from pathunlearn.data.conversation import Conversation
from pathunlearn.errors import DataError

IGNORE_INDEX = -100

FALLBACK_CHAT_TEMPLATE = (
    "{{ bos_token if bos_token else '' }}"
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}### System:\n{{ m['content'] }}\n\n"
    "{% elif m['role'] == 'user' %}### User:\n{{ m['content'] }}\n\n"
    "{% else %}### Assistant:\n{{ m['content'] }}{{ eos_token }}\n\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}### Assistant:\n{% endif %}"
)


@dataclass(frozen=True)
class EncodedExample:
    """One tokenised conversation: ``input_ids`` and ``labels`` of equal length (T,)."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool = False

    @property
    def num_targets(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


def ensure_chat_template(tokenizer) -> None:
    """Give a tokenizer without a chat template the documented fallback template."""
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE


def render(tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
    """The conversation as text through the tokenizer's chat template."""
    ensure_chat_template(tokenizer)
    if not messages:
        return ""
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def assistant_spans(tokenizer, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and the [start, end) character span of every assistant turn."""
    full = render(tokenizer, messages)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:i], add_generation_prompt=True)
        upto = render(tokenizer, messages[: i + 1])
        if not (full.startswith(upto) and upto.startswith(before)):
            raise DataError(
                f"chat template is not prefix-stable at message {i} (rendering the conversation "
                "turn by turn does not give the same text); labels cannot be placed"
            )
        spans.append((len(before), len(upto.rstrip())))
    return full, spans


def _label_tokens(tokenizer, text: str, spans: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    labels = []
    for tok, (a, b) in zip(ids, offsets, strict=True):
        inside = any(max(a, s) < min(b, e) for s, e in spans)
        labels.append(tok if inside else IGNORE_INDEX)
    return ids, labels


def encode_conversation(tokenizer, messages: list[dict[str, str]], max_length: int) -> EncodedExample:
    """Token ids with labels on assistant tokens only, cut to ``max_length`` tokens."""
    text, spans = assistant_spans(tokenizer, messages)
    ids, labels = _label_tokens(tokenizer, text, spans)
    truncated = len(ids) > max_length
    return EncodedExample(ids[:max_length], labels[:max_length], truncated)


def encode_prompt_target(tokenizer, prompt: list[dict[str, str]], target: str,
                         max_length: int) -> EncodedExample:
    """The prompt with the generation prompt, then ``target`` as the start of the answer;
    labels on the target's tokens only (used to score probes)."""
    before = render(tokenizer, prompt, add_generation_prompt=True)
    text = before + target
    ids, labels = _label_tokens(tokenizer, text, [(len(before), len(text))])
    truncated = len(ids) > max_length
    if truncated:  # keep the target: cut the prompt from the left
        ids, labels = ids[-max_length:], labels[-max_length:]
    return EncodedExample(ids, labels, truncated)


def encode_prompt(tokenizer, prompt: list[dict[str, str]]) -> list[int]:
    """Token ids of a prompt ending with the generation prompt (for sampling)."""
    return tokenizer(render(tokenizer, prompt, add_generation_prompt=True),
                     add_special_tokens=False)["input_ids"]


def tokenize_conversations(
    tokenizer, conversations: list[Conversation], max_length: int
) -> tuple[list[EncodedExample], int]:
    """Encode every conversation; returns the examples and how many were truncated."""
    examples = [encode_conversation(tokenizer, c.messages, max_length) for c in conversations]
    return examples, sum(e.truncated for e in examples)
