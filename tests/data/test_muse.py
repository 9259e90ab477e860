"""MUSE News / Books (``muse:``, pathunlearn.data.muse) in the release's layout: the hub's
``muse-bench/MUSE-News``, one folder per subset, one parquet file per split
(``raw/forget-00000-of-00001.parquet``: ``{"text"}``; ``knowmem/forget_qa-...``: ``{"question",
"answer"}``; ``verbmem/forget-...``: ``{"prompt", "gt"}``; ``privleak/holdout-...``:
``{"text"}``), and the GitHub copies' JSON files. Every text here is invented (news about
fictitious towns); nothing of MUSE is used. The hub cases read a cache laid out as the hub's,
with ``HF_HUB_OFFLINE=1`` (as tests/data/test_wmdp.py does)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pathunlearn.config import StageConfig
from pathunlearn.data.adapters import adapter_files
from pathunlearn.data.sources import load_source, load_stage
from pathunlearn.errors import DataError
from pathunlearn.keys import data_sha

pytestmark = pytest.mark.usefixtures("one_thread")
COMMIT = "d" * 40
TOWNS = ("Arlowe", "Bexmoor", "Cindlehurst", "Dunmarrow", "Elsby", "Fernwick")


def article(town: str, topic: str) -> str:
    return (f"{town} council approved a new {topic} plan on Tuesday. The mayor of {town} said "
            f"the {topic} works start in spring and end before the harvest fair.")


def write_release(root: Path) -> Path:
    """An invented release in the hub's layout (main branch): ``SUBSET/SPLIT-00000-of-00001
    .parquet`` for the subsets and splits of MUSE-News."""
    def put(subset: str, split: str, rows: list[dict]) -> None:
        (root / subset).mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows),
                       root / subset / f"{split}-00000-of-00001.parquet")

    docs = {"forget": [article(t, "bridge") for t in TOWNS[:4]],
            "retain1": [article(t, "library") for t in TOWNS[2:]],
            "retain2": [article(t, "market") for t in TOWNS[:2]],
            "holdout": [article(t, "harbour") for t in TOWNS[1:5]]}
    for split, texts in docs.items():
        put("raw", split, [{"text": t} for t in texts])
    for split in ("forget", "holdout", "retain"):
        put("privleak", split, [{"text": t} for t in docs[{"retain": "retain2"}.get(split,
                                                                                   split)][:3]])
    qas = {"forget_qa": "bridge", "retain_qa": "library"}
    for split, topic in qas.items():
        rows = [{"question": f"What did {t} council approve?", "answer": f"A new {topic} plan."}
                for t in TOWNS[:3]]
        put("knowmem", split, rows)
        put("knowmem", f"{split}_icl", rows[:2])
    put("verbmem", "forget", [{"prompt": f"{t} council approved a new",
                               "gt": " bridge plan on Tuesday."} for t in TOWNS[:3]])
    return root


@pytest.fixture
def release(tmp_path):
    return write_release(tmp_path / "MUSE-News")


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """The release as the snapshot of ``muse-bench/MUSE-News`` in an HF cache, offline."""
    source = write_release(tmp_path / "release-src")
    top = tmp_path / "hf-cache" / "datasets--muse-bench--MUSE-News"
    for file in sorted(p for p in source.rglob("*") if p.is_file()):
        target = top / "snapshots" / COMMIT / file.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(file.read_bytes())
    (top / "refs").mkdir(parents=True)
    (top / "refs" / "main").write_text(COMMIT)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return source


# ---------------------------------------------------------------------------- reading


def test_raw_and_privleak_are_documents(release):
    forget = load_source(f"muse:{release}:raw:forget")
    assert [d.response for d in forget] == [article(t, "bridge") for t in TOWNS[:4]]
    assert all(d.is_text and d.prompt == [{"role": "text", "content": ""}] for d in forget)
    holdout = load_source(f"muse:{release}:privleak:holdout")
    assert len(holdout) == 3 and holdout[0].response == article(TOWNS[1], "harbour")
    # a text stage reads them as they are; a chat stage says to give it kind: text
    assert load_stage(StageConfig(source=f"muse:{release}:raw:retain1", kind="text")) == \
        load_source(f"muse:{release}:raw:retain1")
    with pytest.raises(DataError, match="give the stage kind: text"):
        load_stage(StageConfig(source=f"muse:{release}:raw:retain1"))


def test_knowmem_is_question_answer_chat_and_verbmem_a_raw_prompt_and_continuation(release):
    qa = load_source(f"muse:{release}:knowmem:forget_qa")
    assert qa[0].messages == [{"role": "user", "content": "What did Arlowe council approve?"},
                              {"role": "assistant", "content": "A new bridge plan."}]
    assert len(load_source(f"muse:{release}:knowmem:retain_qa_icl")) == 2
    verb = load_source(f"muse:{release}:verbmem:forget")
    assert verb[0].prompt == [{"role": "text", "content": "Arlowe council approved a new"}]
    assert verb[0].response == " bridge plan on Tuesday."


def test_a_stage_split_and_the_github_json_layout_read_the_same(release, tmp_path):
    by_split = load_stage(StageConfig(source=f"muse:{release}:raw", split="forget",
                                      kind="text"))
    assert by_split == load_source(f"muse:{release}:raw:forget")
    github = tmp_path / "news" / "knowmem"  # swj0419/muse_bench: data/news/knowmem/*.json
    github.mkdir(parents=True)
    rows = pq.read_table(release / "knowmem" / "forget_qa-00000-of-00001.parquet").to_pylist()
    (github / "forget_qa.json").write_text(json.dumps(rows))
    assert load_source(f"muse:{github.parent}:knowmem:forget_qa") == \
        load_source(f"muse:{release}:knowmem:forget_qa")
    assert load_source(f"muse:{github / 'forget_qa.json'}") == \
        load_source(f"muse:{release}:knowmem:forget_qa")  # a file: its folder is the subset


def test_the_hub_snapshot_reads_and_keys_as_the_local_copy(hub_cache):
    hub = load_source("muse:hf:muse-bench/MUSE-News:raw:forget")
    assert hub == load_source(f"muse:{hub_cache}:raw:forget")
    assert data_sha("muse:hf:muse-bench/MUSE-News:raw:forget") == \
        data_sha(f"muse:{hub_cache}:raw:forget")
    assert data_sha(f"muse:{hub_cache}:raw:forget") != data_sha(f"muse:{hub_cache}:knowmem")
    assert {f.parent.name for f in adapter_files("muse", f"{hub_cache}:raw")} == {"raw"}


def write_rows(path: Path, rows: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


@pytest.mark.parametrize("subset, split, rows, message", [
    ("knowmem", "forget_qa", [{"question": "Q?", "answer": "A."}, {"question": "Q?"}],
     "record 2: missing field 'answer'"),
    ("verbmem", "forget", [{"prompt": "P", "gt": 7}], "record 1: field 'gt': expected "
     "non-empty text, got int"),
    ("raw", "forget", [{"body": "no text field"}], "record 1: missing field 'text'"),
])
def test_a_bad_record_is_one_line_naming_file_record_and_field(tmp_path, subset, split, rows,
                                                                message):
    file = tmp_path / "rel" / subset / f"{split}-00000-of-00001.parquet"
    write_rows(file, rows)
    with pytest.raises(DataError) as e:
        load_source(f"muse:{tmp_path / 'rel'}:{subset}:{split}")
    assert f"{file}: {message}" in str(e.value) and "\n" not in str(e.value)


def test_an_unknown_split_or_subset_names_what_the_release_has(release):
    with pytest.raises(DataError) as e:
        load_stage(StageConfig(source=f"muse:{release}:raw", split="forget9", kind="text"))
    assert str(e.value) == (f"{release / 'raw'}: no MUSE split 'forget9' (neither "
                            "forget9-*.parquet nor forget9.json); it has forget, retain1, "
                            "retain2, holdout")
    with pytest.raises(DataError, match="muse raw needs a split .* it has forget, retain1"):
        load_stage(StageConfig(source=f"muse:{release}:raw", kind="text"))
    with pytest.raises(DataError, match="name a MUSE subset"):
        load_source(f"muse:{release}")
    with pytest.raises(DataError, match="is not a MUSE subset"):
        write_rows(release / "elsewhere" / "x.parquet", [{"text": "t"}])
        load_source(f"muse:{release / 'elsewhere' / 'x.parquet'}")


# ---------------------------------------------------------------------------- a study


def write_config(tmp_path: Path, release: str, sets: list[dict], name: str) -> Path:
    """A reduced MUSE-format study on the tiny preset: the retain corpus then the forget
    corpus (or the reverse), both text stages; GA on every token of the forget corpus."""
    config = {
        "name": name, "output_dir": str(tmp_path / "runs"), "seeds": [0],
        "model": {"preset": "tiny", "max_length": 32},
        "stages": {"retain": {"source": f"muse:{release}:raw:retain1", "kind": "text"},
                   "forget": {"source": f"muse:{release}:raw:forget", "kind": "text",
                              "epochs": 2}},
        "paths": {"forget_stage": "forget", "order": ["retain"], "positions": [1, 2]},
        "training": {"lr": 3e-3, "batch_size": 4, "micro_batch_size": 4},
        "unlearning": {"methods": [{"name": "ga"}], "steps": 2, "eval_every": 1,
                       "batch_size": 4, "micro_batch_size": 4},
        "probes": {"examples": 4, "heldout": 2, "rouge_tokens": 8, "sets": sets},
        "relearn": {"steps": 0},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def rows_of(run: Path) -> list[list[dict]]:
    return [[json.loads(line) for line in cell.read_text().splitlines()]
            for cell in sorted(run.glob("cells/**/metrics.jsonl"))]


REDUCED = ["model.preset=tiny", "model.max_length=32", "unlearning.steps=2",
           "unlearning.eval_every=1", "unlearning.methods=[{name: ga}]", "probes.rouge_tokens=8",
           "training.lr=3e-3", "training.batch_size=4", "training.micro_batch_size=4",
           "unlearning.batch_size=4", "unlearning.micro_batch_size=4",
           *(f"stages.{s}.max_examples=4" for s in ("retain1", "retain2", "forget"))]
"""configs/paper/muse-news.yaml on the tiny preset, small enough for the suite."""


def test_the_muse_news_paper_config_runs_reduced_end_to_end(tmp_path, cli, hub_cache,
                                                            monkeypatch):
    """configs/paper/muse-news.yaml reduced: text stages from the release in the HF cache
    (offline), GA on every token of the forget corpus at each of its three positions, and
    MUSE's evaluation sets as probes scoring its four criteria: verbmem's continuations (C1)
    and knowmem's forget QA (C2) by ROUGE-L F1, privleak's forget / holdout as the MIA sets
    (C3: privleak against the path's retrain model), knowmem's retain QA by ROUGE-L F1 after
    over before unlearning (C4); the report's MUSE view gives them per path."""
    from pathunlearn.config import builtin_config_path

    monkeypatch.chdir(tmp_path)
    result = cli("run", builtin_config_path("paper/muse-news"), *REDUCED)
    assert result.code == 0, result.err
    run = tmp_path / "runs" / "paper-muse-news"
    prefixes = [json.loads(p.read_text()) for p in run.glob("prefixes/*/prefix.json")]
    # invented articles of ~30 tokens in windows of 32: every token trained, none truncated
    assert prefixes and all(p["truncated"] == 0 for p in prefixes)
    assert max(p["examples"] for p in prefixes) > 4  # an article is more than one window
    probes = {p["name"]: p for p in json.loads((run / "probes.json").read_text())}
    assert probes["verbmem_forget"]["rows"][0]["prompt"] == [
        {"role": "text", "content": "Arlowe council approved a new"}]
    cells = rows_of(run)
    assert len(cells) == 3  # one per position of the forget stage
    for rows in cells:
        evals = [r for r in rows if "knowmem_retain/rougeL" in r]
        assert len(evals) == 2  # the first and the last eval point
        first, last = rows[0], rows[-1]
        assert 0.0 <= first["knowmem_retain/rougeL"] <= 1.0
        assert 0.0 <= first["mia_min_k/auc"] <= 1.0
        # GA on every token of the forget corpus lowers its likelihood, and the verbatim
        # continuations' (excerpts of it)
        assert last["forget_response/mean"] < first["forget_response/mean"]
        assert last["verbmem_forget/mean"] < first["verbmem_forget/mean"]
    summary = json.loads(next(run.glob("cells/**/summary.json")).read_text())
    assert summary["retrain_field"]  # the retrain model's AUCs: what privleak compares with
    assert_muse_criteria(run, cells)


CRITERIA = {"muse_verbmem": "verbmem_forget/rougeL_f1",
            "muse_knowmem_forget": "knowmem_forget/rougeL_f1", "privleak": "mia_min_k/privleak",
            "muse_knowmem_retain": "knowmem_retain/rougeL_f1"}
"""MUSE's criteria C1-C4 as the table's scores, and the metric of metrics.jsonl each is of."""


def assert_muse_criteria(run: Path, cells: list[list[dict]]) -> None:
    """Each path's criteria in results.json are its cell's metrics at the end of unlearning
    (C4: over step 0's), finite, and results.md's MUSE view shows them per path."""
    results = json.loads((run / "results.json").read_text())
    rows = sorted(results["rows"], key=lambda r: r["position"])
    assert [r["position"] for r in rows] == [1, 2, 3]
    by_path = {c.relative_to(run / "cells").parts[0]: [json.loads(line) for line in
                                                        c.read_text().splitlines()]
               for c in run.glob("cells/*/ga/0/metrics.jsonl")}  # cells/PATH/METHOD/SEED
    assert len(by_path) == len(cells) == 3
    for row in rows:
        metrics = by_path[row["path_label"]]
        first, last = metrics[0], metrics[-1]
        for key, metric in CRITERIA.items():
            assert math.isfinite(row[key]), (key, row)
            want = last[metric] / first[metric] if key == "muse_knowmem_retain" else last[metric]
            assert row[key] == pytest.approx(want), key
        assert 0.0 <= row["muse_verbmem"] <= 1.0 and 0.0 <= row["muse_knowmem_forget"] <= 1.0
    view = (run / "results.md").read_text().split("## MUSE's criteria per path")[1]
    assert ("| method | p | path | C1 verbmem | C2 knowmem forget | C3 privleak (Min-K%) | "
            "C4 knowmem retain (after/before) | seeds |") in view
    for row in rows:
        line = next(ln for ln in view.splitlines() if f"| {row['path_label']} |" in ln)
        assert f"| {row['muse_knowmem_forget']:.3f} |" in line
    assert "- ga across 3 paths: C1 verbmem" in view
    # report.html: the same view, its own section with a contents link
    page = (run / "report.html").read_text()
    assert "<a href=\"#muse\">MUSE's criteria per path</a>" in page
    section = page.split("id=\"muse\"")[1].split("</details>")[0]
    assert "<th class=\"\">C2 knowmem forget</th>" in section
    for row in rows:
        line = section.split(f">{row['path_label']}</td>")[1].split("</tr>")[0]
        assert f"<td>{row['muse_knowmem_forget']:.3f}</td>" in line
    assert "<li>ga across 3 paths: C1 verbmem" in section


def test_verbmem_continuations_are_generated_from_the_raw_prompt_and_scored(tmp_path, cli,
                                                                            release):
    from rouge_score import rouge_scorer

    sets = [{"name": "verbmem", "source": f"muse:{release}:verbmem:forget",
             "metrics": ["rouge"], "role": "verbmem"}]
    result = cli("run", write_config(tmp_path, str(release), sets, "verbmem"))
    assert result.code == 0, result.err
    cells = sorted((tmp_path / "runs" / "verbmem").glob("cells/**/items.jsonl"))
    items = [json.loads(line) for item in cells for line in item.read_text().splitlines()]
    generated = [it for it in items if "generation" in it]
    assert generated and all(isinstance(it["generation"], str) for it in generated)
    # MUSE's F1, unstemmed, of the continuation against gt; TOFU's recall beside it
    muse = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    for it in generated:
        assert it["rougeL_f1"] == muse.score(" bridge plan on Tuesday.",
                                             it["generation"])["rougeL"].fmeasure
        assert 0.0 <= it["rougeL"] <= 1.0
    for cell in cells:  # the set's F1 is the mean over its items, at each generating step
        rows = [json.loads(line) for line in cell.with_name("metrics.jsonl").read_text()
                .splitlines()]
        its = [json.loads(line) for line in cell.read_text().splitlines()]
        last = [it for it in its if it["step"] == rows[-1]["step"]]
        assert len(last) == 3 and rows[-1]["verbmem/rougeL_f1"] == pytest.approx(
            sum(it["rougeL_f1"] for it in last) / 3)


@pytest.mark.parametrize("sets, message", [
    ([{"name": "v", "role": "verbmem", "metrics": ["rouge", "mia"]}],
     "a `verbmem` set (MUSE's) has `prob`, `rouge` and `memorization` only"),
    ([{"name": "k", "role": "knowmem_forget", "metrics": ["truth_ratio"]}],
     "a `knowmem_forget` set (MUSE's) has"),
    ([{"name": "a", "role": "verbmem", "metrics": ["rouge"]},
      {"name": "b", "role": "verbmem", "metrics": ["rouge"]}],
     "role(s) ['verbmem'] given to more than one set"),
])
def test_muses_roles_take_rouge_sets_one_each(sets, message):
    from pydantic import ValidationError

    from pathunlearn.config import ProbesConfig

    with pytest.raises(ValidationError, match=re.escape(message)):
        ProbesConfig(sets=[{"source": "muse:x:verbmem:forget", **s} for s in sets])
    # MUSE's four criteria's sets in one run: two MIA sets and three ROUGE sets
    roles = ["forget", "holdout", "verbmem", "knowmem_forget", "knowmem_retain"]
    ProbesConfig(sets=[{"name": r, "source": "muse:x:raw:forget", "role": r,
                        "metrics": ["mia"] if r in ("forget", "holdout") else ["rouge"]}
                       for r in roles])
