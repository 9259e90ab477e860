"""Benchmark (not a test): training throughput at the paper's settings and at ours.

One optimizer step = forward + backward over micro-batches of chat examples, token-weighted NLL
(as pathunlearn's staged training). Two settings:

- ``paper``: fp32, micro-batch 2, examples in epoch order (padded to the longest of each
  micro-batch), as the paper's torchtune recipes;
- ``ours``: bf16 autocast with fp32 weights (on CUDA; fp32 on CPU, where bf16 is slower),
  micro-batch 16, length-bucketed micro-batches (:func:`pathunlearn.data.batching.cut_epoch`);
- ``ours+compile``: the same through ``torch.compile`` (``runtime.compile``; CUDA only, the
  compiling done in the warm-up steps);
- ``ours+packed``: each micro-batch one row without padding (``runtime.packing``): with
  flash attention nothing is computed on padding; sdpa gets a block-diagonal mask.

Every setting first takes ``--warmup`` untimed steps (CUDA start-up, the allocator, the
compiler). ``--vocab-chunk N`` runs ``ours`` with the softmax over the vocabulary N positions
at a time (``runtime.vocab_chunk``).

Prints, per setting: target tokens/s, all tokens/s (padding included), the fraction of
computed tokens that are padding, peak memory and, on CUDA, MFU (6 x trainable-and-frozen
parameters x tokens per second over the device's peak dense FLOP/s, ``--peak-tflops``).

Models: ``tiny`` (the shipped tiny preset, full finetuning; runs on CPU) and ``llama-1b`` (a
Llama-3.2-1B-shaped model with its 128,256-token vocabulary, random init, LoRA r=64 on q, v,
o and the MLP, as in the issue; CUDA only: on CPU it is skipped with a line saying so). Data: the built-in suite's chat
examples (every stage), tokenised with the tiny preset's tokenizer, lengths as they come.

    python bench/train_throughput.py [--model tiny|llama-1b|both] [--steps 8] [--warmup 2]
        [--peak-tflops 989] [--vocab-chunk N]
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import time

import torch

from pathunlearn.config import LoraConfig
from pathunlearn.data.batching import (
    collate,
    collate_packed,
    cut_epoch,
    epoch_order,
    packing_mask,
    padding_fraction,
)
from pathunlearn.data.chat import tokenize_conversations
from pathunlearn.data.suite import load_builtin
from pathunlearn.losses import nll_sum, vocab_chunks
from pathunlearn.models import apply_lora, load_pretrained
from pathunlearn.tiny import tiny_location

SETTINGS = {"paper": {"micro": 2, "bucket": False, "bf16": False, "compile": False},
            "ours": {"micro": 16, "bucket": True, "bf16": True, "compile": False},
            "ours+compile": {"micro": 16, "bucket": True, "bf16": True, "compile": True},
            "ours+packed": {"micro": 16, "bucket": True, "bf16": True, "compile": False,
                            "packed": True}}
BATCH = 32


def chat_examples(tokenizer, max_length: int = 512):
    conversations = [c for name in ("instructions", "authors", "arithmetic", "refusals")
                     for c in load_builtin(name)]
    return tokenize_conversations(tokenizer, conversations, max_length)[0]


def llama_1b(vocab_size: int = 128256):
    """A Llama-3.2-1B-shaped model (16 layers, hidden 2048, 32/8 heads, MLP 8192, its
    128,256-token vocabulary), random."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=2048, intermediate_size=8192,
                         num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                         max_position_embeddings=2048, tie_word_embeddings=True)
    return LlamaForCausalLM(config)


def run(model, examples, setting: dict, steps: int, device: torch.device, warmup: int = 2,
        vocab_chunk: int | None = None) -> dict:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    order = epoch_order(len(examples), 0, 0)
    lengths = [len(e.input_ids) for e in examples] if setting["bucket"] else None
    plan = cut_epoch(order, BATCH, setting["micro"], lengths)[:warmup + steps]
    bf16 = setting["bf16"] and device.type == "cuda"
    cast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    forward = torch.compile(model) if setting["compile"] else model
    mask = packing_mask(model.config._attn_implementation or "sdpa")
    dtype = next(model.parameters()).dtype

    def step_once(step) -> tuple[int, int]:
        batches = [collate_packed([examples[i] for i in mb], mask, dtype)
                   if setting.get("packed") else collate([examples[i] for i in mb], 0)
                   for mb in step]
        n = sum(b.num_targets for b in batches)
        for b in batches:
            b = b.to(device)
            with cast:
                logits = forward(**b.inputs()).logits
            (nll_sum(logits, b.labels) / n).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return n, sum(b.input_ids.numel() for b in batches)

    with vocab_chunks(vocab_chunk if setting is SETTINGS["ours"] else None):
        for step in plan[:warmup]:
            step_once(step)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        targets = tokens = 0
        start = time.perf_counter()
        for step in plan[warmup:]:
            n, t = step_once(step)
            targets, tokens = targets + n, tokens + t
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
    plan = plan[warmup:]
    peak = (torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    return {"target_tok_s": targets / seconds, "tok_s": tokens / seconds,
            "padding": 0.0 if setting.get("packed") else padding_fraction(examples, plan), "peak_gib": peak,
            "params": sum(p.numel() for p in model.parameters()), "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("tiny", "llama-1b", "both"), default="both")
    ap.add_argument("--steps", type=int, default=8, help="optimizer steps of 32 examples")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--vocab-chunk", type=int, default=None,
                    help="ours: the softmax over the vocabulary N positions at a time")
    ap.add_argument("--peak-tflops", type=float, default=989.0,
                    help="the device's peak dense bf16 TFLOP/s for MFU (H100/H200 SXM: 989)")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    base, tokenizer = load_pretrained(tiny_location())
    examples = chat_examples(tokenizer)
    models = ("tiny", "llama-1b") if args.model == "both" else (args.model,)
    print(f"device: {device}{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}; "
          f"{len(examples)} chat examples, {BATCH} per step, {args.steps} steps")
    for name in models:
        if name == "llama-1b" and device.type != "cuda":
            print("llama-1b: skipped (CUDA only: a 1B model trains at a few tokens/s on CPU)")
            continue
        for label, setting in SETTINGS.items():
            if setting["compile"] and device.type != "cuda":
                print(f"{name:8s} {label}: skipped (CUDA only: inductor on CPU spends a minute "
                      "compiling the tiny model)")
                continue
            torch.manual_seed(0)
            if name == "tiny":
                model = load_pretrained(tiny_location())[0].to(device)
            else:
                model = apply_lora(llama_1b().to(device),
                                   LoraConfig(rank=64, alpha=128, mlp=True))
            model.train()
            r = run(model, examples, setting, args.steps, device, args.warmup, args.vocab_chunk)
            mfu = ""
            if device.type == "cuda":
                mfu = f", MFU {6 * r['params'] * r['tok_s'] / (args.peak_tflops * 1e12):.1%}"
            print(f"{name:8s} {label:12s} (micro {setting['micro']:2d}, "
                  f"{'packed' if setting.get('packed') else 'bucketed' if setting['bucket'] else 'epoch order'}, "
                  f"{'bf16' if setting['bf16'] and device.type == 'cuda' else 'fp32'}): "
                  f"{r['target_tok_s']:8.0f} target tok/s, {r['tok_s']:8.0f} tok/s, padding "
                  f"{r['padding']:.0%}, peak {r['peak_gib']:.2f} GiB{mfu}")
            del model


if __name__ == "__main__":
    main()
