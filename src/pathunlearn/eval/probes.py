"""Probes: fixed sets of (prompt, target) rows whose log-likelihood is tracked over unlearning.

A :class:`ProbeSet` is P prompts x G targets, stored prompt-major (row ``p * G + j`` is prompt
p with target j), with its ``kind`` (what it measures, see ``pathunlearn.config.ProbeConfig``)
and the stage it belongs to. Every row is scored by its per-token average log-probability
(:mod:`pathunlearn.eval.logprob`); :func:`evaluate_probes` scores the rows of all scored sets
together, in as few forward passes as the batch size allows, and returns a flat dict of floats.
Sets of kind ``heldout`` are not scored: their items are the held-out set the retrain-
equivalence distances are taken on (:mod:`pathunlearn.eval.divergence`).

Metric names (every value is a mean over the probe's prompts; ``pathunlearn.metrics``):

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
- choice probes (``kind: choice``, a question x each of its choices, scored summed):
  ``<name>/acc``, ``<name>/acc_norm``, ``<name>/p_correct`` (:mod:`pathunlearn.eval.choice`).

:func:`resolve_probes` turns a config into its probe sets: the defaults derived from the
stages (:func:`default_probe_configs`, unless ``probes.defaults`` is false), a set of
``probes.sets`` replacing the default of the same name, then the other sets; every source is
loaded and checked here, before any training. With F the forget stage, the defaults are:

- ``forget_label_id``: F's held-out prompts (``builtin:refusals:test``, a SORRY-BENCH ``test``
  split; F's own prompts when its source has no held-out split) x the unlearn target and its 20
  paraphrases; ``forget_label_ood``: the same on F's out-of-distribution split, where it has
  one. Only when F's responses begin with the unlearn target (a refusal stage).
- ``forget_response``: F's trained items, scored on their own responses.
- ``<stage>_train`` (kind utility) for every other stage: its trained items (the paper's TOFU
  utility is this for the TOFU stage); ``<stage>_paraphrased`` where its source asks the same
  facts in paraphrase (``builtin:authors:eval``, ``tofu:...:paraphrased``: a TOFU subset with
  paraphrased questions, or one whose release directory holds a perturbed subset asking its
  questions, ``data.adapters``).
- ``heldout_<stage>`` (kind heldout) for every stage: items used in no training, its source's
  held-out split or the items after its ``max_examples``; a stage with neither has none.

A default whose source lacks the fields it needs (TOFU's ``full.json`` alone has no
paraphrased questions) is left out, never an error: :func:`default_probes` gives a note for
it, which the plan keeps (``Plan.probe_notes``, RUN_DIR/plan.json) and the report shows. A set
the config names in ``probes.sets`` that needs absent fields is an error naming the file and
the release files that have them.

Sizes: ``probes.prompts`` (16) prompts per label probe, ``probes.examples`` (32) items per
response and utility probe, ``probes.heldout`` (4) held-out items per stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pathunlearn import metrics as M
from pathunlearn.config import ExperimentConfig, ProbeConfig
from pathunlearn.data.adapters import MissingFields
from pathunlearn.data.chat import EncodedExample
from pathunlearn.data.conversation import Conversation
from pathunlearn.data.sources import load_source, load_stage, split_with_role
from pathunlearn.data.suite import REFUSAL_PARAPHRASES, REFUSAL_TARGET
from pathunlearn.errors import ConfigError, DataError
from pathunlearn.eval.choice import choice_metrics, choice_rows
from pathunlearn.eval.field import field_rows
from pathunlearn.eval.logprob import (
    Prepared,
    Row,
    encode_rows,
    pad_token_id,
    prepare_scoring,
    score_prepared,
)

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
    kind: str = "track"
    """forget_label, forget_response, utility, heldout or track (``config.ProbeConfig``)."""
    stage: str | None = None
    """The stage the probe belongs to (the column of a utility probe)."""
    source: str = ""
    """Where the rows come from, as configured (e.g. ``stage:authors``)."""
    metrics: tuple[str, ...] = ()
    """The field's metrics of its items (a field set, :mod:`pathunlearn.eval.field`); then
    each group is one item: its answer, its paraphrased answer when ``paraphrased``, its
    perturbed answers."""
    role: str | None = None
    """A field set's role: forget, retain, real_authors, world_facts or holdout."""
    paraphrased: bool = False
    """Whether row 1 of a field set's group is the item's paraphrased answer."""
    answers: tuple[int, ...] = ()
    """A choice set's correct choice per prompt (its groups are each question's choices,
    scored summed: ``reduce`` "sum"; :mod:`pathunlearn.eval.choice`)."""

    @property
    def scored(self) -> bool:
        """Whether it is scored as a probe (a heldout set is the RE distance's data)."""
        return self.kind != "heldout"

    def to_json(self) -> dict:
        field_info = {"metrics": list(self.metrics), "role": self.role,
                      "paraphrased": self.paraphrased} if self.metrics else {}
        if self.kind == "choice":
            field_info["answers"] = list(self.answers)
        return {"name": self.name, "kind": self.kind, "stage": self.stage,
                "source": self.source, "reduce": self.reduce, "group_size": self.group_size,
                **field_info,
                "rows": [{"prompt": prompt, "target": target} for prompt, target in self.rows]}

    @classmethod
    def from_json(cls, data: dict) -> ProbeSet:
        rows = tuple((list(r["prompt"]), r["target"]) for r in data["rows"])
        return cls(data["name"], rows, int(data["group_size"]), data["reduce"], data["kind"],
                   data["stage"], data["source"], tuple(data.get("metrics", ())),
                   data.get("role"), bool(data.get("paraphrased", False)),
                   tuple(int(a) for a in data.get("answers", ())))

    def __post_init__(self) -> None:
        if not self.rows or len(self.rows) % self.group_size:
            raise ValueError(f"probe {self.name}: {len(self.rows)} rows do not form groups "
                             f"of {self.group_size}")
        if self.reduce not in ("mean", "sum"):
            raise ValueError(f"probe {self.name}: unknown reduce {self.reduce!r}")
        if self.reduce == "sum" and self.group_size > 1 and self.kind != "choice":
            raise ValueError(f"probe {self.name}: reduce 'sum' is for response probes only")
        if self.kind == "choice" and (self.reduce != "sum" or len(self.answers) * self.group_size
                                      != len(self.rows) or not all(
                                          0 <= a < self.group_size for a in self.answers)):
            raise ValueError(f"probe {self.name}: a choice set is scored summed, with one "
                             "answer index into its group per prompt")


