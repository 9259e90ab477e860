"""Batched log-likelihood scoring: many (prompt, target) rows per forward pass.

A row is a prompt (chat messages, ending before the answer) and a target string scored as the
start of the assistant's answer (:func:`pathunlearn.data.chat.encode_prompt_target`: labels on
the target's tokens only). For every row: log pi(target | prompt) = the sum of the target
tokens' log-probabilities, the number of target tokens, and their ratio, the per-token average
log-probability (the quantity the paper's probes track).

Rows are sorted by length before they are cut into batches, so a batch holds rows of similar
length and little padding; results come back in the caller's order. Right padding with an
attention mask gives the same numbers as scoring each row alone (up to float rounding).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from pathunlearn import distributed
from pathunlearn.data.batching import additive_mask, collate
from pathunlearn.data.chat import IGNORE_INDEX, EncodedExample, encode_prompt_target
from pathunlearn.data.conversation import Conversation
from pathunlearn.errors import DataError

Row = tuple[list[dict[str, str]], str]
"""(prompt messages, target text)."""


@dataclass(frozen=True)
class ScoreResult:
    """Scores of N rows, in the order they were given."""

    logp: torch.Tensor
    """(N,) float32: summed log-probability of each row's target tokens, log pi(y|x)."""
    num_tokens: torch.Tensor
    """(N,) int64: number of target tokens of each row."""
    token_logp: torch.Tensor | None = None
    """(sum of num_tokens,) float32: every target token's log-probability, row by row in
    order, each row's in position order (:meth:`tokens`); None where not kept."""
    token_hit: torch.Tensor | None = None
    """(sum of num_tokens,) bool, in the same order: whether the model's most likely next
    token (teacher-forced) is the target token (:meth:`hits`)."""
    token_z: torch.Tensor | None = None
    """(sum of num_tokens,) float32, in the same order: each target token's log-probability
    calibrated by the model's next-token distribution there, ``(log p - mu) / sigma`` with
    ``mu``, ``sigma^2`` the mean and variance of ``log p`` under that distribution (Min-K%++);
    NaN for rows not asked for (:func:`score_prepared`'s ``calibrate``)."""

    def _span(self, row: int) -> slice:
        start = int(self.num_tokens[:row].sum())
        return slice(start, start + int(self.num_tokens[row]))

    def tokens(self, row: int) -> torch.Tensor:
        """The log-probabilities of row ``row``'s target tokens, in order."""
        if self.token_logp is None:
            raise ValueError("these scores kept no per-token log-probabilities")
        return self.token_logp[self._span(row)]

    def calibrated(self, row: int) -> torch.Tensor:
        """Row ``row``'s Min-K%++ token scores, in order."""
        if self.token_z is None:
            raise ValueError("these scores kept no calibrated token scores")
        return self.token_z[self._span(row)]

    def hits(self, row: int) -> torch.Tensor:
        """Whether each of row ``row``'s target tokens is the model's argmax, in order."""
        if self.token_hit is None:
            raise ValueError("these scores kept no per-token predictions")
        return self.token_hit[self._span(row)]

    @property
    def mean(self) -> torch.Tensor:
        """(N,) per-token average log-probability: logp / num_tokens."""
        return self.logp / self.num_tokens.clamp_min(1)

    def __len__(self) -> int:
        return self.logp.numel()


def score_examples(model: torch.nn.Module, examples: list[EncodedExample], pad_id: int,
                   batch_size: int = 64, share_prompts: bool = True) -> ScoreResult:
    """Summed target log-probabilities of encoded examples.

    With ``share_prompts`` (the default), the rows are scored as token tries
    (:func:`tree_rows`): every distinct prefix of the rows is forwarded once, each token
    attending to its own prefix only, so a prompt scored with many targets (a label probe's
    rows), the targets' common openings ("Sorry, I ...") and the chat template's first tokens
    cost one forward each rather than one per row. Without it (or for an attention
    implementation that takes no 4D mask), every row is its own sequence, ``batch_size`` rows
    per forward. Both give the same numbers as scoring every row alone (up to float rounding).
    Runs under ``torch.no_grad()`` in eval mode (the caller's train/eval mode is restored).

    Scoring the same rows again and again (probes at every eval point): prepare once with
    :func:`prepare_scoring` and call :func:`score_prepared`.
    """
    return score_prepared(model, prepare_scoring(model, examples, pad_id, batch_size,
                                                 share_prompts))


