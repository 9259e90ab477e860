"""Benchmark (not a test): ``pathunlearn serve tiny`` under a soak of concurrent clients
(issue 25 item 4).

Starts the server as its own process (``--threads 1``), warms it up, then runs CLIENTS client
threads for SECONDS, each sending, one after the other, a mix of valid requests (greedy,
seeded sampling, streamed, with stop strings) and invalid ones (NaN and 1e-300 temperatures,
100 stop strings of 5,000 characters, 300 messages, 100k-deep JSON, a lone surrogate, bytes
that are not UTF-8, a body over the size limit, a prompt of 150k characters longer than the
model's context, an unknown model, malformed JSON), while
another process asks ``/health`` every 50 ms. A valid request must get a 200 with content, an
invalid one a 4xx in OpenAI's error shape; anything else is a failure. Prints the requests,
the failures, p50/p99 latency, the slowest ``/health`` and the server's RSS before and after.

    python bench/serve_soak.py [--clients 64] [--seconds 20] [--max-tokens 32]

``tests/serve/test_soak.py`` runs the same soak, shorter, against an in-process server.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

MAX_REQUEST_BYTES = 2**20  # the server's default --max-request-bytes
QUESTIONS = ["What is 3 plus 4?", "Ann has 5 pens and buys 2 more. How many?",
             "What is 12 minus 5?", "Tom reads 20 pages a day. How many in 3 days?"]


@dataclass(frozen=True)
class Ask:
    """One request of the mix: its body, and whether the server must answer it (200)."""

    kind: str
    body: bytes
    valid: bool
    stream: bool = False


@dataclass(frozen=True)
class Outcome:
    """What one request got: status (0: no HTTP answer), seconds, and why it failed."""

    kind: str
    valid: bool
    status: int
    seconds: float
    failure: str | None


@dataclass
class Report:
    """The outcomes of a soak and the latencies of ``/health`` during it."""

    outcomes: list[Outcome] = field(default_factory=list)
    health: list[float] = field(default_factory=list)
    health_failures: int = 0

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.failure]

    def latency(self, q: float, valid: bool = True) -> float:
        """The ``q`` quantile (0..1) of the latencies of the valid (or invalid) requests."""
        times = sorted(o.seconds for o in self.outcomes if o.valid == valid)
        return times[min(len(times) - 1, int(q * len(times)))] if times else float("nan")

    def lines(self) -> list[str]:
        valid = [o for o in self.outcomes if o.valid]
        kinds = sorted({o.kind for o in self.failures})
        return [
            f"requests {len(self.outcomes)} ({len(valid)} valid, "
            f"{len(self.outcomes) - len(valid)} invalid); failures {len(self.failures)}"
            + (f" ({', '.join(kinds)})" if kinds else ""),
            f"latency valid p50 {1000 * self.latency(0.5):.0f} ms, p99 "
            f"{1000 * self.latency(0.99):.0f} ms; invalid p50 "
            f"{1000 * self.latency(0.5, False):.0f} ms, p99 "
            f"{1000 * self.latency(0.99, False):.0f} ms",
            f"/health {len(self.health)} answered, slowest {1000 * max(self.health, default=0):.0f}"
            f" ms, {self.health_failures} unanswered"]


def mix(model: str = "tiny", max_tokens: int = 32,
        max_request_bytes: int = MAX_REQUEST_BYTES) -> list[Ask]:
    """The requests the clients send, valid and invalid interleaved."""

    def body(**fields) -> bytes:
        return json.dumps({"model": model, "max_tokens": max_tokens, **fields}).encode()

    def user(text: str) -> list[dict]:
        return [{"role": "user", "content": text}]

    valid = [Ask("greedy", body(messages=user(QUESTIONS[0]), temperature=0), True),
             Ask("sampled", body(messages=user(QUESTIONS[1]), temperature=0.7, seed=3), True),
             Ask("stream", body(messages=user(QUESTIONS[2]), seed=5, stream=True), True, True),
             Ask("stop", body(messages=user(QUESTIONS[3]), temperature=0, stop=["zzz", "\x00"]),
                 True)]
    padding = max_request_bytes - len(body(messages=user(""))) + 1
    invalid = [
        Ask("nan", body(messages=user(QUESTIONS[0]), temperature=float("nan")), False),
        Ask("denormal", body(messages=user(QUESTIONS[0]), temperature=1e-300), False),
        Ask("stops", body(messages=user(QUESTIONS[0]), stop=["x" * 5000] * 100), False),
        Ask("messages", body(messages=user(QUESTIONS[0]) * 300), False),
        Ask("deep", b"[" * 100_000 + b"]" * 100_000, False),
        Ask("surrogate", body(messages=user(QUESTIONS[0])).replace(b"What", b"\\ud800"), False),
        Ask("not-utf8", body(messages=user(QUESTIONS[0])).replace(b"What", b"\xff\xfe"), False),
        Ask("too-large", body(messages=user("x" * padding)), False),
        Ask("long-prompt", body(messages=user("pens " * 30_000)), False),  # tokenized, then
        # refused: longer than the model's context (for a model of < 30k tokens)
        Ask("model", json.dumps({"model": "nope", "messages": user("hi")}).encode(), False),
        Ask("malformed", b'{"model": "tiny", "messages": [', False)]
    out = []
    for i, bad in enumerate(invalid):  # one valid request between two invalid ones
        out += [valid[i % len(valid)], bad]
    return out


def ask(host: str, port: int, a: Ask, timeout: float = 60) -> Outcome:
    """Send ``a`` on a new connection; its outcome, checked as the module docstring says."""
    start = time.perf_counter()
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("POST", "/v1/chat/completions", body=a.body,
                     headers={"content-type": "application/json"})
        response = conn.getresponse()
        status, data = response.status, response.read()
    except (OSError, http.client.HTTPException) as e:
        return Outcome(a.kind, a.valid, 0, time.perf_counter() - start, f"no answer: {e!r}")
    finally:
        conn.close()
    seconds = time.perf_counter() - start
    try:
        why = (_check_answer(status, data, a.stream) if a.valid
               else _check_refusal(status, data))
    except (ValueError, KeyError, TypeError, IndexError) as e:
        why = f"{status}: unreadable body ({e!r}): {data[:120]!r}"
    return Outcome(a.kind, a.valid, status, seconds, why)


def _check_answer(status: int, data: bytes, stream: bool) -> str | None:
    if status != 200:
        return f"{status}: {data[:120]!r}"
    if stream:
        events = [line[6:] for line in data.decode().splitlines() if line.startswith("data: ")]
        if events[-1] != "[DONE]":
            return f"stream ended without [DONE]: {events[-1][:120]}"
        chunks = [json.loads(e) for e in events[:-1]]
        text = "".join(c["delta"].get("content") or "" for e in chunks for c in e["choices"])
    else:
        text = json.loads(data)["choices"][0]["message"]["content"]
    return None if isinstance(text, str) and text else f"200 without content: {data[:120]!r}"


def _check_refusal(status: int, data: bytes) -> str | None:
    if not 400 <= status < 500:
        return f"{status} (a 4xx expected): {data[:120]!r}"
    error = json.loads(data)["error"]
    if set(error) != {"message", "type", "param", "code"} or not isinstance(
            error["message"], str) or not error["message"]:
        return f"{status}: not OpenAI's error shape: {data[:120]!r}"
    return None


def soak(url: str, asks: list[Ask], clients: int, seconds: float) -> Report:
    """``clients`` threads sending ``asks`` round and round for ``seconds``, and a process
    of its own asking ``/health`` every 50 ms (in this process it would wait for the
    clients' GIL, not the server); every request's outcome."""
    parts = urlsplit(url)
    host, port = parts.hostname, parts.port
    report, lock, stop = Report(), threading.Lock(), time.monotonic() + seconds
    prober = subprocess.Popen([sys.executable, __file__, "--probe-health", url, str(seconds)],
                              stdout=subprocess.PIPE, text=True)

    def client(k: int) -> None:
        i = k  # client k starts k requests into the mix, then takes them in turn
        while time.monotonic() < stop:
            outcome = ask(host, port, asks[i % len(asks)])
            i += 1
            with lock:
                report.outcomes.append(outcome)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    probed = json.loads(prober.communicate(timeout=60)[0])
    report.health, report.health_failures = probed["seconds"], probed["failures"]
    return report


def probe_health(url: str, seconds: float) -> dict:
    """``GET /health`` every 50 ms for ``seconds``: the latency of each answer, and how
    many got none (or not a 200) within 10 s."""
    parts = urlsplit(url)
    out, stop = {"seconds": [], "failures": 0}, time.monotonic() + seconds
    while time.monotonic() < stop:
        start = time.perf_counter()
        try:
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
            conn.request("GET", "/health")
            ok = conn.getresponse().status == 200
            conn.close()
        except (OSError, http.client.HTTPException):
            ok = False
        if ok:
            out["seconds"].append(time.perf_counter() - start)
        else:
            out["failures"] += 1
        time.sleep(0.05)
    return out


def rss_bytes(pid: int | None = None) -> int:
    """Resident memory of process ``pid`` (this one by default), from /proc (Linux)."""
    with open(f"/proc/{pid or 'self'}/status") as f:
        kb = next(line for line in f if line.startswith("VmRSS:")).split()[1]
    return int(kb) * 1024


def main() -> None:
    if sys.argv[1:2] == ["--probe-health"]:  # soak()'s prober: URL SECONDS, JSON out
        print(json.dumps(probe_health(sys.argv[2], float(sys.argv[3]))))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--model", default="tiny", help="what pathunlearn serve serves")
    args = ap.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "pathunlearn", "serve", args.model, "--port", "0",
         "--threads", "1"], env=env, stdout=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        if " at http" not in line:
            raise SystemExit(f"the server did not start: {line!r}")
        url = line.split(" at ")[-1].strip()
        asks = mix(line.split()[1], args.max_tokens)  # "serving NAME (DIRECTORY) at URL"
        warm = soak(url, asks, args.clients, 2.0)  # allocator, tokenizer and caches warm
        before = rss_bytes(server.pid)
        report = soak(url, asks, args.clients, args.seconds)
        after = rss_bytes(server.pid)
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)
    print(f"{args.clients} clients for {args.seconds:g} s, max_tokens {args.max_tokens} "
          f"(warm-up: {len(warm.outcomes)} requests, {len(warm.failures)} failures)")
    for text in report.lines():
        print(text)
    print(f"server RSS before {before / 2**20:.0f} MiB, after {after / 2**20:.0f} MiB "
          f"({(after - before) / 2**20:+.1f} MiB)")
    for o in report.failures[:10]:
        print(f"  failed: {o.kind}: {o.failure}")


if __name__ == "__main__":
    main()
