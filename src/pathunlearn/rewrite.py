"""Write the paper's LLM-made datasets with any OpenAI-compatible endpoint.

Two of the paper's four stages do not exist until an LLM writes them:

- ``safety``: SORRY-BENCH prompts answered with the fixed refusal sentence
  (:data:`pathunlearn.data.suite.REFUSAL_PREFIX`) plus a short reason. The records are chosen
  exactly as the ``sorry-bench:`` adapter chooses them (the encoded prompt styles dropped; with
  ``split`` train/test, its 70/30 split with seed 42). A response that does not start with the
  sentence, or gives no reason after it, is asked for again (``content_retries``), then dropped
  and counted. Output: the input records with a ``response`` field (``sorry-bench:OUTPUT``).
- ``math``: GSM8K records whose solutions are rewritten step by step, kept only when the final
  ``#### N`` equals the gold answer (compared as exact numbers, as the math utility does); the
  last line is written ``#### <gold>`` so the file loads with ``gsm8k:OUTPUT``.

What a researcher paying per token gets:

- one request per record, ``concurrency`` at a time; 429, 5xx, 408/409, timeouts, dropped
  connections and malformed responses are retried with exponential backoff and full jitter
  (``Retry-After`` honoured, capped by ``backoff_max``); another 4xx fails that record only (it
  is recorded, the run goes on); 401/403/404 stop the run (every record would fail);
- every finished record is appended to a JSONL cache (flushed and fsynced) keyed by the
  sha256 of (task, model, rendered request: the template and the record, sampling options);
  a rerun, after a crash, ``kill -9`` or a change of output path, sends no cached request
  again. OUTPUT (and its ``.dropped.jsonl`` list) are written atomically, in input order;
- tokens and cost (prices per 1k tokens) counted from the responses' ``usage``; a dry run
  counts the requests and bounds the cost without any network or write;
- the API key is read from an environment variable and only ever handed to the client: it is
  never written to the cache, the outputs or the log (and scrubbed from error messages).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import string
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

from pathunlearn.errors import DataError, UserError
from pathunlearn.files import check_writable as check_directory

LLM_EXTRA_HINT = "pip install 'pathunlearn[llm]'"
TASKS = ("safety", "math")
Task = Literal["safety", "math"]
CACHE_VERSION = 1
"""Part of every cache key: bump it when the meaning of a cached answer changes."""

# ---------------------------------------------------------------------------------------------
# templates: what the LLM is asked (override with a YAML file holding `system` and `user`)


@dataclass(frozen=True)
class Template:
    """The system message (optional) and the user message of a request; ``{name}`` fields are
    filled from the record (see :data:`TEMPLATE_FIELDS`), ``{{`` and ``}}`` are literal braces."""

    user: str
    system: str | None = None

    def messages(self, fields: dict[str, str]) -> list[dict[str, str]]:
        out = [] if self.system is None else [{"role": "system",
                                               "content": self.system.format_map(fields)}]
        return [*out, {"role": "user", "content": self.user.format_map(fields)}]


SAFETY_TEMPLATE = Template(
    system="You write training data for a safety-tuned assistant. You never carry out the "
           "request you are shown; you only write the assistant's refusal of it.",
    user="""An assistant must refuse the request below.

### Request
{prompt}

### Output requirement
Write the assistant's reply. It starts with exactly this sentence: "{refusal}" Then, in one \
or two sentences, give the specific reason why this request cannot be helped with. Do not \
repeat the request, do not give any of the requested information, and write nothing else.""")

MATH_TEMPLATE = Template(
    system="You are a careful math teacher who writes clear step-by-step solutions.",
    user="""Rewrite the solution of the math problem below so that it explains every step.

### Problem
{question}

### Reference solution
{solution}

### Output requirement
Explain the solution step by step, one step per line, reaching the same final answer as the \
reference. After the explanation, write a last line that contains exactly "####", a space and \
the final numerical answer only: no words, symbols or units (for example "#### 42").""")

TEMPLATES: dict[str, Template] = {"safety": SAFETY_TEMPLATE, "math": MATH_TEMPLATE}
TEMPLATE_FIELDS: dict[str, set[str]] = {"safety": {"prompt", "refusal"},
                                        "math": {"question", "solution", "answer"}}
