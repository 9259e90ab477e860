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

Raw text (a conversation whose first message is a ``text`` turn,
:func:`pathunlearn.data.conversation.document`) is rendered without a template: the tokenizer's
BOS (when it has one), the prefix, the continuation; no end-of-text token (MUSE trains its
target models on raw text the same way: BOS, then the text). The continuation is the label
span, so a document (empty prefix) learns every token. In training,
:func:`tokenize_conversations` cuts a text longer than ``max_length`` into windows
(:func:`text_windows`) instead of truncating it.
"""

from __future__ import annotations

from dataclasses import dataclass

from pathunlearn.data.conversation import TEXT_ROLE, Conversation, is_text
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
    """The conversation as text through the tokenizer's chat template (raw text: its texts
    after the BOS, no template; the generation prompt adds nothing)."""
    if is_text(messages):
        return render_text(tokenizer, messages)
    ensure_chat_template(tokenizer)
    if not messages:
        return ""
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def render_text(tokenizer, messages: list[dict[str, str]]) -> str:
    """Raw text: BOS (when the tokenizer has one), the ``text`` prefix, the continuation."""
    if len(messages) > 2 or any(m["role"] != "assistant" for m in messages[1:]):
        raise DataError(f"raw text is a '{TEXT_ROLE}' turn and at most one assistant turn, "
                        f"got roles {[m['role'] for m in messages]}")
    return (getattr(tokenizer, "bos_token", None) or "") + "".join(m["content"]
                                                                   for m in messages)


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


def text_windows(ids: list[int], labels: list[int], max_length: int,
                 bos_id: int | None = None) -> list[EncodedExample]:
    """A tokenised raw text cut into windows of at most ``max_length`` tokens, so that every
    target token is a target exactly once (the loss shifts labels by one: a window's first
    token is never predicted). With ``bos_id`` (``ids`` starts with it) every window is BOS +
    the next ``max_length - 1`` tokens, as MUSE chunks its corpora; without, each window starts
    at the previous one's last token (its input, no longer its target). The last window keeps
    what is left (shorter: padded in its batch; MUSE instead fills it up with the first
    window's tokens, which trains those twice); a window with no target is dropped."""
    if len(ids) <= max_length:
        return [EncodedExample(ids, labels)]
    head = 1 if bos_id is not None and ids and ids[0] == bos_id else 0
    body, body_labels, step = ids[head:], labels[head:], max_length - 1
    windows = []
    for start in range(0, len(body) - (1 - head), step):
        end = start + step + (1 - head)
        window = ids[:head] + body[start:end]
        window_labels = [IGNORE_INDEX] + body_labels[start + (1 - head):end]
        if any(x != IGNORE_INDEX for x in window_labels[1:]):
            windows.append(EncodedExample(window, window_labels))
    return windows


def encode_text(tokenizer, messages: list[dict[str, str]],
                max_length: int) -> list[EncodedExample]:
    """Raw text as training windows (:func:`text_windows`), labels on its continuation."""
    ids, labels = _label_tokens(tokenizer, *assistant_spans(tokenizer, messages))
    bos = getattr(tokenizer, "bos_token_id", None) if getattr(tokenizer, "bos_token", None) \
        else None
    return text_windows(ids, labels, max_length, bos)


def tokenize_conversations(
    tokenizer, conversations: list[Conversation], max_length: int
) -> tuple[list[EncodedExample], int]:
    """Encode every conversation; returns the examples and how many were truncated. A raw
    text longer than ``max_length`` becomes several windows (:func:`encode_text`), never
    truncated."""
    examples: list[EncodedExample] = []
    for c in conversations:
        if c.is_text:
            examples += encode_text(tokenizer, c.messages, max_length)
        else:
            examples.append(encode_conversation(tokenizer, c.messages, max_length))
    return examples, sum(e.truncated for e in examples)