@dataclass
class Forward:
    """One forward pass of a prepared scoring: the model's inputs, and where each target token
    is read: the flat (batch row x position) index of the logits that predict it, its id and
    the row it counts for."""

    inputs: dict[str, torch.Tensor]
    where: torch.Tensor
    targets: torch.Tensor
    owner: torch.Tensor


@dataclass
class Prepared:
    """Fixed rows made ready to score (batches, tries and masks worked out once):
    :func:`prepare_scoring`, then :func:`score_prepared` as often as needed."""

    forwards: list[Forward]
    num_tokens: torch.Tensor
    """(N,) int64: target tokens of each row."""
    dtype: torch.dtype
    """The model dtype the additive masks are made for."""


def prepare_scoring(model: torch.nn.Module, examples: list[EncodedExample], pad_id: int,
                    batch_size: int = 64, share_prompts: bool = True) -> Prepared:
    """The forward passes that score ``examples`` with ``model`` (see :func:`score_examples`):
    token tries with their 4D masks, or one row per sequence (``batch_size`` per forward,
    longest first, so the first shows at once whether the largest fits in memory)."""
    dtype = next(model.parameters()).dtype
    num_tokens = torch.tensor([sum(label != IGNORE_INDEX for label in e.labels[1:])
                               for e in examples], dtype=torch.long)
    if not examples:
        return Prepared([], num_tokens, dtype)
    if share_prompts and packable(model):
        return Prepared(_tree_forwards(examples, tree_rows(examples), pad_id, batch_size, dtype),
                        num_tokens, dtype)
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids), reverse=True)
    forwards = []
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = collate([examples[i] for i in idx], pad_id)
        # logits at position t predict the label at t + 1
        at = (batch.labels[:, 1:] != IGNORE_INDEX).nonzero()  # (K, 2): row in batch, position
        width = batch.input_ids.size(1)
        forwards.append(Forward(batch.inputs(), at[:, 0] * width + at[:, 1],
                                batch.labels[at[:, 0], at[:, 1] + 1],
                                torch.tensor(idx)[at[:, 0]]))
    return Prepared(forwards, num_tokens, dtype)


def score_prepared(model: torch.nn.Module, prepared: Prepared,
                   calibrate: torch.Tensor | None = None) -> ScoreResult:
    """Score prepared rows with ``model`` (whose dtype must be the one they were prepared for):
    for each forward, one softmax over the vocabulary at the positions that predict a target
    token, summed per row. ``calibrate``: (N,) bool, the rows whose tokens also get their
    Min-K%++ score (:attr:`ScoreResult.token_z`; two more reductions over the vocabulary at
    their positions)."""
    device = next(model.parameters()).device
    if next(model.parameters()).dtype != prepared.dtype:
        raise ValueError("the rows were prepared for a model of another dtype")
    logp = torch.zeros(len(prepared.num_tokens), dtype=torch.float32)
    values, owners, hits, zs = [], [], [], []
    # under torchrun each rank makes every N-th forward and the sums are added up; a row is
    # read by one forward, so the scores are the single process's (pathunlearn.distributed)
    forwards = distributed.deal(prepared.forwards)
    with torch.no_grad(), eval_mode(model), distributed.lockstep(model, len(forwards)):
        for f in forwards:
            rows = target_logits(model, {k: v.to(device) for k, v in f.inputs.items()},
                                 f.where.to(device)).float()  # (K, V)
            lp = torch.log_softmax(rows, dim=-1)
            picked = lp.gather(-1, f.targets.to(device)[:, None])
            logp.index_add_(0, f.owner, picked.squeeze(-1).cpu())
            values.append(picked.squeeze(-1).cpu())
            owners.append(f.owner)
            hits.append((rows.argmax(-1) == f.targets.to(device)).cpu())
            zs.append(_calibrated(lp, picked.squeeze(-1), calibrate[f.owner].to(device))
                      if calibrate is not None else torch.zeros(0))
    # every token of a row comes from one forward, in position order: a stable sort by row
    # lines them up row by row (the order ScoreResult.tokens reads)
    # (every rank gathers, also one dealt no forward: the gathers are collectives)
    value = distributed.gather_tensor(torch.cat(values) if values else torch.zeros(0))
    owner = distributed.gather_tensor(torch.cat(owners) if owners
                                      else torch.zeros(0, dtype=torch.long))
    hit = distributed.gather_tensor(torch.cat(hits) if hits else torch.zeros(0, dtype=torch.bool))
    z = None if calibrate is None else distributed.gather_tensor(torch.cat(zs))
    order = torch.sort(owner, stable=True).indices
    return ScoreResult(distributed.all_reduce_tensor(logp), prepared.num_tokens.clone(),
                       value[order], hit[order], None if z is None else z[order])


