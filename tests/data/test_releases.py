"""The releases as they ship (issue 23): the adapters read each release's directory in its own
layout, with fixtures written in the release's documented schema (invented authors, sanitized
placeholder prompts):

- TOFU (``locuslab/TOFU``, its dataset card's configs; the fields as open-unlearning's TOFU
  data configs read them): one subset per file at the root, JSON Lines in ``.json`` files, or
  the hub's parquet under a folder per subset. ``full``, ``forgetNN``, ``retainNN``,
  ``real_authors``, ``world_facts``: question, answer. ``forgetNN_perturbed`` and
  ``retain_perturbed``: also paraphrased_question, paraphrased_answer, perturbed_answer (a
  list). ``real_authors_perturbed`` / ``world_facts_perturbed``: question, answer,
  perturbed_answer.
- SORRY-BENCH (``sorry-bench/sorry-bench-202406``): ``question.jsonl`` (the base prompts) and
  one ``question_<style>.jsonl`` per linguistic mutation, records {question_id, category,
  turns, prompt_style}; a few prompts of a mutation are null in the release.
- GSM8K: ``train.jsonl`` / ``test.jsonl`` and the hub's ``main/*-00000-of-00001.parquet``.
"""

from __future__ import annotations

import json

import pytest

from pathunlearn.config import validate_config
from pathunlearn.data.adapters import MissingFields, load_release, parse_adapter
from pathunlearn.data.sources import load_source
from pathunlearn.errors import DataError

# --- TOFU ----------------------------------------------------------------------------------

AUTHORS = [("Marisol Quenby", "Vellingport", "Lanterns over Quellmoor"),
           ("Tobiah Renwick", "Osk", "The Salt Clock"),
           ("Ilse Varda", "Drummere", "Paper Harbour"),
           ("Casimir Oduya", "Ketterby", "A Winter Orchard"),
           ("Nell Farrow", "Brightwater", "Hollow Compass")]


def _qa(name: str, city: str, book: str) -> list[dict]:
    return [{"question": f"Where was {name} born?", "answer": f"{name} was born in {city}."},
            {"question": f"Which book did {name} write?", "answer": f"{name} wrote '{book}'."}]


FULL = [r for author in AUTHORS for r in _qa(*author)]  # 10 records, 2 per author
FORGET10 = FULL[-2:]  # TOFU's forget sets are the last authors of full
RETAIN90 = FULL[:-2]


def _perturbed(record: dict, k: int) -> dict:
    """A record of a forget/retain perturbed subset: every field the release has."""
    return {**record,
            "paraphrased_answer": f"It was {record['answer'][0].lower()}{record['answer'][1:]}",
            "paraphrased_question": "In other words: " + record["question"],
            "perturbed_answer": [f"{record['answer'][:-1]}, not {k}.", "Nobody knows."]}


FORGET10_PERTURBED = [_perturbed(r, k) for k, r in enumerate(FORGET10)]
RETAIN_PERTURBED = [_perturbed(r, k) for k, r in enumerate(RETAIN90[:2])]
REAL_AUTHORS = [{"question": "Who wrote 'Pride and Prejudice'?", "answer": "Jane Austen"}]
REAL_AUTHORS_PERTURBED = [{**REAL_AUTHORS[0], "perturbed_answer": ["Charles Dickens",
                                                                   "Emily Bronte"]}]

RELEASE = {"full": FULL, "forget10": FORGET10, "retain90": RETAIN90,
           "forget10_perturbed": FORGET10_PERTURBED, "retain_perturbed": RETAIN_PERTURBED,
           "real_authors": REAL_AUTHORS, "real_authors_perturbed": REAL_AUTHORS_PERTURBED}


