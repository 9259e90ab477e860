"""The tiny model served in-process over loopback (uvicorn in a thread), once per module."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import pytest


@dataclass
class Served:
    """A running server: its base URL, the served name, the model/tokenizer it holds and
    its engine."""

    url: str
    name: str
    model: object
    tokenizer: object
    engine: object


@pytest.fixture(scope="module")
def tiny_engine(one_thread):
    """The tiny model's Engine (worker thread started), batching up to 8 rows."""
    from pathunlearn.models import load_pretrained
    from pathunlearn.serve import Engine, resolve_model

    directory, gguf, _ = resolve_model("tiny")
    model, tokenizer = load_pretrained(directory, gguf_file=gguf)
    engine = Engine(model, tokenizer, max_batch=8)
    try:
        yield engine
    finally:
        engine.close()


@contextmanager
def running(engine, options):
    """``engine`` served with ``options`` on 127.0.0.1, port 0, until the block ends."""
    import uvicorn

    from pathunlearn.serve import bind, create_app

    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(create_app(engine, "tiny", options),
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline and thread.is_alive():
        time.sleep(0.02)
    assert server.started, "the server did not start"
    try:
        yield Served(f"http://127.0.0.1:{sock.getsockname()[1]}/v1", "tiny", engine.model,
                     engine.tokenizer, engine)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(scope="module")
def serve_with():
    """``with serve_with(engine, options) as served:`` a server of its own (:func:`running`),
    e.g. one with other limits on the module's engine."""
    return running


@pytest.fixture(scope="module")
def served_tiny(tiny_engine):
    """``pathunlearn serve tiny`` on 127.0.0.1, port 0, batching up to 8 rows."""
    from pathunlearn.serve import ServeOptions

    with running(tiny_engine, ServeOptions(max_tokens_limit=256)) as served:
        yield served