HEAD_APART = frozenset({"llama", "mistral", "qwen2", "qwen3"})
"""Model types whose logits are exactly ``lm_head(decoder(x))``, with no scaling or soft cap
after the head (transformers' ``*ForCausalLM.forward``), so the head can be applied to the
positions that are read alone (:func:`target_logits`)."""


def target_logits(model: torch.nn.Module, inputs: dict, where: torch.Tensor) -> torch.Tensor:
    """(K, V) the logits at the flat positions ``where`` of the (B, T) batch ``inputs``: the
    decoder over every position and the output head over those alone, for the model types of
    :data:`HEAD_APART` (under LoRA too: the adapters are inside the two modules); otherwise,
    and for an FSDP2-sharded model (whose root unshards in its own forward), the full forward's
    (B, T, V) logits at ``where``. The same values either way: each position's logits are the
    head's product with its hidden state alone."""
    config = getattr(model, "config", None)
    if (getattr(config, "model_type", None) in HEAD_APART and not distributed.is_sharded(model)
            and getattr(config, "final_logit_softcapping", None) is None):
        hidden = model.get_decoder()(**inputs).last_hidden_state  # (B, T, H)
        return model.get_output_embeddings()(hidden.reshape(-1, hidden.size(-1))[where])
    logits = model(**inputs).logits  # (B, T, V)
    return logits.reshape(-1, logits.size(-1))[where]


def _calibrated(lp: torch.Tensor, picked: torch.Tensor, wanted: torch.Tensor) -> torch.Tensor:
    """(K,) Min-K%++ token scores ``(log p - mu) / sigma`` at the positions ``wanted`` (NaN
    elsewhere); ``lp`` (K, V) the log-softmax there (sigma^2 clamped at 1e-6, as
    :func:`pathunlearn.eval.mia.min_k_plus_plus_score`)."""
    out = torch.full_like(picked, float("nan"))
    if wanted.any():
        sel = lp[wanted]
        mu = (sel.exp() * sel).sum(-1)
        sigma = ((sel.exp() * sel.square()).sum(-1) - mu.square()).clamp(min=1e-6).sqrt()
        out[wanted] = (picked[wanted] - mu) / sigma
    return out.cpu()


# ---------------------------------------------------------------------------- shared prefixes


@dataclass(frozen=True)
class Tree:
    """Rows that share prefixes, as one sequence: a token trie. Node ``n`` is one distinct
    prefix of the rows (``tokens[n]`` its last token, ``parents[n]`` the prefix one token
    shorter, -1 for a first token); a node sits at the position of its depth and attends to
    its ancestors and itself only, so its logits are those of its prefix scored alone.
    ``paths[j]`` are the nodes of ``rows[j]``'s tokens, in order."""

    rows: tuple[int, ...]
    tokens: tuple[int, ...]
    parents: tuple[int, ...]
    paths: tuple[tuple[int, ...], ...]

    @property
    def length(self) -> int:
        """Tokens forwarded for this tree: one per node."""
        return len(self.tokens)


