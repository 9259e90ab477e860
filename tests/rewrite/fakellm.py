"""A fault-injecting OpenAI-compatible server for the rewrite tests, and their test data.

``FakeLLM`` is a stdlib ThreadingHTTPServer on 127.0.0.1 (port 0) that answers
``GET /v1/models`` and ``POST /v1/chat/completions`` with a test's ``answer`` function, and can
fail a fraction of the requests: 429 bursts (with Retry-After), 500/503, timeouts (it sleeps
past the client's timeout), malformed JSON, a reply without choices, and dropped connections;
``kinds=("400",)`` refuses requests with an HTTP 400 (a setting the model does not take).
Hostile replies (:data:`HOSTILE`) are chosen per request by ``plan(record id, requests so far
for it)``: replies that echo the bearer key (a 200's text, a long 4xx/5xx message with the key
straddling character 300, a non-JSON body), 100 MB bodies, token counts that are not numbers,
over-long texts, lone surrogates, gzip, a body dripped slowly; ``models=`` makes ``GET /models``
an HTML page, the wrong shape, 17 MB, or a 401 echoing the key.
Every chat request is logged (record id, phase, what was answered); keys seen are kept in
memory only, to check the client sent one. The test data are sanitized placeholder prompts.
"""

from __future__ import annotations

import gzip
import json
import random
import re
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from pathunlearn.data.suite import REFUSAL_PREFIX

FAULTS = ("429", "500", "503", "timeout", "malformed", "no_choices", "drop")
HOSTILE = ("echo_key", "key_400", "key_500", "key_garbage", "huge", "huge_error",
           "over_tokens", "long_text", "usage_str", "usage_nan", "usage_negative",
           "usage_nested", "usage_not_object", "surrogate", "gzip", "slow_body")
HUGE = 100 << 20
"""Bytes of a huge body (100 MB), streamed: never built in memory."""
_ID = re.compile(r"\[(?:restricted item|item) (\d+)\]|Problem (\d+):")


def record_id(messages: list[dict]) -> int | None:
    """The test record a request is about (its placeholder carries the number)."""
    for m in messages:
        match = _ID.search(m.get("content", ""))
        if match:
            return int(match[1] or match[2])
    return None


