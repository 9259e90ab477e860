"""Benchmark (not a test): staged-training throughput of the tiny preset.

Trains one stage (builtin:arithmetic, full finetuning and LoRA) and prints target tokens/s,
all tokens/s and seconds per optimizer step, for a few micro-batch sizes.

    python bench/train_throughput.py [--stage arithmetic] [--epochs 1]
"""

from __future__ import annotations

import argparse
import copy
import time

from pathunlearn.config import LoraConfig, OptimConfig
from pathunlearn.data.chat import tokenize_conversations
from pathunlearn.data.suite import load_builtin
from pathunlearn.models import apply_lora, load_pretrained
from pathunlearn.train.pretrain import ensure_tiny
from pathunlearn.train.staged import train_stage


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stage", default="arithmetic")
    ap.add_argument("--epochs", type=float, default=1.0)
    args = ap.parse_args()
    base, tok = load_pretrained(ensure_tiny())
    examples, _ = tokenize_conversations(tok, load_builtin(args.stage), 256)
    all_tokens = sum(len(e.input_ids) for e in examples) * args.epochs
    for mode in ("full", "lora"):
        for micro in (8, 16, 32):
            model = copy.deepcopy(base)
            if mode == "lora":
                model = apply_lora(model, LoraConfig(rank=16, alpha=32))
            optim = OptimConfig(lr=5e-4, batch_size=32, micro_batch_size=micro)
            t = time.perf_counter()
            r = train_stage(model, examples, optim, epochs=args.epochs, seed=0,
                            pad_id=tok.pad_token_id)
            dt = time.perf_counter() - t
            print(f"{mode:4s} micro {micro:2d}: {r.target_tokens / dt:7.0f} target tok/s, "
                  f"{all_tokens / dt:7.0f} tok/s, {1000 * dt / r.steps:6.1f} ms/step "
                  f"({r.steps} steps of 32 examples)")


if __name__ == "__main__":
    main()
