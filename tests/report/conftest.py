"""Synthetic run directories with known numbers, written the way train/unlearn.py writes cells:
a valid config.yaml and plan.json (pathunlearn.plan), and each cell in the directory its plan
names, with its key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pathunlearn.config import dump_config, validate_config
from pathunlearn.plan import plan_run
from pathunlearn.rundir import start_run, unit_dir

ORDER = ("instructions", "authors", "arithmetic")
FORGET = "refusals"


def path_at(p: int) -> tuple[str, ...]:
    """The path with the forget stage at 1-based position p."""
    return ORDER[: p - 1] + (FORGET,) + ORDER[p - 1 :]


# forget-score "drops" per method and position, before the per-seed offset: GA forgets least
# when refusals come last (recency observed), NPO does not (p=2 forgets least)
DROPS = {"ga": {1: 3.0, 2: 2.0, 3: 2.5, 4: 0.5}, "npo": {1: 1.2, 2: 0.4, 3: 0.9, 4: 0.8}}
SEED_OFFSET = {0: 0.0, 1: 0.1, 2: -0.3}


def re_tokens_at(p: int, seed: int, frac: float, n: int = 3) -> list[float]:
    """The held-out reference-token log-probs of a cell at fraction ``frac`` of unlearning:
    paths start apart (0.1 per position) and drift apart (0.2 * p per unit of frac), so the
    pairwise distances grow; seeds drift a little differently."""
    return [round(-1.0 - 0.5 * j - 0.1 * p - frac * (0.2 * p * (j + 1) + 0.05 * seed), 5)
            for j in range(n)]


def run_config(name: str, seeds=(0,), methods=("ga",), lrs=(), extra: dict | None = None) -> dict:
    """The config of a synthetic run: the four stages with the forget stage at p = 1..4."""
    data = {"name": name, "seeds": list(seeds),
            "stages": {s: {"source": f"builtin:{s}"} for s in (*ORDER, FORGET)},
            "paths": {"forget_stage": FORGET, "order": list(ORDER), "positions": [1, 2, 3, 4]},
            "unlearning": {"methods": [{"name": m} for m in methods], "lr": 2e-5}}
    if lrs:
        data["unlearning"]["lrs"] = list(lrs)
    for key, value in (extra or {}).items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return data


def plan_cell(run_dir: Path, path: tuple[str, ...], method: str, seed: int,
              sweep: tuple[str, ...], lr: float):
    """The planned cell (path, method, seed, sweep) of RUN_DIR, adding the seed, the method
    and the swept lr to the run's config (and plan.json) when they are new."""
    config_file = Path(run_dir, "config.yaml")
    if config_file.is_file():
        data = yaml.safe_load(config_file.read_text())
        u = data["unlearning"]
        data["seeds"] = sorted(set(data["seeds"]) | {seed})
        if method not in [m["name"] for m in u["methods"]]:
            u["methods"].append({"name": method})
        if sweep:
            u["lrs"] = sorted(set(u.get("lrs") or []) | {lr})
    else:
        data = run_config(Path(run_dir).name, [seed], [method], [lr] if sweep else ())
    cfg = validate_config(data)
    plan = _plan(cfg)
    start_run(run_dir, cfg, plan)
    return next(c for c in plan.cells if c.path == tuple(path) and c.method_label == method
                and c.seed == seed and c.sweep == tuple(sweep))


_PLANS: dict[str, object] = {}


def _plan(cfg):
    """plan_run, once per distinct config (a synthetic run plans again at every cell)."""
    key = dump_config(cfg)
    if key not in _PLANS:
        _PLANS[key] = plan_run(cfg)
    return _PLANS[key]


