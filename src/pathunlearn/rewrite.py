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
  connections and malformed responses (not JSON, no text, a ``usage`` that is not token counts)
  are retried with exponential backoff and full jitter (``Retry-After`` honoured, capped by
  ``backoff_max``); another 4xx fails that record only (it is recorded, the run goes on);
  401/403/404 stop the run (every record would fail);
- every reply body is read through a bound (:func:`reply_byte_limit`; the rest is not read) and
  a reply longer than ``max_tokens`` allows (its ``usage``, or more than
  :data:`CHARS_PER_TOKEN` characters a token) is never kept: it is asked again like a reply
  failing the check, then dropped; every record not kept is counted under its cause
  (``HTTP 500``, ``timeout``, ``answer check`` ...: the ``CAUSE_*`` names);
- every finished record is appended to a JSONL cache (flushed and fsynced) keyed by the
  sha256 of (task, model, rendered request: the template and the record, sampling options);
  a rerun, after a crash, ``kill -9`` or a change of output path, sends no cached request
  again. OUTPUT (and its ``.dropped.jsonl`` list) are written atomically, in input order;
- tokens and cost (prices per 1k tokens) counted from the responses' ``usage``; a dry run
  counts the requests and bounds the cost without any network or write;
- the API key is read from an environment variable and only ever handed to the client: it,
  and any run of 8 or more of its characters, is scrubbed (:class:`KeyScrubber`) from every
  text before it is cut, written or printed (replies, server messages, cache, outputs, log,
  errors), and a reply whose text holds it is not kept (``reply echoed the API key``).
