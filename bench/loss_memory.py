"""Benchmark (not a test): peak memory of the token-weighted NLL over a large vocabulary, the
softmax over the vocabulary taken whole (the default) or a chunk of target positions at a time
(``runtime.vocab_chunk``, :func:`pathunlearn.losses.vocab_chunks`).

Logits as bf16 autocast gives them, (B, T, V) with V = 128,256 (Llama 3's vocabulary), every
position a target; forward and backward of ``nll_sum``. Each setting runs in a fresh process
and reports its peak resident memory above the logits themselves, and its time.

    python bench/loss_memory.py [--positions 1024] [--vocab 128256] [--chunks 0 1024 256]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def child(positions: int, vocab: int, chunk: int) -> dict:
    import torch

    from pathunlearn.losses import nll_sum, vocab_chunks

    torch.manual_seed(0)
    logits = torch.randn(1, positions + 1, vocab, dtype=torch.bfloat16).requires_grad_(True)
    labels = torch.randint(0, vocab, (1, positions + 1))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with vocab_chunks(chunk or None):
        loss = nll_sum(logits, labels) / positions
        loss.backward()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"chunk": chunk, "loss": float(loss), "seconds": seconds,
            "peak_above_logits_gib": (peak - before) / 2**20,
            "logits_gib": logits.numel() * 2 / 2**30}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positions", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--chunks", type=int, nargs="+", default=[0, 1024, 256])
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.positions, args.vocab, args.child)))
        return
    print(f"{args.positions} target positions x {args.vocab} vocabulary, bf16 logits")
    for chunk in args.chunks:
        out = subprocess.run([sys.executable, __file__, "--positions", str(args.positions),
                              "--vocab", str(args.vocab), "--child", str(chunk)],
                             capture_output=True, text=True, check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        label = "whole vocabulary softmax" if not chunk else f"chunks of {chunk} positions"
        print(f"{label:>28}: peak +{r['peak_above_logits_gib']:.2f} GiB above the "
              f"{r['logits_gib']:.2f} GiB of logits, {r['seconds']:.2f} s, loss {r['loss']:.6f}")


if __name__ == "__main__":
    main()
