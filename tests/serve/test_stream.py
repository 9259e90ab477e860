"""Real streaming: ``generate_rows`` (the sampler's per-token hook) against ``generate()``,
deltas of multi-byte tokens and near-stop-strings, then ``pathunlearn serve tiny`` streaming
the same text as its completion, the first chunk long before the last, never past a stop
string, and a client that leaves mid-stream."""

from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext

import openai
import pytest

from pathunlearn.data.chat import encode_prompt
from pathunlearn.eval.generate import (
    generate,
    generate_rows,
    sample_generator,
    stop_token_ids,
)
from pathunlearn.eval.logprob import pad_token_id
from pathunlearn.serve import RowText

QUESTION = [{"role": "user", "content": "What is 3 plus 4?"}]
PROMPTS = [QUESTION, [{"role": "user", "content": "Ann has 5 pens and buys 2 more. How many?"}]]


def client(served) -> openai.OpenAI:
    return openai.OpenAI(base_url=served.url, api_key="unused", max_retries=0, timeout=60)


@contextmanager
def no_stop_tokens(served):
    """The server decodes every row to its max_tokens (no stop token ends a row): long
    completions from the tiny model, whose answers are otherwise a few dozen tokens."""
    before = served.engine.stop_ids
    served.engine.stop_ids = {-1}
    try:
        yield
    finally:
        served.engine.stop_ids = before


def stream(served, **kwargs) -> tuple[dict[int, list[str]], dict[int, str], list[float], object]:
    """(pieces per choice, finish reason per choice, arrival times of the content chunks from
    the request, usage) of a streamed request."""
    pieces: dict[int, list[str]] = {}
    finish: dict[int, str] = {}
    times, usage = [], None
    start = time.perf_counter()
    for chunk in client(served).chat.completions.create(model="tiny", stream=True, **kwargs):
        usage = chunk.usage or usage
        for c in chunk.choices:
            if c.delta.content:
                pieces.setdefault(c.index, []).append(c.delta.content)
                times.append(time.perf_counter() - start)
            if c.finish_reason:
                finish[c.index] = c.finish_reason
    return pieces, finish, times, usage


# ---------------------------------------------------------------------------------------------
# the sampler's per-token hook


def test_generate_rows_is_generate_token_by_token(served_tiny):
    model, tokenizer = served_tiny.model, served_tiny.tokenizer
    stop_ids, pad_id = stop_token_ids(tokenizer, model), pad_token_id(tokenizer)
    encoded = [encode_prompt(tokenizer, p) for p in PROMPTS]
    for greedy in (False, True):
        expected = generate(model, tokenizer, PROMPTS, n=2, temperature=0.9, top_p=0.95,
                            max_new_tokens=40, seed=5, greedy=greedy)
        # generate()'s one batch: its jobs, longest prompt first
        jobs = sorted([(i, j) for i in range(2) for j in range(1 if greedy else 2)],
                      key=lambda job: -len(encoded[job[0]]))
        reported: dict[int, list] = {}
        new = generate_rows(
            model, [encoded[i] for i, _ in jobs],
            [None if greedy else sample_generator(5, i, j) for i, j in jobs],
            stop_ids=stop_ids, pad_id=pad_id, max_new_tokens=40, temperature=0.9, top_p=0.95,
            on_token=lambda row, token, got=reported: got.setdefault(row, []).append(token))
        for k, (i, j) in enumerate(jobs):
            assert tokenizer.decode(new[k], skip_special_tokens=True) == expected[i][j]
            assert reported[k] == [*new[k], None]  # every token as it came, then the stop
        # a row that on_token ends keeps what it had; the others are unchanged
        short = generate_rows(
            model, [encoded[i] for i, _ in jobs],
            [None if greedy else sample_generator(5, i, j) for i, j in jobs],
            stop_ids=stop_ids, pad_id=pad_id, max_new_tokens=40, temperature=0.9, top_p=0.95,
            on_token=lambda row, token: row == 0 and token is not None)
        assert short == [new[0][:1], *new[1:]]
    with pytest.raises(ValueError, match="all greedy"):
        generate_rows(model, encoded, [None, sample_generator(0, 0, 0)], stop_ids=stop_ids,
                      pad_id=pad_id, max_new_tokens=4)


