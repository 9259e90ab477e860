"""The bad-input corpus (tests/bad_inputs/cases*.yaml): every mistake a user can make with a
config, an override, a data file of any format or adapter, a model directory, a GGUF file or
the command line is one line naming it and exit code 2, with no traceback, and touches no file
(an existing run directory included).

The cases run through the console script's ``main()`` in this process (a subprocess each
would cost seconds of imports); ``test_the_console_script_...`` checks a few the way a shell
sees them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

CORPUS = Path(__file__).parent / "bad_inputs"
CASES = [case for file in sorted(CORPUS.glob("cases*.yaml"))
         for case in yaml.safe_load(file.read_text())]


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
    make_round2(directory)
    run = directory / "runs" / "existing"
    for name, text in {"config.yaml": "name: existing\n", "plan.json": "{}\n",
                       "results.json": "{}\n", "prefixes/abc/DONE": "ok\n",
                       "prefixes/abc/model.safetensors": "weights\n",
                       "cells/a-b/ga/0/DONE": "ok\n", "cells/a-b/ga/0/metrics.jsonl": "{}\n",
                       ".lock": ""}.items():
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text(text)
    return directory


def make_round2(directory: Path) -> None:
    """The special and binary files of round2/ (issue 25), made here, not committed: FIFOs (a
    read would block forever), a link to a device, a directory named like a data file, files
    with a byte-order mark or not in UTF-8, JSON nested 100,000 deep, and run directories
    whose finished cell has a summary or metrics of the wrong shape."""
    r2 = directory / "round2"
    for name in ("fifo.jsonl", "fifo.yaml", "fifo.csv"):
        os.mkfifo(r2 / name)
    (r2 / "null.jsonl").symlink_to(os.devnull)
    (r2 / "dir.jsonl").mkdir()
    (r2 / "dir.yaml").mkdir()
    bom = b"\xef\xbb\xbf"
    (r2 / "bom_qa.csv").write_bytes(bom + b"question,answer\nWhat is 2+2?,4\nName a colour.,\n")
    (r2 / "bom.jsonl").write_bytes(bom + b'{"messages": [{"role": "bot", "content": "x"}]}\n')
    (r2 / "latin1.yaml").write_bytes("name: caf\u00e9\n".encode("latin-1"))
    (r2 / "utf16.yaml").write_bytes("name: existing\n".encode("utf-16"))
    (r2 / "deep.jsonl").write_text("[" * 100_000 + "]" * 100_000 + "\n")
    (r2 / "deep.json").write_text('[{"messages": ' + "[" * 100_000 + "]" * 100_000 + "}]")
    (r2 / "deep.yaml").write_text("name: " + "[" * 100_000 + "]" * 100_000 + "\n")
    pkl = directory / "models" / "pkl_only"
    shutil.copytree(directory / "models" / "pickle_only", pkl)
    (pkl / "pytorch_model.bin").unlink()
    (pkl / "model.pkl").write_bytes(b"\x80\x04K\x01.")  # never read
    from pathunlearn.tiny import tiny_location

    pt = directory / "models" / "tiny_pt"  # a loadable tokenizer, weights as a pickle
    pt.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (tiny_location() / name).is_file():
            shutil.copy(tiny_location() / name, pt / name)
    (pt / "model.pt").write_bytes(b"\x80\x04K\x01.")  # never read
    cell_files = {"summary_list": {"summary.json": "[{}]"},
                  "row_without_step": {"metrics.jsonl": '{"step": 0}\n{"loss": 1.0}\n'},
                  "step_not_int": {"metrics.jsonl": '{"step": 0}\n{"step": "2"}\n'},
                  "row_a_list": {"metrics.jsonl": '{"step": 0}\n[1, 2]\n'},
                  "summary_not_json": {"summary.json": '{"key": '}}
    for name, files in cell_files.items():
        _finished_run(directory / "runs" / f"r2_{name}", files)


@functools.cache
def _plan_of_base():
    """The config and plan of bad_inputs/files/base.yaml (planned once: seconds)."""
    from pathunlearn.config import load_config
    from pathunlearn.plan import plan_run

    cfg = load_config(CORPUS / "files" / "base.yaml")
    return cfg, plan_run(cfg)


def _finished_run(run_dir: Path, files: dict[str, str]) -> None:
    """A run of base.yaml whose first cell is finished (DONE, its key in summary.json, two
    metric rows), with ``files`` written over the cell's own."""
    from pathunlearn.rundir import start_run, unit_dir

    cfg, plan = _plan_of_base()
    start_run(run_dir, cfg, plan)
    cell = unit_dir(run_dir, plan.cells[0])
    cell.mkdir(parents=True)
    written = {"summary.json": json.dumps({"key": plan.cells[0].key}),
               "metrics.jsonl": '{"step": 0, "loss": 1.0}\n{"step": 1, "loss": 0.5}\n',
               "DONE": "ok\n"} | files
    for name, text in written.items():
        (cell / name).write_text(text)


