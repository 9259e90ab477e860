"""``pathunlearn serve``'s limits (issue 25 item 4): ServeOptions validated once, hostile
bodies refused in one line by parse_body, over HTTP as 4xx in OpenAI's shape that never
reach the worker, and the per-request time limit."""

from __future__ import annotations

import dataclasses
import http.client
import json
import time
from urllib.parse import urlsplit

import pytest

from pathunlearn.errors import UserError
from pathunlearn.serve import (
    ChatRequest,
    RequestError,
    ServeOptions,
    parse_body,
)

QUESTION = [{"role": "user", "content": "What is 3 plus 4?"}]


def body(**fields) -> bytes:
    return json.dumps({"model": "tiny", "messages": QUESTION, "max_tokens": 8,
                       **fields}).encode()


# ---------------------------------------------------------------------------------------------
# the options


@pytest.mark.parametrize(("fields", "line"), [
    ({"dtype": "float8"}, "--dtype 'float8': choose float32, bfloat16, float16"),
    ({"max_batch": 0}, "--max-batch 0: must be at least 1"),
    ({"port": 70000}, "--port 70000: must be in [0, 65535]"),
    ({"threads": True}, "--threads True: must be an integer"),
    ({"default_max_tokens": 2000}, "--default-max-tokens 2000: must be at most "
                                   "--max-tokens-limit (1024)"),
    ({"request_timeout": float("nan")}, "--request-timeout nan: must be a number of seconds > 0"),
    ({"request_timeout": 0}, "--request-timeout 0: must be a number of seconds > 0"),
    ({"max_request_bytes": -1}, "--max-request-bytes -1: must be at least 1"),
    ({"name": " "}, "--name ' ': must be a non-empty string"),
])
def test_options_are_validated_once_naming_the_option(fields, line):
    with pytest.raises(UserError) as caught:
        ServeOptions(**fields)
    assert str(caught.value) == line


def test_the_command_refuses_bad_options_before_loading(cli):
    for args, line in [(("--max-stop-chars", "0"), "--max-stop-chars 0: must be at least 1"),
                       (("--request-timeout", "inf"), "--request-timeout inf: must be a"),
                       (("--dtype", "int8"), "--dtype 'int8': choose float32")]:
        result = cli("serve", "tiny", *args)
        assert result.code == 2 and line in result.err, result.err
        assert len(result.err.strip().splitlines()) == 1


def test_the_commands_defaults_are_the_options_defaults():
    import typer

    from pathunlearn.cli import app

    command = typer.main.get_command(app).commands["serve"]
    defaults = {p.name: p.default for p in command.params if p.name != "model"}
    fields = {f.name: f.default for f in dataclasses.fields(ServeOptions)}
    assert defaults == fields


# ---------------------------------------------------------------------------------------------
# hostile bodies, parsed alone


HOSTILE_IDS = ["deep-list", "deep-object", "surrogate", "not-utf8", "nan", "inf", "denormal",
               "hot", "stop-count", "stop-length", "messages", "content", "long-int",
               "malformed"]


