"""Small copies of the paper's four releases, in each release's schema and layout, made from the
built-in suite.

``pathunlearn data samples OUT_DIR`` writes them, so a study whose stages are all read through
the benchmark adapters (``skillmix:``, ``tofu:``, ``gsm8k:``, ``sorry-bench:``) runs offline
before the real files are at hand (``configs/paper/smollm2.yaml`` reads them). The content is
the built-in suite's: invented authors and instructions, small word problems, sanitized
placeholder prompts ("[restricted item]"); never real harmful content. Each folder is laid out
as the release ships, so pointing a source at the real release instead changes only the path:

- ``instruct-skillmix/data/ism_sdd_k2_1K.json``: Instruct-SkillMix-SDD
  (``PrincetonPLI/Instruct-SkillMix-SDD``), a JSON list of ``{"input", "output"}`` (the
  field names of the paper's ``convert_format.py`` defaults);
- ``TOFU/`` (``locuslab/TOFU``): one subset per file, JSON Lines in ``.json`` files at the
  root. ``full.json``, ``forget10.json`` (its last 10%, as the release's forget sets are the
  last authors of ``full``) and ``retain90.json`` (the rest) hold ``{"question", "answer"}``
  only; ``forget10_perturbed.json`` (the forget10 records) and ``retain_perturbed.json`` (as
  many records of retain90) add ``paraphrased_question``, ``paraphrased_answer`` and
  ``perturbed_answer`` (a list of wrong answers: another invented author's answer to the same
  question). The suite has no real authors or world facts, so ``real_authors`` and
  ``world_facts`` are not written;
- ``gsm8k/train.jsonl``, ``gsm8k/test.jsonl`` (the GitHub release's files) and the hub's
  ``gsm8k/main/train-00000-of-00001.parquet``, ``test-00000-of-00001.parquet``
  (``openai/gsm8k``): ``{"question", "answer"}``, the answer's last line ``#### N``;
- ``sorry-bench/`` (``sorry-bench/sorry-bench-202406``): ``question.jsonl``, the base prompts
  ``{"question_id", "category", "turns": [prompt], "prompt_style": "base"}``, and one
  ``question_<style>.jsonl`` per linguistic mutation with the same question ids: ``slang``
  and ``technical_terms``, and ``ascii`` and ``translate-fr``, which the adapter drops as the
  paper does. The suite has no real mutations: a mutated prompt is the base placeholder
  prompt marked with its style.
"""

from __future__ import annotations

import json
from pathlib import Path

from pathunlearn.data.conversation import Conversation
from pathunlearn.data.suite import load_builtin
from pathunlearn.files import write_bytes, write_text

SAMPLE_FILES = {"skillmix": "instruct-skillmix/data/ism_sdd_k2_1K.json", "tofu": "TOFU",
                "gsm8k_train": "gsm8k/train.jsonl", "gsm8k_test": "gsm8k/test.jsonl",
                "gsm8k_train_parquet": "gsm8k/main/train-00000-of-00001.parquet",
                "gsm8k_test_parquet": "gsm8k/main/test-00000-of-00001.parquet",
                "sorry_bench": "sorry-bench"}
"""What :func:`write_release_samples` returns, by dataset: the file or release directory a
source names (``tofu:OUT/TOFU``, ``sorry-bench:OUT/sorry-bench``)."""

SORRY_BENCH_SAMPLE_STYLES = ("slang", "technical_terms", "ascii", "translate-fr")
"""The linguistic mutations written beside the base prompts (the last two are dropped)."""

_PERTURBED = 3
"""Wrong answers per TOFU perturbed record (the release has five)."""


def write_release_samples(out_dir: str | Path, n: int = 64) -> dict[str, Path]:
    """Write the sample releases (at most ``n`` records per file, each file atomically) into
    ``out_dir``; returns dataset -> the path a source names."""
    out_dir = Path(out_dir)
    paths = {name: out_dir / file for name, file in SAMPLE_FILES.items()}
    instructions = load_builtin("instructions")[:n]
    write_text(paths["skillmix"], json.dumps(
        [{"input": c.prompt[-1]["content"], "output": c.response} for c in instructions],
        indent=1) + "\n")
    _write_tofu(paths["tofu"], n)
    _write_gsm8k(paths, n)
    _write_sorry_bench(paths["sorry_bench"], n)
    return paths


def _json_lines(records: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def _write_tofu(directory: Path, n: int) -> None:
    trained = load_builtin("authors", "train")
    asked_again = load_builtin("authors", "eval")  # the same facts, in the same order
    full = [{"question": c.prompt[-1]["content"], "answer": c.response} for c in trained[:n]]
    forget = max(1, round(len(full) / 10))
    perturbed = [_perturbed(i, trained, asked_again) for i in range(len(full))]
    subsets = {"full": full, "forget10": full[-forget:], "retain90": full[:-forget],
               "forget10_perturbed": perturbed[-forget:],
               "retain_perturbed": perturbed[: min(forget, len(full) - forget)]}
    for subset, records in subsets.items():
        write_text(directory / f"{subset}.json", _json_lines(records))


def _perturbed(i: int, trained: list[Conversation], asked_again: list[Conversation]) -> dict:
    """Record ``i`` of ``full`` as a perturbed subset has it: asked again in other words, its
    answer reworded, and wrong answers (other authors' answers to the same question, with the
    name swapped)."""
    own = trained[i]
    name, fact = own.meta["author"], own.meta["fact"]
    others = [c.response.replace(c.meta["author"], name)
              for c in trained[i + 1:] + trained[:i] if c.meta["fact"] == fact]
    # two invented authors may share a city or a genre: a wrong answer is never the answer
    wrong = [a for a in dict.fromkeys(others) if a != own.response][:_PERTURBED]
    return {"question": own.prompt[-1]["content"], "answer": own.response,
            "paraphrased_answer": f"It is recorded that {own.response}",
            "paraphrased_question": asked_again[i].prompt[-1]["content"],
            "perturbed_answer": wrong}


def _write_gsm8k(paths: dict[str, Path], n: int) -> None:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    for split in ("train", "test"):
        records = [{"question": c.prompt[-1]["content"], "answer": c.response}
                   for c in load_builtin("arithmetic", split)[:n]]
        write_text(paths[f"gsm8k_{split}"], _json_lines(records))
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(records), buffer)
        write_bytes(paths[f"gsm8k_{split}_parquet"], buffer.getvalue())


def _write_sorry_bench(directory: Path, n: int) -> None:
    prompts = [c.prompt[-1]["content"] for c in load_builtin("refusals", "train")
               + load_builtin("refusals", "test")][:n]
    base = [{"question_id": i, "category": str(1 + (i - 1) % 44), "turns": [prompt],
             "prompt_style": "base"} for i, prompt in enumerate(prompts, 1)]
    write_text(directory / "question.jsonl", _json_lines(base))
    for style in SORRY_BENCH_SAMPLE_STYLES:
        mutated = [{**r, "turns": [f"({style}) {r['turns'][0]}"], "prompt_style": style}
                   for r in base]
        write_text(directory / f"question_{style}.jsonl", _json_lines(mutated))