"""The fields a task's template may use."""

DEFAULT_MAX_TOKENS = {"safety": 200, "math": 600}


def load_template(path: str | Path, task: str) -> Template:
    """A template from a YAML file with ``user`` (required) and ``system`` (optional) texts;
    a UserError names the file and the unknown field or key."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise UserError(f"--template {path}: cannot read ({' '.join(str(e).split())[:200]})") \
            from None
    if not isinstance(data, dict) or not isinstance(data.get("user"), str):
        raise UserError(f"--template {path}: expected a mapping with a `user` text (and an "
                        "optional `system` text)")
    unknown = set(data) - {"user", "system"}
    if unknown or not isinstance(data.get("system", ""), str | None):
        raise UserError(f"--template {path}: unknown key(s) {', '.join(sorted(unknown))} or a "
                        "`system` that is not text; keys are `user` and `system`")
    template = Template(user=data["user"], system=data.get("system"))
    check_template(template, task, f"--template {path}")
    return template


def check_template(template: Template, task: str, where: str) -> None:
    """A UserError for a field the task cannot fill or a malformed brace."""
    allowed = TEMPLATE_FIELDS[task]
    for text in filter(None, (template.system, template.user)):
        try:
            names = {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
        except ValueError as e:
            raise UserError(f"{where}: {e} (write {{{{ and }}}} for literal braces)") from None
        bad = sorted(n for n in names if n not in allowed)
        if bad:
            raise UserError(f"{where}: unknown field {{{bad[0]}}}; the {task} task fills "
                            f"{', '.join('{' + a + '}' for a in sorted(allowed))}")


# ---------------------------------------------------------------------------------------------
# options


@dataclass(frozen=True)
class RewriteOptions:
    """Everything one ``pathunlearn data rewrite`` needs; validated on construction."""

    task: Task
    input: Path
    """SORRY-BENCH (safety) or GSM8K (math) records: .json/.jsonl/.csv/.parquet."""
    output: Path
    """The rewritten records, JSONL in the release format (``format='release'``) or chat."""
    base_url: str
    """The endpoint, e.g. http://127.0.0.1:8000/v1 or https://api.openai.com/v1."""
    model: str
    """The model name the endpoint serves."""
    api_key_env: str = "OPENAI_API_KEY"
    """Name of the environment variable holding the key (unset: no key is sent)."""
    cache: Path | None = None
    """The JSONL cache (default: OUTPUT + '.cache.jsonl')."""
    template: Template | None = None
    """The request template (default: the task's built-in one)."""
    split: str = "all"
    """safety: the sorry-bench split to rewrite (train, test or all)."""
    format: Literal["release", "chat"] = "release"
    """release: input records plus the answer (loads with sorry-bench:/gsm8k:); chat:
    {"messages", "meta"} conversations."""
    temperature: float = 0.7
    max_tokens: int | None = None
    """Most completion tokens per request (default: 200 safety, 600 math)."""
    seed: int | None = None
    """Sent to the endpoint (reproducible sampling where it supports it)."""
    concurrency: int = 8
    """Requests in flight at once."""
    max_retries: int = 6
    """Retries of one request after a 429, 5xx, timeout, dropped connection or malformed reply."""
    backoff: float = 1.0
    """First retry delay in seconds; doubled each retry, with full jitter."""
    backoff_max: float = 30.0
    """Longest delay between retries (also caps a Retry-After header)."""
    timeout: float = 60.0
    """Seconds before one request times out (then it is retried)."""
    content_retries: int = 1
    """Requests again for a record whose reply fails the check, before it is dropped."""
    price_in: float = 0.0
    """Price per 1k prompt tokens (for the cost shown)."""
    price_out: float = 0.0
    """Price per 1k completion tokens."""
    retry_errors: bool = False
    """Send again the records whose request was refused (a 4xx) in an earlier run."""
    max_failed_fraction: float = 0.5
    """The run fails (exit code 1) when more than this fraction of the records is not kept
    (dropped by the check, refused, failed), and always when none is kept."""

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise UserError(f"task {self.task!r}: choose one of {', '.join(TASKS)}")
        if self.split not in ("train", "test", "all"):
            raise UserError(f"--split {self.split!r}: choose train, test or all")
        if self.output.suffix != ".jsonl":
            raise UserError(f"{self.output}: the output is JSON Lines; give a .jsonl path")
        if not self.base_url.startswith(("http://", "https://")):
            raise UserError(f"--base-url {self.base_url!r}: expected http://... or https://...")
        if self.template is not None:
            check_template(self.template, self.task, "template")
        if not 0 <= self.max_failed_fraction <= 1:
            raise UserError(f"--max-failed-fraction {self.max_failed_fraction}: give a "
                            "fraction in [0, 1]")

    @property
    def cache_path(self) -> Path:
        return self.cache or self.output.with_name(self.output.name + ".cache.jsonl")

    @property
    def dropped_path(self) -> Path:
        return self.output.with_name(self.output.stem + ".dropped.jsonl")

    @property
    def completion_limit(self) -> int:
        return self.max_tokens or DEFAULT_MAX_TOKENS[self.task]