def write_cell(run_dir: Path, path: tuple[str, ...], method: str, seed: int, drop: float, *,
               steps: int = 4, diverge_at: int | None = None, sweep: tuple[str, ...] = (),
               lr: float = 2e-5, scheduler: str = "wsd", math: tuple[float, float] | None = None,
               re: bool = False, re_tokens: bool | int = True, done: bool = True) -> Path:
    """A finished cell whose probes move linearly from their start to start - drop.

    ``re_tokens``: every row carries 3 held-out token log-probs (:func:`re_tokens_at`); False:
    none (a run from before they were stored); an int: that many positions."""
    cell = plan_cell(run_dir, path, method, seed, sweep, lr)
    d = unit_dir(run_dir, cell)
    d.mkdir(parents=True)
    p = path.index(FORGET) + 1
    # the forget-last path (p = 4) starts saturated: its unlearn target near probability 1
    start = {"forget_label_id/all_mean": -0.5 - 0.01 * p,
             "forget_label_id/target": -0.1 if p == 4 else -1.0 - 0.1 * p,
             "forget_label_ood/all_mean": -1.0 - 0.02 * p, "forget_response/mean": -0.8,
             "authors_train/mean": -1.5, "authors_paraphrased/mean": -2.0 - 0.1 * seed,
             "instructions_train/mean": -1.2, "arithmetic_train/mean": -0.9}
    moves = {"forget_label_id/all_mean": -drop, "forget_label_id/target": -1.1 * drop,
             "forget_label_ood/all_mean": -0.5 * drop, "forget_response/mean": -2.0 * drop,
             "authors_train/mean": -0.05 * p, "authors_paraphrased/mean": 0.1 * p - 0.25,
             "instructions_train/mean": -0.02 * p, "arithmetic_train/mean": 0.01 * p}
    describe = {"path": list(path), "method": method, "seed": seed, "lr": lr,
                "scheduler": scheduler, "local": True}
    n_tokens = 3 if re_tokens is True else int(re_tokens)
    rows = [{"step": 0, **start, **describe}]
    if re:
        rows[0]["re_retrain/kl"], rows[0]["re_retrain/mse"] = 0.0, 0.01
    for step in range(2, steps + 1, 2):
        if diverge_at is not None and step >= diverge_at:
            rows.append({"step": step, "diverged": True, "reason": f"diverged at step {step}"})
            break
        frac = step / steps
        row = {"step": step, "loss": -frac, "lr": lr, "grad_norm": 1.0,
               **{k: start[k] + frac * moves[k] for k in start}, "local": True}
        if re:
            row["re_retrain/kl"] = 0.1 * p * frac + 0.01 * seed
            row["re_retrain/mse"] = 0.2 * p * frac + 0.01
        rows.append(row)
    for row in rows:
        if n_tokens and not row.get("diverged"):
            row["re_tokens"] = re_tokens_at(p, seed, row["step"] / steps, n_tokens)
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {**describe, "key": cell.key, "steps": steps,
               "steps_done": steps if diverge_at is None else diverge_at - 1,
               "diverged_at": diverge_at, "seconds": 1.5,
               "saturation": {"forget_token_prob": 0.9 if p == 4 else 0.3 + 0.05 * p,
                              "forget_logp": -0.1 if p == 4 else -1.5,
                              "forget_grad_norm": 0.1 if p == 4 else 1.0 + 0.1 * p,
                              "first_step_grad_norm": 0.2 if p == 4 else 2.0}}
    if math:
        summary["math_before"], summary["math_after"] = math
        summary["math_shuffled_baseline"], summary["math_no_answer_before"] = 0.02, 0.1 * (p == 4)
    (d / "summary.json").write_text(json.dumps(summary))
    if done:
        (d / "DONE").write_text("ok\n")
    return d


@pytest.fixture(name="write_cell")
def write_cell_fixture():
    """The :func:`write_cell` helper (tests take helpers as fixtures, not imports)."""
    return write_cell


@pytest.fixture(name="path_at")
def path_at_fixture():
    """The :func:`path_at` helper."""
    return path_at


@pytest.fixture
def make_run(tmp_path):
    """``make_run(seeds=(0, 1), methods=("ga", "npo"), **cell_kwargs)`` -> the run directory
    (4 paths x methods x seeds, forget score = DROPS + SEED_OFFSET); ``config``: more config
    sections, merged into the run's."""

    def make(seeds=(0, 1), methods=("ga", "npo"), name="run", config=None, **kwargs) -> Path:
        run_dir = tmp_path / name
        cfg = validate_config(run_config(name, seeds, methods, extra=config))
        start_run(run_dir, cfg, _plan(cfg))
        for m in methods:
            for p in (1, 2, 3, 4):
                for s in seeds:
                    write_cell(run_dir, path_at(p), m, s, DROPS[m][p] + SEED_OFFSET[s], **kwargs)
        return run_dir

    return make
