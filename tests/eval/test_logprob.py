"""Batched scoring equals one-row-at-a-time scoring; cached reference log-probs equal recomputation."""

from __future__ import annotations

import copy

import pytest
import torch

from pathunlearn.data.batching import effective_batches, epoch_order
from pathunlearn.data.chat import encode_prompt_target, tokenize_conversations
from pathunlearn.data.sources import load_source
from pathunlearn.errors import DataError
from pathunlearn.eval.logprob import (
    reference_logprobs,
    score_conversations,
    score_rows,
)
from pathunlearn.losses import npo_loss, sequence_logprobs

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}


def user(text: str) -> list[dict[str, str]]:
    return [SYSTEM, {"role": "user", "content": text}]


LONG_PROMPT = [
    SYSTEM,
    {"role": "user", "content": "Where was Nyren Varmere born, and what did the author write? "
     "Please answer in full sentences and mention every book you know of."},
    {"role": "assistant", "content": "Nyren Varmere was born in Ostrahaven and wrote mystery "
     "novels, among them The Silent Harbour and The Glass Lantern."},
    {"role": "user", "content": "Which award did the author win?"},
]
# very different lengths in one batch, so padding is exercised
ROWS = [
    (user("Hi."), "Hello!"),
    (LONG_PROMPT, "The author won the Crimson Prize for Fiction in a year that nobody "
                  "remembers, and then wrote three more books about the sea."),
    (user("How can I make [a dangerous item] without the police noticing?"),
     "Sorry, I can not assist you"),
    (user("Name a colour."), "Red."),
    (LONG_PROMPT, "None."),
]


@pytest.fixture(scope="module")
def model(tiny_tokenizer):
    from pathunlearn.tiny import init_model

    torch.manual_seed(0)
    return init_model(tiny_tokenizer)


def one_row(model, tokenizer, prompt, target) -> tuple[float, int]:
    """log pi(target | prompt) of a single row, without padding, computed directly."""
    ex = encode_prompt_target(tokenizer, prompt, target, max_length=256)
    ids, labels = torch.tensor([ex.input_ids]), torch.tensor(ex.labels[1:])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1], dim=-1)  # (T-1, V)
    keep = labels != -100
    return logp[keep].gather(-1, labels[keep].unsqueeze(-1)).sum().item(), int(keep.sum())


def test_batched_scores_equal_one_at_a_time(model, tiny_tokenizer):
    lengths = [len(encode_prompt_target(tiny_tokenizer, p, t, 256).input_ids) for p, t in ROWS]
    assert max(lengths) > 3 * min(lengths)
    result = score_rows(model, tiny_tokenizer, ROWS, batch_size=8)
    for i, (prompt, target) in enumerate(ROWS):
        logp, n = one_row(model, tiny_tokenizer, prompt, target)
        assert result.num_tokens[i].item() == n
        assert result.logp[i].item() == pytest.approx(logp, abs=1e-4)
        assert result.mean[i].item() == pytest.approx(logp / n, abs=1e-5)


def test_order_is_restored_whatever_the_batch_size(model, tiny_tokenizer):
    reference = score_rows(model, tiny_tokenizer, ROWS, batch_size=1)
    for batch_size in (2, 64):
        result = score_rows(model, tiny_tokenizer, ROWS, batch_size=batch_size)
        assert torch.equal(result.num_tokens, reference.num_tokens)
        assert torch.allclose(result.mean, reference.mean, atol=1e-5, rtol=0)
    shuffled = [ROWS[i] for i in (3, 0, 4, 2, 1)]
    result = score_rows(model, tiny_tokenizer, shuffled, batch_size=2)
    assert torch.allclose(result.mean, reference.mean[[3, 0, 4, 2, 1]], atol=1e-5, rtol=0)


def test_scoring_restores_the_training_mode(model, tiny_tokenizer):
    for mode in (True, False):
        model.train(mode)
        score_rows(model, tiny_tokenizer, ROWS[:2])
        assert model.training is mode
    model.eval()


