"""A user's method fails like user code (issue 24 item 6): one line naming the method and its
file (exit 2), and under --debug the user's own traceback, with their file and line."""

from __future__ import annotations

import re

import pytest
import torch
import yaml

from pathunlearn.config import MethodConfig
from pathunlearn.errors import ConfigError
from pathunlearn.losses import ga_loss
from pathunlearn.methods import ForgetBatch, MethodError, checked_loss, make_method

BROKEN = '''
import torch
from pathunlearn.methods import ForgetBatch, Method


class Broken(Method):
    name = "broken"

    def forget_loss(self, batch: ForgetBatch) -> torch.Tensor:
        scale = 1.0
        return scale * (batch.token_logp * batch.mask).sum() / batch.num_tokens * undefined_weight
'''
BROKEN_LINE = 11  # the line of `undefined_weight` in BROKEN

NOT_A_SCALAR = '''
from pathunlearn.methods import Method


class PerToken(Method):
    name = "per_token"

    def forget_loss(self, batch):
        return -(batch.token_logp * batch.mask)
'''

AT_IMPORT = '''
from pathunlearn.methods import Method

WEIGHTS = load_weights()


class Late(Method):
    name = "late"

    def forget_loss(self, batch):
        return batch.token_logp.sum()
'''
AT_IMPORT_LINE = 4


def config(tmp_path, spec: str) -> dict:
    return {
        "name": "user", "output_dir": str(tmp_path / "runs"), "seeds": [0],
        "model": {"finetuning": "full"},
        "stages": {"instructions": {"source": "builtin:instructions", "epochs": 1,
                                    "max_examples": 8},
                   "refusals": {"source": "builtin:refusals", "epochs": 1, "max_examples": 8}},
        "paths": {"forget_stage": "refusals", "order": ["instructions"], "positions": [2]},
        "training": {"lr": 5e-4, "batch_size": 8, "micro_batch_size": 8},
        "unlearning": {"methods": [{"name": spec}], "lr": 1e-4, "batch_size": 8,
                       "micro_batch_size": 8, "steps": 1, "eval_every": 1},
        "probes": {"prompts": 2, "examples": 2},
    }


def write(tmp_path, name: str, source: str, cls: str) -> tuple[str, str]:
    path = tmp_path / name
    path.write_text(source)
    return str(path), f"{path}:{cls}"


@pytest.fixture
def pathunlearn(cli, monkeypatch):
    """``pathunlearn ARGS`` as the console script runs it (``main()``: its stderr and exit
    code; tests/test_bad_inputs.py runs the console script itself in a process of its own),
    without a PATHUNLEARN_DEBUG of the caller's."""
    monkeypatch.delenv("PATHUNLEARN_DEBUG", raising=False)
    return cli


def test_a_name_error_in_forget_loss_is_one_line_or_the_users_traceback(tmp_path, pathunlearn):
    file, spec = write(tmp_path, "broken_method.py", BROKEN, "Broken")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config(tmp_path, spec)))

    plain = pathunlearn("run", str(path))
    assert plain.code == 2, plain.err
    lines = plain.err.strip().splitlines()
    assert len(lines) == 1, plain.err
    assert "Traceback" not in plain.err
    line = lines[0]
    assert f"method '{spec}'" in line and "forget_loss raised NameError" in line
    assert f"(at {file}, line {BROKEN_LINE})" in line and "undefined_weight" in line
    assert "at unlearning step 1 of cell" in line

    debug = pathunlearn("run", str(path), "--debug")
    assert debug.code == 2
    # the user's frame, as Python prints it, then the one line
    assert f'File "{file}", line {BROKEN_LINE}, in forget_loss' in debug.err
    assert "NameError: name 'undefined_weight' is not defined" in debug.err
    assert debug.err.strip().splitlines()[-1] == line


def test_a_loss_that_is_not_a_scalar_is_one_line_naming_the_method(tmp_path, cli):
    file, spec = write(tmp_path, "per_token.py", NOT_A_SCALAR, "PerToken")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config(tmp_path, spec)))
    r = cli("run", path)
    assert r.code == 2, r.err
    (line,) = r.err.strip().splitlines()
    assert f"method '{spec}' ({file}): forget_loss returned a tensor of shape" in line
    assert "it must return a scalar tensor" in line


