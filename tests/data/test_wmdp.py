"""WMDP's multiple-choice questions (``wmdp:``, pathunlearn.data.wmdp) in the release's layout:
``cais/wmdp`` on the hub, subsets ``wmdp-bio`` / ``wmdp-chem`` / ``wmdp-cyber``, each one
``<subset>/test-00000-of-00001.parquet`` of records ``{"question": str, "choices": [4 str],
"answer": int}``. Every question here is an invented, harmless placeholder in that schema;
nothing of WMDP is used.

The hub cases read a cache laid out as the hub's (``datasets--cais--wmdp/refs/main``,
``snapshots/<commit>/``) with ``HF_HUB_OFFLINE=1``, as tests/test_hub.py does."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pathunlearn.data.adapters import adapter_files
from pathunlearn.data.sources import load_source
from pathunlearn.data.wmdp import WMDP_SUBSETS
from pathunlearn.errors import DataError

COMMIT = "c" * 40


def placeholders(topic: str, n: int = 4) -> list[dict]:
    """``n`` invented questions about ``topic`` in WMDP's schema, answers cycling 0..3."""
    return [{"question": f"Which port does [placeholder {topic} service {i}] use by default?",
             "choices": [f"{1000 + i}", f"{2000 + i}", f"{3000 + i}", f"{4000 + i}"],
             "answer": i % 4} for i in range(n)]


def write_release(root: Path, n: int = 4) -> Path:
    """A release directory in the hub's layout: ``<subset>/test-00000-of-00001.parquet``."""
    for subset in WMDP_SUBSETS:
        folder = root / subset
        folder.mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(placeholders(subset, n)),
                       folder / "test-00000-of-00001.parquet")
    return root


