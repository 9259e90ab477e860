"""An OpenAI-compatible chat server for any checkpoint: ``pathunlearn serve tiny``.

Talk to a path model or an unlearned model ("does it still refuse?") with the tools that
already speak the OpenAI API. Routes: ``POST /v1/chat/completions`` (``stream`` true or
false), ``GET /v1/models``, ``GET /v1/models/{id}`` and ``GET /health``.

How requests share one model: every request becomes a job on one queue, served by one worker
thread that owns the model. The worker takes the oldest job and, with it, the queued jobs that
sample the same way (greedy, or the same temperature and top-p) up to ``max_batch`` rows, and
decodes them as one left-padded batch with the project's sampler
(:mod:`pathunlearn.eval.generate`). Row ``j`` of a request with seed ``s`` draws from
``sample_generator(s, 0, j)`` — exactly what ``generate([messages], n=n, seed=s)`` uses — so
an answer depends on the request alone, not on what it was batched with (up to the
floating-point differences of padded batches; ``max_batch=1`` removes those). Nothing runs
two forward passes on the model at once, so concurrent requests never corrupt one another.

A streamed response (``stream: true``) is sent as the tokens are sampled: the worker decodes
with :func:`~pathunlearn.eval.generate.generate_rows`, whose per-token hook turns each row's
new token into a text delta and hands it to the request's event loop. A delta is what the
decoded-so-far text gained, less what may still change: an incomplete UTF-8 character at the
end (decoded as "\ufffd", sent once its last byte comes) and an end that could begin a stop
string (sent once it cannot). So the deltas join to exactly the non-streamed text, and no text
past a stop string is ever sent. A row ends at its stop token, its ``max_tokens``, its first
stop string, or when its client disconnects; the batch ends when all its rows have.

A bad request is a 4xx with OpenAI's error shape ``{"error": {"message", "type", "param",
"code"}}``, refused before it reaches the worker: 404 for an unknown model (or route), 413 for
a body over ``max_request_bytes``, 400 for a body that is not UTF-8, not JSON, nested too deep
or holding a lone surrogate, for malformed messages, and for anything over a limit of
:class:`ServeOptions` (messages, characters of content, stop strings, non-finite or
out-of-range sampling values, max_tokens, a prompt longer than the model's context). Reading,
parsing and tokenizing run in threads, never on the event loop, so ``/health`` is answered
while large requests are being read and the worker decodes (issue 25).

A request has ``request_timeout`` seconds from its arrival: decoding past it ends the rows
there with ``finish_reason`` "length" (what they have is sent), and a request still queued
then is a 503 (``server_error``, code ``timeout``) that the worker never decodes.
"""

# no `from __future__ import annotations`: FastAPI reads the route signatures at runtime,
# and their `Request` type is imported inside create_app (fastapi is an optional extra)
import asyncio
import json
import math
import queue
import re
import secrets
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pathunlearn.errors import UserError

SERVE_EXTRA_HINT = "pip install 'pathunlearn[serve]'"
ROLES = ("system", "user", "assistant")
DTYPES = ("float32", "bfloat16", "float16")
MAX_N = 8
"""Most choices one request may ask for (``n``)."""
MAX_STOP = 4
"""Most stop strings one request may give (OpenAI's limit)."""
MIN_TEMPERATURE = 1e-3
"""The smallest temperature above 0 (greedy): logits divided by 1e-300 overflow to inf and
sample nothing; 1e-3 is already argmax for any logit gap over ~0.1."""


# ---------------------------------------------------------------------------------------------
# options: every setting of the server, validated once