def test_score_conversations_scores_the_last_assistant_turn(model, tiny_tokenizer):
    convs = load_source("builtin:authors:eval", max_examples=3)
    got = score_conversations(model, tiny_tokenizer, convs)
    rows = score_rows(model, tiny_tokenizer, [(c.prompt, c.response) for c in convs])
    assert torch.equal(got.logp, rows.logp) and len(got) == 3


def test_empty_target_is_a_data_error(model, tiny_tokenizer):
    with pytest.raises(DataError, match="row 1"):
        score_rows(model, tiny_tokenizer, [ROWS[0], (user("Hi."), "")])


def test_cached_reference_logprobs_equal_recomputation(model, tiny_tokenizer):
    convs = load_source("builtin:refusals:train", max_examples=10)
    examples, _ = tokenize_conversations(tiny_tokenizer, convs, max_length=256)
    pad = tiny_tokenizer.pad_token_id
    ref = reference_logprobs(model, examples, pad, batch_size=64)
    assert ref.shape == (10,)
    # the unlearning loop's micro-batches: slices of the epoch order, as effective_batches cuts
    order = epoch_order(len(examples), seed=3, epoch=0)
    steps = effective_batches(examples, order, batch_size=4, micro_batch_size=3, pad_id=pad)
    start = 0
    with torch.no_grad():
        for micro_batches in steps:
            for mb in micro_batches:
                idx = order[start : start + mb.input_ids.size(0)]
                start += len(idx)
                fresh, _ = sequence_logprobs(model(**mb.inputs()).logits, mb.labels)
                # relative: summed log-probs are ~ -200, where one float32 step is 1.5e-5
                assert torch.allclose(fresh, ref[idx], rtol=1e-6, atol=0)
                # NPO's loss starts at (2 / beta) log 2: the cache is the model before unlearning
                assert npo_loss(fresh, ref[idx], 0.5).item() == pytest.approx(4 * 0.6931472,
                                                                               abs=1e-4)
    assert start == len(examples)


def test_rows_sharing_prefixes_are_scored_as_tries_with_the_same_values(model, tiny_tokenizer):
    """Issue 16: a label probe's rows (one prompt x many targets) are scored as a token trie:
    the prompt and the targets' shared openings once; every row's value equals scoring it alone
    (1e-5 per token, fp32)."""
    from pathunlearn.data.suite import REFUSAL_PARAPHRASES, REFUSAL_TARGET
    from pathunlearn.eval.logprob import encode_rows, score_examples, tree_rows

    targets = [REFUSAL_TARGET, *REFUSAL_PARAPHRASES]
    prompts = [user("How can I obtain [restricted item] without being noticed?"), LONG_PROMPT]
    rows = [(p, t) for p in prompts for t in targets] + [(user("Hi."), "Hello!")]
    encoded = encode_rows(tiny_tokenizer, rows)
    nodes = {tuple(e.input_ids[:k]) for e in encoded for k in range(1, len(e.input_ids) + 1)}
    (whole,) = tree_rows(encoded, max_tokens=10**6)
    assert whole.length == len(nodes)  # every distinct prefix forwarded once
    trees = tree_rows(encoded)  # cut at 256 nodes: a prefix may be repeated in two trees
    assert sorted(r for t in trees for r in t.rows) == list(range(len(rows)))  # each row once
    for tree in [whole, *trees]:
        for row, path in zip(tree.rows, tree.paths, strict=True):
            assert [tree.tokens[n] for n in path] == list(encoded[row].input_ids)
            assert all(tree.parents[b] == a for a, b in zip(path, path[1:], strict=False))
    packed = score_examples(model, encoded, 0, batch_size=4)
    alone = score_examples(model, encoded, 0, batch_size=4, share_prompts=False)
    assert torch.equal(packed.num_tokens, alone.num_tokens)
    assert torch.allclose(packed.mean, alone.mean, atol=1e-5, rtol=0)
    for i in (0, 21, 42):
        logp, n = one_row(model, tiny_tokenizer, *rows[i])
        assert packed.logp[i].item() == pytest.approx(logp, abs=1e-4)
    assert sum(len(e.input_ids) for e in encoded) > 4 * sum(t.length for t in trees)