def test_an_error_at_import_keeps_the_users_traceback_under_debug(tmp_path, pathunlearn):
    file, spec = write(tmp_path, "late.py", AT_IMPORT, "Late")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config(tmp_path, spec)))
    plain = pathunlearn("train", str(path), "--plan")
    assert plain.code == 2
    (line,) = plain.err.strip().splitlines()
    assert f"cannot load {file}: NameError" in line and f"line {AT_IMPORT_LINE})" in line
    debug = pathunlearn("train", str(path), "--plan", "--debug")
    assert debug.code == 2
    assert re.search(rf'File "{re.escape(file)}", line {AT_IMPORT_LINE}, in <module>',
                     debug.err), debug.err
    assert not (tmp_path / "runs").exists()


def batch() -> ForgetBatch:
    return ForgetBatch(torch.tensor([[-1.0, -2.0]]), torch.tensor([[True, True]]), 2, 1)


def test_checked_loss_passes_a_users_loss_through_and_a_non_finite_one_too(tmp_path):
    """A non-finite loss is the method diverging (the cell stops: diverged_at), not an error."""
    _, spec = write(tmp_path, "nan_method.py", NOT_A_SCALAR.replace(
        "return -(batch.token_logp * batch.mask)",
        "return (batch.token_logp * batch.mask).sum() * float('nan')"), "PerToken")
    method = make_method(MethodConfig(name=spec))
    loss = checked_loss(method, "forget_loss", batch(), step=1, cell="p ga seed 0")
    assert loss.dim() == 0 and not bool(torch.isfinite(loss))


def test_checked_loss_leaves_the_built_in_methods_alone():
    ga, b = make_method(MethodConfig(name="ga")), batch()
    assert checked_loss(ga, "forget_loss", b, 1, "c") == ga_loss(b.token_logp, b.mask, 2)


def test_method_errors_are_config_errors():
    assert issubclass(MethodError, ConfigError)


RETAIN = '''
from pathunlearn.methods import Method


class WithRetain(Method):
    name = "with_retain"
    local = False

    def __init__(self, config):
        super().__init__(config)
        if self.options.get("fail"):
            raise KeyError("weights")

    def forget_loss(self, batch):
        return batch.token_logp.sum()

    def retain_loss(self, batch):
        return batch.logits.mean(-1)
'''


def test_a_retain_term_that_is_not_a_scalar_and_a_failing_init_name_the_method(tmp_path):
    from pathunlearn.methods import RetainBatch

    file, spec = write(tmp_path, "with_retain.py", RETAIN, "WithRetain")
    method = make_method(MethodConfig(name=spec))
    retain = RetainBatch(torch.zeros(1, 3, 5), torch.zeros(1, 3, dtype=torch.long), 3)
    with pytest.raises(MethodError) as raised:
        checked_loss(method, "retain_loss", retain, step=2, cell="p with_retain seed 0")
    assert str(raised.value).startswith(
        f"method '{spec}' ({file}): retain_loss returned a tensor of shape (1, 3), at "
        "unlearning step 2 of cell p with_retain seed 0")
    with pytest.raises(MethodError) as raised:
        make_method(MethodConfig(name=spec, options={"fail": True}))
    assert f"method '{spec}' ({file}): creating it raised KeyError" in str(raised.value)
    assert f"(at {file}, line 12)" in str(raised.value)
    assert isinstance(raised.value.__cause__, KeyError)  # the user's traceback, for --debug


def test_checking_a_users_loss_reads_no_value(tmp_path):
    """The check costs no device sync: on the meta device, where reading any value
    (``.item()``, ``bool()``) raises, a user's loss goes through checked_loss untouched."""
    _, spec = write(tmp_path, "sum_method.py", NOT_A_SCALAR.replace(
        "return -(batch.token_logp * batch.mask)",
        "return -(batch.token_logp * batch.mask).sum() / batch.num_tokens"), "PerToken")
    method = make_method(MethodConfig(name=spec))
    meta = ForgetBatch(torch.empty(2, 3, device="meta"),
                       torch.empty(2, 3, dtype=torch.bool, device="meta"), 6, 2)
    with pytest.raises(RuntimeError):
        bool(torch.isfinite(meta.token_logp).all())  # what a value check would do
    loss = checked_loss(method, "forget_loss", meta, step=1, cell="c")
    assert loss.device.type == "meta" and loss.dim() == 0