@dataclass(frozen=True)
class ServeOptions:
    """What ``pathunlearn serve`` takes besides the model: where it listens, how it runs the
    model and the limits of a request. Validated on construction: a bad value is one
    UserError naming its option (``--max-batch 0: must be at least 1``)."""

    host: str = "127.0.0.1"
    """Address to listen on (loopback only by default: there is no authentication)."""
    port: int = 8000
    """Port; 0 takes any free one."""
    name: str | None = None
    """The model name clients use; None: ``tiny``, ``smollm2`` or the directory's name."""
    device: str = "auto"
    """auto, cpu, cuda, cuda:1 ... (checked against this machine when the server starts)."""
    dtype: str = "float32"
    """float32, bfloat16 or float16."""
    threads: int = 1
    """torch CPU threads (1: the server and its clients share the cores)."""
    max_batch: int = 8
    """Most rows (requests times choices) decoded together."""
    max_tokens_limit: int = 1024
    """Largest ``max_tokens`` a request may ask for."""
    default_max_tokens: int = 256
    """``max_tokens`` of a request that gives none (at most ``max_tokens_limit``)."""
    max_request_bytes: int = 2**20
    """Largest request body (1 MiB); a bigger one is a 413, read no further."""
    max_messages: int = 256
    """Most messages in one request."""
    max_content_chars: int = 200_000
    """Most characters of message content in one request, all messages together."""
    max_stop_chars: int = 64
    """Longest stop string (at most :data:`MAX_STOP` of them)."""
    request_timeout: float = 120.0
    """Seconds a request may take from its arrival: decoding stops there (finish_reason
    "length"); one still queued then is a 503."""
    max_queued: int = 256
    """Most requests admitted at once (being encoded, queued or decoded); one more is a 503
    at once, before its body is parsed, so a flood cannot grow the queue without bound."""

    def __post_init__(self) -> None:
        for key, low, high in _INT_OPTIONS:
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int):
                raise _option_error(key, value, "must be an integer")
            if value < low or (high is not None and value > high):
                raise _option_error(key, value, f"must be at least {low}" if high is None
                                    else f"must be in [{low}, {high}]")
        if self.default_max_tokens > self.max_tokens_limit:
            raise _option_error("default_max_tokens", self.default_max_tokens, "must be at "
                                f"most --max-tokens-limit ({self.max_tokens_limit})")
        if self.dtype not in DTYPES:
            raise _option_error("dtype", self.dtype, f"choose {', '.join(DTYPES)}")
        timeout = self.request_timeout
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) \
                or not math.isfinite(timeout) or timeout <= 0:
            raise _option_error("request_timeout", timeout, "must be a number of seconds > 0")
        for key in ("host", "device", "name"):
            value = getattr(self, key)
            if not (value is None and key == "name") and not (
                    isinstance(value, str) and value.strip()):
                raise _option_error(key, value, "must be a non-empty string")


_INT_OPTIONS = (("port", 0, 65535), ("threads", 1, None), ("max_batch", 1, None),
                ("max_tokens_limit", 1, None), ("default_max_tokens", 1, None),
                ("max_request_bytes", 1, None), ("max_messages", 1, None),
                ("max_content_chars", 1, None), ("max_stop_chars", 1, None),
                ("max_queued", 1, None))


def _option_error(key: str, value: Any, why: str) -> UserError:
    return UserError(f"--{key.replace('_', '-')} {value!r}: {why}")


# ---------------------------------------------------------------------------------------------
# requests: validated into a plain object before they reach the model


class RequestError(Exception):
    """A bad request: its HTTP status and the OpenAI error fields."""

    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 code: str | None = None, type: str = "invalid_request_error"):
        super().__init__(message)
        self.message, self.param, self.status, self.code = message, param, status, code
        self.type = type

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


@dataclass(frozen=True)
class ChatRequest:
    """A validated ``/v1/chat/completions`` body: what the worker needs, nothing else."""

    messages: list[dict[str, str]]
    max_tokens: int | None
    temperature: float
    top_p: float
    n: int
    seed: int
    stream: bool
    include_usage: bool
    stop: tuple[str, ...]

    @property
    def greedy(self) -> bool:
        """Temperature 0 means argmax decoding (as the OpenAI API documents it)."""
        return self.temperature == 0


def _number(body: dict, key: str, default: float, low: float, high: float,
            low_open: bool = False) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RequestError(f"'{key}' must be a number, got {type(value).__name__}", key)
    if isinstance(value, float) and not math.isfinite(value):  # json reads NaN, 1e999
        raise RequestError(f"'{key}' must be a finite number, got {value}", key)
    if value > high or value < low or (low_open and value == low):
        bound = f"({low}, {high}]" if low_open else f"[{low}, {high}]"
        raise RequestError(f"'{key}' must be in {bound}, got {value}", key)
    return float(value)