def test_deltas_hold_back_incomplete_characters_and_stop_string_starts(tiny_tokenizer):
    tokenizer = tiny_tokenizer
    text = "Zoë paid 5 € for 🙂🙂 and 12 pens. Done"
    tokens = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(tokens) == text
    assert any("\ufffd" in tokenizer.decode(tokens[:k]) for k in range(len(tokens)))
    row = RowText(tokenizer, ("pens!",), max_tokens=len(tokens), live=True)
    deltas = [row.add(t) for t in tokens]
    assert "".join(deltas) == text and not any("\ufffd" in d for d in deltas)
    assert row.finish == "length"
    # "pens" is held back while it could still become "pens!", then sent once it cannot
    held = [k for k in range(len(tokens)) if tokenizer.decode(tokens[: k + 1]).endswith("pens")]
    assert held and all("".join(deltas[: k + 1]).endswith("12 ") for k in held)
    row = RowText(tokenizer, (". D", "zzz"), max_tokens=100, live=True)
    deltas = [row.add(t) for t in tokens]
    assert "".join(deltas) == row.text == "Zoë paid 5 € for 🙂🙂 and 12 pens"
    assert row.finish == "stop"


# ---------------------------------------------------------------------------------------------
# the server


@pytest.mark.parametrize(("temperature", "n", "long"), [(0, 2, False), (0.9, 2, False),
                                                        (1.8, 1, True)])
def test_streamed_text_is_the_completion(served_tiny, temperature, n, long):
    args = {"messages": QUESTION, "max_tokens": 120 if long else 40, "seed": 11, "n": n,
            "temperature": temperature}
    with no_stop_tokens(served_tiny) if long else nullcontext():
        whole = client(served_tiny).chat.completions.create(model="tiny", **args)
        pieces, finish, _, usage = stream(served_tiny, **args,
                                          stream_options={"include_usage": True})
    for c in whole.choices:
        assert "".join(pieces.get(c.index, [])) == c.message.content
        assert finish[c.index] == c.finish_reason
    assert usage.completion_tokens == whole.usage.completion_tokens
    if temperature == 0:
        assert whole.choices[0].message.content == generate(
            served_tiny.model, served_tiny.tokenizer, [QUESTION], greedy=True,
            max_new_tokens=40)[0][0]
    if long:
        assert whole.usage.completion_tokens == 120 and len(pieces[0]) > 20


def test_first_chunk_comes_long_before_the_last(served_tiny):
    with no_stop_tokens(served_tiny):
        pieces, finish, times, usage = stream(
            served_tiny, messages=QUESTION, max_tokens=200, temperature=0.7, seed=2,
            stream_options={"include_usage": True})
    assert usage.completion_tokens == 200 and finish == {0: "length"}
    # the first piece comes after the prefill and one step, the last after 200 steps; were
    # the stream sent after the generation, all would come within the same few milliseconds
    assert len(times) > 50
    assert times[0] < 0.5 * times[-1]
    assert sum(t < (times[0] + times[-1]) / 2 for t in times) > 5


def test_stream_stops_before_a_stop_string(served_tiny):
    c = client(served_tiny)
    args = {"messages": QUESTION, "max_tokens": 80, "temperature": 0}
    with no_stop_tokens(served_tiny):
        full = c.chat.completions.create(model="tiny", **args).choices[0].message.content
        assert len(full) > 40
        # a stop string begun long before it first completes, and one that never completes
        stop = [full[30:35], full[5:9] + "\x00never"]
        expected = full[: full.find(stop[0])]
        whole = c.chat.completions.create(model="tiny", stop=stop, **args).choices[0]
        pieces, finish, _, _ = stream(served_tiny, stop=stop, **args)
    assert whole.message.content == expected and whole.finish_reason == "stop"
    assert "".join(pieces[0]) == expected and finish == {0: "stop"}


def test_a_client_that_leaves_mid_stream_does_not_break_the_worker(served_tiny):
    c = client(served_tiny)
    with no_stop_tokens(served_tiny):
        response = c.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=250,
                                             seed=1, stream=True)
        for k, _ in enumerate(response):
            if k == 3:
                break
        response.close()
    alone = c.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=16, seed=4)
    pieces, _, _, _ = stream(served_tiny, messages=QUESTION, max_tokens=16, seed=4)
    assert "".join(pieces.get(0, [])) == alone.choices[0].message.content
    assert served_tiny.engine.thread.is_alive()
