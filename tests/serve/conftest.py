"""The tiny model served in-process over loopback (uvicorn in a thread), once per module."""

from __future__ import annotations

import threading
import time
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
def served_tiny(one_thread):
    """``pathunlearn serve tiny`` on 127.0.0.1, port 0, batching up to 8 rows."""
    import uvicorn

    from pathunlearn.models import load_pretrained
    from pathunlearn.serve import Engine, bind, create_app, resolve_model

    directory, gguf, name = resolve_model("tiny")
    model, tokenizer = load_pretrained(directory, gguf_file=gguf)
    engine = Engine(model, tokenizer, max_batch=8)
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(create_app(engine, name, max_tokens_limit=256),
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline and thread.is_alive():
        time.sleep(0.02)
    assert server.started, "the server did not start"
    try:
        yield Served(f"http://127.0.0.1:{sock.getsockname()[1]}/v1", name, model, tokenizer,
                     engine)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        engine.close()
        sock.close()