def _integer(body: dict, key: str) -> int | None:
    value = body.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise RequestError(f"'{key}' must be an integer, got {type(value).__name__}", key)
    return value


def _content(content: Any, where: str) -> str:
    """Message content as text: a string, or a list of ``{"type": "text", "text"}`` parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
            isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
            for p in content):
        return "".join(p["text"] for p in content)
    raise RequestError(f"{where}.content must be text (or a list of text parts)", where)


def _temperature(body: dict) -> float:
    value = _number(body, "temperature", 1.0, -math.inf, math.inf)  # a finite number
    if not (value == 0 or MIN_TEMPERATURE <= value <= 2):
        raise RequestError(f"'temperature' must be 0 (greedy) or in [{MIN_TEMPERATURE}, 2], "
                           f"got {value}", "temperature")
    return value


def _stop(body: dict, max_chars: int) -> tuple[str, ...]:
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else stop or []
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise RequestError("'stop' must be a string or a list of non-empty strings", "stop")
    if len(stop) > MAX_STOP:
        raise RequestError(f"'stop' has {len(stop)} strings: at most {MAX_STOP}", "stop",
                           code="array_above_max_length")
    longest = max(len(s) for s in stop) if stop else 0
    if longest > max_chars:
        raise RequestError(f"'stop' has a string of {longest} characters: at most "
                           f"{max_chars}", "stop", code="string_above_max_length")
    return tuple(stop)


def parse_messages(messages: Any, options: ServeOptions | None = None) -> list[dict[str, str]]:
    """OpenAI chat messages as ``{"role", "content"}`` dicts; a RequestError names the first
    bad message, or the limit (``max_messages``, ``max_content_chars``) they go over."""
    options = options or ServeOptions()
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty list of {role, content} objects",
                           "messages")
    if len(messages) > options.max_messages:
        raise RequestError(f"'messages' has {len(messages)} messages: at most "
                           f"{options.max_messages}", "messages", code="array_above_max_length")
    out, chars = [], 0
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise RequestError(f"{where} must be an object with 'role' and 'content'", where)
        role = "system" if m.get("role") == "developer" else m.get("role")
        if role not in ROLES:
            raise RequestError(f"{where}.role must be one of {', '.join(ROLES)}, got "
                               f"{m.get('role')!r}", f"{where}.role")
        out.append({"role": role, "content": _content(m.get("content"), where)})
        chars += len(out[-1]["content"])
        if chars > options.max_content_chars:
            raise RequestError(f"the messages have over {options.max_content_chars} characters "
                               f"of content (at {where})", where,
                               code="string_above_max_length")
    return out


def parse_request(body: Any, model_name: str,
                  options: ServeOptions | None = None) -> ChatRequest:
    """Validate a chat-completions body: a RequestError (400, or 404 for another model) for
    anything the server cannot honour or that is over a limit of ``options``. Fields it does
    not know (``tools``, ``logprobs`` ...) are ignored, as OpenAI-compatible servers commonly
    do."""
    options = options or ServeOptions()
    max_tokens_limit = options.max_tokens_limit
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str):
        raise RequestError("'model' is required (a string)", "model")
    if model != model_name:
        raise RequestError(f"the model '{model}' does not exist: this server serves "
                           f"'{model_name}'", "model", 404, "model_not_found")
    max_tokens = _integer(body, "max_completion_tokens")
    max_tokens = _integer(body, "max_tokens") if max_tokens is None else max_tokens
    if max_tokens is not None and not 1 <= max_tokens <= max_tokens_limit:
        raise RequestError(f"'max_tokens' must be in [1, {max_tokens_limit}], got {max_tokens}",
                           "max_tokens")
    n = _integer(body, "n") or 1
    if not 1 <= n <= MAX_N:
        raise RequestError(f"'n' must be in [1, {MAX_N}], got {n}", "n")
    seed = _integer(body, "seed")
    stream_options = body.get("stream_options") or {}
    return ChatRequest(
        messages=parse_messages(body.get("messages"), options), max_tokens=max_tokens,
        temperature=_temperature(body),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, low_open=True), n=n,
        seed=secrets.randbits(31) if seed is None else seed, stream=bool(body.get("stream")),
        include_usage=bool(isinstance(stream_options, dict)
                           and stream_options.get("include_usage")),
        stop=_stop(body, options.max_stop_chars))


_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def _nested_deeper(text: str, limit: int) -> bool:
    """Whether the JSON ``text`` nests lists and objects deeper than ``limit``: its brackets
    outside strings, counted (regexes do the bulk in C; the count stops past ``limit``)."""
    depth = 0
    for c in _NOT_BRACKET.sub("", _JSON_STRING.sub("", text)):
        depth += 1 if c in "[{" else -1
        if depth > limit:
            return True
    return False


def parse_body(raw: bytes, model_name: str,
               options: ServeOptions | None = None) -> ChatRequest:
    """A request body as bytes, validated: UTF-8, JSON nested no deeper than
    :data:`~pathunlearn.data.io.MAX_DEPTH` (checked before ``json.loads``, whose recursion a
    100k-deep ``[[[...`` would exhaust), no lone surrogate (``"\\ud800"``) anywhere, then
    :func:`parse_request`. Every failure is a 400 RequestError of one line."""
    from pathunlearn.data.io import MAX_DEPTH, check_plain
    from pathunlearn.errors import DataError

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RequestError(f"the request body is not UTF-8 text (byte {e.start})") from None
    if _nested_deeper(text, MAX_DEPTH):
        raise RequestError(f"the request body is nested deeper than {MAX_DEPTH} levels")
    try:
        body = json.loads(text)
    except json.JSONDecodeError as e:
        raise RequestError(f"the request body is not valid JSON: {e}") from None
    except ValueError:  # Python refuses to read an integer of over 4300 digits
        raise RequestError("the request body is not valid JSON: a number of over 4300 digits") \
            from None
    try:
        check_plain(body, "the request body")
    except DataError as e:
        raise RequestError(str(e)) from None
    return parse_request(body, model_name, options)


async def read_body(request, limit: int) -> bytes:
    """The body of a starlette ``request``, refused with a 413 past ``limit`` bytes: by its
    Content-Length before any of it is read, else (a chunked body) as it comes, so no more
    than ``limit`` and one chunk is ever held."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(f"{declared} bytes", limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(f"over {limit} bytes", limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(size: str, limit: int) -> RequestError:
    return RequestError(f"the request body is {size}: this server takes at most {limit}",
                        None, 413, "request_too_large")


# ---------------------------------------------------------------------------------------------
# the worker: one thread owns the model and decodes queued jobs in batches


@dataclass
class Choice:
    """One generated completion: its token ids, text and why it ended."""

    tokens: list[int]
    text: str
    finish_reason: str


class RowText:
    """The text of one generated row as its tokens come, in the worker thread: the decoded
    text cut at the first stop string, and the delta of each token safe to send at once.

    ``live`` False (not streamed, no stop strings) decodes once, when the row ends. The text
    is decoded whole at every token (special tokens skipped, as ``generate()`` does), so
    merged and multi-byte tokens come out as the final text has them."""

    def __init__(self, tokenizer, stop: tuple[str, ...], max_tokens: int, live: bool):
        self.tokenizer, self.stop, self.max_tokens, self.live = tokenizer, stop, max_tokens, live
        self.tokens: list[int] = []
        self.text = ""
        self.sent = ""
        self.finish: str | None = None

    def add(self, token: int | None, cut: bool = False) -> str:
        """Take the row's next token (None: its stop token came); the new text to send.
        ``cut``: the row ends here ("length", its request's time is up) unless it ended."""
        if token is None:
            self.finish = "stop"
        else:
            self.tokens.append(token)
            if len(self.tokens) >= self.max_tokens or cut:
                self.finish = "length"
        if not self.live and self.finish is None:
            return ""
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        cuts = [text.find(s) for s in self.stop if s in text]
        if cuts:
            text, self.finish = text[: min(cuts)], "stop"
        self.text = text
        safe = text if self.finish else _settled(text, self.stop)
        if len(safe) <= len(self.sent) or not safe.startswith(self.sent):
            return ""  # nothing new (or the decoder rewrote earlier text: wait for more)
        delta, self.sent = safe[len(self.sent):], safe
        return delta


def _settled(text: str, stop: tuple[str, ...]) -> str:
    """``text`` less its end that more tokens may still change: trailing "\ufffd" (bytes of
    a character still incomplete) and the longest end that is the start of a stop string."""
    text = text.rstrip("\ufffd")
    held = 0
    for s in stop:
        held = max([held] + [k for k in range(1, len(s)) if text.endswith(s[:k])])
    return text[: len(text) - held]


@dataclass
class Job:
    """A validated request waiting for the worker; ``future`` gets its list of Choices.

    A streamed job also has ``on_event``, called from the worker thread with ``("delta",
    index, text)``, ``("finish", index, reason)``, then ``("done", choices)`` or ``("error",
    exception)``; setting ``cancelled`` (its client left) ends its rows at their next token.
    At ``deadline`` (``time.monotonic()``) its rows end ("length"); a job still queued then
    is not decoded: it gets a 503 RequestError.
    """

    prompt: list[int]
    request: ChatRequest
    max_tokens: int
    future: Future = field(default_factory=Future)
    on_event: Callable[[tuple], None] | None = None
    cancelled: bool = False
    deadline: float = math.inf

    def emit(self, *event) -> None:
        if self.on_event is None or self.cancelled:
            return
        try:
            self.on_event(event)
        except RuntimeError:  # the server's event loop is closed: nobody listens any more
            self.cancelled = True

    @property
    def rows(self) -> int:
        return 1 if self.request.greedy else self.request.n

    @property
    def sampling(self) -> tuple:
        """Jobs with the same key can share a batch: the sampler takes one temperature/top-p."""
        r = self.request
        return (True,) if r.greedy else (False, r.temperature, r.top_p)


class Engine:
    """The model, its tokenizer and the worker thread that serves a queue of jobs."""

    def __init__(self, model, tokenizer, *, max_batch: int = 8):
        from pathunlearn.eval.generate import stop_token_ids
        from pathunlearn.eval.logprob import pad_token_id

        self.model, self.tokenizer, self.max_batch = model.eval(), tokenizer, max_batch
        self.stop_ids = stop_token_ids(tokenizer, model)
        self.pad_id = pad_token_id(tokenizer)
        self.context = int(getattr(model.config, "max_position_embeddings", 0) or 0) or None
        self.jobs: queue.Queue[Job | None] = queue.Queue()
        # prompts are encoded in a thread of their own (queue()), neither the event loop's
        # (a 200k-character prompt takes ~0.1 s) nor the worker's; one thread, as a fast
        # tokenizer used by two at once may raise "Already borrowed", and as one thread's
        # allocations stay in one malloc arena (with a thread per request the soak's long
        # prompts left the process ~90 MiB larger). submit() itself may be called from any
        # thread, so it holds a lock
        self.encoder = ThreadPoolExecutor(1, thread_name_prefix="pathunlearn-encode")
        self.encode_lock = threading.Lock()
        self.thread = threading.Thread(target=self._loop, name="pathunlearn-serve", daemon=True)
        self.thread.start()

    def submit(self, request: ChatRequest, default_max_tokens: int,
               on_event: Callable[[tuple], None] | None = None,
               deadline: float = math.inf) -> Job:
        """Encode the prompt with the chat template, check it fits the context, queue it
        (``on_event``, ``deadline``: see :class:`Job`). Called from any thread but the
        worker's; a prompt too long is a RequestError, and the worker never sees it."""
        from pathunlearn.data.chat import encode_prompt

        with self.encode_lock:
            prompt = encode_prompt(self.tokenizer, request.messages)
        room = (self.context - len(prompt)) if self.context else default_max_tokens
        max_tokens = request.max_tokens or min(default_max_tokens, room)
        if max_tokens > room or room < 1:
            raise RequestError(f"the prompt has {len(prompt)} tokens and max_tokens is "
                               f"{max_tokens}: together more than the model's context of "
                               f"{self.context} tokens", "max_tokens")
        job = Job(prompt, request, max_tokens, on_event=on_event, deadline=deadline)
        self.jobs.put(job)
        return job

    def queue(self, request: ChatRequest, default_max_tokens: int,
              on_event: Callable[[tuple], None] | None = None,
              deadline: float = math.inf) -> "asyncio.Future[Job]":
        """:meth:`submit` in the encoder thread, awaited from the event loop."""
        return asyncio.wrap_future(self.encoder.submit(self.submit, request, default_max_tokens,
                                                       on_event, deadline))

    def close(self) -> None:
        self.encoder.shutdown(wait=False, cancel_futures=True)
        self.jobs.put(None)
        self.thread.join(timeout=30)

    def _loop(self) -> None:
        waiting: deque[Job] = deque()
        while True:
            job = waiting.popleft() if waiting else self.jobs.get()
            if job is None:
                return
            batch, stop = [job], False
            while sum(j.rows for j in batch) < self.max_batch:
                try:
                    other = self.jobs.get_nowait()
                except queue.Empty:
                    break
                if other is None:
                    stop = True
                    break
                fits = sum(j.rows for j in batch) + other.rows <= self.max_batch
                (batch if other.sampling == job.sampling and fits else waiting).append(other)
            batch = _startable(batch)
            if batch:
                self._run(batch)
            if stop:
                return

    def _run(self, batch: list[Job]) -> None:
        """Decode a batch: streamed jobs get their events as tokens come, and every job's
        future its choices (or the exception)."""
        from pathunlearn.eval.generate import generate_rows, sample_generator

        rows, generators, owners = [], [], []  # owners[i]: (job, its choices, RowText) of row i
        for job in batch:
            r = job.request
            for j in range(job.rows):
                rows.append(job.prompt)
                generators.append(None if r.greedy else sample_generator(r.seed, 0, j))
                owners.append((job, range(r.n) if r.greedy else [j],
                               RowText(self.tokenizer, r.stop, job.max_tokens,
                                       live=r.stream or bool(r.stop))))

        def on_token(i: int, token: int | None) -> bool:
            job, indices, text = owners[i]
            delta = text.add(token, cut=time.monotonic() > job.deadline)
            for index in indices:
                if delta:
                    job.emit("delta", index, delta)
                if text.finish:
                    job.emit("finish", index, text.finish)
            return text.finish is not None or job.cancelled  # true: this row ends here

        first = batch[0].request
        try:
            generate_rows(self.model, rows, generators, stop_ids=self.stop_ids,
                          pad_id=self.pad_id, max_new_tokens=max(j.max_tokens for j in batch),
                          temperature=first.temperature or 1.0, top_p=first.top_p,
                          on_token=on_token)
        except Exception as e:  # a bug or out of memory: every waiting request gets a 500
            for job in batch:
                job.future.set_exception(e)
                job.emit("error", e)
            return
        for job in batch:
            choices = [Choice(t.tokens, t.text, t.finish or "length")
                       for owner, _, t in owners if owner is job]
            choices = choices * job.request.n if job.request.greedy else choices
            job.future.set_result(choices)
            job.emit("done", choices)


def _startable(batch: list[Job]) -> list[Job]:
    """The jobs of ``batch`` worth decoding: not those whose client left while they were
    queued (cancelled), nor those whose deadline passed there (they get a 503)."""
    now, out = time.monotonic(), []
    for job in batch:
        if job.cancelled:
            job.future.cancel()
        elif now > job.deadline:
            e = RequestError("the server is busy: the request's time limit passed while it "
                             "was queued; retry later", None, 503, "timeout", "server_error")
            job.future.set_exception(e)
            job.emit("error", e)
        else:
            out.append(job)
    return out


# ---------------------------------------------------------------------------------------------
# the HTTP side


def create_app(engine: Engine, model_name: str, options: ServeOptions | None = None):
    """The FastAPI application serving ``engine`` as model ``model_name``, with the limits
    of ``options``."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    options = options or ServeOptions()
    app = FastAPI(title="pathunlearn serve", docs_url=None, redoc_url=None)
    _answer_errors_as_openai(app)
    created = int(time.time())
    admitted = Admission(options.max_queued)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": model_name, "queued": engine.jobs.qsize()}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [_model_card(model_name, created)]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str):
        if model_id != model_name:
            raise RequestError(f"the model '{model_id}' does not exist: this server serves "
                               f"'{model_name}'", "model", 404, "model_not_found")
        return _model_card(model_name, created)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        deadline = time.monotonic() + options.request_timeout
        with admitted.one() as admit:
            raw = await read_body(request, options.max_request_bytes)
            # decoding, JSON and the chat template run in threads: a 1 MiB body must not
            # stall the event loop (and /health with it)
            parsed = await asyncio.to_thread(parse_body, raw, model_name, options)
            if parsed.stream:
                return await _stream(engine, parsed, options.default_max_tokens, model_name,
                                     deadline, admit)
            job = await engine.queue(parsed, options.default_max_tokens, deadline=deadline)
            admit(job)
        try:
            choices = await asyncio.wrap_future(job.future)
        except RequestError:
            raise
        except Exception as e:
            return JSONResponse(_server_error(e), status_code=500)
        return _Reply(model_name, len(job.prompt)).completion(choices)

    return app


class Admission:
    """How many requests the server holds at once (``ServeOptions.max_queued``): a request is
    counted from its arrival until its job's future is done (decoded, failed, cancelled or
    timed out in the queue), or until it fails before it has a job; one over the limit is a
    503 at once."""

    def __init__(self, limit: int):
        self.limit, self.held, self.lock = limit, 0, threading.Lock()

    def release(self, *_) -> None:
        with self.lock:
            self.held -= 1

    @contextmanager
    def one(self):
        """Hold a place for one request (a 503 RequestError when none is left); the block
        gets ``admit(job)``: from then the job's end releases the place, not the block's."""
        with self.lock:
            if self.held >= self.limit:
                raise RequestError(f"the server is busy: {self.held} requests are already "
                                   "queued or decoding (--max-queued); retry later", None,
                                   503, "overloaded", "server_error")
            self.held += 1
        handed = []

        def admit(job: Job) -> None:
            handed.append(job)
            job.future.add_done_callback(self.release)

        try:
            yield admit
        finally:
            if not handed:
                self.release()


def _answer_errors_as_openai(app) -> None:
    """Every error the app answers has OpenAI's shape: a RequestError, an unknown route or
    method (starlette's HTTPException), and a bug (500, not starlette's plain text)."""
    from fastapi import Request
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    @app.exception_handler(RequestError)
    async def _bad_request(_: Request, e: RequestError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(HTTPException)
    async def _http_error(_: Request, e: HTTPException):
        return JSONResponse(RequestError(str(e.detail), status=e.status_code).body(),
                            status_code=e.status_code, headers=e.headers)

    @app.exception_handler(Exception)
    async def _bug(_: Request, e: Exception):
        return JSONResponse(_server_error(e, "internal error"), status_code=500)


async def _stream(engine: Engine, request: ChatRequest, default_max_tokens: int,
                  model_name: str, deadline: float, admit: Callable[[Job], None]):
    """A streamed request: its job pushes events onto an asyncio queue from the worker thread;
    the response starts with the first of them, so a failure before any token is still a
    500 (or the 503 of a request whose time passed in the queue)."""
    from fastapi.responses import JSONResponse, StreamingResponse

    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    job = await engine.queue(
        request, default_max_tokens, deadline=deadline,
        on_event=lambda event: loop.call_soon_threadsafe(events.put_nowait, event))
    admit(job)
    try:
        first = await events.get()
    except BaseException:  # cancelled while queued: the worker skips the job's rows
        job.cancelled = True
        raise
    if first[0] == "error":
        e = first[1]
        if isinstance(e, RequestError):
            return JSONResponse(e.body(), status_code=e.status)
        return JSONResponse(_server_error(e), status_code=500)
    reply = _Reply(model_name, len(job.prompt))
    return StreamingResponse(reply.chunks(job, first, events), media_type="text/event-stream")


def _server_error(e: Exception, what: str = "generation failed") -> dict:
    return {"error": {"message": f"{what}: {e}", "type": "server_error", "param": None,
                      "code": None}}


def _model_card(name: str, created: int) -> dict:
    return {"id": name, "object": "model", "created": created, "owned_by": "pathunlearn"}


@dataclass
class _Reply:
    """One request's answer, as a completion or as stream chunks."""

    model: str
    prompt_tokens: int
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))

    def usage(self, choices: list[Choice]) -> dict:
        completion = sum(len(c.tokens) for c in choices)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion}

    def _head(self, kind: str) -> dict:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def completion(self, choices: list[Choice]) -> dict:
        body = [{"index": i, "message": {"role": "assistant", "content": c.text},
                 "finish_reason": c.finish_reason, "logprobs": None}
                for i, c in enumerate(choices)]
        return {**self._head("chat.completion"), "choices": body, "usage": self.usage(choices)}

    def _event(self, **fields) -> str:
        return f"data: {json.dumps({**self._head('chat.completion.chunk'), **fields})}\n\n"

    def _chunk(self, index: int, delta: dict, finish: str | None = None) -> str:
        return self._event(choices=[{"index": index, "delta": delta, "finish_reason": finish,
                                     "logprobs": None}])

    async def chunks(self, job: Job, first: tuple, events: asyncio.Queue):
        """Server-sent events: a role chunk per choice, then a chunk per text delta and one
        with each choice's finish reason as the worker produces them; then the usage (when
        asked) and ``[DONE]``. A failure after the first token ends the stream with an error
        event. However the stream ends (a client that disconnects cancels it), the job is
        cancelled, so the worker stops decoding rows nobody reads."""
        try:
            for i in range(job.request.n):
                yield self._chunk(i, {"role": "assistant", "content": ""})
            event = first
            while event[0] != "done":
                if event[0] == "delta":
                    yield self._chunk(event[1], {"content": event[2]})
                elif event[0] == "finish":
                    yield self._chunk(event[1], {}, event[2])
                else:  # an error: the 200 is sent already, so say it in the stream
                    yield f"data: {json.dumps(_server_error(event[1]))}\n\n"
                    return
                event = await events.get()
            if job.request.include_usage:
                yield self._event(choices=[], usage=self.usage(event[1]))
            yield "data: [DONE]\n\n"
        finally:
            job.cancelled = True