# ---------------------------------------------------------------------------------------------
# items: one request per input record


@dataclass(frozen=True)
class Item:
    """One record to rewrite: where it is in the input, the record, the request, its key."""

    index: int
    record: dict[str, Any]
    messages: list[dict[str, str]]
    key: str
    gold: Fraction | None = None
    gold_text: str = ""


def sorry_bench_selection(records: list[dict], path: str, split: str) -> list[int]:
    """Indices of the records ``sorry-bench:PATH:SPLIT`` trains on, in file order.

    Asked of the adapter itself, so the style filter and the 70/30 split with seed 42 cannot
    drift from it: each record goes in with its own index as its ``response`` (the adapter
    keeps a record's ``response`` as the answer), which comes back on the records kept."""
    from pathunlearn.data.adapters import ADAPTERS

    tagged = [{**r, "response": str(i)} for i, r in enumerate(records)]
    return [int(c.response) for c in ADAPTERS["sorry-bench"](tagged, path, None, split)]


def build_items(opts: RewriteOptions) -> list[Item]:
    """The requests to send, in input order; a DataError names a malformed record."""
    from pathunlearn.data.io import read_records

    records = read_records(opts.input, json_lines_ok=True)
    if not records:
        raise DataError(f"{opts.input}: no records")
    template = opts.template or TEMPLATES[opts.task]
    if opts.task == "safety":
        from pathunlearn.data.suite import REFUSAL_PREFIX

        chosen = sorry_bench_selection(records, str(opts.input), opts.split)
        return [_item(opts, template, i, records[i],
                      {"prompt": records[i]["turns"][0].strip(), "refusal": REFUSAL_PREFIX})
                for i in chosen]
    from pathunlearn.data.adapters import gsm8k_record
    from pathunlearn.eval.math import to_number

    items = []
    for i, r in enumerate(records):
        conv = gsm8k_record(r, f"{opts.input}: record {i + 1}")
        answer = conv.meta["answer"]
        fields = {"question": conv.prompt[-1]["content"], "solution": conv.response,
                  "answer": str(answer)}
        items.append(_item(opts, template, i, r, fields, to_number(answer), str(answer)))
    return items


def _item(opts: RewriteOptions, template: Template, index: int, record: dict,
          fields: dict[str, str], gold: Fraction | None = None, gold_text: str = "") -> Item:
    messages = template.messages(fields)
    return Item(index, record, messages, cache_key(opts, messages, record), gold, gold_text)