def label_probe(name: str, prompts: Sequence[list[dict[str, str]]],
                targets: Sequence[str], **info) -> ProbeSet:
    """Every prompt with every target; ``targets[0]`` is the one reported as ``/target``.
    ``info``: the set's kind, stage and source."""
    if not prompts or not targets:
        raise DataError(f"probe {name}: needs at least one prompt and one target")
    rows = tuple((list(p), t) for p in prompts for t in targets)
    return ProbeSet(name, rows, group_size=len(targets), **info)


def response_probe(name: str, conversations: Sequence[Conversation],
                   reduce: str = "mean", **info) -> ProbeSet:
    """Each conversation's last assistant turn, scored given the turns before it (per-token
    average, or summed with ``reduce="sum"``). ``info``: the set's kind, stage and source."""
    if not conversations:
        raise DataError(f"probe {name}: has no conversations")
    return ProbeSet(name, tuple((c.prompt, c.response) for c in conversations), reduce=reduce,
                    **info)


def resolve_probes(cfg: ExperimentConfig) -> list[ProbeSet]:
    """The probe sets of ``cfg`` (module docstring), in :func:`probe_configs` order; every
    source loaded and checked (DataError naming the probe otherwise)."""
    return [probe_set(cfg, c) for c in probe_configs(cfg)]


