"""Batched sampling from a causal LM with the KV cache: our own loop, seeded per sample.

Every prompt is rendered through the chat template with the generation prompt, left-padded
to the longest prompt of its batch, and decoded token by token:

- prefill: the whole padded batch once, ``position_ids = cumsum(mask) - 1`` so that every row
  starts at position 0 whatever its padding. Llama in transformers 5 derives positions from
  the cache length alone, which shifts a left-padded row by its padding: RoPE scores depend on
  relative positions only, so that is harmless in exact arithmetic, but models with absolute
  positions need the right ones, and with them a padded row computes what it would alone;
- decode: one token per row per step, its position one past the row's last one, the mask
  grown by one column; the cache holds the keys and values of everything before;
- stop: a row is done at its first stop token (EOS or an end-of-turn token) or after
  ``max_new_tokens``; the batch ends when every row is done. The stop token and everything
  after it are dropped; special tokens are stripped when decoding.

Sampling is reproducible without touching global RNG state: sample ``j`` of prompt ``i`` has
its own ``torch.Generator`` seeded from ``(seed, i, j)``, which draws one uniform number per
step; the token is the inverse CDF of the (temperature-scaled, top-p-filtered) distribution at
that number. So a sample depends on the model, its prompt and ``(seed, i, j)`` only — not on
the batch size nor on the prompts after it (up to floating-point differences between padded
batches) — and the same model, prompts and seed give the same samples.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable

import torch

from pathunlearn import distributed
from pathunlearn.data.chat import encode_prompt
from pathunlearn.eval.logprob import eval_mode, pad_token_id

# end-of-turn tokens of common chat templates (ChatML / Qwen, Llama 3, GPT-2 style)
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|endoftext|>")


# ---------------------------------------------------------------------------------------------
# sampling: pure functions of tensors


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``logits / temperature`` (any shape); ``temperature`` must be > 0."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature} (use greedy decoding)")
    return logits / temperature


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filtering: keep the smallest set of most probable tokens whose probability
    reaches ``top_p``; the others get ``-inf``.

    ``logits`` is (B, V). A token is dropped when the probability of the tokens ranked above
    it already sums to ``>= top_p``, so the most probable token is always kept and
    ``top_p = 1`` keeps everything. Ties are ranked by token id (stable sort).
    """
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_p == 1:
        return logits
    probs = torch.softmax(logits.float(), dim=-1)
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True, stable=True)
    mass_above = torch.cumsum(sorted_probs, dim=-1) - sorted_probs  # (B, V)
    drop_sorted = mass_above >= top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_from_probs(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling: for each row the first token whose cumulative probability
    exceeds ``u * total`` (tokens in id order).

    ``probs`` (B, V) non-negative (need not sum to 1), ``u`` (B,) uniform in [0, 1).
    Returns (B,) token ids; a token of probability 0 is never returned.
    """
    cdf = torch.cumsum(probs.double(), dim=-1)  # (B, V); float64 so tiny probabilities count
    target = (u.double().to(probs.device) * cdf[:, -1]).unsqueeze(-1)  # (B, 1)
    ids = torch.searchsorted(cdf, target, right=True).squeeze(-1)
    # rounding can land past the last token with probability > 0: take that token instead
    last_nonzero = (probs > 0).long().cumsum(-1).argmax(-1)
    return torch.minimum(ids, last_nonzero)


def next_tokens(logits: torch.Tensor, u: torch.Tensor | None, *, temperature: float,
                top_p: float) -> torch.Tensor:
    """(B,) next tokens from last-position ``logits`` (B, V): argmax when ``u`` is None,
    else a sample at the uniform numbers ``u`` (B,) after temperature and top-p."""
    if u is None:
        return logits.argmax(dim=-1)
    logits = top_p_filter(apply_temperature(logits.float(), temperature), top_p)
    return sample_from_probs(torch.softmax(logits, dim=-1), u)


# ---------------------------------------------------------------------------------------------
# the model side


def stop_token_ids(tokenizer, model=None) -> set[int]:
    """EOS, the end-of-turn tokens present in the vocabulary, and the model's generation
    config EOS ids (Llama 3 instruct lists several)."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    vocab = tokenizer.get_vocab()
    ids |= {vocab[t] for t in END_OF_TURN_TOKENS if t in vocab}
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if config_eos is not None:
        ids |= set(config_eos) if isinstance(config_eos, list | tuple) else {config_eos}
    return ids


def _forward_names(model) -> tuple[str, bool]:
    """(name of the KV-cache argument, whether ``logits_to_keep`` is accepted).

    transformers 5 renamed ``past_key_values`` to ``cache``; a peft wrapper forwards keyword
    arguments to the base model, so its signature is the one that counts.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(base.forward).parameters
    return ("cache" if "cache" in params else "past_key_values"), "logits_to_keep" in params


def _generate_batch(model, rows: list[list[int]], generators: list[torch.Generator | None], *,
                    stop_ids: set[int], pad_id: int, max_new_tokens: int, temperature: float,
                    top_p: float, on_token: Callable | None = None) -> list[list[int]]:
    """New tokens of each row (stop token excluded); ``generators[i] is None`` means greedy;
    ``on_token`` as in :func:`generate_rows`."""
    device = next(model.parameters()).device
    cache_name, keeps_logits = _forward_names(model)
    width = max(map(len, rows))
    ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows], device=device)  # (B, T)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: each row starts at 0
    stops = torch.tensor(sorted(stop_ids), device=device)
    done = torch.zeros(len(rows), dtype=torch.bool, device=device)
    out: list[torch.Tensor] = []
    ended: dict[int, int] = {}  # row -> its length, for the rows on_token ended
    cache = None
    for step in range(max_new_tokens):
        kwargs = {cache_name: cache, "use_cache": True}
        if keeps_logits:
            kwargs["logits_to_keep"] = 1  # the prefill would otherwise hold (B, T, V) logits
        result = model(input_ids=ids, attention_mask=mask, position_ids=positions, **kwargs)
        cache = getattr(result, "cache", None)
        if cache is None:  # transformers 4 calls it past_key_values
            cache = result.past_key_values
        logits = result.logits[:, -1, :]  # (B, V)
        u = None
        if generators[0] is not None:
            u = torch.cat([torch.rand(1, generator=g) for g in generators])  # (B,), CPU
        token = next_tokens(logits, u, temperature=temperature, top_p=top_p)
        token = token.masked_fill(done, pad_id)  # finished rows idle on padding
        out.append(token)
        stopped = torch.isin(token, stops)
        if on_token is not None:  # each running row: its token, or None at its stop token
            tokens, stopping = token.tolist(), stopped.tolist()
            for i in (~done).nonzero().flatten().tolist():
                if stopping[i]:
                    on_token(i, None)
                elif on_token(i, tokens[i]):
                    ended[i] = step + 1
                    stopped[i] = True
        done |= stopped
        if bool(done.all()):
            break
        ids = token.unsqueeze(-1)
        positions = positions[:, -1:] + 1
        mask = torch.cat([mask, torch.ones_like(ids)], dim=-1)
    if on_token is not None:  # the rows max_new_tokens stopped
        for i in (~done).nonzero().flatten().tolist():
            on_token(i, None)
    new = torch.stack(out, dim=-1).tolist()  # (B, steps)
    for i, length in ended.items():
        new[i] = new[i][:length]
    return [_cut_at_stop(r, stop_ids) for r in new]


def _cut_at_stop(tokens: list[int], stop_ids: set[int]) -> list[int]:
    for i, t in enumerate(tokens):
        if t in stop_ids:
            return tokens[:i]
    return tokens


def generate_rows(model, rows: list[list[int]], generators: list[torch.Generator | None], *,
                  stop_ids: set[int], pad_id: int, max_new_tokens: int,
                  temperature: float = 1.0, top_p: float = 1.0,
                  on_token: Callable[[int, int | None], bool | None] | None = None,
                  ) -> list[list[int]]:
    """Decode prompts given as token ids (``rows``) as one left-padded batch: the new tokens of
    each row, its stop token excluded — what :func:`generate` decodes to text, token for token.

    ``generators[i]`` samples row ``i`` (:func:`sample_generator`; row ``j`` of prompt ``i``
    in :func:`generate` is ``sample_generator(seed, i, j)``), or is ``None`` for argmax
    decoding: all rows one way or all the other. ``on_token(i, token)`` is called as soon as
    row ``i`` has sampled ``token``, step by step, then once ``on_token(i, None)`` when the
    row stops (its stop token, or ``max_new_tokens``). When it returns true the row ends
    there, that token kept, and nothing more is reported for it; the batch ends when every
    row has. Runs without gradients, the model in eval mode (its mode restored).
    """
    if len(generators) != len(rows) or not rows or max_new_tokens < 1:
        raise ValueError("one generator per row, at least one row and max_new_tokens >= 1")
    if len({g is None for g in generators}) > 1:
        raise ValueError("rows must be all greedy (generator None) or all sampled")
    if generators[0] is not None:
        apply_temperature(torch.zeros(1), temperature)  # validate before any work
        top_p_filter(torch.zeros(1, 1), top_p)
    with torch.no_grad(), eval_mode(model):
        return _generate_batch(model, rows, generators, stop_ids=stop_ids, pad_id=pad_id,
                               max_new_tokens=max_new_tokens, temperature=temperature,
                               top_p=top_p, on_token=on_token)


def sample_generator(seed: int, prompt: int, sample: int) -> torch.Generator:
    """The CPU generator of sample ``sample`` of prompt ``prompt``: a pure function of the three."""
    digest = hashlib.sha256(f"{seed}:{prompt}:{sample}".encode()).digest()
    g = torch.Generator()
    g.manual_seed(int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF)
    return g


def generate(model, tokenizer, prompts: list[list[dict]], *, n: int = 1,
             temperature: float = 1.0, top_p: float = 1.0, max_new_tokens: int = 256,
             greedy: bool = False, seed: int = 0, batch_size: int = 16,
             progress: Callable[[int, int], None] | None = None) -> list[list[str]]:
    """``n`` completions of every prompt (a list of chat messages), decoded with special tokens
    stripped and cut at the first stop token: ``result[i][j]`` is sample ``j`` of prompt ``i``.

    ``greedy`` decodes each prompt once (argmax) and repeats it ``n`` times. ``batch_size``
    counts rows (prompt × sample). The model is put in eval mode and its mode restored.
    ``progress(done, total)`` is called after every batch with the rows (this rank's, under
    torchrun) generated so far and of all.
    """
    if n < 1 or batch_size < 1 or max_new_tokens < 1:
        raise ValueError("n, batch_size and max_new_tokens must be >= 1")
    if not greedy:
        apply_temperature(torch.zeros(1), temperature)  # validate before any work
        top_p_filter(torch.zeros(1, 1), top_p)
    stop_ids = stop_token_ids(tokenizer, model)
    pad_id = pad_token_id(tokenizer)
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    draws = 1 if greedy else n
    jobs = [(i, j) for i in range(len(prompts)) for j in range(draws)]
    jobs.sort(key=lambda job: -len(encoded[job[0]]))  # similar lengths share a batch
    # under torchrun each rank generates every N-th job (a job's sampler is seeded by the job,
    # so where it runs does not matter) and the texts are gathered (pathunlearn.distributed);
    # an FSDP model's forwards are collectives and generations differ in length, so there
    # every rank generates every job
    dealt = not distributed.is_sharded(model)
    if dealt:
        jobs = distributed.deal(jobs)
    texts: dict[tuple[int, int], str] = {}
    with torch.no_grad(), eval_mode(model):
        for start in range(0, len(jobs), batch_size):
            batch = jobs[start : start + batch_size]
            generators = [None if greedy else sample_generator(seed, i, j) for i, j in batch]
            new = _generate_batch(model, [encoded[i] for i, _ in batch], generators,
                                  stop_ids=stop_ids, pad_id=pad_id,
                                  max_new_tokens=max_new_tokens, temperature=temperature,
                                  top_p=top_p)
            for job, tokens in zip(batch, new, strict=True):
                texts[job] = tokenizer.decode(tokens, skip_special_tokens=True)
            if progress is not None:
                progress(len(texts), len(jobs))
    if dealt:
        texts = dict(distributed.gather(list(texts.items())))
    return [[texts[(i, 0 if greedy else j)] for j in range(n)] for i in range(len(prompts))]
