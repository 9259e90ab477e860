"""``pathunlearn serve tiny`` through the official openai client: a completion equal to the
project's sampler, a stream with the same text, 4xx JSON errors, 8 concurrent clients each
getting what they get alone, and rewrite over loopback against it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from pathunlearn.eval.generate import generate

QUESTION = [{"role": "user", "content": "What is 3 plus 4?"}]


def client(served) -> openai.OpenAI:
    return openai.OpenAI(base_url=served.url, api_key="unused", max_retries=0, timeout=60)


def test_completion_is_the_projects_sampler(served_tiny):
    reply = client(served_tiny).chat.completions.create(
        model="tiny", messages=QUESTION, max_tokens=24, temperature=0.8, top_p=0.9, seed=7)
    expected = generate(served_tiny.model, served_tiny.tokenizer, [QUESTION], n=1,
                        temperature=0.8, top_p=0.9, max_new_tokens=24, seed=7)[0][0]
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == expected
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage.completion_tokens <= 24 and reply.usage.prompt_tokens > 5
    greedy = client(served_tiny).chat.completions.create(model="tiny", messages=QUESTION,
                                                         max_tokens=24, temperature=0, n=2)
    expected = generate(served_tiny.model, served_tiny.tokenizer, [QUESTION], greedy=True,
                        max_new_tokens=24)[0][0]
    assert [c.message.content for c in greedy.choices] == [expected, expected]


def test_stream_sends_the_same_text_in_pieces(served_tiny):
    c = client(served_tiny)
    whole = c.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=20, seed=3)
    pieces, finish, usage = [], None, None
    for chunk in c.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=20,
                                           seed=3, stream=True,
                                           stream_options={"include_usage": True}):
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(pieces) == whole.choices[0].message.content
    assert len([p for p in pieces if p]) > 1
    assert finish == whole.choices[0].finish_reason
    assert usage.completion_tokens == whole.usage.completion_tokens


@pytest.mark.parametrize(("kwargs", "error", "text"), [
    ({"model": "nope"}, openai.NotFoundError, "the model 'nope' does not exist"),
    ({"max_tokens": 0}, openai.BadRequestError, "'max_tokens' must be in [1, 256]"),
    ({"max_tokens": 100_000}, openai.BadRequestError, "'max_tokens' must be in"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, openai.BadRequestError,
     "messages[0].role must be one of"),
    ({"messages": []}, openai.BadRequestError, "'messages' must be a non-empty list"),
    ({"temperature": 5}, openai.BadRequestError, "'temperature' must be 0 (greedy) or in [0.001, 2]"),
])
def test_bad_requests_are_4xx_json(served_tiny, kwargs, error, text):
    args = {"model": "tiny", "messages": QUESTION, "max_tokens": 8, **kwargs}
    with pytest.raises(error) as caught:
        client(served_tiny).chat.completions.create(**args)
    assert text in caught.value.message
    assert caught.value.body["type"] == "invalid_request_error"


def test_malformed_json_health_and_models(served_tiny):
    base = served_tiny.url.removesuffix("/v1")
    request = urllib.request.Request(f"{served_tiny.url}/chat/completions", data=b"{not json",
                                     headers={"content-type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=30)
    assert caught.value.code == 400
    assert "not valid JSON" in json.loads(caught.value.read())["error"]["message"]
    with urllib.request.urlopen(f"{base}/health", timeout=30) as r:
        assert json.loads(r.read())["status"] == "ok"
    assert [m.id for m in client(served_tiny).models.list()] == ["tiny"]


def test_eight_concurrent_clients_get_what_they_get_alone(served_tiny):
    asks = [([{"role": "user", "content": f"What is {i} plus {i + 2}?"}], 100 + i, t)
            for i, t in zip(range(8), [0, 0.7, 1.0, 0.7, 0, 1.0, 0.7, 1.0], strict=True)]

    def ask(a) -> str:
        messages, seed, temperature = a
        reply = client(served_tiny).chat.completions.create(
            model="tiny", messages=messages, max_tokens=16 + seed % 5, seed=seed,
            temperature=temperature)
        return reply.choices[0].message.content

    alone = [ask(a) for a in asks]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(ask, asks))
    assert together == alone
    assert len(set(alone)) > 1


def test_rewrite_math_against_serve_over_loopback(served_tiny, cli, tmp_path):
    src, out = tmp_path / "gsm8k.jsonl", tmp_path / "math.jsonl"
    src.write_text("".join(json.dumps(
        {"question": f"Ann has {i} pens and buys 2 more. How many pens does she have?",
         "answer": f"{i} + 2 = {i + 2}\n#### {i + 2}"}) + "\n" for i in range(4)))
    result = cli("data", "rewrite", "math", src, out, "--base-url", served_tiny.url,
                 "--model", "tiny", "--max-tokens", "24", "--concurrency", "4",
                 "--content-retries", "0", "--template", _template(tmp_path))
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    dropped = [json.loads(line) for line in
               out.with_name("math.dropped.jsonl").read_text().splitlines()]
    assert len(kept) + len(dropped) == 4  # the tiny model's answers: whatever they are
    assert "4 requests (0 retries)" in result.out
    # the job fails (exit 1) when it kept none, or more than half (--max-failed-fraction 0.5)
    # were not kept; the tiny model's answers decide which, the exit code must agree
    assert result.code == (1 if not kept or len(dropped) > 2 else 0), result.err
    if not kept:
        assert "kept none of the 4 records" in result.err and "math.dropped.jsonl" in result.err


def _template(tmp_path) -> str:
    path = tmp_path / "template.yaml"
    path.write_text("user: '{question}'\n")  # the tiny model is trained on plain questions
    return str(path)


def test_the_command_serves_and_stops(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "pathunlearn", "serve", "tiny", "--port", "0"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "serving tiny" in line and "http://127.0.0.1:" in line, proc.stderr.read()
        url = line.split(" at ")[-1].strip()
        reply = openai.OpenAI(base_url=url, api_key="x", max_retries=0).chat.completions.create(
            model="tiny", messages=QUESTION, max_tokens=8, seed=1)
        assert reply.choices[0].message.content is not None
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C: a graceful shutdown
        try:
            code = proc.wait(timeout=20)
        finally:
            proc.kill()
    assert code == 0 and "stopped" in proc.stdout.read()


def test_serve_bad_inputs_are_one_line(cli, tmp_path, monkeypatch):
    bad = cli("serve", tmp_path)
    assert bad.code == 2 and "not a model" in bad.err and len(bad.err.strip().splitlines()) == 1
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "fastapi" else real(name, *a))
    missing = cli("serve", "tiny")
    assert missing.code == 2 and "pip install 'pathunlearn[serve]'" in missing.err