@pytest.mark.parametrize(("raw", "message", "param"), ids=HOSTILE_IDS, argvalues=[
    (b"[" * 100_000 + b"]" * 100_000, "the request body is nested deeper than 32 levels", None),
    (b'{"a":' * 50_000, "the request body is nested deeper than 32 levels", None),
    (body().replace(b"What", b"\\ud800"), "followed by a lone surrogate (\\ud800), not text",
     None),
    (body().replace(b"What", b"\xc3\x28"), "the request body is not UTF-8 text (byte 60)", None),
    (body(temperature=float("nan")), "'temperature' must be a finite number, got nan",
     "temperature"),
    (body().replace(b'"max_tokens"', b'"top_p": -1e999, "max_tokens"'),
     "'top_p' must be a finite number, got -inf", "top_p"),
    (body(temperature=1e-300), "'temperature' must be 0 (greedy) or in [0.001, 2], got 1e-300",
     "temperature"),
    (body(temperature=2.5), "'temperature' must be 0 (greedy) or in [0.001, 2]", "temperature"),
    (body(stop=list("abcde")), "'stop' has 5 strings: at most 4", "stop"),
    (body(stop=["x" * 65]), "'stop' has a string of 65 characters: at most 64", "stop"),
    (body(messages=QUESTION * 257), "'messages' has 257 messages: at most 256", "messages"),
    (body(messages=[{"role": "user", "content": "x" * 150_000}] * 2),
     "the messages have over 200000 characters of content (at messages[1])", "messages[1]"),
    (b'{"model": "tiny", "seed": ' + b"7" * 5000 + b"}",
     "not valid JSON: a number of over 4300 digits", None),
    (b'{"model": "tiny",', "the request body is not valid JSON: Expecting", None),
])
def test_hostile_bodies_are_one_line_400s(raw, message, param):
    with pytest.raises(RequestError) as caught:
        parse_body(raw, "tiny", ServeOptions())
    e = caught.value
    assert message in e.message and e.param == param and e.status == 400
    assert "\n" not in e.message and set(e.body()["error"]) == {"message", "type", "param",
                                                                "code"}


def test_what_the_limits_allow_parses():
    tricky = [{"role": "system", "content": "[[[[{{{{" * 100},  # brackets in strings: text
              {"role": "user", "content": "smile \ud83d\ude42 " + "y" * 199_000}]
    raw = json.dumps({"model": "tiny", "messages": tricky, "temperature": 0.001, "top_p": 1e-300,
                      "stop": ["x" * 64] * 4, "seed": -(2**70)}).encode()  # ascii escapes
    request = parse_body(raw, "tiny", ServeOptions())
    assert isinstance(request, ChatRequest)
    assert request.messages[1]["content"].startswith("smile \U0001f642")
    assert request.temperature == 0.001 and len(request.stop) == 4
    greedy = parse_body(body(temperature=0, messages=QUESTION * 256), "tiny", ServeOptions())
    assert greedy.greedy and len(greedy.messages) == 256


# ---------------------------------------------------------------------------------------------
# over HTTP: refused before the worker


@pytest.fixture
def counted(tiny_engine, monkeypatch):
    """The requests that reach the module's engine (one item per ``submit``)."""
    submit, calls = tiny_engine.submit, []

    def counting(*args, **kwargs):
        calls.append(1)
        return submit(*args, **kwargs)

    monkeypatch.setattr(tiny_engine, "submit", counting)
    return calls


@pytest.fixture
def endless(tiny_engine):
    """No stop token ends a row: every row decodes to its max_tokens (or its time limit)."""
    before, tiny_engine.stop_ids = tiny_engine.stop_ids, {-1}
    yield tiny_engine
    tiny_engine.stop_ids = before


def post(url: str, raw: bytes, chunked: bool = False) -> tuple[int, dict]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        if chunked:  # no Content-Length: the body is bounded as it is read
            conn.putrequest("POST", "/v1/chat/completions")
            conn.putheader("Transfer-Encoding", "chunked")
            conn.endheaders()
            for i in range(0, len(raw), 2**14):
                conn.send(b"%x\r\n%s\r\n" % (len(raw[i:i + 2**14]), raw[i:i + 2**14]))
            conn.send(b"0\r\n\r\n")
        else:
            conn.request("POST", "/v1/chat/completions", body=raw)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_limits_over_http_never_reach_the_worker(tiny_engine, serve_with, counted):
    options = ServeOptions(max_request_bytes=4096, max_tokens_limit=64, default_max_tokens=16)
    big = body(messages=[{"role": "user", "content": "x" * 5000}])
    with serve_with(tiny_engine, options) as served:
        cases = [(post(served.url, big), 413, "the request body is 5"),
                 (post(served.url, big, chunked=True), 413, "the request body is over 4096"),
                 (post(served.url, b"[" * 4000), 400, "nested deeper than 32"),
                 (post(served.url, body(max_tokens=65)), 400, "'max_tokens' must be in [1, 64]"),
                 (post(served.url, body(temperature=float("inf"))), 400, "finite number")]
        for (status, reply), expected, text in cases:
            assert status == expected and text in reply["error"]["message"], reply
            assert set(reply["error"]) == {"message", "type", "param", "code"}
        assert counted == []
        status, reply = post(served.url, body(temperature=0))
        assert status == 200 and reply["choices"][0]["message"]["content"]
        assert counted == [1]


