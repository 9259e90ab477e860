"""Shared fixtures: run the real CLI entry point in-process and capture its output.

The suite runs on the tiny preset the package ships (``pathunlearn/presets/``; nothing is
built); set ``PATHUNLEARN_TINY_PRETRAIN_EPOCHS`` yourself to run everything on another build
(built once and cached; the CLI subprocesses some tests start inherit it).
"""

from __future__ import annotations

import os
import sys

# The suite runs on one worker per core (pytest-xdist, `-n auto` in pyproject.toml): one torch
# thread per worker, and per process a test starts (torchrun ranks, Ray workers, servers).
# Intra-op threads of two processes on 2 cores thrash: 7m20s instead of 2m49s.
os.environ.setdefault("OMP_NUM_THREADS", "1")
from dataclasses import dataclass

import pytest

from pathunlearn.cli import main


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys, monkeypatch):
    """``cli("config", "show", ...)`` runs ``pathunlearn ...`` through ``main()``."""

    def run(*args: str) -> CliResult:
        monkeypatch.setattr(sys, "argv", ["pathunlearn", *map(str, args)])
        capsys.readouterr()
        try:
            main()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture(scope="session", autouse=True)
def tiny_preset():
    """The tiny preset (shipped; built once and cached when the recipe is overridden), ready
    before any test: loading a model never builds one."""
    from pathunlearn.train.pretrain import ensure_tiny

    return ensure_tiny(progress=False)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """The tiny preset's tokenizer (trained on the built-in suite; seconds, no pretraining)."""
    from pathunlearn.tiny import TINY_RECIPE, tokenizer_corpus, train_tokenizer

    return train_tokenizer(tokenizer_corpus(TINY_RECIPE["data_seed"]), TINY_RECIPE["vocab_size"])


@pytest.fixture(scope="module")
def one_thread():
    """Single-threaded torch for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    the tiny model's matmuls are too small to gain from threads, and on a busy 2-core machine
    intra-op threads made generation tests ~5x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


HEAVY_FIRST = (  # the files that take longest (seconds on 2 cores, summed over their tests)
    "tests/distributed/test_torchrun.py",  # ~65: torchrun launches
    "tests/train/test_unlearn.py",  # ~55
    "tests/test_executors.py",  # ~40: Ray
    "tests/test_workers.py",  # ~25: local worker processes
    "tests/test_resilience.py",  # ~40: killed runs
    "tests/test_faults.py",  # ~40
    "tests/test_bad_inputs.py",  # ~33
    "tests/test_methods_field.py",  # ~30: every method through a run
    "tests/test_experiment.py",  # ~30
)
"""Run first: ``--dist loadfile`` hands out files in collection order, so a long file
collected last (tests/train/ sorts after tests/test_*.py) kept one core busy while the other
had finished. Longest first leaves short files to even out the end."""


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    root = config.rootpath

    def key(item) -> int:
        path = item.path.relative_to(root).as_posix() if item.path.is_relative_to(root) else ""
        return rank.get(path, len(HEAVY_FIRST))

    items.sort(key=key)  # stable: every file keeps its tests' order
