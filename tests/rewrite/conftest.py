"""Fixtures of the rewrite tests (the fake server is in fakellm.py)."""

from __future__ import annotations

import pytest


@pytest.fixture
def fast_args():
    """Options that keep a faulty run short: tiny backoffs, a short timeout."""
    return ["--backoff", "0.002", "--backoff-max", "0.01", "--timeout", "0.25",
            "--max-retries", "12", "--concurrency", "8"]