class _TreeBuilder:
    def __init__(self) -> None:
        self.children: dict[tuple[int, int], int] = {}
        self.tokens: list[int] = []
        self.parents: list[int] = []
        self.rows: list[int] = []
        self.paths: list[tuple[int, ...]] = []

    def missing(self, ids: list[int]) -> int:
        """Nodes that adding a row with tokens ``ids`` would create."""
        node = -1
        for k, token in enumerate(ids):
            node = self.children.get((node, token), -2)
            if node == -2:
                return len(ids) - k
        return 0

    def add(self, row: int, ids: list[int]) -> None:
        node, path = -1, []
        for token in ids:
            child = self.children.get((node, token))
            if child is None:
                child = self.children[(node, token)] = len(self.tokens)
                self.tokens.append(token)
                self.parents.append(node)
            path.append(child)
            node = child
        self.rows.append(row)
        self.paths.append(tuple(path))

    def tree(self) -> Tree:
        return Tree(tuple(self.rows), tuple(self.tokens), tuple(self.parents), tuple(self.paths))


def tree_rows(examples: list[EncodedExample], max_tokens: int = 256) -> list[Tree]:
    """The rows as token tries of at most ``max_tokens`` nodes (a longer row is a tree of its
    own). Rows are taken in the lexicographic order of their tokens, so rows sharing a prefix
    land in the same tree; every row is in exactly one tree. The bound keeps a tree's
    attention (quadratic in its nodes, with a dense mask) below the cost of its rows'
    feed-forward layers."""
    order = sorted(range(len(examples)), key=lambda i: examples[i].input_ids)
    trees, builder = [], _TreeBuilder()
    for i in order:
        ids = list(examples[i].input_ids)
        if builder.rows and len(builder.tokens) + builder.missing(ids) > max_tokens:
            trees.append(builder.tree())
            builder = _TreeBuilder()
        builder.add(i, ids)
    if builder.rows:
        trees.append(builder.tree())
    return trees


def packable(model: torch.nn.Module) -> bool:
    """A tree needs a 4D attention mask: sdpa and eager take one, flash attention does not."""
    impl = getattr(getattr(model, "config", None), "_attn_implementation", "sdpa")
    return impl in ("sdpa", "eager")


def _tree_batch(trees: list[Tree], pad_id: int, dtype: torch.dtype):
    """Token ids, position ids (each node's depth) and the additive 4D attention mask (0 where
    a node may look: its ancestors and itself; the dtype's minimum elsewhere) of a batch of
    trees, right-padded (a padding node looks at itself only)."""
    width = max(t.length for t in trees)
    ids = torch.full((len(trees), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(trees), width), dtype=torch.long)
    allowed = torch.eye(width, dtype=torch.bool).repeat(len(trees), 1, 1)
    for b, tree in enumerate(trees):
        ids[b, : tree.length] = torch.tensor(tree.tokens)
        depth = [0] * tree.length
        for node, parent in enumerate(tree.parents):  # a parent always precedes its children
            depth[node] = depth[parent] + 1 if parent >= 0 else 0
        positions[b, : tree.length] = torch.tensor(depth)
        # a node sees what its parent sees, and itself: one level of the trie at a time
        parents = torch.tensor(tree.parents)
        levels = torch.tensor(depth)
        for d in range(1, max(depth) + 1):
            nodes = (levels == d).nonzero().squeeze(1)
            allowed[b, nodes] |= allowed[b, parents[nodes]]
    return ids, positions, additive_mask(allowed, dtype).unsqueeze(1)


