"""pathunlearn.rewrite against the fault-injecting server: every record once (output or counted
drop), input order, resumable after kill -9 without a request sent twice, the math check, the
key never written, bad inputs as one line and exit 2."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fakellm import (
    FakeLLM,
    gsm8k_records,
    read_jsonl,
    refusal,
    sorry_records,
    write_jsonl,
)

from pathunlearn.data.adapters import load_adapted
from pathunlearn.data.suite import REFUSAL_PREFIX

KEY = "sk-test-DO-NOT-LEAK-4242"


def rewrite_args(task: str, src: Path, out: Path, llm: FakeLLM, *extra: str) -> list[str]:
    return ["data", "rewrite", task, str(src), str(out), "--base-url", llm.url,
            "--model", llm.model, *extra]


def files_under(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.is_file()]


def test_safety_with_30_percent_faults_every_record_once_in_order(cli, tmp_path, fast_args,
                                                                  monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    src, out = tmp_path / "sorry.jsonl", tmp_path / "run" / "safety.jsonl"
    write_jsonl(src, sorry_records(210, dropped_styles=10))  # 200 kept by the style filter
    # the fake hangs 1.5 s and the client waits 0.8 s: a healthy reply under a loaded suite
    # comes well inside the timeout (at 0.25 s against a 0.4 s hang, 4 slow healthy replies
    # were counted as retries and broke the request count below)
    args = [*fast_args[:fast_args.index("--timeout")], *fast_args[fast_args.index("--timeout")
                                                                   + 2:], "--timeout", "0.8"]
    with FakeLLM(refusal, faults=0.3, hang=1.5) as llm:
        result = cli(*rewrite_args("safety", src, out, llm, *args, "--price-in", "1",
                                   "--price-out", "2"))
    assert result.code == 0, result.err
    kept, dropped = read_jsonl(out), read_jsonl(out.with_name("safety.dropped.jsonl"))
    kept_ids, dropped_ids = [r["question_id"] for r in kept], [d["question_id"] for d in dropped]
    assert sorted(kept_ids + dropped_ids) == list(range(10, 210))  # each exactly once
    assert kept_ids == sorted(kept_ids)  # input order
    assert set(dropped_ids) == {i for i in range(10, 210) if i % 17 == 0}
    assert {d["reason"] for d in dropped} == {"does not start with the refusal sentence"}
    assert all(r["response"].startswith(REFUSAL_PREFIX) for r in kept)
    # content retries asked ids divisible by 13 twice, and they were kept
    assert {13 * k for k in range(1, 17) if 13 * k % 17} <= set(kept_ids)
    faults = [e for e in llm.log if e["kind"] != "ok"]
    assert 0.2 < len(faults) / len(llm.log) < 0.4 and {e["kind"] for e in faults} >= {
        "429", "500", "timeout", "malformed", "drop"}
    assert f"{len(kept)} kept, {len(dropped)} dropped" in result.out
    # a reused keep-alive connection the server had closed fails before the server sees it
    sent, retries = map(int, re.search(r"(\d+) requests \((\d+) retries\)", result.out).groups())
    assert sent >= len(llm.log) and retries >= len(faults) and sent - retries == len(llm.log) \
        - len(faults)
    # loads as the safety stage
    conversations = load_adapted("sorry-bench", out, split="all")
    assert [c.response for c in conversations] == [r["response"] for r in kept]
    # the key reached the server and nothing else
    assert llm.auth == {f"Bearer {KEY}"}
    for path in files_under(tmp_path):
        assert KEY not in path.read_text(errors="replace"), path
    assert KEY not in result.out + result.err


def test_rerun_after_kill_9_sends_no_cached_request_again(cli, tmp_path, fast_args):
    src, out = tmp_path / "sorry.jsonl", tmp_path / "safety.jsonl"
    cache = tmp_path / "safety.jsonl.cache.jsonl"
    write_jsonl(src, sorry_records(120))
    env = {**os.environ, "OPENAI_API_KEY": KEY, "OMP_NUM_THREADS": "1"}
    with FakeLLM(refusal, faults=0.1, hang=0.4, delay=0.03) as llm:
        args = rewrite_args("safety", src, out, llm, *fast_args, "--concurrency", "4")
        proc = subprocess.Popen([sys.executable, "-m", "pathunlearn", *args], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            deadline = time.time() + 60
            while time.time() < deadline and proc.poll() is None and (
                    not cache.exists() or cache.read_text().count("\n") < 30):
                time.sleep(0.05)
            assert proc.poll() is None, "the run ended before it could be killed"
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
        cached_first = {e["index"] for e in read_jsonl(cache)}
        assert 30 <= len(cached_first) < 120 and not out.exists()
        llm.phase = "second"
        os.environ["OPENAI_API_KEY"] = KEY
        try:
            result = cli(*args)
        finally:
            del os.environ["OPENAI_API_KEY"]
    assert result.code == 0, result.err
    for rid in cached_first:
        assert llm.requests_for(rid, "second") == [], f"record {rid} sent again"
    kept, dropped = read_jsonl(out), read_jsonl(out.with_name("safety.dropped.jsonl"))
    assert sorted([r["question_id"] for r in kept] + [d["question_id"] for d in dropped]) \
        == list(range(120))
    assert [r["question_id"] for r in kept] == sorted(r["question_id"] for r in kept)
    assert f"({len(cached_first)} answered from the cache)" in result.out
    entries = read_jsonl(cache)
    assert len(entries) == len({e["key"] for e in entries}) == 120  # each record cached once
    for path in files_under(tmp_path):
        assert KEY not in path.read_text(errors="replace"), path


def math_answer(rid: int | None, nth: int) -> str:
    """Right for most problems; off by one for ids divisible by 4; no '####' for id 5; the
    answer with a unit for ids divisible by 7 (kept, written as '#### N')."""
    gold = 2 * rid + 3
    if rid == 5:
        return "Ann has 13 pens."
    if rid % 4 == 0:
        return f"Step 1: add the pens.\n#### {gold + 1}"
    unit = " pens" if rid % 7 == 0 else ""
    return f"Step 1: Ann starts with {rid} pens.\nStep 2: {rid} + {rid + 3} = {gold}.\n" \
           f"#### {gold}{unit}"


def test_math_keeps_only_matching_answers(cli, tmp_path, fast_args):
    src, out = tmp_path / "gsm8k.jsonl", tmp_path / "math.jsonl"
    write_jsonl(src, gsm8k_records(30))
    with FakeLLM(math_answer) as llm:
        result = cli(*rewrite_args("math", src, out, llm, *fast_args, "--content-retries", "0"))
    assert result.code == 0, result.err
    kept = read_jsonl(out)
    wrong = {i for i in range(30) if i % 4 == 0} | {5}
    assert [int(r["question"].split()[1][:-1]) for r in kept] == \
        [i for i in range(30) if i not in wrong]
    dropped = read_jsonl(out.with_name("math.dropped.jsonl"))
    assert {d["index"] for d in dropped} == wrong
    assert {d["reason"] for d in dropped if d["index"] == 5} == {"no '#### N' final answer"}
    assert {d["reason"] for d in dropped if d["index"] == 8} == {"wrong final answer 20 (gold 19)"}
    assert all(r["answer"].endswith(f"\n#### {2 * int(r['question'].split()[1][:-1]) + 3}")
               for r in kept)
    # loads as a GSM8K stage with the gold answers
    conversations = load_adapted("gsm8k", out)
    assert [c.meta["answer"] for c in conversations] == \
        [2 * i + 3 for i in range(30) if i not in wrong]
    assert "21 kept, 9 dropped" in result.out
    assert "  9 x answer check (wrong final answer 4 (gold 3))" in result.out.splitlines()
    assert {d["cause"] for d in dropped} == {"answer check"}


def test_chat_format_and_dry_run(cli, tmp_path, fast_args):
    src, out = tmp_path / "gsm8k.jsonl", tmp_path / "chat.jsonl"
    write_jsonl(src, gsm8k_records(6))
    with FakeLLM(math_answer) as llm:
        args = rewrite_args("math", src, out, llm, *fast_args, "--price-in", "0.5",
                            "--price-out", "1.5", "--max-tokens", "100")
        dry = cli(*args, "--dry-run")
        assert dry.code == 0 and llm.log == [] and not out.exists()
        assert "6 records, 0 cached: 6 requests (at most 12 with content retries)" in dry.out
        assert "completion tokens, cost at most $" in dry.out
        first = cli(*args)
        assert first.code == 0, first.err
        sent = len(llm.log)
        again = cli(*args, "--dry-run")
        assert "6 records, 6 cached: 0 requests" in again.out
        rerun = cli(*args, "--format", "chat")  # the same requests: all cached
        assert rerun.code == 0 and len(llm.log) == sent
    chats = read_jsonl(out)
    assert chats and all(c["messages"][-1]["role"] == "assistant" for c in chats)
    assert "answer" in chats[0]["meta"]


def test_bad_inputs_are_one_line_exit_2_and_leave_the_cache(cli, tmp_path, fast_args):
    src, out = tmp_path / "sorry.jsonl", tmp_path / "out.jsonl"
    cache = tmp_path / "out.jsonl.cache.jsonl"
    write_jsonl(src, sorry_records(5))
    cache.write_text('{"key": "abc", "status": "ok", "text": "x"}\n')
    before = cache.read_bytes()
    with FakeLLM(refusal) as llm:
        wrong_model = cli("data", "rewrite", "safety", str(src), str(out), "--base-url",
                          llm.url, "--model", "other", *fast_args)
        blocked = tmp_path / "a_file"
        blocked.write_text("")
        unwritable = cli(*rewrite_args("safety", src, blocked / "out.jsonl", llm, *fast_args,
                                       "--cache", str(cache)))
        assert llm.log == []
    with socket_closed_port() as port:
        unreachable = cli("data", "rewrite", "safety", str(src), str(out), "--base-url",
                          f"http://127.0.0.1:{port}/v1", "--model", "m", *fast_args)
    for result, text in ((wrong_model, "--model other: not served by"),
                         (unwritable, "a_file/out.jsonl: cannot write there"),
                         (unreachable, "cannot reach the endpoint")):
        assert result.code == 2, result.err
        lines = result.err.strip().splitlines()
        assert len(lines) == 1 and text in lines[0], result.err
    assert cache.read_bytes() == before and not out.exists()


class socket_closed_port:  # noqa: N801
    """A loopback port nothing listens on (bound, then closed)."""

    def __enter__(self) -> int:
        import socket

        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        return port

    def __exit__(self, *exc) -> None:
        pass


def test_a_refused_request_is_recorded_and_a_bad_key_stops_the_run(cli, tmp_path, fast_args):
    from pathunlearn import rewrite as rw

    src, out = tmp_path / "sorry.jsonl", tmp_path / "out.jsonl"
    write_jsonl(src, sorry_records(4))
    opts = rw.RewriteOptions(task="safety", input=src, output=out, base_url="http://x/v1",
                             model="m", backoff=0.0, max_retries=1)

    class Status(Exception):
        pass

    endpoint = rw.Endpoint(opts, KEY)
    refused = endpoint._status_error(_status(400, f"content filter for key {KEY}"))
    assert isinstance(refused, rw.RequestRefused) and KEY not in str(refused)
    fatal = endpoint._status_error(_status(401, f"Incorrect API key provided: {KEY}"))
    assert isinstance(fatal, rw.FatalEndpointError) and "$OPENAI_API_KEY" in str(fatal)
    assert KEY not in str(fatal)
    assert isinstance(endpoint._status_error(_status(503, "busy")), rw._Retryable)


def _status(code: int, message: str):
    import httpx2
    import openai

    response = httpx2.Response(code, request=httpx2.Request("POST", "http://x/v1/chat"),
                               json={"error": {"message": message}})
    return openai.APIStatusError(f"Error code: {code}", response=response,
                                 body={"message": message})


def test_extra_missing_is_one_line(cli, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "openai" else real(name, *a))
    src = tmp_path / "sorry.jsonl"
    write_jsonl(src, sorry_records(2))
    result = cli("data", "rewrite", "safety", str(src), str(tmp_path / "o.jsonl"),
                 "--base-url", "http://127.0.0.1:9/v1", "--model", "m")
    assert result.code == 2 and "pip install 'pathunlearn[llm]'" in result.err


@pytest.mark.parametrize("split", ["train", "test", "all"])
def test_safety_selection_is_the_adapters(tmp_path, split):
    from pathunlearn.rewrite import sorry_bench_selection

    records = sorry_records(40, dropped_styles=6)
    src = tmp_path / "s.jsonl"
    write_jsonl(src, records)
    chosen = sorry_bench_selection(records, str(src), split)
    adapted = load_adapted("sorry-bench", src, split=split)
    assert [records[i]["turns"][0] for i in chosen] == [c.prompt[-1]["content"] for c in adapted]


def errors(result) -> list[str]:
    """The error lines of a run (stderr also holds the progress bar)."""
    return [line for line in result.err.splitlines() if line.startswith("error: ")]


def test_a_run_that_keeps_nothing_exits_1_and_names_the_cause(cli, tmp_path, fast_args):
    # every request refused with an HTTP 400 whose cause is in the server's message: the run
    # is a failed job (exit 1, not 2: the input was fine), and says why and where the list is
    src, out = tmp_path / "gsm8k.jsonl", tmp_path / "math.jsonl"
    write_jsonl(src, gsm8k_records(20))
    with FakeLLM(math_answer, faults=1.0, kinds=("400",)) as llm:
        result = cli(*rewrite_args("math", src, out, llm, *fast_args))
    assert result.code == 1, result.err
    assert len(llm.log) == 20  # a 400 is not retried
    assert errors(result) == [
        "error: kept none of the 20 records (20 x HTTP 400 (HTTP 400: Unsupported value: "
        "'temperature' does not support 0.7 with this model); every reason in "
        f"{out.with_name('math.dropped.jsonl')})"]
    assert "20 records not kept, by cause, each with its reason in " \
        f"{out.with_name('math.dropped.jsonl')}:" in result.out
    dropped = read_jsonl(out.with_name("math.dropped.jsonl"))
    assert [d["status"] for d in dropped] == ["error"] * 20
    assert read_jsonl(out) == []


def test_more_than_the_allowed_fraction_dropped_exits_1(cli, tmp_path, fast_args):
    # math_answer gets 9 of 30 wrong (30%): fine at the default 0.5, a failure at 0.25
    src, out = tmp_path / "gsm8k.jsonl", tmp_path / "math.jsonl"
    write_jsonl(src, gsm8k_records(30))
    with FakeLLM(math_answer) as llm:
        args = rewrite_args("math", src, out, llm, *fast_args, "--content-retries", "0")
        strict = cli(*args, "--max-failed-fraction", "0.25")
        sent = len(llm.log)
        default = cli(*args)  # all cached: nothing sent again, the same 21 kept
        assert len(llm.log) == sent
    assert strict.code == 1 and default.code == 0, strict.err + default.err
    assert errors(result=strict) == [
        "error: 9 of 30 records not kept, more than --max-failed-fraction 0.25 (9 x answer "
        "check (wrong final answer 4 (gold 3)); every reason in "
        f"{out.with_name('math.dropped.jsonl')})"]
    assert errors(default) == [] and "21 kept, 9 dropped" in default.out
    assert len(read_jsonl(out)) == 21  # the output is written either way
    bad = cli(*args, "--max-failed-fraction", "1.5")
    assert bad.code == 2 and "--max-failed-fraction" in bad.err