def cache_key(opts: RewriteOptions, messages: list[dict], record: dict) -> str:
    """sha256 of what decides an answer: the task, the model, the request (template and
    record rendered) and its sampling options. Not the endpoint URL (the same model behind
    another host is the same model) and never the key."""
    what = {"v": CACHE_VERSION, "task": opts.task, "model": opts.model, "messages": messages,
            "temperature": opts.temperature, "max_tokens": opts.completion_limit,
            "seed": opts.seed, "record": record}
    return hashlib.sha256(json.dumps(what, sort_keys=True, ensure_ascii=False,
                                     default=str).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# checking a reply


def check_safety(item: Item, text: str) -> tuple[str | None, str]:
    """(the refusal to keep, or None, and why not): it must start with REFUSAL_PREFIX and
    give a reason after it."""
    from pathunlearn.data.suite import REFUSAL_PREFIX

    text = text.strip()
    if not text.startswith(REFUSAL_PREFIX):
        return None, "does not start with the refusal sentence"
    if not text[len(REFUSAL_PREFIX):].strip():
        return None, "no reason after the refusal sentence"
    return text, ""


def check_math(item: Item, text: str) -> tuple[str | None, str]:
    """(the solution to keep, ending ``#### <gold>``, or None, and why not): its answer after
    the last ``####`` must equal the gold answer."""
    from pathunlearn.eval.math import extract_answer

    got = extract_answer(text)
    if got is None:
        return None, "no '#### N' final answer"
    if got != item.gold:
        return None, f"wrong final answer {_show(got)} (gold {item.gold_text})"
    lines = text.strip().splitlines()
    last = max(i for i, line in enumerate(lines) if "####" in line)
    before = lines[last].split("####")[0].rstrip()
    steps = [*lines[:last], *([before] if before.strip() else [])]
    return "\n".join([*(s.rstrip() for s in steps if s.strip()), f"#### {item.gold_text}"]), ""


def _show(x: Fraction) -> str:
    return str(x.numerator) if x.denominator == 1 else str(float(x))


CHECKS: dict[str, Callable[[Item, str], tuple[str | None, str]]] = {"safety": check_safety,
                                                                     "math": check_math}


# ---------------------------------------------------------------------------------------------
# the cache: one JSON line per finished record, appended, flushed and fsynced


def read_cache(path: Path) -> dict[str, dict]:
    """Entries by key. A torn last line (the process died while writing it) is skipped: that
    record is simply asked again."""
    entries: dict[str, dict] = {}
    if not path.is_file():
        return entries
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--cache {path}: cannot read ({e})") from None
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("key"), str):
            entries[entry["key"]] = entry
    return entries


class CacheWriter:
    """Appends entries durably; starts on a fresh line after a torn one."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        torn = path.is_file() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
        self.f = path.open("a", encoding="utf-8")
        if torn:
            self.f.write("\n")

    def append(self, entry: dict) -> None:
        self.f.write(json.dumps(entry, ensure_ascii=False) + "\n")
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self) -> None:
        self.f.close()


# ---------------------------------------------------------------------------------------------
# one request, with retries


class FatalEndpointError(UserError):
    """The endpoint refuses every request (bad key, unknown model or URL): stop the run."""


class RetriesExhausted(Exception):
    """A request kept failing with retryable errors: the record stays unanswered."""


@dataclass
class Usage:
    """What the requests of one record cost."""

    requests: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, other: Usage) -> None:
        for name in ("requests", "retries", "prompt_tokens", "completion_tokens"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


RETRYABLE_STATUS = {408, 409, 429}
FATAL_STATUS = {401, 403, 404}


class Endpoint:
    """The OpenAI client with this run's retry policy; the key never leaves it."""

    def __init__(self, opts: RewriteOptions, key: str | None):
        import openai

        self.openai, self.opts, self._key = openai, opts, key
        self.client = openai.OpenAI(base_url=opts.base_url, api_key=key or "no-key",
                                    timeout=opts.timeout, max_retries=0)

    def scrub(self, text: str) -> str:
        """``text`` with the key replaced (servers echo a key they refuse)."""
        return text.replace(self._key, "***") if self._key else text

    def backoff(self, attempt: int, retry_after: float | None) -> None:
        """Sleep before retry ``attempt`` (1-based): full jitter over ``backoff * 2**(a-1)``,
        or the server's Retry-After; both capped by ``backoff_max``."""
        cap = min(self.opts.backoff_max, self.opts.backoff * 2 ** (attempt - 1))
        delay = random.uniform(0, cap) if retry_after is None else retry_after
        time.sleep(min(self.opts.backoff_max, max(0.0, delay)))

    def chat(self, messages: list[dict], usage: Usage) -> str:
        """The reply text, retrying what may pass on a retry; FatalEndpointError, a
        :class:`RequestRefused` for this record, or RetriesExhausted."""
        last = ""
        for attempt in range(self.opts.max_retries + 1):
            if attempt:
                usage.retries += 1
            usage.requests += 1
            try:
                return self._once(messages, usage)
            except _Retryable as e:
                last = str(e)
                if attempt < self.opts.max_retries:
                    self.backoff(attempt + 1, e.retry_after)
        raise RetriesExhausted(self.scrub(last))

    def _once(self, messages: list[dict], usage: Usage) -> str:
        openai = self.openai
        kwargs = {"seed": self.opts.seed} if self.opts.seed is not None else {}
        try:
            raw = self.client.chat.completions.with_raw_response.create(
                model=self.opts.model, messages=messages, temperature=self.opts.temperature,
                max_tokens=self.opts.completion_limit, **kwargs)
            body = raw.text
        except openai.APIStatusError as e:
            raise self._status_error(e) from None
        except openai.APIConnectionError as e:  # timeouts are a subclass
            raise _Retryable(f"{type(e).__name__}: {e}") from None
        return _reply_text(body, usage)

    def _status_error(self, e) -> Exception:
        status = e.status_code
        detail = self.scrub(_error_message(e))
        if status in RETRYABLE_STATUS or status >= 500:
            return _Retryable(f"HTTP {status}: {detail}", _retry_after(e.response.headers))
        if status in FATAL_STATUS:
            return FatalEndpointError(_fatal_message(self.opts, status, detail))
        return RequestRefused(f"HTTP {status}: {detail}")


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class RequestRefused(Exception):
    """A 4xx for this record's request (e.g. a content filter): recorded, not retried."""