def _tree_forwards(examples: list[EncodedExample], trees: list[Tree], pad_id: int,
                   batch_size: int, dtype: torch.dtype) -> list[Forward]:
    """Trees, largest first, as many per forward as hold about ``batch_size`` rows' worth of
    tokens. Token k of a row (a target where its label is set) is read at the node of its
    token k - 1."""
    budget = batch_size * max(len(e.input_ids) for e in examples)
    order = sorted(trees, key=lambda t: t.length, reverse=True)
    forwards, start = [], 0
    while start < len(order):
        end = start + 1
        while end < len(order) and (end - start + 1) * order[start].length <= budget:
            end += 1
        batch = order[start:end]
        ids, positions, mask = _tree_batch(batch, pad_id, dtype)
        where, targets, owner = [], [], []
        for b, tree in enumerate(batch):
            for row, path in zip(tree.rows, tree.paths, strict=True):
                labels = examples[row].labels
                for k in range(1, len(path)):
                    if labels[k] != IGNORE_INDEX:
                        where.append(b * ids.size(1) + path[k - 1])
                        targets.append(labels[k])
                        owner.append(row)
        forwards.append(Forward({"input_ids": ids, "position_ids": positions,
                                 "attention_mask": mask}, torch.tensor(where, dtype=torch.long),
                                torch.tensor(targets, dtype=torch.long),
                                torch.tensor(owner, dtype=torch.long)))
        start = end
    return forwards


def encode_rows(tokenizer, rows: list[Row], max_length: int = 256) -> list[EncodedExample]:
    """Each row as prompt + generation prompt + target, labels on the target only.

    A prompt too long for ``max_length`` is cut from the left (the target is kept).
    """
    examples = [encode_prompt_target(tokenizer, prompt, target, max_length)
                for prompt, target in rows]
    for i, e in enumerate(examples):
        if e.num_targets == 0:
            raise DataError(f"probe row {i}: target {rows[i][1]!r} has no tokens to score")
    return examples


def score_rows(model: torch.nn.Module, tokenizer, rows: list[Row], batch_size: int = 64,
               max_length: int = 256) -> ScoreResult:
    """log pi(target | prompt) of every (prompt, target) row; see :class:`ScoreResult`."""
    examples = encode_rows(tokenizer, rows, max_length)
    return score_examples(model, examples, pad_token_id(tokenizer), batch_size)


def score_conversations(model: torch.nn.Module, tokenizer, conversations: list[Conversation],
                        batch_size: int = 64, max_length: int = 256) -> ScoreResult:
    """Score each conversation's last assistant turn given everything before it.

    The target is the response text only (no end-of-turn token), as for every probe row.
    """
    rows = [(c.prompt, c.response) for c in conversations]
    return score_rows(model, tokenizer, rows, batch_size, max_length)


def reference_logprobs(model: torch.nn.Module, examples: list[EncodedExample], pad_id: int,
                       batch_size: int = 64) -> torch.Tensor:
    """log pi_ref(y|x) of every forget example, computed once before unlearning. (N,) float32.

    ``examples`` are the encoded forget examples exactly as the unlearning loop trains on them
    (same labels, so the same target tokens), and ``ref[i]`` belongs to ``examples[i]``. The
    loop looks the values up with the example indices of each micro-batch: the slices of
    ``epoch_order`` that ``effective_batches`` cuts, i.e. ``ref[order[a:b]]``. Because the
    forget set is fixed and the reference is the model before unlearning, this replaces a
    second forward pass per step (NPO); it equals that pass up to float rounding.
    """
    return score_examples(model, examples, pad_id, batch_size).logp


def pad_token_id(tokenizer) -> int:
    """The padding id (eos, then 0, when the tokenizer has none); padded positions are masked,
    so the value only has to be a valid id."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return candidate
    return 0


@contextlib.contextmanager
def scoring_precision(device: torch.device | str, precision: str = "fp32") -> Iterator[None]:
    """``probes.precision``: the forwards inside the block under bf16 autocast on ``device``'s
    kind for ``bf16`` (parameters untouched; :func:`score_prepared` takes its log-softmax in
    fp32 either way), as they are for ``fp32``."""
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")
    if precision == "fp32":
        yield
        return
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
        yield


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode inside the block (no dropout), the caller's train/eval mode restored after:
    scorers and samplers are called from loops that may be mid-training."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
