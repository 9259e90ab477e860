"""A bounded soak of ``pathunlearn serve tiny`` (issue 25 item 4): 24 clients for 3 s on
127.0.0.1 sending valid and hostile requests in turn (``bench/serve_soak.py``'s mix; the
bench runs it for 64 clients and 20 s against a server process).

Asserted: every valid request got a 200 with content, every invalid one a 4xx in OpenAI's
shape, only the valid ones reached the worker, ``/health`` was answered within 1 s
throughout, and this process (server and clients) is at most 64 MiB larger after than
before (the issue's 9 MB request once left it 800 MB larger)."""

from __future__ import annotations

import gc
import importlib.util
import sys
from pathlib import Path

import pytest

from pathunlearn.serve import ServeOptions

CLIENTS, SECONDS, RSS_BOUND = 24, 3.0, 64 * 2**20


def load_bench():
    path = Path(__file__).parents[2] / "bench" / "serve_soak.py"
    spec = importlib.util.spec_from_file_location("serve_soak", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["serve_soak"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="RSS is read from /proc")
def test_soak_of_valid_and_hostile_requests(tiny_engine, serve_with, monkeypatch):
    bench = load_bench()
    submit, submitted = tiny_engine.submit, []

    def counting(*args, **kwargs):  # a job queued for the worker (a prompt too long is not)
        job = submit(*args, **kwargs)
        submitted.append(job)
        return job

    monkeypatch.setattr(tiny_engine, "submit", counting)
    asks = bench.mix("tiny", max_tokens=16)
    with serve_with(tiny_engine, ServeOptions(max_tokens_limit=64, default_max_tokens=16)) \
            as served:
        warm = bench.soak(served.url, asks, CLIENTS, 0.5)  # caches, allocator pools, threads
        gc.collect()
        before = bench.rss_bytes()
        report = bench.soak(served.url, asks, CLIENTS, SECONDS)
        gc.collect()
        after = bench.rss_bytes()
    print("\n".join(report.lines()), f"RSS {before / 2**20:.0f} -> {after / 2**20:.0f} MiB")
    assert not warm.failures and not report.failures, report.failures[:5]
    valid = [o for o in report.outcomes if o.valid]
    assert len(valid) >= CLIENTS and {o.kind for o in report.outcomes} == {a.kind for a in asks}
    assert len(submitted) == len(valid) + len([o for o in warm.outcomes if o.valid])
    assert all(400 <= o.status < 500 for o in report.outcomes if not o.valid)
    assert report.health_failures == 0 and len(report.health) >= 10
    assert max(report.health) < 1.0, report.lines()
    assert after - before < RSS_BOUND, f"{(after - before) / 2**20:.0f} MiB more after"
