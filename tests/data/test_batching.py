"""Length-bucketed micro-batches (issue 16): the same examples per step, less padding, the
same gradient."""

from __future__ import annotations

import torch

from pathunlearn.data.batching import collate, cut_epoch, epoch_order, padding_fraction
from pathunlearn.data.chat import IGNORE_INDEX, EncodedExample
from pathunlearn.losses import nll_sum


def examples(lengths: list[int]) -> list[EncodedExample]:
    out = []
    for i, n in enumerate(lengths):
        ids = [(7 * i + j) % 50 + 1 for j in range(n)]
        out.append(EncodedExample(ids, [IGNORE_INDEX] * 2 + ids[2:]))
    return out


LENGTHS = [5, 40, 6, 38, 7, 41, 5, 39, 6, 37, 8, 42, 5, 36, 7, 40]


def test_bucketing_keeps_each_step_and_cuts_padding():
    order = epoch_order(len(LENGTHS), seed=0, epoch=0)
    plain = cut_epoch(order, batch_size=8, micro_batch_size=4)
    bucketed = cut_epoch(order, batch_size=8, micro_batch_size=4, lengths=LENGTHS)
    assert [sorted(i for mb in s for i in mb) for s in plain] == \
        [sorted(i for mb in s for i in mb) for s in bucketed]
    ex = examples(LENGTHS)
    assert padding_fraction(ex, bucketed) < 0.1 < 0.3 < padding_fraction(ex, plain)
    # one micro-batch per step: nothing to regroup, the order is the epoch's
    assert cut_epoch(order, 8, 8, LENGTHS) == cut_epoch(order, 8, 8)


def test_a_bucketed_step_has_the_same_gradient():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(64, 16), torch.nn.Linear(16, 64))
    ex = examples(LENGTHS[:8])
    order = list(range(8))

    def gradient(step):
        model.zero_grad()
        n_targets = sum(collate([ex[i] for i in mb], 0).num_targets for mb in step)
        for mb in step:
            batch = collate([ex[i] for i in mb], 0)
            (nll_sum(model(batch.input_ids), batch.labels) / n_targets).backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    (plain,) = cut_epoch(order, 8, 4)
    (bucketed,) = cut_epoch(order, 8, 4, [len(e.input_ids) for e in ex])
    assert plain != bucketed
    assert torch.allclose(gradient(plain), gradient(bucketed), atol=1e-6, rtol=1e-5)


def test_packed_rows_give_each_example_its_own_logits_and_the_same_loss():
    """Issue 16: a packed row (no padding, position ids restarting, a block-diagonal mask)
    gives every example the logits it gets alone, so the summed NLL and its gradient are the
    padded batch's; flash attention gets the position ids and no mask."""
    from pathunlearn.data.batching import collate_packed
    from pathunlearn.models import load_pretrained
    from pathunlearn.train.pretrain import ensure_tiny

    model, tok = load_pretrained(ensure_tiny(progress=False))
    model.eval()
    ex = [EncodedExample(e.input_ids, e.labels) for e in examples([9, 23, 5, 17])]
    padded, packed = collate(ex, tok.pad_token_id), collate_packed(ex)
    assert packed.input_ids.shape == (1, sum(len(e.input_ids) for e in ex))  # no padding
    assert packed.num_targets == padded.num_targets
    with torch.no_grad():
        alone = [model(input_ids=torch.tensor([e.input_ids])).logits[0] for e in ex]
        row = model(**packed.inputs()).logits[0]
    start = 0
    for e, logits in zip(ex, alone, strict=True):
        n = len(e.input_ids)
        assert torch.allclose(row[start:start + n], logits, atol=1e-5, rtol=0)
        start += n

    def loss_and_grad(batch):
        model.zero_grad()
        loss = nll_sum(model(**batch.inputs()).logits, batch.labels)
        loss.backward()
        return loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])

    (l_pad, g_pad), (l_pack, g_pack) = loss_and_grad(padded), loss_and_grad(packed)
    assert torch.allclose(l_pack, l_pad, rtol=1e-6, atol=0)
    assert float((g_pack - g_pad).abs().max()) <= 1e-5 * float(g_pad.abs().max())
    flash = collate_packed(ex, mask="positions")
    assert flash.attention_mask is None and set(flash.inputs()) == {"input_ids", "position_ids"}
    assert flash.position_ids[0, len(ex[0].input_ids)] == 0
