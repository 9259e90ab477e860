"""Probes: fixed sets of (prompt, target) rows whose log-likelihood is tracked over unlearning.

A :class:`ProbeSet` is P prompts x G targets, stored prompt-major (row ``p * G + j`` is prompt
p with target j). Every row is scored by its per-token average log-probability
(:mod:`pathunlearn.eval.logprob`); :func:`evaluate_probes` scores the rows of *all* probe sets
together, in as few forward passes as the batch size allows, and returns a flat dict of floats.

Metric names (every value is a mean over the probe's prompts):

- label probes (G > 1; target 0 is the unlearn target, targets 1..G-1 its paraphrases):
  ``<name>/target``          the unlearn target's per-token average log-probability;
  ``<name>/paraphrase_mean`` the mean over the paraphrases;
  ``<name>/paraphrase_var``  the population variance across the paraphrases (ddof = 0, numpy's
                             default, as the paper's code);
  ``<name>/all_mean``        the mean over target and paraphrases (the quantity behind the
                             paper's forget score).
- response probes (G = 1, a prompt with one target, usually its own response):
  ``<name>/mean``            the mean per-token average log-probability; or, for a probe with
                             ``reduce="sum"``,
  ``<name>/sum``             the mean over prompts of the summed log-probability log pi(y|x)
                             (the paper's Section 4.3 curves).

The default probes (:func:`default_probes`), named after what they track:

- ``forget_label_id`` / ``forget_label_ood``: prompts of ``builtin:refusals`` split ``test``
  (in-distribution) / ``ood`` (or of the sources given, ``unlearning.label_prompts`` /
  ``label_prompts_ood``), each x (REFUSAL_TARGET + its 20 paraphrases);
- ``forget_response``: the forget set's own refusal responses;
- ``authors_train`` / ``authors_eval``: the authors' answers to the trained questions / to the
  same facts asked in paraphrase (retained utility, TOFU-like).

Size: ``max_prompts`` (16) prompts per label probe and ``max_examples`` (32) per response
probe: 2 x 16 x 21 + 3 x 32 = 768 rows of at most ~80 tokens; 2-3 s per evaluation for the
tiny model on one CPU core (encode the rows once with :func:`encode_probes` to save ~0.3 s).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pathunlearn import metrics as M
from pathunlearn.config import ExperimentConfig, ProbeConfig
from pathunlearn.data.chat import EncodedExample
from pathunlearn.data.conversation import Conversation
from pathunlearn.data.sources import load_source, load_stage
from pathunlearn.data.suite import REFUSAL_PARAPHRASES, REFUSAL_TARGET
from pathunlearn.errors import ConfigError, DataError
from pathunlearn.eval.logprob import Row, encode_rows, pad_token_id, score_examples

LABEL_TARGETS: tuple[str, ...] = (REFUSAL_TARGET, *REFUSAL_PARAPHRASES)
"""The forget-label probe's targets: the unlearn target, then its 20 paraphrases."""


@dataclass(frozen=True)
class ProbeSet:
    """P prompts x ``group_size`` targets as rows, prompt-major."""

    name: str
    rows: tuple[Row, ...]
    group_size: int = 1
    """Targets per prompt: 1 for a response probe, 1 + paraphrases for a label probe."""
    reduce: str = "mean"
    """Score of a row: "mean" per-token average log-probability, "sum" summed (response
    probes only)."""

    def __post_init__(self) -> None:
        if not self.rows or len(self.rows) % self.group_size:
            raise ValueError(f"probe {self.name}: {len(self.rows)} rows do not form groups "
                             f"of {self.group_size}")
        if self.reduce not in ("mean", "sum"):
            raise ValueError(f"probe {self.name}: unknown reduce {self.reduce!r}")
        if self.reduce == "sum" and self.group_size > 1:
            raise ValueError(f"probe {self.name}: reduce 'sum' is for response probes only")


def label_probe(name: str, prompts: Sequence[list[dict[str, str]]],
                targets: Sequence[str]) -> ProbeSet:
    """Every prompt with every target; ``targets[0]`` is the one reported as ``/target``."""
    if not prompts or not targets:
        raise DataError(f"probe {name}: needs at least one prompt and one target")
    rows = tuple((list(p), t) for p in prompts for t in targets)
    return ProbeSet(name, rows, group_size=len(targets))


def response_probe(name: str, conversations: Sequence[Conversation],
                   reduce: str = "mean") -> ProbeSet:
    """Each conversation's last assistant turn, scored given the turns before it (per-token
    average, or summed with ``reduce="sum"``)."""
    if not conversations:
        raise DataError(f"probe {name}: has no conversations")
    return ProbeSet(name, tuple((c.prompt, c.response) for c in conversations), reduce=reduce)