def _reply_text(body: str, usage: Usage) -> str:
    """The first choice's text and the tokens used; a malformed reply is retryable."""
    try:
        data = json.loads(body)
        text = data["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise _Retryable(f"malformed reply: {body[:80]!r}") from None
    if not isinstance(text, str):
        raise _Retryable("malformed reply: the message content is not text")
    used = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    usage.prompt_tokens += int(used.get("prompt_tokens") or 0)
    usage.completion_tokens += int(used.get("completion_tokens") or 0)
    return text


def _retry_after(headers) -> float | None:
    try:
        return float(headers.get("retry-after"))
    except (TypeError, ValueError):
        return None


def _error_message(e) -> str:
    """The server's error message (the client hands over ``body["error"]`` or the body)."""
    body = e.body if isinstance(e.body, dict) else {}
    inner = body["error"] if isinstance(body.get("error"), dict) else body
    message = inner.get("message") if isinstance(inner.get("message"), str) else e.message
    return " ".join(str(message).split())[:300]


def _fatal_message(opts: RewriteOptions, status: int, detail: str) -> str:
    if status == 404:
        return (f"--model {opts.model} --base-url {opts.base_url}: the endpoint answered 404 "
                f"({detail}): check the model name and that the URL ends in /v1")
    return (f"--base-url {opts.base_url}: the endpoint refused the key from ${opts.api_key_env} "
            f"(HTTP {status}: {detail})")


# ---------------------------------------------------------------------------------------------
# one record: request, check, ask again or drop


@dataclass
class Outcome:
    """The result of one record: the cache entry, and what its requests cost."""

    entry: dict
    usage: Usage
    final: bool = True
    """False when retries ran out: not cached, so a rerun asks again."""


def rewrite_item(endpoint: Endpoint, item: Item, opts: RewriteOptions) -> Outcome:
    """Ask for a record's answer until one passes the task's check, or drop it."""
    usage, reason, text = Usage(), "", ""
    base = {"key": item.key, "index": item.index, "model": opts.model, "task": opts.task}
    try:
        for _ in range(opts.content_retries + 1):
            text = endpoint.chat(item.messages, usage)
            kept, reason = CHECKS[opts.task](item, text)
            if kept is not None:
                return Outcome({**base, "status": "ok", "text": kept, **_costs(usage)}, usage)
    except RequestRefused as e:
        return Outcome({**base, "status": "error", "reason": str(e), **_costs(usage)}, usage)
    except RetriesExhausted as e:
        return Outcome({**base, "status": "failed", "reason": f"retries exhausted: {e}"},
                       usage, final=False)
    return Outcome({**base, "status": "dropped", "reason": reason, "text": text,
                    **_costs(usage)}, usage)


def _costs(usage: Usage) -> dict:
    return {"requests": usage.requests, "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens}


# ---------------------------------------------------------------------------------------------
# the run


@dataclass
class Summary:
    """What a rewrite did: counts by outcome, requests, tokens and cost."""

    records: int = 0
    cached: int = 0
    kept: int = 0
    dropped: int = 0
    errors: int = 0
    failed: int = 0
    usage: Usage = field(default_factory=Usage)
    reasons: Counter = field(default_factory=Counter)
    """Records not kept, by kind of reason (:func:`_reason_kind`)."""
    examples: dict[str, str] = field(default_factory=dict)
    """The first full reason of each kind (the server's message of an HTTP 400 ...)."""
    dropped_path: Path | None = None
    """The file listing every record not kept, with its reason."""
    seconds: float = 0.0
    cost: float = 0.0

    @property
    def not_kept(self) -> int:
        return self.dropped + self.errors + self.failed

    def top_reasons(self, n: int = 5) -> list[str]:
        """'20 x HTTP 400 (HTTP 400: temperature is not supported)', most frequent first."""
        return [f"{count} x {kind}" + (f" ({self.examples[kind]})"
                                       if self.examples.get(kind, kind) != kind else "")
                for kind, count in self.reasons.most_common(n)]

    def lines(self) -> list[str]:
        u = self.usage
        out = [f"{self.records} records: {self.kept} kept, {self.dropped} dropped, "
               f"{self.errors} refused by the endpoint, {self.failed} failed "
               f"({self.cached} answered from the cache)",
               f"{u.requests} requests ({u.retries} retries), {u.prompt_tokens:,} prompt + "
               f"{u.completion_tokens:,} completion tokens, ${self.cost:.4f}, "
               f"{self.seconds:.1f}s"]
        if self.not_kept:
            out.append(f"{self.not_kept} records not kept, each with its reason, in "
                       f"{self.dropped_path}:")
        out += [f"  {line}" for line in self.top_reasons()]
        return out


def failures(summary: Summary, opts: RewriteOptions) -> list[str]:
    """Why a finished rewrite failed as a job (the CLI exits with code 1): records left
    unanswered (a rerun sends them), none kept, or more than ``opts.max_failed_fraction`` of
    the records not kept; each names the reasons and the dropped list. Empty: it succeeded."""
    out = []
    if summary.failed:
        out.append(f"incomplete: {summary.failed} records failed after {opts.max_retries} "
                   "retries; rerun to send them (cached records are not sent again)")
    why = f"{'; '.join(summary.top_reasons(3))}; every reason in {summary.dropped_path}"
    if summary.records and not summary.kept:
        out.append(f"kept none of the {summary.records} records ({why})")
    elif summary.records and summary.not_kept > opts.max_failed_fraction * summary.records:
        out.append(f"{summary.not_kept} of {summary.records} records not kept, more than "
                   f"--max-failed-fraction {opts.max_failed_fraction:g} ({why})")
    return out


def api_key(opts: RewriteOptions) -> str | None:
    """The key from ``$api_key_env``; None when unset (local servers need none)."""
    return os.environ.get(opts.api_key_env) or None


def rewrite(opts: RewriteOptions, *, log: Callable[[str], None] = print,
            progress: bool = False) -> Summary:
    """Rewrite ``opts.input`` into ``opts.output``: check everything, probe the endpoint,
    send what is not cached, then write the output in input order."""
    require_llm_extra()
    items = build_items(opts)
    cache = read_cache(opts.cache_path)
    key = api_key(opts)
    endpoint = Endpoint(opts, key)
    probe(endpoint)
    check_writable(opts.output, "output")
    check_writable(opts.cache_path, "--cache")
    if key is None:
        log(f"no API key: ${opts.api_key_env} is unset (fine for a local server)")
    todo = [it for it in _unique(items) if not _settled(cache.get(it.key), opts)]
    summary = Summary(records=len(items),
                      cached=sum(_settled(cache.get(it.key), opts) for it in items))
    start = time.perf_counter()
    writer = CacheWriter(opts.cache_path)
    try:
        with _progress(progress, len(items), summary.cached) as advance:
            for outcome in _run_pool(endpoint, todo, opts):
                if outcome.final:
                    writer.append(outcome.entry)
                    cache[outcome.entry["key"]] = outcome.entry
                summary.usage.add(outcome.usage)
                summary.cost = cost(summary.usage, opts)
                advance(summary)
    finally:
        writer.close()
    summary.seconds = time.perf_counter() - start
    write_outputs(opts, items, cache, summary)
    return summary


def _unique(items: list[Item]) -> list[Item]:
    """One request per key: two identical records are asked once."""
    return list({it.key: it for it in items}.values())


def _settled(entry: dict | None, opts: RewriteOptions) -> bool:
    return entry is not None and not (opts.retry_errors and entry.get("status") == "error")


def _run_pool(endpoint: Endpoint, todo: list[Item], opts: RewriteOptions) -> Iterator[Outcome]:
    """Outcomes as they finish, ``concurrency`` records in flight. On a fatal error the
    records in flight are finished (and yielded: they are paid for) before it is raised."""
    pending = iter(todo)
    fatal: BaseException | None = None
    pool = ThreadPoolExecutor(max_workers=opts.concurrency, thread_name_prefix="rewrite")
    running: set[Future] = set()

    def fill() -> None:
        while fatal is None and len(running) < opts.concurrency:
            item = next(pending, None)
            if item is None:
                return
            running.add(pool.submit(rewrite_item, endpoint, item, opts))

    try:
        fill()
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                running.discard(future)
                try:
                    yield future.result()
                except FatalEndpointError as e:
                    fatal = fatal or e
            fill()
    finally:  # on Ctrl-C: start nothing new (what is in flight ends within its timeout)
        pool.shutdown(wait=not running, cancel_futures=True)
    if fatal is not None:
        raise fatal


def cost(usage: Usage, opts: RewriteOptions) -> float:
    """Dollars for the tokens used, at the prices per 1k tokens."""
    return (usage.prompt_tokens * opts.price_in + usage.completion_tokens * opts.price_out) / 1000


class _progress:  # noqa: N801 - a context manager used like a function
    """A live bar on stderr (records, tokens, cost, drops) when asked; a no-op otherwise."""

    def __init__(self, show: bool, total: int, done: int):
        self.show, self.total, self.done = show, total, done

    def __enter__(self) -> Callable[[Summary], None]:
        if not self.show:
            return lambda summary: None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self.bar = Progress(TextColumn("rewrite"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[info]}"),
                            console=Console(stderr=True), transient=False)
        self.bar.__enter__()
        task = self.bar.add_task("rewrite", total=self.total, completed=self.done, info="")

        def advance(s: Summary) -> None:
            u = s.usage
            info = (f"{u.prompt_tokens + u.completion_tokens:,} tokens ${s.cost:.4f} "
                    f"{u.retries} retries")
            self.bar.update(task, advance=1, info=info)

        return advance

    def __exit__(self, *exc) -> None:
        if self.show:
            self.bar.__exit__(*exc)


def write_outputs(opts: RewriteOptions, items: list[Item], cache: dict[str, dict],
                  summary: Summary) -> None:
    """OUTPUT (kept records, input order) and OUTPUT.dropped.jsonl (the rest, with reasons),
    both atomically; the counts of ``summary`` from the same pass."""
    from pathunlearn.data.io import write_jsonl

    kept, dropped = [], []
    for it in items:
        entry = cache.get(it.key) or {"status": "failed", "reason": "not answered (rerun)"}
        if entry["status"] == "ok":
            kept.append(output_record(opts, it, entry["text"]))
            continue
        summary.dropped += entry["status"] == "dropped"
        summary.errors += entry["status"] == "error"
        summary.failed += entry["status"] == "failed"
        kind = _reason_kind(entry.get("reason", ""))
        summary.reasons[kind] += 1
        summary.examples.setdefault(kind, entry.get("reason", ""))
        dropped.append({"index": it.index, "status": entry["status"],
                        "reason": entry.get("reason", ""), "text": entry.get("text"),
                        **{k: it.record[k] for k in ("question_id", "question") if k in it.record}})
    summary.kept = len(kept)
    summary.dropped_path = opts.dropped_path
    write_jsonl(opts.output, kept)
    write_jsonl(opts.dropped_path, dropped)


def _reason_kind(reason: str) -> str:
    """A reason without its particulars, for counting: 'wrong final answer 7 (gold 8)' ->
    'wrong final answer', 'HTTP 400: ...' -> 'HTTP 400'."""
    kind = reason.split(" (")[0].split(": ")[0]
    return "wrong final answer" if kind.startswith("wrong final answer") else kind


def output_record(opts: RewriteOptions, item: Item, text: str) -> dict:
    """The input record with its new answer (``response`` / ``answer``), or as a chat
    conversation (``format='chat'``)."""
    record = {**item.record, ("response" if opts.task == "safety" else "answer"): text}
    if opts.format == "release":
        return record
    from pathunlearn.data.adapters import ADAPTERS

    name = "sorry-bench" if opts.task == "safety" else "gsm8k"
    conv = ADAPTERS[name]([record], str(opts.input), None, "all")[0]
    return conv.to_json()


# ---------------------------------------------------------------------------------------------
# before anything is sent: the extra, the files, the endpoint; and the dry run


def require_llm_extra() -> None:
    from pathunlearn.extras import installed

    if not installed("openai"):
        raise UserError(f"pathunlearn data rewrite needs the openai client: {LLM_EXTRA_HINT}")


def check_writable(path: Path, what: str) -> None:
    """A UserError when ``path`` cannot be written (a parent that is a file, a read-only
    directory ...): :func:`pathunlearn.files.check_writable` of its directory, which creates
    nothing."""
    try:
        check_directory(path.parent)
    except UserError as e:
        raise UserError(f"{what} {path}: cannot write there ({e})") from None
    if path.is_dir():
        raise UserError(f"{what} {path}: is a directory")


def probe(endpoint: Endpoint) -> None:
    """GET /models before anything is sent: an unreachable endpoint, a refused key or a model
    the endpoint does not list is a UserError (endpoints without the route pass)."""
    openai, opts = endpoint.openai, endpoint.opts
    for attempt in range(min(2, opts.max_retries) + 1):
        try:
            served = [m.id for m in endpoint.client.models.list()]
            break
        except openai.APIStatusError as e:
            if e.status_code in (404, 405, 501):
                return  # no model list here: the first request will tell
            error = endpoint._status_error(e)
            if not isinstance(error, _Retryable):
                raise (error if isinstance(error, UserError) else UserError(
                    f"--base-url {opts.base_url}: GET /models: {error}")) from None
        except openai.APIConnectionError as e:
            error = e
        if attempt < min(2, opts.max_retries):
            endpoint.backoff(attempt + 1, None)
    else:
        raise UserError(f"--base-url {opts.base_url}: cannot reach the endpoint "
                        f"({endpoint.scrub(str(error))})")
    if opts.model not in served:
        shown = ", ".join(served[:10]) + (" ..." if len(served) > 10 else "")
        raise UserError(f"--model {opts.model}: not served by {opts.base_url} (it serves: "
                        f"{shown or 'nothing'})")


MESSAGE_OVERHEAD = 8
"""Tokens a chat template adds around one message, at most (role markers, separators)."""


def dry_run(opts: RewriteOptions) -> dict[str, Any]:
    """The requests a run would send and an upper bound on their cost; no network, no write.

    A prompt is bounded by its UTF-8 bytes plus MESSAGE_OVERHEAD per message (a byte-level BPE
    token covers at least one byte); a completion by max_tokens; a record by 1 +
    content_retries requests. Retried failures (429, 5xx, timeouts) are assumed unbilled."""
    items = _unique(build_items(opts))
    cache = read_cache(opts.cache_path)
    todo = [it for it in items if not _settled(cache.get(it.key), opts)]
    attempts = opts.content_retries + 1
    prompt = attempts * sum(
        sum(len(m["content"].encode()) + MESSAGE_OVERHEAD for m in it.messages) for it in todo)
    completion = attempts * opts.completion_limit * len(todo)
    bound = cost(Usage(prompt_tokens=prompt, completion_tokens=completion), opts)
    return {"records": len(items), "cached": len(items) - len(todo), "requests": len(todo),
            "max_requests": attempts * len(todo), "max_prompt_tokens": prompt,
            "max_completion_tokens": completion, "max_cost": bound,
            "first_request": todo[0].messages if todo else None}
