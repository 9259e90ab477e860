"""pathunlearn.rewrite against hostile endpoints (issue 25 items 1 and 5): the key never in any
byte written or printed, replies over length refused without being read, failures counted by
cause, malformed token counts and model lists as causes or one line, options checked once."""

from __future__ import annotations

import json
import math
import time
import tracemalloc
from pathlib import Path

import pytest
from fakellm import HUGE, FakeLLM, read_jsonl, refusal, sorry_records, write_jsonl

from pathunlearn import rewrite as rw
from pathunlearn.data.suite import REFUSAL_PREFIX
from pathunlearn.errors import UserError

KEY = "sk-hostile-9f3c2a7e5b1d4c8f6a0e2b7d9c4f1a3e"
GRAMS = {KEY[i:i + 8] for i in range(len(KEY) - 7)}
"""Every 8-character run of the key: none may appear anywhere (a cut key leaks a prefix)."""


def args(src: Path, out: Path, llm: FakeLLM, *extra: str) -> list[str]:
    return ["data", "rewrite", "safety", str(src), str(out), "--base-url", llm.url, "--model",
            llm.model, "--backoff", "0.002", "--backoff-max", "0.01", "--timeout", "2",
            "--max-retries", "2", "--concurrency", "8", *extra]
"""A 2 s timeout: a loaded machine must not turn a planned fault into a timeout (the test of
timeouts gives its own)."""


def sorry_input(tmp_path: Path, n: int, out_dir: str = ".") -> tuple[Path, Path]:
    """(sorry.jsonl holding ``n`` SORRY-BENCH records, the output path under ``out_dir``)."""
    src = tmp_path / "sorry.jsonl"
    write_jsonl(src, sorry_records(n))
    return src, tmp_path / out_dir / "safety.jsonl"


def assert_no_key(directory: Path, *texts: str) -> None:
    """No byte of the key, nor any 8-character run of it, in a file or a text."""
    blobs = {str(p): p.read_bytes().decode("utf-8", "replace")
             for p in directory.rglob("*") if p.is_file()}
    blobs.update({f"text {i}": t for i, t in enumerate(texts)})
    for where, blob in blobs.items():
        leaked = sorted(g for g in GRAMS if g in blob)
        assert not leaked, f"{where} holds {leaked[:3]}"


def errors(result) -> list[str]:
    return [line for line in result.err.splitlines() if line.startswith("error: ")]


def summary_causes(out: str) -> dict[str, int]:
    """'  6 x HTTP 500 (...)' lines of the summary -> {'HTTP 500': 6}."""
    found = {}
    for line in out.splitlines():
        if line.startswith("  ") and " x " in line:
            count, rest = line.strip().split(" x ", 1)
            found[rest.split(" (")[0]] = int(count)
    return found


# ---------------------------------------------------------------------------------------------
# secrets


def echo_plan(rid: int | None, nth: int) -> str:
    """Per record: 0 echo the key in every 200, 1 a 400 echoing it past character 290, 2 a 500
    doing the same (retries run out), 3 a non-JSON body with the key once, then fine; 4 fine."""
    return {0: "echo_key", 1: "key_400", 2: "key_500",
            3: "key_garbage" if nth == 0 else "ok"}.get(rid % 5, "ok")