def default_probes(forget: Sequence[Conversation] | None = None, *, seed: int = 0,
                   max_prompts: int = 16, max_examples: int = 32,
                   label_prompts: str = "builtin:refusals:test",
                   label_prompts_ood: str = "builtin:refusals:ood") -> list[ProbeSet]:
    """The built-in probes (see the module docstring), from the built-in suite of ``seed``.

    ``forget`` is the forget set as trained (default: ``builtin:refusals`` train split); its
    first ``max_examples`` make ``forget_response``. ``label_prompts`` /
    ``label_prompts_ood``: the sources of the label probes' prompts (the last assistant turn
    of each conversation is dropped), e.g. a SORRY-BENCH test split.
    """
    def prompts(source: str) -> list[list[dict[str, str]]]:
        convs = load_source(source, seed=seed, max_examples=max_prompts)
        return [c.prompt for c in convs]

    if forget is None:
        forget = load_source("builtin:refusals:train", seed=seed)
    authors = {split: load_source(f"builtin:authors:{split}", seed=seed, max_examples=max_examples)
               for split in ("train", "eval")}
    return [
        label_probe(M.FORGET_LABEL_ID, prompts(label_prompts), LABEL_TARGETS),
        label_probe(M.FORGET_LABEL_OOD, prompts(label_prompts_ood), LABEL_TARGETS),
        response_probe(M.FORGET_RESPONSE, list(forget)[:max_examples]),
        response_probe(M.AUTHORS_TRAIN, authors["train"]),
        response_probe(M.AUTHORS_EVAL, authors["eval"]),
    ]


def probe_sets_of(cfg: ExperimentConfig) -> list[ProbeSet]:
    """The probe sets a run tracks: the built-in ones (unless ``unlearning.builtin_probes`` is
    false; ``forget_response`` from the forget stage as trained), then the config's
    ``probes``."""
    u = cfg.unlearning
    sets = []
    if u.builtin_probes:
        forget = load_stage(cfg.stages[cfg.paths.forget_stage])
        sets = default_probes(forget, max_prompts=u.probe_prompts, max_examples=u.probe_examples,
                              label_prompts=u.label_prompts,
                              label_prompts_ood=u.label_prompts_ood)
    return sets + [probes_from_config(p) for p in cfg.probes]


def probes_from_config(config: ProbeConfig, seed: int = 0) -> ProbeSet:
    """An extra probe declared in the experiment config: its prompts x its targets.

    Prompts are the conversations of ``prompts`` without their last assistant turn.
    ``targets`` null: each prompt's own last assistant turn (a response probe); a list of
    strings or a source (``builtin:NAME[:SPLIT]`` or a file, each conversation's last assistant
    turn is a target): every prompt x every target (a label probe, the first target first).
    ``reduce`` "sum" applies to response probes only.
    """
    try:
        convs = load_source(config.prompts, seed=seed, max_examples=config.max_prompts)
        targets = config.targets
        if isinstance(targets, str):
            targets = [c.response for c in load_source(targets, seed=seed)]
    except DataError as e:
        raise DataError(f"probe {config.name}: {e}") from None
    if targets is None:
        return response_probe(config.name, convs, reduce=config.reduce)
    if not targets:
        raise ConfigError(f"probe {config.name}: `targets` is empty")
    if config.reduce == "sum":
        raise ConfigError(f"probe {config.name}: `reduce: sum` needs `targets: null` (a "
                          "response probe)")
    return label_probe(config.name, [c.prompt for c in convs], targets)


def probe_metrics(probe: ProbeSet, scores: np.ndarray) -> dict[str, float]:
    """The metrics of one probe from its rows' scores (N,): per-token average
    log-probabilities, or summed ones for a probe with ``reduce="sum"``."""
    grid = np.asarray(scores, dtype=np.float64).reshape(-1, probe.group_size)  # (P, G)
    if probe.group_size == 1:
        return {M.key(probe.name, probe.reduce): float(grid.mean())}
    paraphrases = grid[:, 1:]  # (P, G-1)
    return {
        M.key(probe.name, M.TARGET): float(grid[:, 0].mean()),
        M.key(probe.name, M.PARAPHRASE_MEAN): float(paraphrases.mean(axis=1).mean()),
        M.key(probe.name, M.PARAPHRASE_VAR): float(paraphrases.var(axis=1).mean()),  # ddof=0
        M.key(probe.name, M.ALL_MEAN): float(grid.mean(axis=1).mean()),
    }


def encode_probes(tokenizer, probe_sets: Sequence[ProbeSet],
                  max_length: int = 256) -> list[EncodedExample]:
    """The rows of all probe sets, tokenised in order; encode once, evaluate at every step."""
    return encode_rows(tokenizer, [row for probe in probe_sets for row in probe.rows], max_length)


def evaluate_probes(model: torch.nn.Module, tokenizer, probe_sets: Sequence[ProbeSet],
                    batch_size: int = 64, max_length: int = 256,
                    encoded: list[EncodedExample] | None = None) -> dict[str, float]:
    """All probe metrics of ``model``: the rows of every set scored together, then split back.

    ``encoded``: :func:`encode_probes` of the same probe sets, to skip re-tokenising.
    """
    names = [p.name for p in probe_sets]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"probe name(s) {duplicates} used more than once")
    if encoded is None:
        encoded = encode_probes(tokenizer, probe_sets, max_length)
    if len(encoded) != sum(len(p.rows) for p in probe_sets):
        raise ValueError("`encoded` does not come from these probe sets")
    result = score_examples(model, encoded, pad_token_id(tokenizer), batch_size)
    scores = {"mean": result.mean.numpy(), "sum": result.logp.numpy()}
    metrics, start = {}, 0
    for probe in probe_sets:
        metrics |= probe_metrics(probe, scores[probe.reduce][start : start + len(probe.rows)])
        start += len(probe.rows)
    return metrics