def probe_configs(cfg: ExperimentConfig) -> list[ProbeConfig]:
    """The configs of ``cfg``'s probe sets, in order: the defaults, then the config's sets (one
    of the same name replaces a default in its place)."""
    return probe_configs_and_notes(cfg)[0]


def probe_configs_and_notes(cfg: ExperimentConfig) -> tuple[list[ProbeConfig], list[str]]:
    """:func:`probe_configs`, and the notes of the defaults left out (:func:`default_probes`)
    that no set of the config replaces."""
    own = {p.name: p for p in cfg.probes.sets}
    configs, notes = default_probes(cfg) if cfg.probes.defaults else ([], [])
    notes = [n for n in notes if n.split(":", 1)[0] not in own]
    return [own.pop(c.name, c) for c in configs] + list(own.values()), notes


def default_probe_configs(cfg: ExperimentConfig) -> list[ProbeConfig]:
    """The default probe sets of ``cfg`` as configs (module docstring)."""
    return default_probes(cfg)[0]


def default_probes(cfg: ExperimentConfig) -> tuple[list[ProbeConfig], list[str]]:
    """The default probe sets of ``cfg`` as configs (module docstring), and a note for each
    default left out because its source lacks the fields it needs (TOFU's ``full`` has no
    paraphrased questions where no perturbed subset is beside it): ``NAME: left out: WHY``.
    The forget stage's data is read to tell whether it is a refusal stage."""
    p, forget = cfg.probes, cfg.paths.forget_stage
    notes: list[str] = []
    # in the order the paths first name them (the stages' order in the config file is lost
    # when a resolved config is written)
    stages = list(dict.fromkeys(s for path in cfg.paths.expand() for s in path))

    def trained(name: str) -> int:  # no more than the stage trains on
        return min(p.examples, cfg.stages[name].max_examples or p.examples)

    def split(name: str, role: str, probe: str | None = None) -> str | None:
        """The source of the split playing ``role``; for a ``probe`` read from it alone, None
        (and a note) where it lacks the fields the split needs."""
        stage = cfg.stages[name]
        source = split_with_role(stage.source, stage.split, role)
        try:
            if source is not None and probe is not None:
                load_source(source, max_examples=1)
        except MissingFields as e:
            notes.append(f"{probe}: left out: {e}")
            return None
        return source

    configs = []
    if answers_with_unlearn_target(load_stage(cfg.stages[forget])):
        configs.append(ProbeConfig(name=M.FORGET_LABEL_ID, kind="forget_label",
                                   source=split(forget, "heldout") or f"stage:{forget}",
                                   max_prompts=p.prompts, stage=forget))
        if ood := split(forget, "ood", M.FORGET_LABEL_OOD):
            configs.append(ProbeConfig(name=M.FORGET_LABEL_OOD, kind="forget_label",
                                       source=ood, max_prompts=p.prompts, stage=forget))
    configs.append(ProbeConfig(name=M.FORGET_RESPONSE, kind="forget_response",
                               source=f"stage:{forget}", max_prompts=trained(forget)))
    for name in stages:
        if name == forget:
            continue
        configs.append(ProbeConfig(name=f"{name}_train", kind="utility", source=f"stage:{name}",
                                   max_prompts=trained(name), stage=name))
        if para := split(name, "paraphrased", f"{name}_paraphrased"):
            configs.append(ProbeConfig(name=f"{name}_paraphrased", kind="utility", source=para,
                                       max_prompts=p.examples, stage=name))
    for name in stages:
        stage = cfg.stages[name]
        if held := split(name, "heldout", f"heldout_{name}"):
            configs.append(ProbeConfig(name=f"heldout_{name}", kind="heldout", source=held,
                                       max_prompts=p.heldout, stage=name))
        elif stage.max_examples and len(load_stage(stage, cut=False)) > stage.max_examples:
            configs.append(ProbeConfig(name=f"heldout_{name}", kind="heldout",
                                       source=f"stage:{name}", offset=stage.max_examples,
                                       max_prompts=p.heldout, stage=name))
    return configs, notes