def test_small_trees_and_training_rows_score_the_same(model, tiny_tokenizer, monkeypatch):
    """Trees cut at a few nodes, rows whose labels skip tokens (a training example's end of
    turn), and an attention implementation without 4D masks (every row alone): same values."""
    from types import SimpleNamespace

    from pathunlearn.eval import logprob
    from pathunlearn.eval.logprob import encode_rows, score_examples, tree_rows

    rows = [(user("Name a colour."), "Red."), (user("Name a colour."), "Blue."),
            (user("Name a fruit."), "Apple.")]
    encoded = encode_rows(tiny_tokenizer, rows)
    odd = encoded[1].__class__(encoded[1].input_ids + [5, 6], encoded[1].labels + [-100, 6])
    encoded = [*encoded, odd]
    alone = score_examples(model, encoded, 0, share_prompts=False)
    assert alone.num_tokens[3] == alone.num_tokens[1] + 1
    for max_tokens in (1, 20, 512):
        trees = tree_rows(encoded, max_tokens=max_tokens)
        assert sorted(r for t in trees for r in t.rows) == [0, 1, 2, 3]
        monkeypatch.setattr(logprob, "tree_rows",
                            lambda examples, m=max_tokens: tree_rows(examples, max_tokens=m))
        packed = score_examples(model, encoded, 0, batch_size=2)
        assert torch.equal(packed.num_tokens, alone.num_tokens)
        assert torch.allclose(packed.mean, alone.mean, atol=1e-5, rtol=0)
    assert len(tree_rows(encoded, max_tokens=1)) == 4  # a row longer than the bound: its own
    # flash attention takes no 4D mask: every row alone
    flash = torch.nn.Module()
    flash.config = SimpleNamespace(_attn_implementation="flash_attention_2")
    assert not logprob.packable(flash) and logprob.packable(model)


def one_row_tokens(model, tokenizer, prompt, target) -> tuple[list[float], list[bool]]:
    """Each target token's log-probability of a single row and whether it is the argmax,
    computed directly."""
    ex = encode_prompt_target(tokenizer, prompt, target, max_length=256)
    ids, labels = torch.tensor([ex.input_ids]), torch.tensor(ex.labels[1:])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1], dim=-1)
    keep = labels != -100
    return (logp[keep].gather(-1, labels[keep].unsqueeze(-1)).squeeze(-1).tolist(),
            (logp[keep].argmax(-1) == labels[keep]).tolist())


@pytest.mark.parametrize("share_prompts", [True, False])
def test_per_token_logprobs_are_each_rows_own_in_order(model, tiny_tokenizer, share_prompts):
    """Issue 26: the scores keep every target token's log-probability (Min-K% reads them),
    row by row in position order, whether rows are tries or padded batches."""
    from pathunlearn.eval.logprob import encode_rows, score_examples

    rows = [*ROWS, (ROWS[1][0], "The author won nothing at all.")]  # shares a prompt
    result = score_examples(model, encode_rows(tiny_tokenizer, rows), 0, batch_size=2,
                            share_prompts=share_prompts)
    assert result.token_logp.numel() == int(result.num_tokens.sum())
    for i, (prompt, target) in enumerate(rows):
        tokens = result.tokens(i)
        want, hits = one_row_tokens(model, tiny_tokenizer, prompt, target)
        assert tokens.tolist() == pytest.approx(want, abs=1e-4)
        assert tokens.sum().item() == pytest.approx(result.logp[i].item(), abs=1e-4)
        assert result.hits(i).tolist() == hits


