"""``--quiet`` (issue 28): a long command prints errors and its final summary only; without it,
every event the library logs is a line of its own (captured output is not a terminal).

The library's work is replaced by a stand-in that logs a known stream of events through the
``log`` the command passes (as session(), train_paths() and unlearn_all() do) and returns a
result; what is tested is what the command lets through, not how long anything takes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import pathunlearn.experiment
import pathunlearn.report
import pathunlearn.report.terminal
from pathunlearn.errors import UserError

EVENTS = ["run directory: runs/q",
          "3 stage-trainings planned (4 without sharing), 0 already trained",
          "[1/3] instructions: 8 steps",
          "2 unlearning cells, 0 already done",
          "[1/2] p1 ga seed 0: 3 steps; ~5s left",
          "[2/2] p2 ga seed 0: 3 steps"]
SUMMARY = "recency: observed for 1 of 1 methods"


@pytest.fixture
def stand_in(monkeypatch, tmp_path):
    """run_experiment and unlearn log EVENTS and record the ``progress`` they were given;
    print_results prints SUMMARY. ``stand_in["fail"] = True``: they raise a UserError after
    the events."""
    seen: dict = {"fail": False}
    import pathunlearn.cli

    monkeypatch.setattr(pathunlearn.cli.console, "width", 300)  # no wrapping of tmp_path

    def work(cfg, *, log=print, progress=False):
        seen["progress"] = progress
        for line in EVENTS:
            log(line)
        if seen["fail"]:
            raise UserError(f"{tmp_path}/data.jsonl: record 3: no 'messages' key")
        return seen

    def run_experiment(cfg, *, log=print, progress=False, figures=True):
        return work(cfg, log=log, progress=progress), [], tmp_path / "report.html"

    monkeypatch.setattr(pathunlearn.experiment, "run_experiment", run_experiment)
    monkeypatch.setattr(pathunlearn.experiment, "unlearn",
                        lambda cfg, **kw: work(cfg, **kw) and [{"diverged_at": None}])
    monkeypatch.setattr(pathunlearn.report.terminal, "print_results",
                        lambda results, console, **kw: console.print(SUMMARY))
    return seen


def test_without_quiet_every_event_is_a_line(cli, stand_in, tmp_path):
    got = cli("run", f"output_dir={tmp_path}")
    assert got.code == 0, got.err
    lines = got.out.splitlines()
    assert lines == [*EVENTS, SUMMARY, f"report: {tmp_path / 'report.html'}"]
    assert stand_in["progress"] is True


@pytest.mark.parametrize("flag", ["--quiet", "-q"])
def test_quiet_run_prints_the_summary_only(cli, stand_in, tmp_path, flag):
    got = cli("run", flag, f"output_dir={tmp_path}")
    assert got.code == 0, got.err
    assert got.out.splitlines() == [SUMMARY, f"report: {tmp_path / 'report.html'}"]
    assert stand_in["progress"] is False  # no progress bars either
    assert got.err == ""


def test_quiet_unlearn_keeps_its_last_line(cli, stand_in, tmp_path):
    got = cli("unlearn", f"output_dir={tmp_path}", "--quiet")
    assert got.code == 0, got.err
    assert len(got.out.splitlines()) == 1 and got.out.startswith("1 cells in ")
    assert stand_in["progress"] is False


def test_quiet_keeps_errors(cli, stand_in, tmp_path):
    stand_in["fail"] = True
    got = cli("run", "--quiet", f"output_dir={tmp_path}")
    assert got.code == 2
    assert got.out == ""
    assert got.err.strip() == f"error: {tmp_path}/data.jsonl: record 3: no 'messages' key"


def test_quiet_report_prints_the_summary_only(cli, monkeypatch, tmp_path):
    files = [tmp_path / "results.json"]
    made = (type("R", (), {"files": files})(), [tmp_path / "f.png"], tmp_path / "report.html")
    monkeypatch.setattr(pathunlearn.report, "make_report", lambda run, **kw: made)
    monkeypatch.setattr("pathunlearn.rundir.load_run", lambda run_dir: Path(run_dir))
    monkeypatch.setattr(pathunlearn.report.terminal, "print_results",
                        lambda results, console, **kw: console.print(SUMMARY))
    loud = cli("report", tmp_path)
    assert loud.code == 0, loud.err
    assert loud.out.splitlines()[0] == SUMMARY and "wrote 3 files" in loud.out
    quiet = cli("report", tmp_path, "--quiet")
    assert quiet.code == 0, quiet.err
    assert quiet.out.splitlines() == [SUMMARY]


def test_an_events_line_is_not_wrapped_at_the_console_width(cli, stand_in, tmp_path,
                                                            monkeypatch):
    """Issue 28: without a terminal (a log piped to a file, CI) the console is 80 columns;
    a finished cell's line longer than that stays one line, so the log keeps one line per
    event (a terminal wraps it for display, the text is unchanged)."""
    import pathunlearn.cli

    long = ("[19/30] instructions-authors-arithmetic-refusals simnpo-norm seed 0 "
            "(matched-start control): 20 steps, 6.8s; ~82s left")
    assert len(long) > 80
    monkeypatch.setattr(pathunlearn.cli.console, "width", 80)
    events = [*EVENTS, long]
    monkeypatch.setattr(sys.modules[__name__], "EVENTS", events)  # what the stand-in logs
    got = cli("run", f"output_dir={tmp_path}")
    assert got.code == 0, got.err
    assert got.out.splitlines()[:len(events)] == events