def answers_with_unlearn_target(forget: Sequence[Conversation], sample: int = 32) -> bool:
    """Whether most of the forget stage's (first ``sample``) responses begin with the unlearn
    target, i.e. it is a refusal stage the label probes make sense for."""
    head = list(forget)[:sample]
    return bool(head) and 2 * sum(c.response.startswith(REFUSAL_TARGET) for c in head) >= len(head)


def probe_set(cfg: ExperimentConfig, config: ProbeConfig) -> ProbeSet:
    """One configured probe set: its items' prompts x its targets (ProbeConfig's docs)."""
    try:
        items = probe_items(cfg, config)
        targets = config.targets
        if targets is None and config.kind == "forget_label":
            targets = list(LABEL_TARGETS)
        if isinstance(targets, str):
            targets = [c.response for c in load_source(targets)]
    except DataError as e:
        raise DataError(f"probe {config.name}: {e}") from None
    stage = config.stage or config.stage_source
    info = {"kind": config.kind, "stage": stage, "source": config.source}
    if config.kind == "choice":
        try:
            rows, answers, size = choice_rows(items, config.continuation or "letter")
        except DataError as e:
            raise DataError(f"probe {config.name}: {config.source}: {e}") from None
        return ProbeSet(config.name, tuple(rows), size, "sum", answers=tuple(answers), **info)
    if config.metrics:
        rows, layout = field_rows(config.name, items, config.metrics, config.role)
        return ProbeSet(config.name, tuple(rows), layout.group_size, metrics=tuple(
            config.metrics), role=config.role, paraphrased=layout.paraphrased, **info)
    if targets is None:
        return response_probe(config.name, items, reduce=config.reduce, **info)
    if not targets:
        raise ConfigError(f"probe {config.name}: `targets` is empty")
    return label_probe(config.name, [c.prompt for c in items], targets, **info)


def probe_items(cfg: ExperimentConfig, config: ProbeConfig) -> list[Conversation]:
    """The items of a probe's source after ``offset``, the first ``max_prompts`` of them."""
    if (name := config.stage_source) is not None:
        items = load_stage(cfg.stages[name], cut=False)
    else:
        items = load_source(config.source)
    items = items[config.offset:]
    if config.max_prompts:
        items = items[: config.max_prompts]
    if not items:
        raise DataError(f"{config.source}: no items" + (f" after the first {config.offset}"
                                                         if config.offset else ""))
    return items


def probe_conversations(probe: ProbeSet) -> list[Conversation]:
    """The items of a response or heldout set as whole conversations (prompt + target)."""
    return [Conversation(messages=[*prompt, {"role": "assistant", "content": target}])
            for prompt, target in probe.rows]


def probe_metrics(probe: ProbeSet, scores: np.ndarray) -> dict[str, float]:
    """The metrics of one probe from its rows' scores (N,): per-token average
    log-probabilities, or summed ones for a probe with ``reduce="sum"``."""
    grid = np.asarray(scores, dtype=np.float64).reshape(-1, probe.group_size)  # (P, G)
    if probe.kind == "choice":  # summed log-likelihoods of each question's choices
        return choice_metrics(probe.name, grid, probe.answers, [t for _, t in probe.rows])
    if probe.metrics:  # a field set: its items' own answers (the rest is eval.field's)
        return {M.key(probe.name, probe.reduce): float(grid[:, 0].mean())}
    if probe.group_size == 1:
        return {M.key(probe.name, probe.reduce): float(grid.mean())}
    paraphrases = grid[:, 1:]  # (P, G-1)
    return {
        M.key(probe.name, M.TARGET): float(grid[:, 0].mean()),
        M.key(probe.name, M.PARAPHRASE_MEAN): float(paraphrases.mean(axis=1).mean()),
        M.key(probe.name, M.PARAPHRASE_VAR): float(paraphrases.var(axis=1).mean()),  # ddof=0
        M.key(probe.name, M.ALL_MEAN): float(grid.mean(axis=1).mean()),
    }