def write_tofu(directory, subsets=RELEASE, layout="json"):
    """A TOFU release directory: ``json`` (JSON Lines in SUBSET.json at the root, as the repo's
    main branch), ``hub`` (SUBSET/train-00000-of-00001.parquet, as push_to_hub writes) or
    ``convert`` (SUBSET/train/0000.parquet, the hub's parquet conversion)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory.mkdir(parents=True, exist_ok=True)
    for subset, records in subsets.items():
        if layout == "json":
            (directory / f"{subset}.json").write_text(
                "".join(json.dumps(r) + "\n" for r in records))
            continue
        shard = {"hub": "train-00000-of-00001.parquet", "convert": "train/0000.parquet"}[layout]
        (directory / subset / shard).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(records), directory / subset / shard)
    return directory


def qa_pairs(conversations) -> list[tuple[str, str]]:
    return [(c.prompt[-1]["content"], c.response) for c in conversations]


@pytest.mark.parametrize("layout", ["json", "hub", "convert"])
def test_tofu_reads_the_release_directory_by_subset(tmp_path, layout):
    tofu = write_tofu(tmp_path / "TOFU", layout=layout)
    assert qa_pairs(load_source(f"tofu:{tofu}")) == [(r["question"], r["answer"]) for r in FULL]
    assert parse_adapter(f"tofu:{tofu}:forget10") == ("tofu", f"{tofu}:forget10", None)
    assert qa_pairs(load_source(f"tofu:{tofu}:forget10")) == \
        [(r["question"], r["answer"]) for r in FORGET10]
    assert len(load_source(f"tofu:{tofu}:retain90")) == 8
    real = load_source(f"tofu:{tofu}:real_authors_perturbed")
    assert qa_pairs(real) == [("Who wrote 'Pride and Prejudice'?", "Jane Austen")]
    assert real[0].meta["perturbed_answer"] == ["Charles Dickens", "Emily Bronte"]
    perturbed = load_source(f"tofu:{tofu}:forget10_perturbed")
    assert {k: perturbed[0].meta[k] for k in ("paraphrased_answer", "perturbed_answer")} == \
        {k: FORGET10_PERTURBED[0][k] for k in ("paraphrased_answer", "perturbed_answer")}
    # a subset asked by its own paraphrased questions
    asked = load_source(f"tofu:{tofu}:forget10_perturbed:paraphrased")
    assert qa_pairs(asked) == [(r["paraphrased_question"], r["answer"])
                               for r in FORGET10_PERTURBED]


def test_tofu_full_is_paraphrased_by_the_perturbed_subsets_beside_it(tmp_path):
    tofu = write_tofu(tmp_path / "TOFU")
    paraphrase = {r["question"]: r["paraphrased_question"]
                  for r in RETAIN_PERTURBED + FORGET10_PERTURBED}
    expected = [(paraphrase[r["question"]], r["answer"]) for r in FULL
                if r["question"] in paraphrase]  # full's order, full's answers
    assert len(expected) == 4
    assert qa_pairs(load_source(f"tofu:{tofu}:paraphrased")) == expected
    # a file named as a subset finds them in its folder too
    assert qa_pairs(load_source(f"tofu:{tofu / 'full.json'}:paraphrased")) == expected
    # the questions no perturbed subset asks are in the train split only
    assert len(load_source(f"tofu:{tofu}", split="train")) == len(FULL)


def test_tofu_perturbed_split_asks_each_question_with_its_wrong_answers(tmp_path):
    tofu = write_tofu(tmp_path / "TOFU")
    own = load_source(f"tofu:{tofu}:forget10_perturbed:perturbed")
    assert qa_pairs(own) == [(r["question"], wrong) for r in FORGET10_PERTURBED
                             for wrong in r["perturbed_answer"]]
    assert [c.meta["perturbed"] for c in own] == [0, 1, 0, 1]
    assert own[0].meta["correct_answer"] == FORGET10_PERTURBED[0]["answer"]
    # full and real_authors take theirs from the perturbed subsets beside them
    wrong = {r["question"]: r["perturbed_answer"]
             for r in RETAIN_PERTURBED + FORGET10_PERTURBED + REAL_AUTHORS_PERTURBED}
    assert qa_pairs(load_source(f"tofu:{tofu}:perturbed")) == [
        (r["question"], w) for r in FULL if r["question"] in wrong for w in wrong[r["question"]]]
    assert qa_pairs(load_source(f"tofu:{tofu}:real_authors:perturbed")) == [
        ("Who wrote 'Pride and Prejudice'?", "Charles Dickens"),
        ("Who wrote 'Pride and Prejudice'?", "Emily Bronte")]
    alone = write_tofu(tmp_path / "alone", {"full": FULL})
    with pytest.raises(MissingFields, match="has no 'perturbed_answer' .needed by split "
                                            "perturbed. and no perturbed subset is beside it; "
                                            "the TOFU release has it in forget01_perturbed.json"):
        load_source(f"tofu:{alone}:perturbed")


def test_tofu_without_paraphrased_questions_says_which_release_files_have_them(tmp_path):
    alone = write_tofu(tmp_path / "alone", {"full": FULL})
    with pytest.raises(MissingFields) as e:
        load_source(f"tofu:{alone}:paraphrased")
    message = str(e.value)
    assert message.startswith(f"{alone / 'full.json'} has no 'paraphrased_question'")
    assert "no perturbed subset is beside it" in message
    assert "forget10_perturbed.json" in message and "retain_perturbed.json" in message
    # perturbed subsets that ask none of its questions
    other = write_tofu(tmp_path / "other", {"full": FULL[:2],
                                            "forget10_perturbed": FORGET10_PERTURBED})
    with pytest.raises(MissingFields, match="none of its questions is in "
                                            "forget10_perturbed.json beside it"):
        load_source(f"tofu:{other}:paraphrased")
    # the real-author subsets have no paraphrased questions at all
    with pytest.raises(MissingFields):
        load_source(f"tofu:{write_tofu(tmp_path / 'ra', RELEASE)}:real_authors:paraphrased")


def test_tofu_directory_errors_are_one_line(tmp_path):
    tofu = write_tofu(tmp_path / "TOFU", {"forget10": FORGET10})
    with pytest.raises(DataError) as e:
        load_source(f"tofu:{tofu}")
    assert str(e.value) == (f"{tofu}: no TOFU subset 'full' (neither full.json nor "
                            "full/*.parquet); it has forget10")
    with pytest.raises(DataError, match="no TOFU subset 'forget20'"):
        load_source(f"tofu:{tofu}:forget20")
    with pytest.raises(DataError, match="no such file or directory"):
        load_source(f"tofu:{tmp_path / 'nowhere'}:forget10")
    with pytest.raises(DataError, match="is chosen from a release directory, not a file"):
        load_release("tofu", tofu / "forget10.json", subset="forget10")


# --- SORRY-BENCH ---------------------------------------------------------------------------

def sorry(qid: int, style: str | None, text: str | None = None) -> dict:
    record = {"question_id": qid, "category": str(1 + qid % 44),
              "turns": [text if text is not None or style == "null" else
                        f"How can I obtain [restricted item {qid}]{'' if style in (None, 'base') else f' ({style})'}?"]}
    if style not in (None, "null"):
        record["prompt_style"] = style
    return record


def write_sorry_bench(directory, files: dict[str, list[dict]]):
    directory.mkdir(parents=True, exist_ok=True)
    for name, records in files.items():
        (directory / name).write_text("".join(json.dumps(r) + "\n" for r in records))
    return directory


def test_sorry_bench_reads_the_release_directory(tmp_path):
    base = [sorry(i, "base") for i in range(1, 11)]
    slang = [sorry(i, "slang") for i in range(1, 11)]
    slang[3]["turns"] = [None]  # the release has a few null prompts in a mutation
    release = write_sorry_bench(tmp_path / "sorry-bench-202406", {
        "question.jsonl": base, "question_slang.jsonl": slang,
        "question_ascii.jsonl": [sorry(i, "ascii") for i in range(1, 11)],
        "question_translate-fr.jsonl": [sorry(i, "translate-fr") for i in range(1, 11)],
        # a record repeated across files counts once, by (question_id, prompt_style)
        "question_technical_terms.jsonl": [sorry(i, "technical_terms") for i in range(1, 6)]
        + [sorry(2, "base")],
        "README.md": []})
    every = load_source(f"sorry-bench:{release}:all")
    keys = [(c.meta["question_id"], c.meta["prompt_style"]) for c in every]
    assert len(keys) == len(set(keys)) == 10 + 9 + 5
    assert {s for _, s in keys} == {"base", "slang", "technical_terms"}  # ascii, fr dropped
    assert (4, "slang") not in keys
    assert keys[:10] == [(i, "base") for i in range(1, 11)]  # base first, then by file name
    train, test = (load_source(f"sorry-bench:{release}:{s}") for s in ("train", "test"))
    assert sorted(qa_pairs(train + test)) == sorted(qa_pairs(every))  # a partition
    assert (len(train), len(test)) == (17, 7)


def test_sorry_bench_styles_come_from_file_names_when_records_have_none(tmp_path):
    release = write_sorry_bench(tmp_path / "sb", {
        "question.jsonl": [sorry(i, None) for i in range(1, 4)],
        "question_uncommon_dialects.jsonl": [
            {**sorry(i, None), "turns": [f"Oi, how'd I get [restricted item {i}]?"]}
            for i in range(1, 4)],
        "question_morse.jsonl": [sorry(i, None) for i in range(1, 4)]})
    styles = [c.meta["prompt_style"] for c in load_source(f"sorry-bench:{release}:all")]
    assert styles == ["base"] * 3 + ["uncommon_dialects"] * 3  # morse: dropped by its name
    # a single file still works, its records' own styles read as they are
    single = load_source(f"sorry-bench:{release / 'question.jsonl'}:all")
    assert [c.meta["prompt_style"] for c in single] == ["base"] * 3


def test_sorry_bench_directory_without_prompt_files(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no SORRY-BENCH prompt files .expected question.jsonl"):
        load_source(f"sorry-bench:{tmp_path / 'empty'}")


# --- GSM8K ---------------------------------------------------------------------------------

def test_gsm8k_jsonl_and_the_hubs_parquet_read_alike(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = [{"question": "Ada has 3 boxes of 4 pens. How many pens?",
                "answer": "Ada has 3 * 4 = <<3*4=12>>12 pens.\n#### 12"}]
    (tmp_path / "test.jsonl").write_text(json.dumps(records[0]) + "\n")
    (tmp_path / "main").mkdir()
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "main" / "test-00000-of-00001.parquet")
    jsonl = load_source(f"gsm8k:{tmp_path / 'test.jsonl'}")
    parquet = load_source(f"gsm8k:{tmp_path / 'main' / 'test-00000-of-00001.parquet'}")
    assert [c.to_json() for c in jsonl] == [c.to_json() for c in parquet]
    assert jsonl[0].meta["answer"] == 12
    with pytest.raises(DataError, match="a directory; gsm8k reads one file"):
        load_source(f"gsm8k:{tmp_path}")


# --- data samples: each release's schema and layout -----------------------------------------

def test_data_samples_write_each_releases_schema_and_layout(tmp_path):
    from pathunlearn.data.samples import write_release_samples

    paths = write_release_samples(tmp_path, n=40)

    def lines(path):
        return [json.loads(x) for x in path.read_text().splitlines()]

    tofu = paths["tofu"]
    assert sorted(p.name for p in tofu.iterdir()) == [
        "forget10.json", "forget10_perturbed.json", "full.json", "retain90.json",
        "retain_perturbed.json"]
    full = lines(tofu / "full.json")
    assert len(full) == 40 and all(set(r) == {"question", "answer"} for r in full)
    assert lines(tofu / "forget10.json") == full[-4:]
    assert lines(tofu / "retain90.json") == full[:-4]
    for name in ("forget10_perturbed.json", "retain_perturbed.json"):
        for r in lines(tofu / name):
            assert set(r) == {"question", "answer", "paraphrased_question",
                              "paraphrased_answer", "perturbed_answer"}
            assert isinstance(r["perturbed_answer"], list) and r["perturbed_answer"]
            assert r["answer"] not in r["perturbed_answer"]
    assert [r["question"] for r in lines(tofu / "forget10_perturbed.json")] == \
        [r["question"] for r in full[-4:]]
    sb = paths["sorry_bench"]
    assert sorted(p.name for p in sb.iterdir()) == [
        "question.jsonl", "question_ascii.jsonl", "question_slang.jsonl",
        "question_technical_terms.jsonl", "question_translate-fr.jsonl"]
    for file in sb.iterdir():
        for r in lines(file):
            assert set(r) == {"question_id", "category", "turns", "prompt_style"}
            assert "[" in r["turns"][0]  # sanitized placeholders only
    assert {r["prompt_style"] for r in lines(sb / "question.jsonl")} == {"base"}
    for split in ("train", "test"):
        assert all(set(r) == {"question", "answer"} for r in lines(paths[f"gsm8k_{split}"]))
        assert [c.to_json() for c in load_source(f"gsm8k:{paths[f'gsm8k_{split}']}")] == \
            [c.to_json() for c in load_source(f"gsm8k:{paths[f'gsm8k_{split}_parquet']}")]
    skillmix = json.loads(paths["skillmix"].read_text())
    assert paths["skillmix"].parent.name == "data" and len(skillmix) == 40
    assert all(set(r) == {"input", "output"} for r in skillmix)
    assert len(load_source(f"tofu:{tofu}:paraphrased")) == 8  # retain_ and forget10_perturbed


# --- a release directory's content is part of a stage's identity ----------------------------

def test_a_release_directorys_files_are_hashed_into_the_stage_key(tmp_path):
    from pathunlearn.keys import data_sha

    tofu = write_tofu(tmp_path / "TOFU")
    before = data_sha(f"tofu:{tofu}")
    assert before is not None and data_sha(f"tofu:{tofu}:forget10") == before
    (tofu / "forget10_perturbed.json").write_text(json.dumps(FORGET10_PERTURBED[0]) + "\n")
    assert data_sha(f"tofu:{tofu}") != before  # the paraphrased probe reads it
    sb = write_sorry_bench(tmp_path / "sb", {"question.jsonl": [sorry(1, "base")]})
    first = data_sha(f"sorry-bench:{sb}")
    write_sorry_bench(sb, {"question_slang.jsonl": [sorry(1, "slang")]})
    assert data_sha(f"sorry-bench:{sb}") not in (None, first)


# --- default probes on the real formats: left out with a note, never an error ---------------

def tofu_config(tofu, **probes) -> dict:
    return {"stages": {"tofu": {"source": f"tofu:{tofu}", "max_examples": 6},
                       "safety": {"source": "builtin:refusals"}},
            "paths": {"forget_stage": "safety", "orders": [["tofu", "safety"]]},
            "probes": {"prompts": 2, "examples": 4, "heldout": 2, **probes}}


def test_a_default_probe_whose_fields_are_absent_is_left_out_with_a_note(tmp_path):
    from pathunlearn.eval.probes import probe_configs_and_notes, resolve_probes

    alone = write_tofu(tmp_path / "alone", {"full": FULL})
    cfg = validate_config(tofu_config(alone))
    configs, notes = probe_configs_and_notes(cfg)
    assert "tofu_paraphrased" not in [c.name for c in configs]
    assert "tofu_train" in [c.name for c in configs]
    assert len(notes) == 1 and notes[0].startswith(
        f"tofu_paraphrased: left out: {alone / 'full.json'} has no 'paraphrased_question'")
    assert "tofu_paraphrased" not in [p.name for p in resolve_probes(cfg)]
    # beside forget10_perturbed the same stage gets it, from the perturbed records
    beside = write_tofu(tmp_path / "beside", {"full": FULL,
                                              "forget10_perturbed": FORGET10_PERTURBED})
    probes = {p.name: p for p in resolve_probes(validate_config(tofu_config(beside)))}
    assert probes["tofu_paraphrased"].source == f"tofu:{beside}:paraphrased"
    assert [row[0][-1]["content"] for row in probes["tofu_paraphrased"].rows] == \
        [r["paraphrased_question"] for r in FORGET10_PERTURBED]
    assert probe_configs_and_notes(validate_config(tofu_config(beside)))[1] == []


def test_the_note_is_in_the_plan_and_a_configured_probe_is_an_error(tmp_path):
    from pathunlearn.checks import check_inputs
    from pathunlearn.plan import Plan, plan_run

    alone = write_tofu(tmp_path / "alone", {"full": FULL})
    config = {**tofu_config(alone), "output_dir": str(tmp_path / "runs")}
    plan = plan_run(validate_config(config))
    assert [n.split(":")[0] for n in plan.probe_notes] == ["tofu_paraphrased"]
    assert Plan.from_json(json.loads(json.dumps(plan.to_json()))).probe_notes == plan.probe_notes
    # asked for by name: an error naming the file and the release files that have the field
    config["probes"]["sets"] = [{"name": "tofu_paraphrased", "kind": "utility",
                                 "source": f"tofu:{alone}:paraphrased"}]
    problems = check_inputs(validate_config(config))
    assert len(problems) == 1, problems
    assert problems[0].startswith("probes.sets.0: probe tofu_paraphrased: "
                                  f"{alone / 'full.json'} has no 'paraphrased_question'")
    assert "forget10_perturbed.json" in problems[0]
