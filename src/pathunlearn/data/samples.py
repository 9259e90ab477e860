"""Small files in the release formats of the paper's four datasets, made from the built-in suite.

``pathunlearn data samples OUT_DIR`` writes them, so a study whose stages are all read through
the benchmark adapters (``skillmix:``, ``tofu:``, ``gsm8k:``, ``sorry-bench:``) runs offline
before the real files are at hand (``configs/paper/smollm2.yaml`` reads them). The content is
the built-in suite's: invented authors and instructions, small word problems, sanitized
placeholder prompts ("[restricted item]"); never real harmful content.

- ``ism_sdd.json``: Instruct-SkillMix-SDD-like, a JSON list of ``{"input", "output",
  "skills"}`` (the field names of the paper's ``convert_format.py`` defaults);
- ``tofu_full.json``: TOFU-like, JSON Lines in a ``.json`` file as TOFU ships them:
  ``{"question", "answer", "paraphrased_question"}``;
- ``gsm8k_train.jsonl`` / ``gsm8k_test.jsonl``: ``{"question", "answer"}``, the answer's last
  line ``#### N``;
- ``sorry_bench.jsonl``: ``{"question_id", "category", "turns": [prompt], "prompt_style"}``,
  a few in an encoded style the adapter drops (``ascii``), as the real release has.
"""

from __future__ import annotations

import json
from pathlib import Path

from pathunlearn.data.suite import load_builtin
from pathunlearn.files import write_text

SAMPLE_FILES = {"skillmix": "ism_sdd.json", "tofu": "tofu_full.json",
                "gsm8k_train": "gsm8k_train.jsonl", "gsm8k_test": "gsm8k_test.jsonl",
                "sorry_bench": "sorry_bench.jsonl"}
"""What :func:`write_release_samples` writes, by dataset."""


def write_release_samples(out_dir: str | Path, n: int = 64) -> dict[str, Path]:
    """Write the sample files (at most ``n`` records each, atomically) into ``out_dir``;
    returns dataset -> path."""
    out_dir = Path(out_dir)
    paths = {name: out_dir / file for name, file in SAMPLE_FILES.items()}
    instructions = load_builtin("instructions")[:n]
    write_text(paths["skillmix"], json.dumps(
        [{"input": c.prompt[-1]["content"], "output": c.response,
          "skills": [c.meta.get("task", ""), c.meta.get("skill", "")]} for c in instructions],
        indent=1) + "\n")
    trained, asked_again = load_builtin("authors", "train"), load_builtin("authors", "eval")
    write_text(paths["tofu"], "".join(
        json.dumps({"question": t.prompt[-1]["content"], "answer": t.response,
                    "paraphrased_question": p.prompt[-1]["content"]}) + "\n"
        for t, p in list(zip(trained, asked_again, strict=True))[:n]))
    for split in ("train", "test"):
        problems = load_builtin("arithmetic", split)[:n]
        write_text(paths[f"gsm8k_{split}"], "".join(
            json.dumps({"question": c.prompt[-1]["content"], "answer": c.response}) + "\n"
            for c in problems))
    prompts = [c.prompt[-1]["content"] for c in load_builtin("refusals", "train")
               + load_builtin("refusals", "test")][:n]
    records = [{"question_id": i, "category": str(1 + i % 5), "turns": [prompt],
                "prompt_style": "ascii" if i % 16 == 15 else "base"}
               for i, prompt in enumerate(prompts, 1)]
    write_text(paths["sorry_bench"], "".join(json.dumps(r) + "\n" for r in records))
    return paths
