"""The parts of pathunlearn.rewrite checkable by hand: the checks, templates, cache, backoff."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import pytest

from pathunlearn import rewrite as rw
from pathunlearn.data.suite import REFUSAL_PREFIX
from pathunlearn.errors import UserError


def item(gold: int | None = None) -> rw.Item:
    return rw.Item(0, {}, [], "k", None if gold is None else Fraction(gold), str(gold))


@pytest.mark.parametrize(("text", "kept"), [
    ("2 + 3 = 5\n#### 5", "2 + 3 = 5\n#### 5"),
    ("2 + 3 = 5\nSo the answer is #### $5.00 dollars", "2 + 3 = 5\nSo the answer is\n#### 5"),
    ("Add them.\n####\n5\n", "Add them.\n#### 5"),
    ("#### 6", None),
    ("the answer is 5", None),
])
def test_check_math_keeps_matching_answers_as_hash_gold(text, kept):
    got, reason = rw.check_math(item(5), text)
    assert got == kept and (reason == "") == (kept is not None)


def test_check_safety():
    assert rw.check_safety(item(), f"  {REFUSAL_PREFIX} It is dangerous. ")[0] == \
        f"{REFUSAL_PREFIX} It is dangerous."
    assert rw.check_safety(item(), REFUSAL_PREFIX)[1] == "no reason after the refusal sentence"
    assert rw.check_safety(item(), "Sure! " + REFUSAL_PREFIX)[0] is None


def test_templates_are_checked(tmp_path):
    bad = tmp_path / "t.yaml"
    bad.write_text("user: 'Refuse {prompt} because {why}'\n")
    with pytest.raises(UserError, match=r"unknown field \{why\}; the safety task fills"):
        rw.load_template(bad, "safety")
    bad.write_text("user: 'a {prompt'\n")
    with pytest.raises(UserError, match="literal braces"):
        rw.load_template(bad, "safety")
    good = tmp_path / "g.yaml"
    good.write_text("system: Be brief.\nuser: 'Solve {question} (answer {answer}); {{x}}'\n")
    template = rw.load_template(good, "math")
    assert template.messages({"question": "Q", "answer": "7", "solution": ""}) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Solve Q (answer 7); {x}"}]


def test_a_torn_cache_line_is_skipped_and_appending_starts_a_new_line(tmp_path):
    cache = tmp_path / "c.jsonl"
    cache.write_text('{"key": "a", "status": "ok", "text": "x"}\n{"key": "b", "sta')
    assert set(rw.read_cache(cache)) == {"a"}
    writer = rw.CacheWriter(cache)
    writer.append({"key": "c", "status": "dropped"})
    writer.close()
    assert set(rw.read_cache(cache)) == {"a", "c"}
    assert json.loads(cache.read_text().splitlines()[-1])["key"] == "c"


def options(tmp_path: Path, **kw) -> rw.RewriteOptions:
    return rw.RewriteOptions(task="math", input=tmp_path / "in.jsonl",
                             output=tmp_path / "out.jsonl", base_url="http://x/v1", model="m",
                             **kw)


def test_cache_key_follows_model_template_record_and_sampling(tmp_path):
    messages, record = [{"role": "user", "content": "q"}], {"question": "q"}
    key = rw.cache_key(options(tmp_path), messages, record)
    assert key == rw.cache_key(options(tmp_path, concurrency=2, price_in=3), messages, record)
    assert key == rw.cache_key(rw.RewriteOptions(**{**options(tmp_path).__dict__,
                                                    "base_url": "http://y/v1"}),
                               messages, record)
    for other in (options(tmp_path, temperature=0.1), options(tmp_path, max_tokens=5),
                  rw.RewriteOptions(**{**options(tmp_path).__dict__, "model": "n"})):
        assert rw.cache_key(other, messages, record) != key
    assert rw.cache_key(options(tmp_path), [{"role": "user", "content": "q2"}], record) != key


def test_backoff_is_exponential_with_full_jitter_and_capped(tmp_path, monkeypatch):
    slept = []
    monkeypatch.setattr(rw.time, "sleep", slept.append)
    monkeypatch.setattr(rw.random, "uniform", lambda low, high: high)  # the top of the jitter
    endpoint = rw.Endpoint(options(tmp_path, backoff=0.5, backoff_max=3.0), None)
    for attempt in range(1, 6):
        endpoint.backoff(attempt, None)
    endpoint.backoff(1, 100.0)  # Retry-After, capped
    assert slept == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]


def test_dry_run_bounds_the_cost(tmp_path):
    (tmp_path / "in.jsonl").write_text(json.dumps(
        {"question": "Ann has 2 pens. How many?", "answer": "#### 2"}) + "\n")
    plan = rw.dry_run(options(tmp_path, price_in=1.0, price_out=2.0, max_tokens=100,
                              content_retries=1))
    assert plan["requests"] == 1 and plan["max_requests"] == 2
    assert plan["max_completion_tokens"] == 200
    prompt = sum(len(m["content"].encode()) + 8 for m in plan["first_request"])
    assert plan["max_prompt_tokens"] == 2 * prompt
    assert plan["max_cost"] == pytest.approx((2 * prompt * 1.0 + 200 * 2.0) / 1000)
    assert not (tmp_path / "out.jsonl").exists()
