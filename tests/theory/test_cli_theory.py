"""`pathunlearn theory` end to end: JSON with every quantity, files written, errors exit 2."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from pathunlearn.cli import app
from pathunlearn.errors import ConfigError
from pathunlearn.theory.linear import TheoryParams

SRC = Path(__file__).parents[2] / "src"


@pytest.fixture(scope="module")
def json_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("theory")
    result = CliRunner().invoke(app, ["theory", "--json", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, result.stdout


def test_json_contains_every_quantity_of_the_issue(json_run):
    out, stdout = json_run
    report = json.loads(stdout)  # stdout is exactly one JSON object
    th = report["theorem"]
    for key in (
        "delta_theta_0",
        "P_U",
        "M_U",
        "rho_star",
        "sigma_U",
        "C0",
        "t0",
        "bound_holds_for_all_t_ge_t_start",
        "lemma_3_2_max_rel_error",
        "growth_rate_measured",
        "growth_rate_bound",
        "corollary_1",
        "closed_form_vs_gradient_descent",
    ):
        assert key in th, key
    assert th["bound_holds_for_all_t_ge_t_start"] is True
    assert {"t_star", "epsilon"} <= th["corollary_1"].keys()
    row = report["table"][-1]
    assert {"t", "d", "bound", "log10_d", "log10_bound", "holds"} <= row.keys()
    assert report["positions"]["labels"] == ["U-A-B", "A-U-B", "A-B-U"]
    assert [w["lambda"] for w in report["weakly_local"]] == list(TheoryParams().lambdas)
    assert json.loads((out / "theory.json").read_text()) == report


def test_files_written_atomically(json_run):
    out, _ = json_run
    names = sorted(p.name for p in out.iterdir())
    for stem in ("theory", "theory_positions", "theory_weakly_local"):
        assert f"{stem}.png" in names and f"{stem}.svg" in names
    assert not [n for n in names if n.endswith(".tmp")]
    assert (out / "theory.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_table_output(tmp_path):
    result = CliRunner().invoke(app, ["theory", "--out", str(tmp_path), "d=60", "steps=30"])
    assert result.exit_code == 0, result.output
    assert "log10 bound" in result.stdout and "A-B-U" in result.stdout


def test_overrides_are_used(tmp_path):
    """`pathunlearn theory eta=0.03 steps=10 --json` runs with exactly those values."""
    result = CliRunner().invoke(
        app, ["theory", "eta=0.03", "steps=10", "--json", "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["params"]["eta"], report["params"]["steps"]) == (0.03, 10)
    assert len(report["table"]) == 10 + 1
    assert report["params"]["d"] == TheoryParams().d  # everything else: the defaults


def test_file_then_override_override_wins(tmp_path):
    config = tmp_path / "mine.yaml"
    config.write_text("d: 120\neta: 0.02\nsteps: 12\n")
    result = CliRunner().invoke(
        app, ["theory", str(config), "eta=0.03", "--json", "--out", str(tmp_path / "out")]
    )
    assert result.exit_code == 0, result.output
    params = json.loads(result.stdout)["params"]
    assert (params["d"], params["eta"], params["steps"]) == (120, 0.03, 12)


def test_lambdas_as_a_yaml_list(tmp_path):
    result = CliRunner().invoke(
        app, ["theory", "lambdas=[0,1,2]", "steps=10", "--json", "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert [w["lambda"] for w in json.loads(result.stdout)["weakly_local"]] == [0, 1, 2]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.run(
        [sys.executable, "-m", "pathunlearn", "theory", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("override", "key"),
    [("k=500", "k"), ("foo=1", "foo"), ("d=true", "d")],  # too large, unknown, YAML bool
)
def test_bad_override_exits_2_with_one_line(override, key):  # the override as typed
    proc = run_cli(override)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{override}:" in lines[0] and "error" in lines[0]


def test_bad_override_raises_config_error_in_process(tmp_path):
    """`app` itself lets the ConfigError out; main() turns it into exit code 2."""
    result = CliRunner().invoke(app, ["theory", "d=10", "--out", str(tmp_path)])
    assert isinstance(result.exception, ConfigError)


def test_help_shows_the_example_and_where_parameters_are_documented():
    command = typer.main.get_command(app).commands["theory"]
    assert "pathunlearn theory d=200 eta=0.05 lambdas=[0,1,2] --json" in command.help
    assert "pathunlearn.theory.linear.TheoryParams" in command.help
    assert "configs/theory.yaml" in command.help
    words = set(re.findall(r"\w+", command.help))
    assert set(TheoryParams.model_fields) <= words  # the help's list of keys is complete
    assert {p.name for p in command.params} == {"args", "out", "json_output", "matrices"}