# ---------------------------------------------------------------------------------------------
# loading the model and running the server


def resolve_model(spec: str) -> tuple[Path, str | None, str]:
    """(directory, gguf file or None, served name) of ``tiny``, ``smollm2`` or a checkpoint
    directory (a run's prefix, an unlearned model: anything ``save_pretrained`` wrote)."""
    if spec == "tiny":
        from pathunlearn.tiny import tiny_location

        return tiny_location(), None, "tiny"
    if spec == "smollm2":
        from pathunlearn.models import smollm2_location

        directory, gguf = smollm2_location()
        return directory, gguf, "smollm2"
    path = Path(spec)
    if path.suffix == ".gguf" and path.is_file():
        return path.parent, path.name, path.stem
    if not (path / "config.json").is_file():
        raise UserError(f"{spec}: not a model: give a Hugging Face checkpoint directory (with "
                        "config.json), a .gguf file, 'tiny' or 'smollm2'")
    return path, None, path.resolve().name


def require_serve_extra() -> None:
    """A UserError naming the extra to install when fastapi or uvicorn is missing."""
    from pathunlearn.extras import installed

    missing = [m for m in ("fastapi", "uvicorn") if not installed(m)]
    if missing:
        raise UserError(f"pathunlearn serve needs {' and '.join(missing)}: {SERVE_EXTRA_HINT}")


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: any free port); a UserError when the address is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise UserError(f"--host {host} --port {port}: cannot listen there ({e.strerror or e})") \
            from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def serve(spec: str, options: ServeOptions | None = None, log=print) -> None:
    """Load ``spec`` and serve it with ``options`` until interrupted (the CLI's
    ``pathunlearn serve``)."""
    options = options or ServeOptions()
    require_serve_extra()
    import torch
    import uvicorn

    from pathunlearn.models import load_pretrained, resolve_device

    directory, gguf, served = resolve_model(spec)
    device = resolve_device(options.device)
    torch.set_num_threads(options.threads)  # a server and its clients share the cores
    sock = bind(options.host, options.port)
    model, tokenizer = load_pretrained(directory, gguf_file=gguf, dtype=options.dtype,
                                       device=device)
    engine = Engine(model, tokenizer, max_batch=options.max_batch)
    name = options.name or served
    app = create_app(engine, name, options)
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    log(f"serving {name} ({directory}{'/' + gguf if gguf else ''}) at "
        f"http://{shown}:{bound_port}/v1")
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shuts down gracefully, then re-raises Ctrl-C
        pass
    finally:
        engine.close()
        sock.close()
    log("stopped")