def probes_key(probe_sets: list[ProbeSet]) -> tuple:
    """The probe sets in a memo key: their names and identities (a probe set holds lists, so
    it has no hash; the invocation's ``Shared`` keeps the sets, so an identity is not reused
    while the memo lives)."""
    return tuple((p.name, id(p)) for p in probe_sets)


def encode_probes(tokenizer, probe_sets: Sequence[ProbeSet],
                  max_length: int = 256) -> list[EncodedExample]:
    """The rows of all scored probe sets, tokenised in order; encode once, evaluate at every
    step."""
    return encode_rows(tokenizer, [row for probe in probe_sets if probe.scored
                                   for row in probe.rows], max_length)


def evaluate_probes(model: torch.nn.Module, tokenizer, probe_sets: Sequence[ProbeSet],
                    batch_size: int = 64, max_length: int = 256,
                    encoded: list[EncodedExample] | None = None,
                    prepared: Prepared | None = None) -> dict[str, float]:
    """All probe metrics of ``model``: the rows of every set scored together, then split back.

    ``encoded``: :func:`encode_probes` of the same probe sets, to skip re-tokenising;
    ``prepared``: :func:`~pathunlearn.eval.logprob.prepare_scoring` of those, to skip working
    out the batches too (probes scored at every eval point).
    """
    scores = score_probe_rows(model, tokenizer, probe_sets, batch_size, max_length, encoded,
                              prepared)
    metrics = {}
    for probe in probe_sets:
        if probe.scored:
            metrics |= probe_metrics(probe, scores[probe.name][probe.reduce])
    return metrics


def score_probe_rows(model: torch.nn.Module, tokenizer, probe_sets: Sequence[ProbeSet],
                     batch_size: int = 64, max_length: int = 256,
                     encoded: list[EncodedExample] | None = None,
                     prepared: Prepared | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Scored probe set name -> {"mean": per-token average, "sum": summed log-probability,
    "tokens": each target token's log-probability, "hits": whether each is the model's
    argmax} of its rows (:func:`evaluate_probes`'s arguments)."""
    probe_sets = [p for p in probe_sets if p.scored]
    names = [p.name for p in probe_sets]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"probe name(s) {duplicates} used more than once")
    if prepared is None:
        if encoded is None:
            encoded = encode_probes(tokenizer, probe_sets, max_length)
        if len(encoded) != sum(len(p.rows) for p in probe_sets):
            raise ValueError("`encoded` does not come from these probe sets")
        prepared = prepare_scoring(model, encoded, pad_token_id(tokenizer), batch_size)
    elif len(prepared.num_tokens) != sum(len(p.rows) for p in probe_sets):
        raise ValueError("`prepared` does not come from these probe sets")
    # Min-K%++ token scores for the answers of the sets with membership inference
    calibrate = torch.tensor([p.metrics is not None and "mia" in p.metrics
                              for p in probe_sets for _ in p.rows], dtype=torch.bool)
    result = (score_prepared(model, prepared, calibrate=calibrate) if calibrate.any()
              else score_prepared(model, prepared))
    mean, total = result.mean.numpy(), result.logp.numpy()
    bounds = np.concatenate([[0], np.cumsum(result.num_tokens.numpy())])
    tokens = None if result.token_logp is None else result.token_logp.numpy()
    hits = None if result.token_hit is None else result.token_hit.numpy()
    zs = None if result.token_z is None else result.token_z.numpy()

    def rows_of(values, start: int, end: int):
        return None if values is None else [values[bounds[i]:bounds[i + 1]]
                                            for i in range(start, end)]

    out, start = {}, 0
    for probe in probe_sets:
        end = start + len(probe.rows)
        out[probe.name] = {"mean": mean[start:end], "sum": total[start:end],
                           "tokens": rows_of(tokens, start, end),
                           "hits": rows_of(hits, start, end), "z": rows_of(zs, start, end)}
        start = end
    return out