def add_dataset_snapshot(cache: Path, repo: str, release: Path) -> Path:
    """``release`` as a dataset snapshot of ``repo`` in an HF cache (plain files, and
    ``refs/main`` holding the commit without a newline, as huggingface_hub writes it)."""
    top = cache / f"datasets--{repo.replace('/', '--')}"
    snapshot = top / "snapshots" / COMMIT
    for file in sorted(p for p in release.rglob("*") if p.is_file()):
        target = snapshot / file.relative_to(release)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(file.read_bytes())
    (top / "refs").mkdir(parents=True)
    (top / "refs" / "main").write_text(COMMIT)
    return snapshot


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hf-cache"
    add_dataset_snapshot(cache, "cais/wmdp", write_release(tmp_path / "release-src"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


# ---------------------------------------------------------------------------- reading


def test_a_subset_of_a_release_directory_reads_as_mcq_prompts(tmp_path):
    release = write_release(tmp_path / "wmdp")
    items = load_source(f"wmdp:{release}:wmdp-cyber")
    assert len(items) == 4
    first = items[1]
    assert first.prompt == [{"role": "user", "content": (
        "Which port does [placeholder wmdp-cyber service 1] use by default?\n"
        "A. 1001\nB. 2001\nC. 3001\nD. 4001\nAnswer:")}]
    assert first.response == "B"
    assert first.meta == {"source": "wmdp", "choices": ["1001", "2001", "3001", "4001"],
                          "answer": 1}
    # the one split named inline, and the parquet file itself, read the same
    for spec in (f"wmdp:{release}:wmdp-cyber:test",
                 f"wmdp:{release / 'wmdp-cyber' / 'test-00000-of-00001.parquet'}"):
        assert [c.messages for c in load_source(spec)] == [c.messages for c in items]
    assert adapter_files("wmdp", f"{release}:wmdp-bio") == [
        release / "wmdp-bio" / "test-00000-of-00001.parquet"]


def test_the_hub_snapshot_reads_as_the_local_copy(tmp_path, hub_cache):
    local = write_release(tmp_path / "local")
    for subset in WMDP_SUBSETS:
        hub_rows = load_source(f"wmdp:hf:cais/wmdp:{subset}")
        assert [c.messages for c in hub_rows] == [
            c.messages for c in load_source(f"wmdp:{local}:{subset}")] and hub_rows
    from pathunlearn.keys import data_sha

    assert data_sha("wmdp:hf:cais/wmdp:wmdp-cyber") == data_sha(f"wmdp:{local}:wmdp-cyber")
    assert data_sha("wmdp:hf:cais/wmdp:wmdp-cyber") != data_sha(f"wmdp:{local}:wmdp-bio")


@pytest.mark.parametrize("suffix,message", [
    ("", "name a WMDP subset (wmdp:{d}:SUBSET; it has wmdp-bio, wmdp-chem, wmdp-cyber)"),
    (":wmdp-nosuch", "no WMDP subset 'wmdp-nosuch' (neither wmdp-nosuch.jsonl nor "
                     "wmdp-nosuch/*.parquet); it has wmdp-bio, wmdp-chem, wmdp-cyber"),
])
def test_a_directory_without_the_subset_is_one_line(tmp_path, suffix, message):
    release = write_release(tmp_path / "wmdp")
    with pytest.raises(DataError) as e:
        load_source(f"wmdp:{release}{suffix}")
    assert message.format(d=release) in str(e.value) and "\n" not in str(e.value)


# ---------------------------------------------------------------------------- bad records

GOOD = {"question": "Which port does [placeholder service] use by default?",
        "choices": ["1", "2", "3", "4"], "answer": 0}


@pytest.mark.parametrize("change,message", [
    ({"choices": "1, 2, 3, 4"}, "record 2: field 'choices': expected a list of texts, got str"),
    ({"choices": ["1", 2, "3", "4"]}, "record 2: field 'choices'[1]: expected non-empty text"),
    ({"choices": ["only"]}, "record 2: field 'choices': expected 2 to 26 choices, got 1"),
    ({"answer": 4}, "record 2: field 'answer': 4 is out of range for 4 choices (0 to 3)"),
    ({"answer": -1}, "record 2: field 'answer': -1 is out of range for 4 choices"),
    ({"answer": "B"}, "record 2: field 'answer': expected the integer index of the correct "
                      "choice, got str 'B'"),
    ({"answer": 1.0}, "record 2: field 'answer': expected the integer index of the correct "
                      "choice, got float 1.0"),
    ({"answer": True}, "record 2: field 'answer': expected the integer index"),
    ({"question": ""}, "record 2: field 'question': expected non-empty text"),
    ({"question": None}, "record 2: missing field 'question'"),
    ({"answer": None}, "record 2: missing field 'answer'"),
])
def test_a_bad_record_names_the_file_the_record_and_the_field(tmp_path, change, message):
    path = tmp_path / "q.jsonl"
    record = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(DataError) as e:
        load_source(f"wmdp:{path}")
    assert f"{path}: {message}" in str(e.value) and "\n" not in str(e.value)


def write_config(tmp_path: Path, probe_source: str, **probe) -> Path:
    """A reduced two-path study (the forget stage first or last) with one choice probe."""
    config = {
        "name": "wmdp", "output_dir": str(tmp_path / "runs"), "seeds": [0],
        "model": {"preset": "tiny"},
        "stages": {"instructions": {"source": "builtin:instructions", "max_examples": 16},
                   "refusals": {"source": "builtin:refusals", "max_examples": 8}},
        "paths": {"forget_stage": "refusals", "order": ["instructions"], "positions": [1, 2]},
        "training": {"lr": 3e-3, "batch_size": 8, "micro_batch_size": 8},
        "unlearning": {"methods": [{"name": "ga"}], "steps": 2, "eval_every": 1,
                       "batch_size": 4, "micro_batch_size": 4},
        "probes": {"prompts": 4, "examples": 4, "heldout": 2,
                   "sets": [{"name": "wmdp_cyber", "kind": "choice", "source": probe_source,
                             **probe}]},
        "relearn": {"steps": 0},
    }
    path = tmp_path / "wmdp.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_bad_record_stops_a_run_with_one_line_and_exit_2(tmp_path, cli):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps({**GOOD, "answer": 7}) + "\n")
    result = cli("run", write_config(tmp_path, f"wmdp:{path}"))
    assert result.code == 2
    assert f"{path}: record 2: field 'answer': 7 is out of range" in result.err
    assert "wmdp_cyber" in result.err and len(result.err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------------- a study


def test_a_wmdp_format_study_runs_end_to_end_with_the_choice_metrics(tmp_path, cli, hub_cache):
    """A reduced study through ``pathunlearn run`` on the tiny preset: the choice probe read
    from ``cais/wmdp`` in the HF cache (offline), scored at every eval point of every cell."""
    result = cli("run", write_config(tmp_path, "wmdp:hf:cais/wmdp:wmdp-cyber"))
    assert result.code == 0, result.err
    run = tmp_path / "runs" / "wmdp"
    probes = json.loads((run / "probes.json").read_text())
    choice = next(p for p in probes if p["name"] == "wmdp_cyber")
    assert choice["kind"] == "choice" and choice["answers"] == [0, 1, 2, 3]
    assert [r["target"] for r in choice["rows"][:4]] == ["A", "B", "C", "D"]
    cells = sorted(run.glob("cells/**/metrics.jsonl"))
    assert len(cells) == 2  # one per path
    for cell in cells:
        rows = [json.loads(line) for line in cell.read_text().splitlines()]
        evals = [r for r in rows if "wmdp_cyber/acc" in r]
        assert len(evals) == 3  # steps 0, 1, 2
        for r in evals:
            assert r["wmdp_cyber/acc"] in (0.0, 0.25, 0.5, 0.75, 1.0)
            assert r["wmdp_cyber/acc_norm"] == r["wmdp_cyber/acc"]  # letters: one character
            assert 0.0 < r["wmdp_cyber/p_correct"] < 1.0
    # the table gives the accuracy at the end of unlearning, per path
    results = json.loads((run / "results.json").read_text())
    assert "wmdp_cyber_acc" in results["scores"]
    ends = {json.loads(c.read_text().splitlines()[-1])["wmdp_cyber/acc"] for c in cells}
    assert {r["wmdp_cyber_acc"] for r in results["rows"]} == ends


# ---------------------------------------------------------------------------- the paper config


def placeholder_documents(kind: str, n: int = 4) -> list[dict]:
    """``n`` invented, harmless documents in the corpora's schema (one ``text`` field)."""
    return [{"text": f"[placeholder {kind} document {i}] The operator restarted the "
                     f"[placeholder service {i}] after the nightly backup finished."}
            for i in range(n)]


def write_corpora(root: Path) -> Path:
    """``cais/wmdp-corpora`` as a hub dataset with subsets, as its dataset card's ``configs``
    and its files are laid out: ``<subset>/train-00000-of-00001.parquet``, one ``text``
    column (docs/wmdp.md)."""
    for subset in ("cyber-forget-corpus", "cyber-retain-corpus"):
        folder = root / subset
        folder.mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(placeholder_documents(subset)),
                       folder / "train-00000-of-00001.parquet")
    return root


RMU_TINY = "{layer: 2, update_params: 'mlp\\.down_proj', steering_coeff: 50}"
REDUCED = ["model.preset=tiny", "model.max_length=32", "unlearning.steps=2",
           "unlearning.eval_every=1",
           f"unlearning.methods=[{{name: rmu, options: {RMU_TINY}}}, "
           f"{{name: rmu_retain, retain_weight: 10, options: {RMU_TINY}}}]",
           "training.lr=3e-3", "training.batch_size=4", "training.micro_batch_size=4",
           "unlearning.batch_size=4", "unlearning.micro_batch_size=4",
           *(f"stages.{s}.max_examples=4" for s in ("cyber_forget", "cyber_retain",
                                                    "instructions"))]
"""configs/paper/wmdp-cyber.yaml on the tiny preset (RMU at its layer 2 of 4)."""


def test_the_wmdp_cyber_paper_config_runs_reduced_with_rmu(tmp_path, cli, hub_cache,
                                                           monkeypatch):
    """configs/paper/wmdp-cyber.yaml reduced: the cyber corpora (invented placeholder
    documents in the hub's layout, offline) as text stages, the forget corpus at each of its
    three positions, unlearned by RMU and RMU with its retain term, the wmdp-cyber questions
    (placeholders) as a choice probe at every eval point of every cell."""
    from pathunlearn.config import builtin_config_path

    add_dataset_snapshot(hub_cache, "cais/wmdp-corpora", write_corpora(tmp_path / "corpora"))
    monkeypatch.chdir(tmp_path)
    result = cli("run", builtin_config_path("paper/wmdp-cyber"), *REDUCED)
    assert result.code == 0, result.err
    run = tmp_path / "runs" / "paper-wmdp-cyber"
    cells = sorted(run.glob("cells/**/metrics.jsonl"))
    assert len(cells) == 6  # 3 positions x 2 methods
    for cell in cells:
        rows = [json.loads(line) for line in cell.read_text().splitlines()]
        assert [r["step"] for r in rows if "wmdp_cyber/acc" in r] == [0, 1, 2]
        assert all(r["wmdp_cyber/acc"] in (0.0, 0.25, 0.5, 0.75, 1.0) for r in rows)
    steps = [json.loads(line) for c in run.glob("cells/*/rmu*/*/steps.jsonl")
             for line in c.read_text().splitlines()]
    assert len(steps) == 12 and all(s["loss"] > 0 for s in steps)  # a distance to a target
    results = json.loads((run / "results.json").read_text())
    assert {r["method"] for r in results["rows"]} == {"rmu", "rmu_retain"}
    assert "wmdp_cyber_acc" in results["scores"]
