"""Benchmark (not a test): milliseconds per unlearning step for GA, NPO and SimNPO.

NPO's reference log-probabilities are computed once before unlearning, so an NPO step should
cost about what a GA step costs. Prints one line per method and the NPO/GA ratio.

    python bench/unlearn_step.py [--steps 30] [--batch 8]
"""

from __future__ import annotations

import argparse
import time

import torch

from pathunlearn.config import MethodConfig
from pathunlearn.data.batching import collate
from pathunlearn.data.chat import tokenize_conversations
from pathunlearn.data.suite import load_builtin
from pathunlearn.eval.logprob import reference_logprobs
from pathunlearn.losses import token_logprobs
from pathunlearn.methods import ForgetBatch, make_method
from pathunlearn.models import load_pretrained
from pathunlearn.train.pretrain import ensure_tiny


def time_method(name: str, model, examples, ref, steps: int, batch: int) -> float:
    method = make_method(MethodConfig(name=name))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    times = []
    for step in range(steps):
        idx = [(step * batch + i) % len(examples) for i in range(batch)]
        b = collate([examples[i] for i in idx], 0)
        t = time.perf_counter()
        logp, mask = token_logprobs(model(**b.inputs()).logits, b.labels)
        loss = method.forget_loss(ForgetBatch(logp, mask, int(mask.sum()), batch, ref[idx]))
        loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t)
    return 1000 * sorted(times)[len(times) // 2]  # median ms


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    model, tok = load_pretrained(ensure_tiny())
    examples, _ = tokenize_conversations(tok, load_builtin("refusals"), 256)
    t = time.perf_counter()
    ref = reference_logprobs(model, examples, tok.pad_token_id)
    print(f"reference log-probs once for {len(examples)} examples: "
          f"{1000 * (time.perf_counter() - t):.0f} ms")
    ms = {m: time_method(m, model, examples, ref, args.steps, args.batch)
          for m in ("ga", "npo", "simnpo")}
    for m, v in ms.items():
        print(f"{m:7s} {v:7.1f} ms/step (median of {args.steps}, batch {args.batch})")
    print(f"NPO/GA step-time ratio: {ms['npo'] / ms['ga']:.2f}")


if __name__ == "__main__":
    main()