def copy_workspace(source: Path, target: Path) -> None:
    """``source`` copied to ``target``, its FIFOs made again and its links kept as links
    (copying either would read it: a FIFO blocks, a device link becomes a file)."""
    def copy(src: str, dst: str) -> None:
        if stat.S_ISFIFO(os.lstat(src).st_mode):
            os.mkfifo(dst)
        else:
            shutil.copy2(src, dst)

    shutil.copytree(source, target, symlinks=True, copy_function=copy)


def snapshot(directory: Path) -> dict[str, str]:
    """Every file and directory under ``directory``: its content's hash (files), 'dir', or
    what a special file is (a FIFO, a link: never read, a read could block)."""
    def state(p: Path) -> str:
        if p.is_symlink():
            return f"link to {os.readlink(p)}"
        if stat.S_ISFIFO(p.lstat().st_mode):
            return "fifo"
        return "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()

    return {str(p.relative_to(directory)): state(p)
            for p in sorted(directory.rglob("*")) if "__pycache__" not in p.parts}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """The workspace every case starts from (made once), and its snapshot."""
    directory = make_workspace(tmp_path_factory.mktemp("pristine"))
    return directory, snapshot(directory)


def test_the_corpus_is_large_and_every_case_documented():
    assert len(CASES) >= 30 and len(yaml.safe_load((CORPUS / "cases_round2.yaml").read_text())) >= 40
    assert all(case.get("error") for case in CASES)
    assert len({c["id"] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_bad_input(case, pristine, tmp_path, monkeypatch, cli):
    source, before = pristine
    workspace = tmp_path / "w"
    copy_workspace(source, workspace)
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


@pytest.mark.parametrize("args,error,debug", [
    # (--debug on a run's UserError is tests/test_user_method_errors.py's; a subprocess run
    # costs ~6 s on 2 cores)
    (["run", "base.yaml", "stages.refusals.source=data/no_assistant.json"], "no assistant",
     False),
    (["run", "--bogus"], "No such option", True),
    (["model", "info", "model.preset=null", "model.path=models/fake.gguf"], "not a GGUF file",
     True),
])
def test_the_console_script_prints_one_line_and_exits_2(args, error, debug, tmp_path):
    workspace = make_workspace(tmp_path)
    out = subprocess.run([sys.executable, "-m", "pathunlearn", *args], cwd=workspace,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1 and error in out.stderr and out.stdout == ""
    if debug:
        shown = subprocess.run([sys.executable, "-m", "pathunlearn", "--debug", *args],
                               cwd=workspace, capture_output=True, text=True, timeout=120)
        assert shown.returncode == 2 and "Traceback" in shown.stderr  # --debug shows it


def test_a_line_over_the_limit_is_one_line_without_reading_it_whole(tmp_path, cli,
                                                                    monkeypatch):
    # issue 25: a data file's line is bounded (data.io.MAX_LINE_BYTES, 16 MiB); the line is
    # refused after reading one more byte than the limit, not the whole line or file
    from pathunlearn.data.io import MAX_LINE_BYTES

    workspace = make_workspace(tmp_path)
    good = json.dumps({"messages": [{"role": "user", "content": "q"},
                                    {"role": "assistant", "content": "a"}]})
    (workspace / "long.jsonl").write_text(good + "\n" + "x" * (MAX_LINE_BYTES + 10) + "\n")
    monkeypatch.chdir(workspace)
    before = snapshot(workspace)
    result = cli("run", "base.yaml", "stages.refusals.source=long.jsonl")
    assert result.code == 2 and "Traceback" not in result.err
    assert result.err.strip() == ("error: stages.refusals.source: long.jsonl: line 2 is longer "
                                  "than 16 MiB")
    assert snapshot(workspace) == before
