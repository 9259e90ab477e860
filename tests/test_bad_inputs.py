"""The bad-input corpus (tests/bad_inputs/cases.yaml): every mistake a user can make with a
config, an override, a data file of any format or adapter, a model directory, a GGUF file or
the command line is one line naming it and exit code 2, with no traceback, and touches no file
(an existing run directory included).

The cases run through the console script's ``main()`` in this process (a subprocess each
would cost seconds of imports); ``test_the_console_script_...`` checks a few the way a shell
sees them.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

CORPUS = Path(__file__).parent / "bad_inputs"
CASES = yaml.safe_load((CORPUS / "cases.yaml").read_text())


def make_workspace(directory: Path) -> Path:
    """A copy of bad_inputs/files, the binary files of the corpus, and a finished-looking run
    directory runs/existing (what must survive every case)."""
    shutil.copytree(CORPUS / "files", directory, dirs_exist_ok=True)
    data, models = directory / "data", directory / "models"
    (data / "binary.json").write_bytes(bytes(range(128, 256)) * 4)
    (data / "corrupt.parquet").write_bytes(b"PAR1" + b"\x00garbage\xff" * 8 + b"PAR1")
    (models / "pickle_only" / "pytorch_model.bin").write_bytes(b"\x80\x02}q\x00.")  # never read
    (models / "empty").mkdir()
    no_tokenizer = models / "no_tokenizer"
    no_tokenizer.mkdir()
    (no_tokenizer / "config.json").write_text('{"model_type": "llama"}\n')
    import numpy as np
    from safetensors.numpy import save_file

    for model in (no_tokenizer, models / "bad_config"):
        save_file({"w": np.zeros(2, dtype=np.float32)}, str(model / "model.safetensors"))
    run = directory / "runs" / "existing"
    for name, text in {"config.yaml": "name: existing\n", "plan.json": "{}\n",
                       "results.json": "{}\n", "prefixes/abc/DONE": "ok\n",
                       "prefixes/abc/model.safetensors": "weights\n",
                       "cells/a-b/ga/0/DONE": "ok\n", "cells/a-b/ga/0/metrics.jsonl": "{}\n",
                       ".lock": ""}.items():
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text(text)
    return directory


def snapshot(directory: Path) -> dict[str, str]:
    """Every file and directory under ``directory``: its content's hash (files) or 'dir'."""
    return {str(p.relative_to(directory)): "dir" if p.is_dir()
            else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if "__pycache__" not in p.parts}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """The workspace every case starts from (made once), and its snapshot."""
    directory = make_workspace(tmp_path_factory.mktemp("pristine"))
    return directory, snapshot(directory)


def test_the_corpus_is_large_and_every_case_documented():
    assert len(CASES) >= 30
    assert all(case.get("error") for case in CASES)
    assert len({c["id"] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_bad_input(case, pristine, tmp_path, monkeypatch, cli):
    source, before = pristine
    workspace = tmp_path / "w"
    shutil.copytree(source, workspace)
    monkeypatch.chdir(workspace)
    for name, value in case.get("env", {}).items():  # e.g. HF_HUB_OFFLINE for the hub cases
        monkeypatch.setenv(name, value)
    result = cli(*case["args"])
    lines = result.err.strip().splitlines()
    assert result.code == case.get("code", 2), result.err + result.out
    assert "Traceback" not in result.err + result.out
    assert len(lines) == case.get("lines", 1), result.err
    assert all(line.startswith("error: ") for line in lines), result.err
    assert case["error"] in lines[0], result.err
    assert snapshot(workspace) == before  # nothing written, nothing lost


def test_five_broken_stages_are_listed_together_before_any_work(tmp_path):
    # the console script as a user runs it: all five problems, exit 2, seconds, nothing made
    workspace = make_workspace(tmp_path)
    config = yaml.safe_load((workspace / "base.yaml").read_text())
    config["stages"] |= {"a": {"source": "builtin:nosuch"}, "b": {"source": "data/binary.json"},
                         "c": {"source": "data/no_columns.csv"},
                         "d": {"source": "data/no_assistant.json"},
                         "e": {"source": "tofu:data/missing.json"}}
    config["paths"]["order"] = ["instructions", "a", "b", "c", "d", "e"]
    (workspace / "five.yaml").write_text(yaml.safe_dump(config))
    before = snapshot(workspace)
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "pathunlearn", "train", "five.yaml", "--plan"],
                         cwd=workspace, capture_output=True, text=True, timeout=120)
    seconds = time.monotonic() - started
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert [line.split(":")[1].strip() for line in lines] == [
        f"stages.{s}.source" for s in "abcde"]
    assert seconds < 10
    assert snapshot(workspace) == before


@pytest.mark.parametrize("args,error", [
    (["run", "base.yaml", "stages.refusals.source=data/no_assistant.json"], "no assistant"),
    (["run", "--bogus"], "No such option"),
    (["model", "info", "model.preset=null", "model.path=models/fake.gguf"], "not a GGUF file"),
])
def test_the_console_script_prints_one_line_and_exits_2(args, error, tmp_path):
    workspace = make_workspace(tmp_path)
    out = subprocess.run([sys.executable, "-m", "pathunlearn", *args], cwd=workspace,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1 and error in out.stderr and out.stdout == ""
    debug = subprocess.run([sys.executable, "-m", "pathunlearn", "--debug", *args],
                           cwd=workspace, capture_output=True, text=True, timeout=120)
    assert debug.returncode == 2 and "Traceback" in debug.stderr  # --debug shows it
