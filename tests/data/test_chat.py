"""Assistant-only label masks, checked token by token on real chat templates."""

from __future__ import annotations

import pytest

from pathunlearn.data.chat import (
    FALLBACK_CHAT_TEMPLATE,
    IGNORE_INDEX,
    encode_conversation,
    encode_prompt_target,
    render,
    tokenize_conversations,
)
from pathunlearn.data.conversation import Conversation
from pathunlearn.errors import DataError

CONV = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Red is a colour."},
    {"role": "user", "content": "Another one?"},
    {"role": "assistant", "content": "Blue."},
]

# A hand-made template in the style of Llama 3 (header tokens, no trailing newline).
HAND_MADE = (
    "<|begin|>{% for m in messages %}<|start|>{{ m['role'] }}<|sep|>{{ m['content'] }}<|eot|>"
    "{% endfor %}{% if add_generation_prompt %}<|start|>assistant<|sep|>{% endif %}"
)


@pytest.fixture(scope="module")
def tok(tiny_tokenizer):
    return tiny_tokenizer


def token_pieces(tok, ex):
    """Each token decoded on its own; checks every label is the token id or -100."""
    for i, lab in zip(ex.input_ids, ex.labels, strict=True):
        assert lab in (i, IGNORE_INDEX)
    return [tok.decode([i]) for i in ex.input_ids]


def test_chatml_labels_cover_exactly_the_answers_and_end_tokens(tok):
    ex = encode_conversation(tok, CONV, max_length=512)
    pieces = token_pieces(tok, ex)
    assert "".join(pieces) == render(tok, CONV)
    # token by token: labelled iff the token belongs to an assistant answer or its <|im_end|>
    in_answer, expected = False, []
    for k, piece in enumerate(pieces):
        if k >= 2 and pieces[k - 2] == "<|im_start|>" and pieces[k - 1] == "assistant":
            in_answer = None  # the newline after the role name is still template
        elif in_answer is None:
            in_answer = True
        expected.append(bool(in_answer))
        if piece == "<|im_end|>":
            in_answer = False
    got = [lab != IGNORE_INDEX for lab in ex.labels]
    assert got == expected
    answers = [tok.decode([i]) for i, lab in zip(ex.input_ids, ex.labels, strict=True) if lab != IGNORE_INDEX]
    assert "".join(answers) == "Red is a colour.<|im_end|>Blue.<|im_end|>"


def test_chatml_end_token_is_one_special_token(tok):
    ex = encode_conversation(tok, CONV[:3], max_length=512)
    end = tok.convert_tokens_to_ids("<|im_end|>")
    labelled = [lab for lab in ex.labels if lab != IGNORE_INDEX]
    assert labelled[-1] == end and ex.input_ids.count(end) == 3


def test_hand_made_template_labels(tok):
    tok = tok.__class__.from_pretrained(tok.name_or_path) if tok.name_or_path else tok
    original = tok.chat_template
    tok.chat_template = HAND_MADE
    try:
        ex = encode_conversation(tok, CONV, max_length=512)
        text = render(tok, CONV)
        assert text.startswith("<|begin|><|start|>system<|sep|>")
        labelled = "".join(tok.decode([i]) for i, lab in zip(ex.input_ids, ex.labels, strict=True)
                           if lab != IGNORE_INDEX)
        assert labelled == "Red is a colour.<|eot|>Blue.<|eot|>"
        # every unlabelled token lies outside the answers
        unlabelled = "".join(tok.decode([i]) for i, lab in zip(ex.input_ids, ex.labels, strict=True)
                             if lab == IGNORE_INDEX)
        assert "Red" not in unlabelled and "Blue" not in unlabelled and "colour?" not in unlabelled
    finally:
        tok.chat_template = original


def test_fallback_template_when_tokenizer_has_none(tok):
    original = tok.chat_template
    tok.chat_template = None
    try:
        text = render(tok, CONV[:3])
        assert tok.chat_template == FALLBACK_CHAT_TEMPLATE
        assert text == ("### System:\nYou are a helpful assistant.\n\n### User:\nName a colour.\n\n"
                        "### Assistant:\nRed is a colour.<|im_end|>\n\n")
        ex = encode_conversation(tok, CONV[:3], max_length=512)
        labelled = "".join(tok.decode([i]) for i, lab in zip(ex.input_ids, ex.labels, strict=True)
                           if lab != IGNORE_INDEX)
        assert labelled == "Red is a colour.<|im_end|>"
    finally:
        tok.chat_template = original


def test_truncation_is_explicit_and_counted(tok):
    long = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "word " * 200}]
    short = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    examples, n_truncated = tokenize_conversations(
        tok, [Conversation(long), Conversation(short)], max_length=32)
    assert n_truncated == 1
    assert len(examples[0].input_ids) == 32 and examples[0].truncated
    assert not examples[1].truncated and len(examples[1].input_ids) < 32


def test_prompt_target_labels_only_the_target(tok):
    ex = encode_prompt_target(tok, CONV[:2], "Sorry, I can not assist you", max_length=512)
    labelled = "".join(tok.decode([i]) for i, lab in zip(ex.input_ids, ex.labels, strict=True)
                       if lab != IGNORE_INDEX)
    assert labelled == "Sorry, I can not assist you"
    assert tok.decode(ex.input_ids).endswith("<|im_start|>assistant\nSorry, I can not assist you")


def test_template_that_is_not_prefix_stable_is_a_clear_error(tok):
    original = tok.chat_template
    # renders the last message differently from earlier ones: turn-by-turn rendering disagrees
    tok.chat_template = ("{% for m in messages %}{% if loop.last %}[{{ m['content'] }}]"
                         "{% else %}{{ m['content'] }};{% endif %}{% endfor %}")
    try:
        with pytest.raises(DataError, match="not prefix-stable"):
            encode_conversation(tok, CONV, max_length=512)
    finally:
        tok.chat_template = original
