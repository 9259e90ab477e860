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
"code"}}``: 404 for an unknown model, 400 for malformed JSON or messages, a max_tokens out of
range, or a prompt longer than the model's context.
"""

# no `from __future__ import annotations`: FastAPI reads the route signatures at runtime,
# and their `Request` type is imported inside create_app (fastapi is an optional extra)
import asyncio
import json
import queue
import secrets
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pathunlearn.errors import UserError

SERVE_EXTRA_HINT = "pip install 'pathunlearn[serve]'"
ROLES = ("system", "user", "assistant")
MAX_N = 8
"""Most choices one request may ask for (``n``)."""


# ---------------------------------------------------------------------------------------------
# requests: validated into a plain object before they reach the model


class RequestError(Exception):
    """A bad request: its HTTP status and the OpenAI error fields."""

    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 code: str | None = None):
        super().__init__(message)
        self.message, self.param, self.status, self.code = message, param, status, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": "invalid_request_error",
                          "param": self.param, "code": self.code}}


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


def parse_messages(messages: Any) -> list[dict[str, str]]:
    """OpenAI chat messages as ``{"role", "content"}`` dicts; a RequestError names the first
    bad message."""
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty list of {role, content} objects",
                           "messages")
    out = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise RequestError(f"{where} must be an object with 'role' and 'content'", where)
        role = "system" if m.get("role") == "developer" else m.get("role")
        if role not in ROLES:
            raise RequestError(f"{where}.role must be one of {', '.join(ROLES)}, got "
                               f"{m.get('role')!r}", f"{where}.role")
        out.append({"role": role, "content": _content(m.get("content"), where)})
    return out


def parse_request(body: Any, model_name: str, max_tokens_limit: int) -> ChatRequest:
    """Validate a chat-completions body: a RequestError (400, or 404 for another model) for
    anything the server cannot honour. Fields it does not know (``tools``, ``logprobs`` ...)
    are ignored, as OpenAI-compatible servers commonly do."""
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
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else stop or []
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise RequestError("'stop' must be a string or a list of non-empty strings", "stop")
    options = body.get("stream_options") or {}
    return ChatRequest(
        messages=parse_messages(body.get("messages")), max_tokens=max_tokens,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, low_open=True), n=n,
        seed=secrets.randbits(31) if seed is None else seed, stream=bool(body.get("stream")),
        include_usage=bool(isinstance(options, dict) and options.get("include_usage")),
        stop=tuple(stop))


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

    def add(self, token: int | None) -> str:
        """Take the row's next token (None: its stop token came); the new text to send."""
        if token is None:
            self.finish = "stop"
        else:
            self.tokens.append(token)
            if len(self.tokens) >= self.max_tokens:
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
    """

    prompt: list[int]
    request: ChatRequest
    max_tokens: int
    future: Future = field(default_factory=Future)
    on_event: Callable[[tuple], None] | None = None
    cancelled: bool = False

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
        self.thread = threading.Thread(target=self._loop, name="pathunlearn-serve", daemon=True)
        self.thread.start()

    def submit(self, request: ChatRequest, default_max_tokens: int,
               on_event: Callable[[tuple], None] | None = None) -> Job:
        """Encode the prompt with the chat template, check it fits the context, queue it
        (``on_event``: see :class:`Job`)."""
        from pathunlearn.data.chat import encode_prompt

        prompt = encode_prompt(self.tokenizer, request.messages)
        room = (self.context - len(prompt)) if self.context else default_max_tokens
        max_tokens = request.max_tokens or min(default_max_tokens, room)
        if max_tokens > room or room < 1:
            raise RequestError(f"the prompt has {len(prompt)} tokens and max_tokens is "
                               f"{max_tokens}: together more than the model's context of "
                               f"{self.context} tokens", "max_tokens")
        job = Job(prompt, request, max_tokens, on_event=on_event)
        self.jobs.put(job)
        return job

    def close(self) -> None:
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
            delta = text.add(token)
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


# ---------------------------------------------------------------------------------------------
# the HTTP side


def create_app(engine: Engine, model_name: str, *, max_tokens_limit: int = 1024,
               default_max_tokens: int = 256):
    """The FastAPI application serving ``engine`` as model ``model_name``."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    app = FastAPI(title="pathunlearn serve", docs_url=None, redoc_url=None)
    created = int(time.time())

    @app.exception_handler(RequestError)
    async def _bad_request(_: Request, e: RequestError):
        return JSONResponse(e.body(), status_code=e.status)

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
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            raise RequestError("the request body is not valid JSON") from None
        parsed = parse_request(body, model_name, max_tokens_limit)
        if parsed.stream:
            return await _stream(engine, parsed, default_max_tokens, model_name)
        job = engine.submit(parsed, default_max_tokens)
        try:
            choices = await asyncio.wrap_future(job.future)
        except Exception as e:
            return JSONResponse(_server_error(e), status_code=500)
        return _Reply(model_name, len(job.prompt)).completion(choices)

    return app


async def _stream(engine: Engine, request: ChatRequest, default_max_tokens: int,
                  model_name: str):
    """A streamed request: its job pushes events onto an asyncio queue from the worker thread;
    the response starts with the first of them, so a failure before any token is still a
    500."""
    from fastapi.responses import JSONResponse, StreamingResponse

    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    job = engine.submit(request, default_max_tokens,
                        on_event=lambda event: loop.call_soon_threadsafe(events.put_nowait, event))
    try:
        first = await events.get()
    except BaseException:  # cancelled while queued: the worker skips the job's rows
        job.cancelled = True
        raise
    if first[0] == "error":
        return JSONResponse(_server_error(first[1]), status_code=500)
    reply = _Reply(model_name, len(job.prompt))
    return StreamingResponse(reply.chunks(job, first, events), media_type="text/event-stream")


def _server_error(e: Exception) -> dict:
    return {"error": {"message": f"generation failed: {e}", "type": "server_error",
                      "param": None, "code": None}}


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


def serve(spec: str, *, host: str = "127.0.0.1", port: int = 8000, name: str | None = None,
          device: str = "auto", dtype: str = "float32", threads: int = 1, max_batch: int = 8,
          max_tokens_limit: int = 1024, default_max_tokens: int = 256, log=print) -> None:
    """Load ``spec`` and serve it until interrupted (the CLI's ``pathunlearn serve``)."""
    require_serve_extra()
    import torch
    import uvicorn

    from pathunlearn.models import load_pretrained, resolve_device

    directory, gguf, served = resolve_model(spec)
    torch.set_num_threads(threads)  # a server and its clients share the cores
    sock = bind(host, port)
    model, tokenizer = load_pretrained(directory, gguf_file=gguf, dtype=dtype,
                                       device=resolve_device(device))
    engine = Engine(model, tokenizer, max_batch=max_batch)
    app = create_app(engine, name or served, max_tokens_limit=max_tokens_limit,
                     default_max_tokens=default_max_tokens)
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    log(f"serving {name or served} ({directory}{'/' + gguf if gguf else ''}) at "
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