def test_the_key_is_in_no_byte_written_or_printed(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    src, out = sorry_input(tmp_path, 30, "run")
    with FakeLLM(refusal, plan=echo_plan) as llm:
        result = cli(*args(src, out, llm))
    assert llm.auth == {f"Bearer {KEY}"}  # the key was sent, and echoed back every way
    assert result.code == 1, result.err  # 18 of 30 not kept
    assert "30 records: 12 kept, 6 dropped, 6 refused by the endpoint, 6 failed" in result.out
    assert summary_causes(result.out) == {"reply echoed the API key": 6, "HTTP 400": 6,
                                          "HTTP 500": 6}
    dropped = read_jsonl(out.with_name("safety.dropped.jsonl"))
    echoed = [d for d in dropped if d["cause"] == "reply echoed the API key"]
    assert {d["question_id"] for d in echoed} == {0, 5, 10, 15, 20, 25}
    assert all(d["text"] is None and d["reason"] == "reply echoed the API key (not stored)"
               for d in echoed)
    assert len(llm.requests_for(0)) == 2  # asked again once (--content-retries 1), then dropped
    refused = [d for d in dropped if d["cause"] == "HTTP 400"]
    assert refused and all("***" in d["reason"] for d in refused)
    kept = read_jsonl(out)
    assert {r["question_id"] for r in kept} == {i for i in range(30) if i % 5 in (3, 4)}
    assert_no_key(tmp_path, result.out, result.err)


def test_a_refused_key_echoed_past_the_cut_is_one_scrubbed_line(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    src, out = sorry_input(tmp_path, 4)
    with FakeLLM(refusal, models="key_401") as llm:
        result = cli(*args(src, out, llm))
    assert result.code == 2 and len(result.err.strip().splitlines()) == 1, result.err
    assert "refused the key from $OPENAI_API_KEY (HTTP 401: Invalid request" in result.err
    assert not out.exists() and llm.log == []
    assert_no_key(tmp_path, result.out, result.err)


def test_scrubbing_masks_the_key_and_its_runs_before_any_cut():
    scrub = rw.KeyScrubber(KEY)
    assert scrub(f"a {KEY} b {KEY}") == "a *** b ***"
    assert scrub(f"cut: {KEY[:8]}|{KEY[-9:]}") == "cut: ***|***"  # runs of 8 or more
    assert scrub(f"short: {KEY[:7]}") == f"short: {KEY[:7]}"
    assert scrub.json({"k": [f"x{KEY}", 3, {KEY: None}]}) == {"k": ["x***", 3, {"***": None}]}
    assert rw.KeyScrubber(None)("anything") == "anything"
    assert rw.KeyScrubber("abc")("xabcx") == "x***x"  # a key shorter than a run: whole only

    class Error:  # an openai APIStatusError's message, the key straddling the cut at 300
        body = {"error": {"message": "m" * 295 + KEY}}
        message = ""

    message = rw._error_message(Error(), scrub)
    assert message == "m" * 295 + "***" and not any(g in message for g in GRAMS)


def test_an_old_cache_with_a_leaked_key_is_scrubbed_on_output(cli, tmp_path, monkeypatch):
    # a cache written before this fix: a 400's message cut at 300 before it was scrubbed, and
    # entries without a cause; plus lines that are not finished entries (skipped, asked again)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    src, out = sorry_input(tmp_path, 3)
    opts = rw.RewriteOptions(task="safety", input=src, output=out, base_url="http://x/v1",
                             model="fake-model")
    keys = [it.key for it in rw.build_items(opts)]
    cache = out.with_name("safety.jsonl.cache.jsonl")
    cache.write_text("\n".join([
        json.dumps({"key": keys[0], "status": "error", "reason": "HTTP 400: " + "m" * 270
                    + KEY[:20]}),
        json.dumps({"key": keys[1], "status": "ok"}),  # no text: not finished
        json.dumps({"key": keys[2], "status": "ok", "text": "\ud800"})]) + "\n")
    with FakeLLM(refusal) as llm:
        result = cli(*args(src, out, llm))
    assert result.code == 0, result.err
    assert sorted(e["id"] for e in llm.log) == [1, 2]  # the two unfinished lines asked again
    dropped = read_jsonl(out.with_name("safety.dropped.jsonl"))
    assert [(d["cause"], d["reason"][-13:]) for d in dropped] == [("HTTP 400", "mmmmmmmmmm***")]
    assert "  1 x HTTP 400 (HTTP 400: mmm" in result.out
    for path in (out, out.with_name("safety.dropped.jsonl")):
        assert not any(g in path.read_text() for g in GRAMS)
    assert not any(g in result.out + result.err for g in GRAMS)


# ---------------------------------------------------------------------------------------------
# replies over length


def length_plan(rid: int | None, nth: int) -> str:
    """Per record: 0 a 100 MB reply, 1 usage over --max-tokens, 2 a 4,000-character text,
    3 a 100 MB error body (a 500: retried, then failed), 4 fine."""
    return {0: "huge", 1: "over_tokens", 2: "long_text", 3: "huge_error"}.get(rid % 5, "ok")


def test_replies_over_length_are_refused_unread_and_counted(cli, tmp_path):
    src, out = sorry_input(tmp_path, 10)
    tracemalloc.start()
    try:
        with FakeLLM(refusal, plan=length_plan) as llm:
            result = cli(*args(src, out, llm, "--max-tokens", "200"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.code == 1, result.err  # 8 of 10 not kept
    causes = summary_causes(result.out)
    assert causes == {"reply over length": 6, "HTTP 500": 2}, result.out
    dropped = {d["question_id"]: d for d in read_jsonl(out.with_name("safety.dropped.jsonl"))}
    assert dropped[0]["reason"] == f"reply over length: the body passed " \
        f"{rw.reply_byte_limit(200):,} bytes (not read further, not stored)"
    assert dropped[1]["reason"] == "reply over length: 5,000 completion tokens for " \
        "--max-tokens 200 (not stored)"
    chars = len(refusal(2, 0) + " because" * 500)
    assert dropped[2]["reason"] == f"reply over length: {chars:,} characters, over 16 per " \
        "token of --max-tokens 200 (not stored)"
    assert dropped[3]["status"] == "failed" and "an error body over" in dropped[3]["reason"]
    assert all(d["text"] is None for d in dropped.values())
    # never kept: the output, the cache and the dropped list are small; the client stopped
    # reading each 100 MB body near its bound, and held at most a few MB
    for path in tmp_path.iterdir():
        assert path.stat().st_size < 100_000, path
    deadline = time.time() + 5  # a server thread notes its bytes once its write fails
    while len(llm.sent_bytes) < 2 * 2 + 2 * 3 and time.time() < deadline:
        time.sleep(0.02)
    assert len(llm.sent_bytes) == 2 * 2 + 2 * 3 and max(llm.sent_bytes) < HUGE // 4
    assert peak < 40 << 20, f"peak {peak / 2 ** 20:.0f} MiB traced"


# ---------------------------------------------------------------------------------------------
# failures by cause, and what a rerun sends


def cause_plan(rid: int | None, nth: int) -> str:
    kinds = ["500", "429", "timeout", "drop", "malformed", "400", "surrogate", "gzip",
             "slow_body"]
    return kinds[rid] if rid < len(kinds) else "ok"


def fixed_after(phase: list[str]):
    """cause_plan in the first run; every request fine afterwards."""
    return lambda rid, nth: cause_plan(rid, nth) if phase[0] == "first" else "ok"


def test_failures_are_counted_by_cause_and_a_rerun_sends_the_unanswered(cli, tmp_path):
    src, out = sorry_input(tmp_path, 18)  # 17 fails the refusal check (refusal(): id % 17)
    phase = ["first"]
    # the fake hangs 2 s; a healthy reply under a loaded suite must come well inside the
    # timeout (at 0.6 s, one slow 500 retry counted as a timeout and moved the retry causes)
    quick = ("--content-retries", "0", "--timeout", "1.5")
    with FakeLLM(refusal, plan=fixed_after(phase), hang=2.0) as llm:
        first = cli(*args(src, out, llm, *quick))
        assert first.code == 1, first.err
        assert summary_causes(first.out) == {
            "HTTP 500": 1, "HTTP 429": 1, "timeout": 2, "connection dropped": 1,
            "malformed reply": 3, "HTTP 400": 1, "refusal check": 2}, first.out
        dropped = {d["question_id"]: d for d in read_jsonl(out.with_name("safety.dropped.jsonl"))}
        assert {i: dropped[i]["cause"] for i in (2, 6, 7, 8)} == {
            2: "timeout", 6: "malformed reply", 7: "malformed reply", 8: "timeout"}
        assert "lone surrogate" in dropped[6]["reason"] and "compressed" in dropped[7]["reason"]
        assert dropped[0]["reason"] == "retries exhausted: HTTP 500: server error"
        assert "retried after: " in first.out and "2 x HTTP 500" in first.out
        assert errors(first)[0].startswith("error: incomplete: 8 records failed after 2 retries")
        phase[0] = "second"
        llm.phase = "second"
        second = cli(*args(src, out, llm, *quick))
        resent = sorted({e["id"] for e in llm.log if e["phase"] == "second"})
        assert resent == [0, 1, 2, 3, 4, 6, 7, 8]  # the failed; not the 400, not the drops
        llm.phase = "third"
        third = cli(*args(src, out, llm, *quick, "--retry-errors"))
        assert sorted({e["id"] for e in llm.log if e["phase"] == "third"}) == [5]
    assert second.code == 0 and third.code == 0, second.err + third.err
    # 0 now answers without the refusal sentence (refusal(): id % 17), like 13 and 17 did
    assert "18 records: 15 kept, 3 dropped, 0 refused by the endpoint, 0 failed" in third.out
    assert summary_causes(third.out) == {"refusal check": 3}


@pytest.mark.parametrize(("kind", "shown"), [
    ("usage_str", "usage.completion_tokens is a str, not a token count"),
    ("usage_nan", "usage.prompt_tokens is nan, not a token count"),
    ("usage_negative", "usage.completion_tokens is -20, not a token count"),
    ("usage_nested", "usage.completion_tokens is a dict, not a token count"),
    ("usage_not_object", "usage is a str, not an object"),
])
def test_a_usage_that_is_not_token_counts_is_a_malformed_reply(cli, tmp_path, kind, shown):
    src, out = sorry_input(tmp_path, 4)
    with FakeLLM(refusal, plan=lambda rid, nth: kind if rid < 2 else "ok") as llm:
        result = cli(*args(src, out, llm, "--max-retries", "1"))
    assert result.code == 1 and "Traceback" not in result.err, result.err
    assert f"  2 x malformed reply (retries exhausted: malformed reply: {shown})" \
        in result.out.splitlines()
    assert [r["question_id"] for r in read_jsonl(out)] == [2, 3]
    cached = read_jsonl(out.with_name("safety.jsonl.cache.jsonl"))
    assert sorted(e["index"] for e in cached) == [2, 3]  # the failed ones are asked again


# ---------------------------------------------------------------------------------------------
# GET /models that is not a model list


@pytest.mark.parametrize(("models", "text"), [
    ("html", "GET /models: answered an HTML page, not a model list"),
    ("shape", "GET /models: the reply is not a model list"),
    ("huge", "GET /models: the reply passed 16,777,216 bytes"),
])
def test_a_models_reply_that_is_not_a_model_list_is_one_line(cli, tmp_path, models, text):
    src, out = sorry_input(tmp_path, 3)
    with FakeLLM(refusal, models=models) as llm:
        result = cli(*args(src, out, llm))
    lines = result.err.strip().splitlines()
    assert result.code == 2 and len(lines) == 1 and text in lines[0], result.err
    assert llm.log == [] and sorted(p.name for p in tmp_path.iterdir()) == ["sorry.jsonl"]


# ---------------------------------------------------------------------------------------------
# options: every check in RewriteOptions


def good(tmp_path: Path) -> dict:
    return {"task": "safety", "input": tmp_path / "in.jsonl", "output": tmp_path / "o.jsonl",
            "base_url": "http://127.0.0.1:8000/v1", "model": "m"}


BAD_OPTIONS = [
    ("task", "poetry", "task 'poetry'"), ("split", "dev", "--split 'dev'"),
    ("format", "xml", "--format 'xml'"), ("output", Path("o.json"), "give a .jsonl path"),
    ("base_url", "ftp://host/v1", "--base-url 'ftp://host/v1'"),
    ("base_url", "http:///v1", "--base-url 'http:///v1'"),
    ("base_url", "http://host /v1", "--base-url 'http://host /v1'"),
    ("model", " ", "--model ' '"), ("api_key_env", "A=B", "--api-key-env 'A=B'"),
    ("template", rw.Template(user="{why}"), "unknown field {why}"),
    ("temperature", -0.1, "--temperature -0.1"), ("temperature", 2.5, "--temperature 2.5"),
    ("temperature", math.nan, "--temperature nan"), ("max_tokens", 0, "--max-tokens 0"),
    ("max_tokens", 10 ** 7, "--max-tokens 10000000"), ("max_tokens", 2.5, "--max-tokens 2.5"),
    ("max_tokens", True, "--max-tokens True"), ("concurrency", 0, "--concurrency 0"),
    ("concurrency", 5000, "--concurrency 5000"), ("max_retries", -1, "--max-retries -1"),
    ("content_retries", -1, "--content-retries -1"), ("seed", 2 ** 64, "--seed"),
    ("backoff", -1.0, "--backoff -1.0"), ("backoff", math.inf, "--backoff inf"),
    ("backoff_max", math.nan, "--backoff-max nan"), ("timeout", 0, "--timeout 0"),
    ("timeout", math.inf, "--timeout inf"), ("price_in", -0.5, "--price-in -0.5"),
    ("price_out", math.nan, "--price-out nan"),
    ("max_failed_fraction", 1.5, "--max-failed-fraction 1.5"),
    ("max_failed_fraction", math.nan, "--max-failed-fraction nan"),
    ("retry_errors", "yes", "--retry-errors 'yes'"),
]


@pytest.mark.parametrize(("name", "value", "text"), BAD_OPTIONS,
                         ids=[f"{n}={v!r}"[:40] for n, v, _ in BAD_OPTIONS])
def test_each_bad_option_is_one_line_naming_it(tmp_path, name, value, text):
    with pytest.raises(UserError) as caught:
        rw.RewriteOptions(**{**good(tmp_path), name: value})
    message = str(caught.value)
    assert text in message and len(message.splitlines()) == 1, message


def test_good_options_pass_and_a_template_path_is_loaded(tmp_path):
    template = tmp_path / "t.yaml"
    template.write_text("user: 'Refuse {prompt}, starting {refusal}'\n")
    opts = rw.RewriteOptions(**{**good(tmp_path), "template": template, "temperature": 0,
                                "max_tokens": 1, "timeout": 0.001, "max_failed_fraction": 1})
    assert opts.template == rw.Template(user="Refuse {prompt}, starting {refusal}")
    assert rw.RewriteOptions(**{**good(tmp_path), "input": str(tmp_path / "in.jsonl")}).input \
        == tmp_path / "in.jsonl"


@pytest.mark.parametrize(("flag", "value", "text"), [
    ("--temperature", "nan", "Invalid value for '--temperature'"),  # typer's bound first
    ("--timeout", "inf", "--timeout inf: give a finite number > 0"),
    ("--backoff", "inf", "--backoff inf: give a finite number >= 0"),
    ("--price-out", "inf", "--price-out inf: give a finite number >= 0"),
    ("--format", "xml", "--format 'xml': choose release or chat"),
    ("--base-url", "ftp://h/v1", "--base-url 'ftp://h/v1': expected http://HOST"),
])
def test_the_cli_refuses_bad_options_before_anything_is_sent(cli, tmp_path, flag, value, text):
    src, out = sorry_input(tmp_path, 3)
    with FakeLLM(refusal) as llm:
        result = cli(*args(src, out, llm, flag, value))
    lines = result.err.strip().splitlines()
    assert result.code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {text}"), \
        result.err
    assert llm.log == [] and not out.exists()


def test_a_refusal_echoing_nothing_is_still_kept():
    # the key check looks for the key's runs only: an ordinary refusal passes
    text = f"{REFUSAL_PREFIX} It would cause harm."
    assert rw._check_reply(text, 20, 200, rw.KeyScrubber(KEY)) == text