# ---------------------------------------------------------------------------------------------
# the per-request time limit


def test_decoding_stops_at_the_time_limit(endless, serve_with):
    import openai

    with serve_with(endless, ServeOptions(request_timeout=0.3)) as served:
        client = openai.OpenAI(base_url=served.url, api_key="x", max_retries=0, timeout=30)
        start = time.perf_counter()
        reply = client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=480,
                                               temperature=0)
        took = time.perf_counter() - start
        finish, pieces = None, []
        for chunk in client.chat.completions.create(model="tiny", messages=QUESTION, seed=1,
                                                    max_tokens=480, stream=True):
            for c in chunk.choices:
                pieces.append(c.delta.content or "")
                finish = c.finish_reason or finish
    # the tiny model takes ~4 ms a token: 480 take about 2 s
    assert reply.choices[0].finish_reason == "length" and took < 1.5
    assert 0 < reply.usage.completion_tokens < 480 and reply.choices[0].message.content
    assert finish == "length" and "".join(pieces)


def test_a_request_whose_time_passes_in_the_queue_is_not_decoded(endless):
    long = parse_body(body(max_tokens=200, temperature=0), "tiny", ServeOptions())
    short = parse_body(body(max_tokens=8, temperature=0.7), "tiny", ServeOptions())
    first = endless.submit(long, 256)
    # due when the worker takes it (after first's batch: it samples another way, so it waits)
    late = endless.submit(short, 256, deadline=time.monotonic() + 0.01)
    with pytest.raises(RequestError) as caught:
        late.future.result(timeout=60)
    assert caught.value.status == 503 and caught.value.code == "timeout"
    assert caught.value.body()["error"]["type"] == "server_error"
    assert len(first.future.result(timeout=60)[0].tokens) == 200


# ---------------------------------------------------------------------------------------------
# how many requests the server holds at once


def test_a_request_over_max_queued_is_a_503_and_its_place_comes_back(endless, serve_with):
    import openai

    with serve_with(endless, ServeOptions(max_queued=1)) as served:
        client = openai.OpenAI(base_url=served.url, api_key="x", max_retries=0, timeout=30)
        stream = client.chat.completions.create(model="tiny", messages=QUESTION,
                                                max_tokens=400, stream=True)
        next(iter(stream))  # the streamed request holds the only place while it decodes
        status, reply = post(served.url, body())
        assert status == 503 and reply["error"]["code"] == "overloaded"
        assert "--max-queued" in reply["error"]["message"]
        assert sum(1 for _ in stream) > 0  # the stream runs to its end ...
        status, reply = post(served.url, body())  # ... and gives its place back
        assert status == 200 and reply["choices"][0]["message"]["content"]
        # a request refused before it has a job (a prompt too long) gives its place back too
        status, _ = post(served.url, body(max_tokens=10**6))
        assert status == 400
        assert post(served.url, body())[0] == 200


def test_admission_counts_until_the_jobs_future_is_done():
    from concurrent.futures import Future

    from pathunlearn.serve import Admission

    class FakeJob:
        def __init__(self):
            self.future = Future()

    places, job = Admission(2), FakeJob()
    with places.one() as admit:
        admit(job)
    with places.one():  # no job handed: released when the block ends
        assert places.held == 2
    assert places.held == 1
    with pytest.raises(RequestError) as caught, places.one(), places.one():
        pass
    assert caught.value.status == 503 and places.held == 1
    job.future.cancel()  # a cancelled job (its client left) releases its place
    assert places.held == 0