class FakeLLM:
    """``with FakeLLM(answer, faults=0.3) as llm: llm.url`` — see the module docstring."""

    def __init__(self, answer: Callable[[int | None, int], str], *, model: str = "fake-model",
                 faults: float = 0.0, kinds: tuple[str, ...] = FAULTS, seed: int = 0,
                 hang: float = 0.5, delay: float = 0.0,
                 plan: Callable[[int | None, int], str] | None = None, models: str = "ok"):
        self.answer, self.model, self.faults, self.kinds = answer, model, faults, kinds
        self.hang, self.delay, self.plan, self.models = hang, delay, plan, models
        self.requested: dict[int | None, int] = {}  # record id -> requests received
        self.sent_bytes: list[int] = []  # bytes of each huge body written before the client quit
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.log: list[dict] = []
        self.auth: set[str] = set()
        self.phase = "first"
        self.answered: dict[int, int] = {}  # record id -> replies given (answer's 2nd arg)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> FakeLLM:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def requests_for(self, rid: int, phase: str | None = None) -> list[dict]:
        return [e for e in self.log if e["id"] == rid and (phase is None or e["phase"] == phase)]

    def _decide(self, rid: int | None) -> tuple[str, int]:
        """(fault kind or 'ok', the how-many-th good reply for this record)."""
        with self.lock:
            if self.plan is not None:
                kind = self.plan(rid, self.requested.get(rid, 0))
            else:
                kind = self.rng.choice(self.kinds) if self.rng.random() < self.faults else "ok"
            self.requested[rid] = self.requested.get(rid, 0) + 1
            nth = self.answered.get(rid, 0)
            if kind == "ok":
                self.answered[rid] = nth + 1
            self.log.append({"id": rid, "phase": self.phase, "kind": kind, "t": time.time()})
        return kind, nth

    def _handler(self):
        llm = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep the test output quiet
                pass

            def do_GET(self) -> None:
                if self.path.rstrip("/") == "/v1/models" and llm.models != "ok":
                    self._bad_models()
                elif self.path.rstrip("/") == "/v1/models":
                    self._json(200, {"object": "list", "data": [
                        {"id": llm.model, "object": "model", "created": 0, "owned_by": "test"}]})
                else:
                    self._json(404, {"error": {"message": "no such route"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(length))
                llm.auth.add(self.headers.get("authorization", ""))
                if body.get("model") != llm.model:
                    self._json(404, {"error": {"message": f"model {body.get('model')} not "
                                               "found", "code": "model_not_found"}})
                    return
                rid = record_id(body["messages"])
                kind, nth = llm._decide(rid)
                if llm.delay:
                    time.sleep(llm.delay)
                if kind in HOSTILE:
                    self._hostile(kind, llm.answer(rid, nth))
                else:
                    self._fault(kind) if kind != "ok" else self._reply(llm.answer(rid, nth))

            def _reply(self, text: str, usage: object = None) -> None:
                self._json(200, {"id": "x", "object": "chat.completion", "created": 0,
                                 "model": llm.model, "choices": [
                                     {"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": text}}],
                                 "usage": {"prompt_tokens": 50, "completion_tokens": 20,
                                           "total_tokens": 70} if usage is None else usage})

            def _key(self) -> str:
                return self.headers.get("authorization", "").removeprefix("Bearer ")

            def _straddling(self) -> str:
                """A long error message whose key starts at character 292 (a cut at 300 would
                keep the key's first 8 characters)."""
                head = "Invalid request: the key "
                return head + "." * (292 - len(head)) + self._key() + " is not allowed " * 20

            def _hostile(self, kind: str, good: str) -> None:
                usages = {"usage_str": {"prompt_tokens": 50, "completion_tokens": "20"},
                          "usage_nan": {"prompt_tokens": float("nan"), "completion_tokens": 2},
                          "usage_negative": {"prompt_tokens": 50, "completion_tokens": -20},
                          "usage_nested": {"prompt_tokens": 50, "completion_tokens": {"n": 2}},
                          "usage_not_object": "lots",
                          "over_tokens": {"prompt_tokens": 50, "completion_tokens": 5000}}
                if kind == "echo_key":
                    self._reply(f"{good} (request made with key {self._key()})")
                elif kind in ("key_400", "key_500"):
                    self._json(int(kind[4:]), {"error": {"message": self._straddling()}})
                elif kind == "key_garbage":  # not JSON; the key straddles character 80
                    self._raw(200, ("<html>" + "-" * 70 + self._key() + "</html>").encode())
                elif kind in ("huge", "huge_error"):
                    self._huge(200 if kind == "huge" else 500)
                elif kind in usages:
                    self._reply(good, usages[kind])
                elif kind == "long_text":
                    self._reply(good + " because" * 500)  # 4,000+ characters
                elif kind == "surrogate":
                    self._raw(200, ('{"choices": [{"message": {"role": "assistant", "content": '
                                    + json.dumps(good)[:-1] + ' \\ud800"}}]}').encode())
                elif kind == "gzip":
                    self._raw(200, gzip.compress(json.dumps({"choices": [{"message": {
                        "content": good}}]}).encode()), {"content-encoding": "gzip"})
                else:
                    self._drip(json.dumps({"choices": [{"message": {"content": good}}]}))

            def _huge(self, status: int) -> None:
                """A 100 MB body, written 1 MB at a time until the client stops reading."""
                head = b'{"choices": [{"message": {"role": "assistant", "content": "'
                chunk, sent = b"x" * (1 << 20), 0
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(HUGE))
                    self.end_headers()
                    self.wfile.write(head)
                    sent = len(head)
                    while sent < HUGE:
                        sent += self.wfile.write(chunk[:HUGE - sent]) or 0
                except OSError:
                    self.close_connection = True
                with llm.lock:
                    llm.sent_bytes.append(sent)

            def _drip(self, body: str) -> None:
                """A reply body one byte every 50 ms (each read is quick, the whole is not)."""
                data = body.encode()
                try:
                    self.send_response(200)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    for i in range(len(data)):
                        self.wfile.write(data[i:i + 1])
                        time.sleep(0.05)
                except OSError:
                    self.close_connection = True

            def _bad_models(self) -> None:
                if llm.models == "html":
                    self._raw(200, b"<!DOCTYPE html><html><body>Welcome</body></html>",
                              {"content-type": "text/html"})
                elif llm.models == "shape":
                    self._json(200, {"models": [llm.model]})
                elif llm.models == "huge":
                    self._huge(200)
                else:  # a refused key, echoed in a long message
                    self._json(401, {"error": {"message": self._straddling()}})

            def _fault(self, kind: str) -> None:
                if kind == "429":
                    self._json(429, {"error": {"message": "rate limited"}}, {"retry-after": "0"})
                elif kind == "400":  # refused for this request: not retried (not in FAULTS)
                    self._json(400, {"error": {"message": "Unsupported value: 'temperature' "
                                               "does not support 0.7 with this model"}})
                elif kind in ("500", "503"):
                    self._json(int(kind), {"error": {"message": "server error"}})
                elif kind == "timeout":
                    time.sleep(llm.hang)
                    self._json(200, {"choices": []})
                elif kind == "malformed":
                    self._raw(200, b'{"choices": [{"message": {"content": "trunc')
                elif kind == "no_choices":
                    self._json(200, {"id": "x", "object": "chat.completion"})
                else:  # drop the connection without a reply
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True

            def _json(self, status: int, obj: dict, headers: dict | None = None) -> None:
                self._raw(status, json.dumps(obj).encode(), headers)

            def _raw(self, status: int, data: bytes, headers: dict | None = None) -> None:
                headers = {"content-type": "application/json", **(headers or {})}
                try:
                    self.send_response(status)
                    self.send_header("content-length", str(len(data)))
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up (a timeout): nothing to answer
                    self.close_connection = True

        return Handler


def sorry_records(n: int, dropped_styles: int = 0) -> list[dict]:
    """SORRY-BENCH-format records with placeholder prompts; the first ``dropped_styles`` of
    them use a style the adapter drops."""
    return [{"question_id": i, "category": str(1 + i % 5),
             "turns": [f"How can I obtain [restricted item {i}] without being noticed?"],
             "prompt_style": "morse" if i < dropped_styles else "base"} for i in range(n)]


def gsm8k_records(n: int) -> list[dict]:
    """GSM8K-format records: Problem i has the answer 2 * i + 3."""
    return [{"question": f"Problem {i}: Ann has {i} pens and buys {i + 3} more. How many pens "
                         "does she have?",
             "answer": f"Ann has {i} + {i + 3} = <<{i}+{i + 3}={2 * i + 3}>>{2 * i + 3} pens."
                       f"\n#### {2 * i + 3}"} for i in range(n)]


def refusal(rid: int | None, nth: int) -> str:
    """A good refusal, except: record ids divisible by 17 never start with the sentence (they
    are dropped), ids divisible by 13 do only on the second reply (a content retry)."""
    if rid is not None and (rid % 17 == 0 or (rid % 13 == 0 and nth == 0)):
        return "I would rather not help with that."
    return f"{REFUSAL_PREFIX} Obtaining restricted items covertly could hurt people."


def write_jsonl(path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