"""

from __future__ import annotations

import hashlib
import json
import math
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

    from pathunlearn.config import load_yaml

    try:
        data = load_yaml(Path(path).read_text(encoding="utf-8"))
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


SPLITS = ("train", "test", "all")
FORMATS = ("release", "chat")
MAX_COMPLETION_TOKENS = 1_000_000
"""The most ``max_tokens`` taken: no model writes more in one reply, and the reply byte bound
(:func:`reply_byte_limit`) follows it."""
MAX_CONCURRENCY = 1024
"""The most requests in flight (one thread each)."""


@dataclass(frozen=True)
class RewriteOptions:
    """Everything one ``pathunlearn data rewrite`` needs; validated on construction (every
    check is here, the CLI only builds it): a bad value is one UserError naming the option."""

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
    template: Template | Path | None = None
    """The request template (default: the task's built-in one); a path is a YAML file read
    with :func:`load_template` (a Template once constructed)."""
    split: str = "all"
    """safety: the sorry-bench split to rewrite (train, test or all)."""
    format: Literal["release", "chat"] = "release"
    """release: input records plus the answer (loads with sorry-bench:/gsm8k:); chat:
    {"messages", "meta"} conversations."""
    temperature: float = 0.7
    """Sampling temperature, in [0, 2]."""
    max_tokens: int | None = None
    """Most completion tokens per request (default: 200 safety, 600 math); a longer reply is
    refused (:data:`CHARS_PER_TOKEN`)."""
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
        _check_names(self)
        _check_numbers(self)
        if isinstance(self.template, Template):
            check_template(self.template, self.task, "template")
        elif self.template is not None:
            object.__setattr__(self, "template", load_template(self.template, self.task))

    @property
    def cache_path(self) -> Path:
        return self.cache or self.output.with_name(self.output.name + ".cache.jsonl")

    @property
    def dropped_path(self) -> Path:
        return self.output.with_name(self.output.stem + ".dropped.jsonl")

    @property
    def completion_limit(self) -> int:
        return self.max_tokens or DEFAULT_MAX_TOKENS[self.task]


def _check_names(o: RewriteOptions) -> None:
    """The options that are names, paths and choices (a UserError names the option)."""
    if o.task not in TASKS:
        raise UserError(f"task {o.task!r}: choose one of {', '.join(TASKS)}")
    if o.split not in SPLITS:
        raise UserError(f"--split {o.split!r}: choose train, test or all")
    if o.format not in FORMATS:
        raise UserError(f"--format {o.format!r}: choose release or chat")
    for name, flag in (("input", "INPUT"), ("output", "OUTPUT"), ("cache", "--cache")):
        value = getattr(o, name)
        if isinstance(value, str) and value:
            object.__setattr__(o, name, value := Path(value))
        if not isinstance(value, Path) and not (name == "cache" and value is None):
            raise UserError(f"{flag} {value!r}: give a file path")
    if o.output.suffix != ".jsonl":
        raise UserError(f"{o.output}: the output is JSON Lines; give a .jsonl path")
    _check_url(o.base_url)
    if not isinstance(o.model, str) or not o.model.strip() or not o.model.isprintable():
        raise UserError(f"--model {o.model!r}: give the name of a model the endpoint serves")
    env = o.api_key_env
    if not isinstance(env, str) or not env or "=" in env or not env.isprintable() \
            or env != env.strip():
        raise UserError(f"--api-key-env {env!r}: give the name of an environment variable")
    if not isinstance(o.retry_errors, bool):
        raise UserError(f"--retry-errors {o.retry_errors!r}: give true or false")


def _check_url(url: object) -> None:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url) if isinstance(url, str) else None
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname \
            or not url.isprintable() or any(c.isspace() for c in url):
        raise UserError(f"--base-url {url!r}: expected http://HOST... or https://HOST... "
                        "(e.g. http://127.0.0.1:8000/v1)")


_COUNTS = (  # field, flag, least, most (None: no bound)
    ("max_tokens", "--max-tokens", 1, MAX_COMPLETION_TOKENS),
    ("concurrency", "--concurrency", 1, MAX_CONCURRENCY),
    ("max_retries", "--max-retries", 0, None),
    ("content_retries", "--content-retries", 0, None),
    ("seed", "--seed", -2 ** 63, 2 ** 63 - 1))
_AMOUNTS = (  # field, flag, least, most (None: no bound), whether the least is excluded
    ("temperature", "--temperature", 0, 2, False),
    ("backoff", "--backoff", 0, None, False),
    ("backoff_max", "--backoff-max", 0, None, False),
    ("timeout", "--timeout", 0, None, True),
    ("price_in", "--price-in", 0, None, False),
    ("price_out", "--price-out", 0, None, False),
    ("max_failed_fraction", "--max-failed-fraction", 0, 1, False))


def _check_numbers(o: RewriteOptions) -> None:
    """Whole numbers in range, and finite amounts in range (NaN and inf refused)."""
    for name, flag, low, high in _COUNTS:
        value = getattr(o, name)
        if value is None and name in ("max_tokens", "seed"):
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (
                high is not None and value > high):
            bound = f">= {low}" if high is None else f"in [{low}, {high:,}]"
            raise UserError(f"{flag} {value!r}: give a whole number {bound}")
    for name, flag, low, high, open_low in _AMOUNTS:
        value = getattr(o, name)
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not math.isfinite(value) or value < low or (open_low and value == low) \
                or (high is not None and value > high):
            bound = (f"> {low}" if open_low else f">= {low}") if high is None \
                else f"in [{low}, {high}]"
            raise UserError(f"{flag} {value!r}: give a finite number {bound}")


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
    """Entries by key. A line that is not a finished entry (a torn last line: the process died
    while writing it; text that is not valid Unicode) is skipped: that record is simply asked
    again."""
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
            if "\\u" in line:  # an escaped lone surrogate parses but cannot be written back
                json.dumps(entry, ensure_ascii=False).encode("utf-8")
        except (ValueError, RecursionError):  # UnicodeEncodeError is a ValueError
            continue
        if _finished_entry(entry):
            entries[entry["key"]] = entry
    return entries


def _finished_entry(entry: object) -> bool:
    return isinstance(entry, dict) and isinstance(entry.get("key"), str) and (
        entry.get("status") in ("dropped", "error")
        or (entry.get("status") == "ok" and isinstance(entry.get("text"), str)))


class CacheWriter:
    """Appends entries durably, scrubbed of the key; starts on a fresh line after a torn one."""

    def __init__(self, path: Path, scrub: KeyScrubber | None = None):
        path.parent.mkdir(parents=True, exist_ok=True)
        torn = path.is_file() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
        self.scrub = scrub or KeyScrubber(None)
        self.f = path.open("a", encoding="utf-8")
        if torn:
            self.f.write("\n")

    def append(self, entry: dict) -> None:
        self.f.write(json.dumps(self.scrub.json(entry), ensure_ascii=False) + "\n")
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self) -> None:
        self.f.close()


# ---------------------------------------------------------------------------------------------
# the key: masked in every text the tool writes or prints

KEY_RUN = 8
"""Any run of this many characters of the key is masked too: a server or proxy may echo a key
it cut, and a message cut before it was scrubbed would leak all but the key's tail."""


class KeyScrubber:
    """``scrub(text)``: ``text`` with the API key, and every run of :data:`KEY_RUN` or more of
    its characters, replaced by ``***``. Applied to every text before it is cut, written or
    printed; ``found(text)`` says whether there is anything to mask."""

    def __init__(self, key: str | None):
        self.n = min(KEY_RUN, len(key or ""))
        self.grams = {key[i:i + self.n] for i in range(len(key) - self.n + 1)} if key else set()

    def found(self, text: str) -> bool:
        return any(g in text for g in self.grams)

    def _spans(self, text: str) -> list[list[int]]:
        marks = []
        for gram in self.grams:
            start = text.find(gram)
            while start != -1:
                marks.append((start, start + self.n))
                start = text.find(gram, start + 1)
        spans: list[list[int]] = []
        for start, end in sorted(marks):
            if spans and start <= spans[-1][1]:
                spans[-1][1] = max(spans[-1][1], end)
            else:
                spans.append([start, end])
        return spans

    def __call__(self, text: str) -> str:
        if not self.grams or not self.found(text):
            return text
        out, at = [], 0
        for start, end in self._spans(text):
            out += [text[at:start], "***"]
            at = end
        return "".join([*out, text[at:]])

    def json(self, value: Any) -> Any:
        """A JSON value with every string (keys included) scrubbed."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {self(k) if isinstance(k, str) else k: self.json(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.json(v) for v in value]
        return value


# ---------------------------------------------------------------------------------------------
# one request, with retries; every failure has a cause, the name it is counted under

CAUSE_TIMEOUT = "timeout"
CAUSE_CONNECTION = "connection dropped"
CAUSE_MALFORMED = "malformed reply"
CAUSE_TOO_LONG = "reply over length"
CAUSE_KEY = "reply echoed the API key"
CHECK_CAUSES = {"safety": "refusal check", "math": "answer check"}
CAUSE_NOT_SENT = "not sent"
"""The other causes are ``HTTP <status>`` (a 4xx refusal, or the last 5xx/429 of a record whose
retries ran out)."""

CHARS_PER_TOKEN = 16
"""A reply of more than ``max_tokens * CHARS_PER_TOKEN`` characters is over length whatever its
``usage`` says (no tokenizer has tokens that long on average)."""
REPLY_OVERHEAD_BYTES = 1 << 20
"""Bytes a reply body may hold besides its text (ids, usage, a server's extra fields)."""
MODELS_BYTES = 16 << 20
"""Most bytes of a ``GET /models`` reply (some hosts list hundreds of models)."""
MAX_USAGE_TOKENS = 10 ** 9
"""A token count above this in ``usage`` is not one."""


def reply_byte_limit(max_tokens: int) -> int:
    """Most bytes of a chat reply body read: the overhead plus the longest text allowed, each
    character JSON-escaped as a surrogate pair (12 bytes, ``\\ud83d\\ude00``). A reply over it is
    over length; the rest of it is not read."""
    return REPLY_OVERHEAD_BYTES + 12 * CHARS_PER_TOKEN * max_tokens


class FatalEndpointError(UserError):
    """The endpoint refuses every request (bad key, unknown model or URL): stop the run."""


class _Failure(Exception):
    """A request or reply that failed, with its cause (what the summary counts)."""

    def __init__(self, message: str, cause: str):
        super().__init__(message)
        self.cause = cause


class _Retryable(_Failure):
    def __init__(self, message: str, cause: str, retry_after: float | None = None):
        super().__init__(message, cause)
        self.retry_after = retry_after


class RequestRefused(_Failure):
    """A 4xx for this record's request (e.g. a content filter): recorded, not retried."""


class RetriesExhausted(_Failure):
    """A request kept failing with retryable errors: the record stays unanswered."""


class BadReply(_Failure):
    """A reply that came back but cannot be kept whatever it says (over length, echoing the
    key): asked again like a reply failing the check, and never stored."""


class ReplyTooLarge(Exception):
    """A reply body passed its byte bound; the rest was not read."""

    def __init__(self, status: int, limit: int):
        super().__init__(f"HTTP {status} body over {limit:,} bytes")
        self.status, self.limit = status, limit


@dataclass
class Usage:
    """What the requests of one record cost, and why requests were retried."""

    requests: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retry_causes: Counter = field(default_factory=Counter)

    def add(self, other: Usage) -> None:
        for name in ("requests", "retries", "prompt_tokens", "completion_tokens"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.retry_causes.update(other.retry_causes)


RETRYABLE_STATUS = {408, 409, 429}
FATAL_STATUS = {401, 403, 404}


class Endpoint:
    """The OpenAI client with this run's retry policy and reply bounds; the key never leaves
    it (``scrub`` masks it)."""

    def __init__(self, opts: RewriteOptions, key: str | None):
        import openai

        self.openai, self.opts, self.scrub = openai, opts, KeyScrubber(key)
        # identity: a compressed body would pass the byte bound and expand past it
        self.client = openai.OpenAI(base_url=opts.base_url, api_key=key or "no-key",
                                    timeout=opts.timeout, max_retries=0,
                                    default_headers={"Accept-Encoding": "identity"},
                                    http_client=_bounded_http_client(openai, opts))

    def backoff(self, attempt: int, retry_after: float | None) -> None:
        """Sleep before retry ``attempt`` (1-based): full jitter over ``backoff * 2**(a-1)``,
        or the server's Retry-After; both capped by ``backoff_max``."""
        cap = min(self.opts.backoff_max, self.opts.backoff * 2 ** (attempt - 1))
        delay = random.uniform(0, cap) if retry_after is None else retry_after
        time.sleep(min(self.opts.backoff_max, max(0.0, delay)))

    def chat(self, messages: list[dict], usage: Usage) -> str:
        """The reply text, retrying what may pass on a retry; FatalEndpointError, a
        :class:`RequestRefused` for this record, a :class:`BadReply`, or RetriesExhausted."""
        last = _Retryable("no request sent", CAUSE_NOT_SENT)
        for attempt in range(self.opts.max_retries + 1):
            if attempt:
                usage.retries += 1
            usage.requests += 1
            try:
                return self._once(messages, usage)
            except _Retryable as e:
                last = e
                if attempt < self.opts.max_retries:
                    usage.retry_causes[e.cause] += 1
                    self.backoff(attempt + 1, e.retry_after)
        raise RetriesExhausted(self.scrub(str(last)), last.cause)

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
        except openai.APITimeoutError:
            raise _Retryable(f"timeout: no reply within {self.opts.timeout:g}s",
                             CAUSE_TIMEOUT) from None
        except openai.APIConnectionError as e:
            raise _Retryable(self.scrub(f"connection dropped: {type(e).__name__}: {e}"),
                             CAUSE_CONNECTION) from None
        except ReplyTooLarge as e:
            if e.status < 400:
                raise BadReply(f"reply over length: the body passed {e.limit:,} bytes (not "
                               "read further, not stored)", CAUSE_TOO_LONG) from None
            raise self._classify(e.status, f"an error body over {e.limit:,} bytes (not "
                                 "read)", None) from None
        text, completion = _parse_reply(body, usage, self.scrub)
        return _check_reply(text, completion, self.opts.completion_limit, self.scrub)

    def _status_error(self, e) -> Exception:
        return self._classify(e.status_code, _error_message(e, self.scrub),
                              _retry_after(e.response.headers))

    def _classify(self, status: int, detail: str, retry_after: float | None) -> Exception:
        cause = f"HTTP {status}"
        if status in RETRYABLE_STATUS or status >= 500:
            return _Retryable(f"{cause}: {detail}", cause, retry_after)
        if status in FATAL_STATUS:
            return FatalEndpointError(_fatal_message(self.opts, status, detail))
        return RequestRefused(f"{cause}: {detail}", cause)


def _bounded_http_client(openai, opts: RewriteOptions):
    """The openai client's own HTTP client (its defaults), with every reply body read through
    a bound: :func:`reply_byte_limit` for a chat reply, :data:`MODELS_BYTES` for
    ``GET /models``, and ``opts.timeout`` for the body once the headers came."""
    http = _http_library(openai)
    chat_limit = reply_byte_limit(opts.completion_limit)

    class Bounded(http.SyncByteStream):
        def __init__(self, inner, status: int, limit: int):
            self.inner, self.status, self.limit = inner, status, limit

        def __iter__(self) -> Iterator[bytes]:
            seen, deadline = 0, time.monotonic() + opts.timeout
            for chunk in self.inner:
                seen += len(chunk)
                if seen > self.limit:
                    raise ReplyTooLarge(self.status, self.limit)
                if time.monotonic() > deadline:
                    raise _Retryable(f"timeout: the body took over {opts.timeout:g}s",
                                     CAUSE_TIMEOUT)
                yield chunk

        def close(self) -> None:
            self.inner.close()

    def bound(response) -> None:
        if response.headers.get("content-encoding", "identity").strip().lower() not in (
                "", "identity"):
            raise _Retryable("malformed reply: a compressed body (identity was asked for)",
                             CAUSE_MALFORMED)
        limit = MODELS_BYTES if response.request.method == "GET" else chat_limit
        response.stream = Bounded(response.stream, response.status_code, limit)

    return openai.DefaultHttpxClient(event_hooks={"response": [bound]})


def _http_library(openai):
    """The HTTP library the openai client is built on (httpx, or httpx2 in later releases)."""
    import importlib

    base = next(c for c in openai.DefaultHttpxClient.__mro__[1:]
                if not c.__module__.startswith("openai"))
    return importlib.import_module(base.__module__.partition(".")[0])


def _parse_reply(body: str, usage: Usage, scrub: KeyScrubber) -> tuple[str, int]:
    """(the first choice's text, its completion tokens), the tokens added to ``usage``; a
    malformed reply (not JSON, no text, a ``usage`` that is not token counts) is retryable."""
    try:
        data = json.loads(body)
        text = data["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError, RecursionError):
        raise _Retryable(f"malformed reply: {scrub(body)[:80]!r}", CAUSE_MALFORMED) from None
    if not isinstance(text, str):
        raise _Retryable("malformed reply: the message content is not text", CAUSE_MALFORMED)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise _Retryable("malformed reply: the text has a lone surrogate (not Unicode)",
                         CAUSE_MALFORMED) from None
    used = data.get("usage")
    if used is not None and not isinstance(used, dict):
        raise _Retryable(f"malformed reply: usage is a {type(used).__name__}, not an object",
                         CAUSE_MALFORMED)
    prompt, completion = (_token_count(used or {}, name)
                          for name in ("prompt_tokens", "completion_tokens"))
    usage.prompt_tokens += prompt
    usage.completion_tokens += completion
    return text, completion


def _token_count(used: dict, name: str) -> int:
    value = used.get(name)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not 0 <= value <= MAX_USAGE_TOKENS or value != int(value):
        shown = repr(value) if isinstance(value, int | float) else f"a {type(value).__name__}"
        raise _Retryable(f"malformed reply: usage.{name} is {shown[:40]}, not a token count",
                         CAUSE_MALFORMED)
    return int(value)


def _check_reply(text: str, completion: int, limit: int, scrub: KeyScrubber) -> str:
    """``text`` if it can be kept at all: not echoing the key, not longer than ``limit``
    tokens (by ``usage``, and by :data:`CHARS_PER_TOKEN` characters a token); a BadReply."""
    if scrub.found(text):
        raise BadReply("reply echoed the API key (not stored)", CAUSE_KEY)
    if completion > limit:
        raise BadReply(f"reply over length: {completion:,} completion tokens for --max-tokens "
                       f"{limit} (not stored)", CAUSE_TOO_LONG)
    if len(text) > CHARS_PER_TOKEN * limit:
        raise BadReply(f"reply over length: {len(text):,} characters, over {CHARS_PER_TOKEN} "
                       f"per token of --max-tokens {limit} (not stored)", CAUSE_TOO_LONG)
    return text


def _retry_after(headers) -> float | None:
    try:
        value = float(headers.get("retry-after"))
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _error_message(e, scrub: KeyScrubber) -> str:
    """The server's error message (the client hands over ``body["error"]`` or the body),
    scrubbed, then on one line and cut to 300 characters."""
    body = e.body if isinstance(e.body, dict) else {}
    inner = body["error"] if isinstance(body.get("error"), dict) else body
    message = inner.get("message") if isinstance(inner.get("message"), str) else e.message
    return " ".join(scrub(str(message)).split())[:300]


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
    """Ask for a record's answer until one passes the task's check, or drop it. The entry
    names the cause of a record not kept and is scrubbed of the key."""
    usage, cause, reason, text = Usage(), "", "", None
    base = {"key": item.key, "index": item.index, "model": opts.model, "task": opts.task}

    def outcome(status: str, final: bool = True, **fields: Any) -> Outcome:
        entry = {**base, "status": status, **fields, **_costs(usage)}
        return Outcome(endpoint.scrub.json(entry), usage, final)

    try:
        for _ in range(opts.content_retries + 1):
            try:
                text = endpoint.chat(item.messages, usage)
            except BadReply as e:  # asked again like a failed check; its text is not kept
                cause, reason, text = e.cause, str(e), None
                continue
            kept, reason = CHECKS[opts.task](item, text)
            if kept is not None:
                return outcome("ok", text=kept)
            cause = CHECK_CAUSES[opts.task]
    except RequestRefused as e:
        return outcome("error", cause=e.cause, reason=str(e))
    except RetriesExhausted as e:
        return outcome("failed", False, cause=e.cause, reason=f"retries exhausted: {e}")
    return outcome("dropped", cause=cause, reason=reason, text=text)


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
    """Records not kept, by cause (:func:`entry_cause`: 'HTTP 500', 'timeout', 'answer
    check' ...)."""
    examples: dict[str, str] = field(default_factory=dict)
    """The first full reason of each cause (the server's message of an HTTP 400 ...)."""
    dropped_path: Path | None = None
    """The file listing every record not kept, with its reason."""
    seconds: float = 0.0
    cost: float = 0.0

    @property
    def not_kept(self) -> int:
        return self.dropped + self.errors + self.failed

    def top_reasons(self, n: int | None = 5) -> list[str]:
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
        if u.retry_causes:
            out.append("retried after: " + ", ".join(
                f"{count} x {cause}" for cause, count in u.retry_causes.most_common()))
        if self.not_kept:
            out.append(f"{self.not_kept} records not kept, by cause, each with its reason in "
                       f"{self.dropped_path}:")
        out += [f"  {line}" for line in self.top_reasons(None)]
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
    send what is not cached, then write the output in input order. The key is scrubbed from
    every line logged and every error raised."""
    scrub = KeyScrubber(api_key(opts))
    try:
        return _rewrite(opts, lambda line: log(scrub(line)), progress)
    except UserError as e:
        raise type(e)(scrub(str(e))) from None


def _rewrite(opts: RewriteOptions, log: Callable[[str], None], progress: bool) -> Summary:
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
    unanswered: dict[str, dict] = {}  # failed this run: not cached (a rerun sends them)
    start = time.perf_counter()
    writer = CacheWriter(opts.cache_path, endpoint.scrub)
    try:
        with _progress(progress, len(items), summary.cached) as advance:
            for outcome in _run_pool(endpoint, todo, opts):
                if outcome.final:
                    writer.append(outcome.entry)
                    cache[outcome.entry["key"]] = outcome.entry
                else:
                    unanswered[outcome.entry["key"]] = outcome.entry
                summary.usage.add(outcome.usage)
                summary.cost = cost(summary.usage, opts)
                advance(summary)
    finally:
        writer.close()
    summary.seconds = time.perf_counter() - start
    # this run's failure wins over an older cached refusal (--retry-errors sent it again)
    write_outputs(opts, items, {**cache, **unanswered}, summary, endpoint.scrub)
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
                  summary: Summary, scrub: KeyScrubber | None = None) -> None:
    """OUTPUT (kept records, input order) and OUTPUT.dropped.jsonl (the rest, with cause and
    reason), both atomically and scrubbed of the key; the counts of ``summary`` from the same
    pass."""
    from pathunlearn.data.io import write_jsonl

    scrub = scrub or KeyScrubber(None)
    kept, dropped = [], []
    for it in items:
        entry = scrub.json(cache.get(it.key) or {"status": "failed", "cause": CAUSE_NOT_SENT,
                                                 "reason": "not sent (rerun)"})
        if entry["status"] == "ok":
            kept.append(scrub.json(output_record(opts, it, entry["text"])))
            continue
        summary.dropped += entry["status"] == "dropped"
        summary.errors += entry["status"] == "error"
        summary.failed += entry["status"] == "failed"
        cause = entry_cause(entry, opts.task)
        summary.reasons[cause] += 1
        summary.examples.setdefault(cause, entry.get("reason", ""))
        dropped.append(scrub.json(
            {"index": it.index, "status": entry["status"], "cause": cause,
             "reason": entry.get("reason", ""), "text": entry.get("text"),
             **{k: it.record[k] for k in ("question_id", "question") if k in it.record}}))
    summary.kept = len(kept)
    summary.dropped_path = opts.dropped_path
    write_jsonl(opts.output, kept)
    write_jsonl(opts.dropped_path, dropped)


def entry_cause(entry: dict, task: str) -> str:
    """The cause a record was not kept under: the entry's own, or for an entry cached by an
    earlier version, the check's (a drop) or the reason's head ('HTTP 400: ...' -> 'HTTP
    400')."""
    cause = entry.get("cause")
    if isinstance(cause, str) and cause:
        return cause
    if entry.get("status") == "dropped":
        return CHECK_CAUSES[task]
    return str(entry.get("reason", "")).split(": ")[0] or "unknown"


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
    """GET /models before anything is sent: an unreachable endpoint, a refused key, a reply
    that is not a model list (an HTML page ...) or a model the endpoint does not list is a
    UserError (endpoints without the route pass)."""
    openai, opts = endpoint.openai, endpoint.opts
    where = f"--base-url {opts.base_url}: GET /models"
    for attempt in range(min(2, opts.max_retries) + 1):
        try:
            body = endpoint.client.models.with_raw_response.list().text
            break
        except openai.APIStatusError as e:
            if e.status_code in (404, 405, 501):
                return  # no model list here: the first request will tell
            error = endpoint._status_error(e)
            if not isinstance(error, _Retryable):
                raise (error if isinstance(error, UserError) else UserError(
                    f"{where}: {error}")) from None
        except (openai.APIConnectionError, _Retryable) as e:
            error = e
        except ReplyTooLarge as e:
            raise UserError(f"{where}: the reply passed {e.limit:,} bytes; not an "
                            "OpenAI-compatible model list (the URL should end in /v1)") from None
        if attempt < min(2, opts.max_retries):
            endpoint.backoff(attempt + 1, None)
    else:
        raise UserError(f"--base-url {opts.base_url}: cannot reach the endpoint "
                        f"({endpoint.scrub(str(error))})")
    served = [endpoint.scrub(m)[:80] for m in served_models(body, where)]
    if opts.model not in served:
        shown = ", ".join(served[:10]) + (" ..." if len(served) > 10 else "")
        raise UserError(f"--model {opts.model}: not served by {opts.base_url} (it serves: "
                        f"{shown or 'nothing'})")


def served_models(body: str, where: str) -> list[str]:
    """The model ids of a ``GET /models`` reply (``{"data": [{"id": ...}, ...]}``); a
    UserError for an HTML page or another shape."""
    if body.lstrip()[:1] == "<":
        raise UserError(f"{where}: answered an HTML page, not a model list; check that the URL "
                        "is the API's and ends in /v1")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        data = None
    models = data.get("data") if isinstance(data, dict) else None
    if not isinstance(models, list) or not all(
            isinstance(m, dict) and isinstance(m.get("id"), str) for m in models):
        raise UserError(f"{where}: the reply is not a model list ({{\"data\": [{{\"id\": ...}}]}}"
                        " expected); check that the URL ends in /v1")
    return [m["id"] for m in models]


MESSAGE_OVERHEAD = 8
"""Tokens a chat template adds around one message, at most (role markers, separators)."""


def dry_run(opts: RewriteOptions) -> dict[str, Any]:
    """The requests a run would send and an upper bound on their cost; no network, no write.

    A prompt is bounded by its UTF-8 bytes plus MESSAGE_OVERHEAD per message (a byte-level BPE
    token covers at least one byte); a completion by max_tokens; a record by 1 +
    content_retries requests. Retried failures (429, 5xx, timeouts) are assumed unbilled. The
    first request is shown scrubbed of the key."""
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
            "first_request": KeyScrubber(api_key(opts)).json(todo[0].messages) if todo
            else None}
