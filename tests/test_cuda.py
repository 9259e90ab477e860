"""The code paths that only run on a GPU, run wherever CUDA exists (skipped elsewhere): bf16
autocast with fp32 master weights, probe scoring as token tries under CUDA attention kernels,
the chunked vocabulary softmax, and torch.compile for stage training. Each is compared with
the CPU / fp32 result it must match."""

from __future__ import annotations

import copy

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(scope="module")
def examples(tiny_tokenizer):
    from pathunlearn.data.chat import tokenize_conversations
    from pathunlearn.data.suite import load_builtin

    convs = load_builtin("authors")[:6] + load_builtin("arithmetic")[:6]
    return tokenize_conversations(tiny_tokenizer, convs, max_length=256)[0]


@pytest.fixture(scope="module")
def tiny():
    from pathunlearn.models import load_pretrained
    from pathunlearn.train.pretrain import ensure_tiny

    return load_pretrained(ensure_tiny(progress=False))


def optim(**changes):
    from pathunlearn.config import OptimConfig

    return OptimConfig(lr=1e-3, batch_size=6, micro_batch_size=3, scheduler="constant",
                       warmup=0, **changes)


def test_bf16_autocast_keeps_fp32_weights_and_follows_fp32(tiny, examples):
    from pathunlearn.train.staged import train_stage

    model, tok = tiny
    runs = {}
    for precision in ("fp32", "bf16"):
        m = copy.deepcopy(model).cuda()
        r = train_stage(m, examples, optim(), epochs=1, seed=0, pad_id=tok.pad_token_id,
                        precision=precision)
        assert all(p.dtype == torch.float32 for p in m.parameters())  # master weights
        runs[precision] = r
    assert runs["bf16"].last_loss == pytest.approx(runs["fp32"].last_loss, rel=0.05)


def test_probe_tries_on_cuda_equal_rows_on_cpu(tiny, examples):
    from pathunlearn.eval.logprob import score_examples

    model, tok = tiny
    cpu = score_examples(model, examples, tok.pad_token_id, share_prompts=False)
    gpu = score_examples(copy.deepcopy(model).cuda(), examples, tok.pad_token_id)
    assert torch.equal(cpu.num_tokens, gpu.num_tokens)
    assert torch.allclose(gpu.mean, cpu.mean, atol=1e-4, rtol=0)


def test_vocab_chunks_on_cuda_give_the_same_gradients(tiny, examples):
    from pathunlearn.data.batching import collate
    from pathunlearn.losses import nll_sum

    model, tok = tiny
    batch = collate(examples, tok.pad_token_id).to("cuda")
    grads = []
    for chunk in (None, 16):
        m = copy.deepcopy(model).cuda()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = m(**batch.inputs()).logits
        nll_sum(logits, batch.labels, chunk).backward()
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters()]))
    assert torch.allclose(grads[1], grads[0], atol=1e-3, rtol=1e-2)


def test_compiled_stage_training_follows_eager(tiny, examples):
    from pathunlearn.train.staged import train_stage

    model, tok = tiny
    losses = []
    for compiled in (False, True):
        m = copy.deepcopy(model).cuda()
        r = train_stage(m, examples, optim(), epochs=1, seed=0, pad_id=tok.pad_token_id,
                        compile=compiled)
        losses.append(r.last_loss)
    assert losses[1] == pytest.approx(losses[0], rel=1e-3)


def test_packed_rows_under_flash_attention_get_their_own_logits(examples):
    """``runtime.packing`` with flash attention: no mask, the restarting position ids keep
    the examples apart (only where flash-attn is installed)."""
    pytest.importorskip("flash_attn")
    from pathunlearn.data.batching import collate_packed
    from pathunlearn.models import load_pretrained
    from pathunlearn.train.pretrain import ensure_tiny

    model, _ = load_pretrained(ensure_tiny(progress=False), dtype="bfloat16",
                               attn_implementation="flash_attention_2", device="cuda")
    part = examples[:4]
    packed = collate_packed(part, mask="positions").to("cuda")
    with torch.no_grad():
        row = model(**packed.inputs()).logits[0].float()
        start = 0
        for e in part:
            alone = model(input_ids=torch.tensor([e.input_ids], device="cuda")).logits[0]
            n = len(e.input_ids)
            assert torch.allclose(row[start:start + n], alone.float(), atol=5e-2, rtol=0)
            start += n