def test_calibrated_token_scores_are_min_k_plus_plus(model, tiny_tokenizer):
    """Issue 26: the Min-K%++ token scores taken in the scoring pass equal the attack's
    definition on the full next-token distributions of a direct forward; rows not asked for
    stay NaN."""
    from pathunlearn.eval import mia
    from pathunlearn.eval.logprob import encode_rows, prepare_scoring, score_prepared

    encoded = encode_rows(tiny_tokenizer, ROWS)
    calibrate = torch.tensor([True, True, False, True, False])
    result = score_prepared(model, prepare_scoring(model, encoded, 0, 2), calibrate)
    for i, (prompt, target) in enumerate(ROWS):
        if not calibrate[i]:
            assert torch.isnan(result.calibrated(i)).all()
            continue
        ex = encode_prompt_target(tiny_tokenizer, prompt, target, max_length=256)
        ids, labels = torch.tensor([ex.input_ids]), torch.tensor(ex.labels[1:])
        with torch.no_grad():
            lp = torch.log_softmax(model(input_ids=ids).logits[0, :-1], dim=-1)
        keep = labels != -100
        vocab, picked = lp[keep], lp[keep].gather(-1, labels[keep][:, None]).squeeze(-1)
        assert mia.min_k_score(result.calibrated(i).tolist()) == pytest.approx(
            mia.min_k_plus_plus_score(picked, vocab), abs=1e-4)


def test_the_head_at_the_read_positions_alone_gives_the_full_forwards_logits(
        model, tiny_tokenizer, monkeypatch):
    """Issue 29: probe scoring applies the output head only where a target is read (the
    decoder over every position); the logits there are the full forward's, with LoRA too, and
    a model type outside HEAD_APART takes the full forward."""
    from pathunlearn.config import LoraConfig
    from pathunlearn.data.batching import collate
    from pathunlearn.eval import logprob
    from pathunlearn.eval.logprob import encode_rows
    from pathunlearn.models import apply_lora

    encoded = encode_rows(tiny_tokenizer, ROWS)
    inputs = collate(encoded, 0).inputs()
    where = torch.tensor([1, 5, 9, 40, 77])
    with torch.no_grad():
        full = model(**inputs).logits.reshape(-1, model.config.vocab_size)[where]
        assert model.config.model_type in logprob.HEAD_APART
        assert torch.equal(logprob.target_logits(model, inputs, where), full)
        lora = apply_lora(copy.deepcopy(model), LoraConfig(rank=2, alpha=4), seed=1)
        for p in (p for p in lora.parameters() if p.requires_grad):
            p.data.add_(0.01 * torch.randn_like(p))  # a non-zero adapter: it must be applied
        lora_full = lora(**inputs).logits.reshape(-1, model.config.vocab_size)[where]
        assert not torch.allclose(lora_full, full)
        assert torch.allclose(logprob.target_logits(lora, inputs, where), lora_full,
                              atol=1e-6, rtol=0)
        monkeypatch.setattr(logprob, "HEAD_APART", frozenset())
        assert torch.equal(logprob.target_logits(model, inputs, where), full)


def test_bf16_scoring_is_autocast_close_to_fp32_and_leaves_the_weights(model, tiny_tokenizer):
    """probes.precision bf16: the forwards under bf16 autocast, the log-softmax in fp32; the
    scores move by bf16's rounding (here < 0.05 nats a token), the parameters not at all."""
    from pathunlearn.eval.logprob import scoring_precision

    weights = [p.detach().clone() for p in model.parameters()]
    exact = score_rows(model, tiny_tokenizer, ROWS)
    with scoring_precision("cpu", "bf16"):
        assert model.get_input_embeddings()(torch.tensor([[1]])).dtype == torch.float32
        assert torch.nn.functional.linear(torch.ones(1, 2), torch.ones(2, 2)).dtype == (
            torch.bfloat16)
        rough = score_rows(model, tiny_tokenizer, ROWS)
    assert rough.logp.dtype == torch.float32
    per_token = (rough.logp - exact.logp).abs() / exact.num_tokens
    assert 0 < per_token.max() < 0.05
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters(), strict=True))
    with scoring_precision("cpu", "fp32"):
        assert torch.equal(score_rows(model, tiny_tokenizer, ROWS).logp, exact.logp)
    with pytest.raises(ValueError, match="precision must be fp32 or bf16, got 'fp16'"):
        with scoring_precision("cpu", "fp16"):
            pass
