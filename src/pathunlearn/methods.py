"""Unlearning methods as objects: what a cell minimises, one class per method.

A method is a subclass of :class:`Method` with

- ``name``: how outputs call it (directory names, the table);
- ``local``: True when it uses only forget-set gradients (the paper's Definition 2.2); a
  weakly-local method also has a retain term and is marked ``local: false`` in every output;
- ``default_beta``: its inverse temperature when the config gives none (None: it has none);
- ``needs_reference``: whether it needs log pi_ref(y|x) of every forget example under the path
  model before unlearning (computed once per cell, then looked up per micro-batch);
- ``needs_reference_model``: whether its retain term needs the reference model's logits on
  the retain batch (under LoRA the path model is the model with the adapter switched off);
- ``needs_logits``: whether its forget term needs the model's full (B, T, V) logits and the
  labels (``batch.logits``, ``batch.labels``; off by default: they are the biggest tensors);
- ``needs_reference_logits``: whether its forget term needs the reference model's (B, T, V)
  logits on the forget batch (``batch.ref_logits``: a teacher, as UNDIAL's);
- ``needs_alternates``: whether its forget term needs alternate answers to each forget
  prompt (``batch.alt_logp``, ``batch.alt_ref_logp``: DPO's winner); the hook
  ``alternate_answers`` says which (by default one drawn per example from the method's
  ``alternates`` list, else ``IDK_ANSWERS``; AltPO's are sampled from the path model);
- ``needs_hidden_states``: whether its terms need the output of one decoder layer
  (``hidden_layer()``) on the forget batch (``batch.hidden``) and, for a retain term, on the
  retain batch under the model and the reference (``hidden``, ``ref_hidden``): RMU's;
- ``option_defaults``: a built-in method's own settings (``options``) and their defaults;
  a key it does not list is an error (None: any options, a user's method reads its own);
- ``forget_loss(batch)``: the forget-set term of one micro-batch (to be *minimised*);
- ``retain_loss(batch)``: the retain-set term of one retain micro-batch (weakly local only);
- hooks, no-ops by default: ``alternate_answers(conversations, rng, sample)`` the
  alternates of each forget example (``needs_alternates``), ``prepare(model, seed)`` once per cell before its first step
  (RMU draws its control vector), ``trainable(name)`` which parameters are updated (RMU's
  layers), ``after_step(step, steps_per_epoch, reduce)`` after every optimizer step, returning
  values for the step's row (PDU's dual variable).

The built-in methods (GA, NPO, SimNPO, WGA, SatImp, CE-U, UNDIAL, DPO, AltPO, RMU;
GradDiff, NPO + retain NLL, NPO + KL, WGA, SatImp, UNDIAL, DPO, AltPO with a retain NLL, RMU
with its activation retain term, PDU) are defined below exactly as a user's
method is; ``pathunlearn methods`` lists them. A config names a method by its built-in name, by an import path
``package.module:Class``, by a file ``path/to/file.py:Class`` or by an entry point of the group
``pathunlearn.methods``; see ``examples/custom_method.py``:

    class WeightedGA(Method):
        name = "wga"

        def forget_loss(self, batch: ForgetBatch) -> torch.Tensor:
            weight = self.options.get("weight", 1.0)
            return weight * ga_loss(batch.token_logp, batch.mask, batch.num_tokens)

Divisors: ``num_tokens`` / ``num_sequences`` count the whole *effective* batch, so the losses of
its micro-batches add up to the loss of the effective batch, as their gradients do.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import inspect
import random
import re
import sys
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from pathunlearn.data.conversation import Conversation
from pathunlearn.data.io import parse_json, read_text, text_lines
from pathunlearn.errors import ConfigError
from pathunlearn.losses import (
    IGNORE_INDEX,
    activation_mse,
    ceu_loss,
    dpo_loss,
    ga_loss,
    kl_to_reference,
    logit_margin_loss,
    npo_loss,
    retain_nll,
    satimp_loss,
    simnpo_loss,
    undial_loss,
    wga_loss,
)

if TYPE_CHECKING:
    from pathunlearn.config import MethodConfig

ENTRY_POINT_GROUP = "pathunlearn.methods"

Sampler = Callable[[list[list[dict[str, str]]], int, float, int], list[list[str]]]
"""``sample(prompts, n, temperature, max_new_tokens)``: ``n`` completions of every prompt (a
list of chat messages) from the path model before unlearning, ``result[i][j]`` sample ``j``
of prompt ``i``, seeded by the cell (:func:`pathunlearn.eval.generate.generate`)."""


@dataclass(frozen=True)
class ForgetBatch:
    """One micro-batch of the forget set, as a method's forget term sees it."""

    token_logp: torch.Tensor
    """(B, T-1) log-probability of every target token under the model being unlearned; 0 where
    ``mask`` is False. Differentiable."""
    mask: torch.Tensor
    """(B, T-1) bool: which positions are response tokens."""
    num_tokens: int
    """Target tokens of the whole effective batch: the divisor of a token mean."""
    num_sequences: int
    """Sequences of the whole effective batch: the divisor of a sequence mean."""
    ref_logp: torch.Tensor | None = None
    """(B,) log pi_ref(y|x) of these sequences under the path model before unlearning; set
    when the method has ``needs_reference``."""
    logits: torch.Tensor | None = None
    """(B, T, V) the model's logits (differentiable); set when the method has
    ``needs_logits``."""
    labels: torch.Tensor | None = None
    """(B, T) target ids, -100 where there is no target; set with ``needs_logits``."""
    ref_logits: torch.Tensor | None = None
    """(B, T, V) the reference model's logits on this batch; set when the method has
    ``needs_reference_logits``."""
    alt_logp: torch.Tensor | None = None
    """(B,) log pi(a|x) of each prompt's alternate answer under the model (differentiable),
    or (B, K) when ``alternate_answers`` gives each prompt K > 1 alternates (AltPO); set
    when the method has ``needs_alternates``."""
    alt_ref_logp: torch.Tensor | None = None
    """(B,) or (B, K) log pi_ref(a|x) of the alternate answers under the path model before
    unlearning; set with ``needs_alternates``."""
    hidden: torch.Tensor | None = None
    """(B, T, D) the output of decoder layer ``method.hidden_layer()`` (differentiable); set,
    with ``labels``, when the method has ``needs_hidden_states``."""

    @property
    def logp(self) -> torch.Tensor:
        """(B,) log pi(y|x): the summed log-probability of each response."""
        return (self.token_logp * self.mask).sum(-1)

    @property
    def lengths(self) -> torch.Tensor:
        """(B,) number of response tokens of each sequence."""
        return self.mask.sum(-1)


@dataclass(frozen=True)
class RetainBatch:
    """One micro-batch of retain data, as a weakly-local method's retain term sees it."""

    logits: torch.Tensor
    """(B, T, V) the model's logits. Differentiable."""
    labels: torch.Tensor
    """(B, T) target ids, -100 where there is no target (shifted by one inside the losses)."""
    num_tokens: int
    """Target tokens of the whole effective retain batch."""
    ref_logits: torch.Tensor | None = None
    """(B, T, V) the reference model's logits; set when the method has
    ``needs_reference_model``."""
    vocab_chunk: int | None = None
    """The config's ``vocab_chunk``: pass it to :func:`pathunlearn.losses.retain_nll` /
    ``nll_sum`` (target positions per softmax over the vocabulary; None: all at once)."""
    hidden: torch.Tensor | None = None
    """(B, T, D) the output of decoder layer ``method.hidden_layer()`` (differentiable); set
    when the method has ``needs_hidden_states``."""
    ref_hidden: torch.Tensor | None = None
    """(B, T, D) the same layer's output under the reference model; set with ``hidden``."""


class Method:
    """Base class of every unlearning method (see the module docstring).

    ``config`` is the method's entry of ``unlearning.methods``: ``config.beta`` (or
    ``default_beta``) is :attr:`beta`, ``config.retain_weight`` is lambda, ``config.options``
    holds a user's method's own settings (:attr:`options`).
    """

    name: ClassVar[str]
    local: ClassVar[bool] = True
    default_beta: ClassVar[float | None] = None
    needs_reference: ClassVar[bool] = False
    needs_reference_model: ClassVar[bool] = False
    needs_logits: ClassVar[bool] = False
    needs_reference_logits: ClassVar[bool] = False
    needs_alternates: ClassVar[bool] = False
    needs_hidden_states: ClassVar[bool] = False
    option_defaults: ClassVar[dict[str, float | str] | None] = None

    def __init__(self, config: MethodConfig):
        self.config = config
        known = type(self).option_defaults
        if known is not None:
            bad = sorted(set(config.options) - set(known))
            if bad:
                raise ConfigError(f"method {config.name!r}: unknown option {bad[0]!r} (its "
                                  f"options: {', '.join(known) or 'none'})")
            for key, value in config.options.items():
                text = isinstance(known[key], str)
                if (not isinstance(value, str) if text else
                        isinstance(value, bool) or not isinstance(value, int | float)):
                    raise ConfigError(f"method {config.name!r}: option {key!r} must be "
                                      f"{'a string' if text else 'a number'}, got {value!r}")

    @property
    def beta(self) -> float | None:
        """``config.beta``, else ``default_beta``."""
        return self.config.beta if self.config.beta is not None else self.default_beta

    @property
    def options(self) -> dict[str, Any]:
        """``config.options`` over the method's ``option_defaults``."""
        return {**(type(self).option_defaults or {}), **self.config.options}

    def variant(self) -> list[str]:
        """Settings always named in the method's label because they change what it is (e.g.
        SimNPO's length normalisation: ``simnpo-norm``); empty for most methods."""
        return []

    def data_identity(self) -> dict[str, str]:
        """The content of data files the method's options name, as a cell's key holds it (so
        editing the file recomputes the cells); empty for most methods."""
        return {}

    def describe(self) -> str:
        """One line saying what ran: the first line of the class docstring, beta, options and
        whether the method is local (shown in the report's notes)."""
        doc = (type(self).__doc__ or type(self).__name__).strip().splitlines()[0].rstrip(".")
        parts = [doc] + ([f"beta {self.beta:g}"] if self.beta is not None else [])
        parts += [f"{k} {v}" for k, v in sorted(self.options.items())]
        return ", ".join(parts) + ("" if self.local else " (weakly local: uses retain data)")

    def hidden_layer(self) -> int:
        """The decoder layer (0-based) whose output a ``needs_hidden_states`` method reads:
        its option ``layer``."""
        return int(self.options["layer"])

    def alternate_answers(self, conversations: list[Conversation], rng: random.Random,
                          sample: Sampler) -> list[list[str]]:
        """The alternate answers of each forget conversation (``needs_alternates``): row ``i``
        replaces the last answer of ``conversations[i]``, every row with the same number K
        of answers (a conversation without an answer is used as it is). ``rng`` is seeded by
        the cell's seed; ``sample(prompts, n, temperature, max_new_tokens)`` draws ``n``
        completions of each prompt (chat messages) from the path model, seeded by the cell.
        Default: one answer per example drawn by ``rng`` from the method's ``alternates``
        list, else from ``IDK_ANSWERS``."""
        answers = list(getattr(self, "alternates", None) or IDK_ANSWERS)
        return [[rng.choice(answers)] if last_exchange(c) is not None else [""]
                for c in conversations]

    def prepare(self, model: torch.nn.Module, seed: int) -> None:
        """Called once per cell before its first step with the model being unlearned (under
        LoRA with its fresh adapter) and the cell's seed. Nothing by default."""

    def trainable(self, name: str) -> bool:
        """Whether the parameter ``name`` (as ``named_parameters()`` of the model being
        unlearned names it) is updated; every trainable one by default."""
        return True

    def after_step(self, step: int, steps_per_epoch: int,
                   reduce: Callable[[float], float]) -> dict[str, float]:
        """Called after optimizer step ``step`` (1-based); ``reduce`` sums a float over the
        ranks under torchrun (the identity otherwise). Returns values the step's row records
        (PDU: its dual variable); none by default."""
        return {}

    def forget_loss(self, batch: ForgetBatch) -> torch.Tensor:
        """The forget-set term of one micro-batch (a scalar to minimise)."""
        raise NotImplementedError(f"{type(self).__name__} defines no forget_loss")

    def retain_loss(self, batch: RetainBatch) -> torch.Tensor:
        """The retain-set term of one retain micro-batch (weakly-local methods only)."""
        raise NotImplementedError(f"{type(self).__name__} is local: it has no retain term")


# ---------------------------------------------------------------------------- built-in


class GA(Method):
    """GA: gradient ascent on the token-mean NLL of the forget responses (the paper's GA)."""

    name = "ga"

    def forget_loss(self, batch: ForgetBatch) -> torch.Tensor:
        return ga_loss(batch.token_logp, batch.mask, batch.num_tokens)


class NPO(Method):
    """NPO (reference: the path model before unlearning)."""

    name = "npo"
    default_beta = 0.5
    needs_reference = True

    def forget_loss(self, batch: ForgetBatch) -> torch.Tensor:
        if batch.ref_logp is None:
            raise ValueError(f"{self.name} needs the reference log-probabilities ref_logp")
        return npo_loss(batch.logp, batch.ref_logp, self.beta, batch.num_sequences)


class SimNPO(Method):
    """SimNPO: NPO without a reference; the paper's summed form, or with
    ``length_normalize`` the SimNPO paper's length-normalised form with margin ``gamma``."""

    name = "simnpo"
    default_beta = 1.0

    def variant(self) -> list[str]:
        return ["norm"] if self.config.length_normalize else []

    def describe(self) -> str:
        if self.config.length_normalize:
            return (f"SimNPO, beta {self.beta:g}, length-normalised with margin gamma "
                    f"{self.config.gamma:g} (the SimNPO paper's form)")
        return f"SimNPO, beta {self.beta:g}, summed log-probability (the paper's form)"

    def forget_loss(self, batch: ForgetBatch) -> torch.Tensor:
        lengths = batch.lengths if self.config.length_normalize else None
        return simnpo_loss(batch.logp, self.beta, lengths, self.config.gamma,
                           batch.num_sequences)


def weighted_retain_nll(method: Method, batch: RetainBatch) -> torch.Tensor:
    """lambda (``retain_weight``) * the token-mean NLL of a retain batch: the retain term of
    GradDiff and NPO + retain NLL."""
    return method.config.retain_weight * retain_nll(batch.logits, batch.labels, batch.num_tokens,
                                                     batch.vocab_chunk)


class GradDiff(GA):
    """GradDiff: GA on the forget set + lambda * NLL on retain data."""

    name = "graddiff"
    local = False

    def retain_loss(self, batch: RetainBatch) -> torch.Tensor:
        return weighted_retain_nll(self, batch)


class NPORetain(NPO):
    """NPO on the forget set + lambda * NLL on retain data."""

    name = "npo_retain"
    local = False

    def retain_loss(self, batch: RetainBatch) -> torch.Tensor:
        return weighted_retain_nll(self, batch)


class NPOKL(NPO):
    """NPO on the forget set + lambda * KL(reference || model) on retain data."""

    name = "npo_kl"
    local = False
    needs_reference_model = True

    def retain_loss(self, batch: RetainBatch) -> torch.Tensor:
        if batch.ref_logits is None:
            raise ValueError(f"{self.name} needs the reference model's logits ref_logits")
        return self.config.retain_weight * kl_to_reference(batch.logits, batch.ref_logits,
                                                           batch.labels, batch.num_tokens)


class WGA(Method):
    """WGA: gradient ascent weighted by the model's own token probabilities.

    loss = sum_t p_t^beta * log p_t / N over the forget response tokens, p_t detached
    (:func:`pathunlearn.losses.wga_loss`). Source: Wang et al. 2025, "Rethinking LLM
    Unlearning Objectives: A Gradient Perspective and Go Beyond" (ICLR); defaults from
    OpenUnlearning's ``configs/trainer/WGA.yaml`` (beta 1). OpenUnlearning's WGA always adds
    a retain NLL (alpha 1); here that is ``weighted_ga_retain``, and ``weighted_ga`` the local
    forget term. (Named ``weighted_ga``: ``wga`` is the name of the user's method in
    ``examples/custom_method.py``, the same idea written as a plug-in.)
    """

    name = "weighted_ga"
    default_beta = 1.0

    def forget_loss(self, batch: ForgetBatch) -> torch.Tensor:
        return wga_loss(batch.token_logp, batch.mask, self.beta, batch.num_tokens)


class WGARetain(WGA):
    """WGA on the forget set + lambda * NLL on retain data (OpenUnlearning's WGA)."""

    name = "weighted_ga_retain"
    local = False

    def retain_loss(self, batch: RetainBatch) -> torch.Tensor:
        return weighted_retain_nll(self, batch)


class SatImp(Method):
    """SatImp: gradient ascent weighted by saturation p^beta1 and importance (1-p)^beta2.

    loss = sum_t p_t^beta1 (1 - p_t)^beta2 log p_t / N, weights detached
    (:func:`pathunlearn.losses.satimp_loss`). Source: Yang et al. 2025, "Exploring Criteria
    of Loss Reweighting to Enhance LLM Unlearning" (ICML); defaults from OpenUnlearning's
    ``configs/trainer/SatImp.yaml`` (options beta1 5, beta2 1). OpenUnlearning's SatImp
    weighs its forget term by gamma 0.1 and adds a retain NLL (alpha 1): ``satimp_retain``
    with ``retain_weight: 10`` has the same ratio of the two terms (at a 10x larger scale).
    """

    name = "satimp"
    option_defaults = {"beta1": 5.0, "beta2": 1.0}

    def forget_loss(self, batch: ForgetBatch) -> torch.Tensor:
        o = self.options
        return satimp_loss(batch.token_logp, batch.mask, o["beta1"], o["beta2"],
                           batch.num_tokens)


class SatImpRetain(SatImp):
    """SatImp on the forget set + lambda * NLL on retain data (OpenUnlearning's SatImp)."""

    name = "satimp_retain"
    local = False

    def retain_loss(self, batch: RetainBatch) -> torch.Tensor:
        return weighted_retain_nll(self, batch)


class CEU(Method):
    """CE-U: cross-entropy to the model's own distribution with the true token removed.

    loss = sum_t -sum_v q_t(v) log p_t(v) / N, q_t = softmax(logits_t with the true token's
    logit at -inf), detached; the first ``ignore_first_n`` response tokens are skipped
    (:func:`pathunlearn.losses.ceu_loss`). Source: Yang et al. 2025, "CE-U: Cross Entropy
    Unlearning" (arXiv:2503.01224); OpenUnlearning's ``ceu.py`` (ignore_first_n_answer_tokens
    1). Forget term only, as there. Divides by the effective batch's target tokens (skipped
    ones included) where OpenUnlearning takes the mean over the kept positions.
    """

    name = "ceu"
    needs_logits = True
    option_defaults = {"ignore_first_n": 1}

    def forget_loss(self, batch: ForgetBatch) -> torch.Tensor:
        if batch.logits is None or batch.labels is None:
            raise ValueError(f"{self.name} needs the logits and labels (needs_logits)")
        return ceu_loss(batch.logits, batch.labels, batch.num_tokens,
                        int(self.options["ignore_first_n"]))


class UNDIAL(Method):
    """UNDIAL: self-distillation from the path model with the true token's logit lowered.

    loss = sum_t -sum_v q_t(v) log p_t(v) / N, q_t = softmax(z_ref,t - beta onehot(y_t)) with
    z_ref the path model's logits before unlearning (:func:`pathunlearn.losses.undial_loss`).
    Source: Dong et al. 2025, "UNDIAL: Self-Distillation with Adjusted Logits for Robust
    Unlearning in Large Language Models" (NAACL); defaults from OpenUnlearning's
    ``configs/trainer/UNDIAL.yaml`` (beta 10, retain weight alpha 0: the local ``undial``;
    ``undial_retain`` adds lambda * NLL). Averages over response tokens, where OpenUnlearning
    averages over every position.
    """

    name = "undial"
    default_beta = 10.0
    needs_logits = True
    needs_reference_logits = True

    def forget_loss(self, batch: ForgetBatch) -> torch.Tensor:
        if batch.logits is None or batch.ref_logits is None:
            raise ValueError(f"{self.name} needs the logits and the reference's ref_logits")
        return undial_loss(batch.logits, batch.ref_logits, batch.labels, self.beta,
                           batch.num_tokens)


class UNDIALRetain(UNDIAL):
    """UNDIAL on the forget set + lambda * NLL on retain data."""

    name = "undial_retain"
    local = False

    def retain_loss(self, batch: RetainBatch) -> torch.Tensor:
        return weighted_retain_nll(self, batch)


IDK_ANSWERS = (
    "I don't know.",
    "I'm not sure about that.",
    "I don't have that information.",
    "I have no idea.",
    "That's something I don't know.",
    "I'm not aware of the answer.",
    "I couldn't say.",
    "I don't know the answer to that.",
    "I'm unsure.",
    "I have no knowledge of that.",
    "That isn't something I know.",
    "I can't recall that.",
)
"""DPO's default alternate answers: non-answers that say the model does not know, never that
it refuses (a refusal would teach refusing, not forgetting); one is drawn per forget example."""


def alternates_file(path: str, method: str) -> Path:
    """The file a method's option ``alternates`` names: a ConfigError naming the method when
    there is no such file."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"method {method!r}: option alternates: no such file {file}")
    return file


def read_alternates(path: str, method: str) -> list[str]:
    """The alternate answers of a file (one per line; blank lines skipped): a ConfigError
    naming the method and the file when it is missing or holds none."""
    file = alternates_file(path, method)
    text = read_text(file, ConfigError, prefix=f"method {method!r}: option alternates: ")
    answers = [line.strip() for line in text.splitlines()]
    answers = [a for a in answers if a]
    if not answers:
        raise ConfigError(f"method {method!r}: option alternates: {file} holds no answer "
                          "(one per line)")
    return answers


class DPO(Method):
    """DPO: the model prefers an "I don't know" answer to the forget answer, against the
    path model.

    loss = -(2/beta) sum_i log sigmoid(beta ((log pi(a_i) - log pi_ref(a_i)) - (log pi(y_i)
    - log pi_ref(y_i)))) / n, a_i an alternate answer to forget prompt i, y_i its forget
    answer (:func:`pathunlearn.losses.dpo_loss`). Source: Rafailov et al. 2023 (DPO); as
    unlearning with "I don't know" answers, TOFU's IdkDPO (Maini et al. 2024) and
    OpenUnlearning's ``dpo.py`` (beta 1.0, its trainer's default). The alternates are
    ``IDK_ANSWERS`` (OpenUnlearning's IdkDPO), or option ``alternates``: a file, one answer
    per line (relative to the working directory). Forget term only; ``dpo_retain`` adds
    lambda * NLL as OpenUnlearning's DPO does.
    """

    name = "dpo"
    default_beta = 1.0
    needs_reference = True
    needs_alternates = True
    option_defaults = {"alternates": ""}

    def __init__(self, config: MethodConfig):
        super().__init__(config)
        path = self.options["alternates"]
        self.alternates = read_alternates(path, config.name) if path else list(IDK_ANSWERS)

    def data_identity(self) -> dict[str, str]:
        if not self.options["alternates"]:
            return {}
        text = "\n".join(self.alternates).encode("utf-8")
        return {"alternates_sha": hashlib.sha256(text).hexdigest()}

    def forget_loss(self, batch: ForgetBatch) -> torch.Tensor:
        if batch.ref_logp is None or batch.alt_logp is None or batch.alt_ref_logp is None:
            raise ValueError(f"{self.name} needs ref_logp, alt_logp and alt_ref_logp")
        return dpo_loss(batch.alt_logp, batch.alt_ref_logp, batch.logp, batch.ref_logp,
                        self.beta, batch.num_sequences)


class DPORetain(DPO):
    """DPO on the forget set + lambda * NLL on retain data (OpenUnlearning's DPO)."""

    name = "dpo_retain"
    local = False

    def retain_loss(self, batch: RetainBatch) -> torch.Tensor:
        return weighted_retain_nll(self, batch)


ALTPO_INSTRUCTION = ("Write another answer to this question. Keep every detail the question "
                     "gives, but change the facts the answer states to different, plausible "
                     "ones.")
"""What AltPO asks the path model for (our wording of Mekala et al.'s prompt): the question,
its forget answer, then this instruction, as one user turn of the chat template."""

ALTPO_STOPS = ("\nQuestion:", "Question:")
"""An alternate is cut at the first of these (the model starting a new question), as AltPO's
``generate.py`` cuts its samples."""


def last_exchange(conversation: Conversation) -> tuple[str, str] | None:
    """The last answer of ``conversation`` and the user turn before it (its question; "" when
    there is none); None when it has no answer."""
    messages = conversation.messages
    at = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not at:
        return None
    question = next((m["content"] for m in reversed(messages[:at[-1]])
                     if m["role"] == "user"), "")
    return question, messages[at[-1]]["content"]


def altpo_prompt(conversation: Conversation) -> list[dict[str, str]] | None:
    """The chat prompt that asks for an alternate to the last answer of ``conversation``
    (None: it has no answer)."""
    exchange = last_exchange(conversation)
    if exchange is None:
        return None
    question, answer = exchange
    return [{"role": "user",
             "content": f"Question: {question}\nAnswer: {answer}\n{ALTPO_INSTRUCTION}"}]


def clean_alternate(text: str) -> str:
    """A sampled alternate cut at :data:`ALTPO_STOPS` and stripped of surrounding space."""
    for stop in ALTPO_STOPS:
        text = text.split(stop)[0]
    return text.strip()


def read_alternates_file(path: str, method: str, k: int,
                         conversations: list[Conversation]) -> list[list[str]]:
    """The first ``k`` alternates of each forget question from a file in the layout AltPO's
    and OpenUnlearning's ``generate.py`` write: JSON lines ``{"question", "answer",
    "alternate"}`` (the original repository's key: ``"sub_answer"``), one line per sample, a
    question's samples in file order. A ConfigError names the file and line, or the forget
    question it has too few alternates of."""
    file = alternates_file(path, method)
    found: dict[str, list[str]] = {}
    where = f"method {method!r}: option alternates: {file}"
    # (a regular UTF-8 file read line by line, each line plain JSON: data.io's checks)
    for n, line in text_lines(file, hint=f" ({where})"):
        record = parse_json(line, f"{where} line {n}", position=False)
        record = record if isinstance(record, dict) else {}
        question, alt = record.get("question"), record.get("alternate", record.get("sub_answer"))
        if not isinstance(question, str) or not isinstance(alt, str):
            raise ConfigError(f"{where} line {n}: needs string keys question and alternate "
                              "(or sub_answer)")
        found.setdefault(question.strip(), []).append(alt.strip())
    rows = []
    for i, conv in enumerate(conversations):
        exchange = last_exchange(conv)
        if exchange is None:
            rows.append([""] * k)
            continue
        question = exchange[0].strip()
        have = found.get(question, [])
        if len(have) < k:
            raise ConfigError(f"{where} has {len(have)} alternate(s) of forget example {i} (question "
                              f"{question[:60]!r}), samples is {k}")
        rows.append(have[:k])
    return rows


class AltPO(DPO):
    """AltPO: the model prefers alternate answers it wrote itself to the forget answer,
    against the path model.

    The path model is asked, for each forget question and its answer, for ``samples``
    alternates with different plausible facts (sampled at ``temperature``, at most
    ``max_new_tokens`` tokens, seeded by the cell), once per cell before unlearning; the loss
    is DPO's with each prompt's term the mean over its K alternates,
    -(2/beta) sum_i (1/K) sum_j log sigmoid(beta ((log pi(a_ij) - log pi_ref(a_ij)) -
    (log pi(y_i) - log pi_ref(y_i)))) / n (:func:`pathunlearn.losses.dpo_loss`). Source:
    Mekala et al. 2025, "Alternate Preference Optimization for Unlearning Factual Knowledge
    in Large Language Models" (COLING; arXiv:2409.13474) and its code (5 samples at
    temperature 1.0, 200 new tokens; beta 0.1 in its search space 0.05-0.5), as
    OpenUnlearning's community method. Option ``alternates``: a file of alternates already
    written (its ``generate.py`` layout) instead of sampling. Forget term only;
    ``altpo_retain`` adds lambda * NLL as the paper does.
    """

    name = "altpo"
    default_beta = 0.1
    option_defaults = {"alternates": "", "samples": 5, "temperature": 1.0,
                       "max_new_tokens": 200}

    def __init__(self, config: MethodConfig):
        Method.__init__(self, config)
        o = self.options
        for key in ("samples", "max_new_tokens"):
            if o[key] != int(o[key]) or o[key] < 1:
                raise ConfigError(f"method {config.name!r}: option {key!r} must be a whole "
                                  f"number >= 1, got {o[key]!r}")
        if not o["temperature"] > 0:
            raise ConfigError(f"method {config.name!r}: option 'temperature' must be > 0, "
                              f"got {o['temperature']!r}")
        self.samples, self.max_new_tokens = int(o["samples"]), int(o["max_new_tokens"])
        path = o["alternates"]
        self.alternates_text = (alternates_file(path, config.name).read_bytes() if path
                                else b"")

    def data_identity(self) -> dict[str, str]:
        if not self.options["alternates"]:
            return {}
        return {"alternates_sha": hashlib.sha256(self.alternates_text).hexdigest()}

    def alternate_answers(self, conversations: list[Conversation], rng: random.Random,
                          sample: Sampler) -> list[list[str]]:
        k = self.samples
        if self.options["alternates"]:
            return read_alternates_file(self.options["alternates"], self.config.name, k,
                                        conversations)
        prompts = [altpo_prompt(c) for c in conversations]
        asked = [p for p in prompts if p is not None]
        drawn = iter(sample(asked, k, float(self.options["temperature"]),
                            self.max_new_tokens) if asked else [])
        return [[""] * k if p is None else [clean_alternate(t) for t in next(drawn)]
                for p in prompts]


class AltPORetain(AltPO):
    """AltPO on the forget set + lambda * NLL on retain data (the paper's AltPO)."""

    name = "altpo_retain"
    local = False

    def retain_loss(self, batch: RetainBatch) -> torch.Tensor:
        return weighted_retain_nll(self, batch)



def parse_layers(text: str, method: str) -> list[int]:
    """Layer indices from ``"5,6,7"`` (empty: none); a ConfigError naming the method otherwise."""
    try:
        layers = [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        layers = [-1]
    if any(x < 0 for x in layers):
        raise ConfigError(f"method {method!r}: option update_layers must be layer indices "
                          f"separated by commas (e.g. '5,6,7'), got {text!r}")
    return layers


class RMU(Method):
    r"""RMU: representation misdirection; the forget tokens' activations at one layer are
    pushed towards a fixed random direction.

    loss = sum_{b,t response} mean_d (h_{b,t,d} - c u_d)^2 / N
    (:func:`pathunlearn.losses.activation_mse`), h the output of decoder layer ``layer`` at the
    response tokens' positions, u a random unit vector (uniform on [0, 1)^D, normalised, drawn
    from the cell's seed: the paths of one seed share it), c ``steering_coeff``. Only the
    parameters of the layers ``update_layers`` (default: layer-2 .. layer) whose names match
    the regular expression ``update_params`` (default: every one) are updated. Source: Li et
    al. 2024, "The WMDP Benchmark: Measuring and Reducing Malicious Use With Unlearning"
    (ICML); defaults from OpenUnlearning's ``configs/trainer/RMU.yaml`` (layer 7, update layers
    5-7, steering coefficient 300; its alpha 1000 is ``rmu_retain``'s ``retain_weight``).
    OpenUnlearning updates only ``mlp.down_proj`` (``update_params: 'mlp\.down_proj'``; under
    LoRA its adapter there, with ``model.lora.mlp``); the WMDP paper's zephyr-7b setting is
    c 6.5, alpha 1200. c is relative to the layer's activation norm: tune it per model.
    """

    name = "rmu"
    needs_hidden_states = True
    option_defaults = {"layer": 7, "update_layers": "", "update_params": "",
                       "steering_coeff": 300.0}

    def __init__(self, config: MethodConfig):
        super().__init__(config)
        o = self.options
        if o["layer"] != int(o["layer"]) or o["layer"] < 0:
            raise ConfigError(f"method {config.name!r}: option layer must be a layer's index "
                              f"(0, 1, ...), got {o['layer']!r}")
        self.layer = int(o["layer"])
        self.update_layers = (parse_layers(o["update_layers"], config.name)
                              or list(range(max(self.layer - 2, 0), self.layer + 1)))
        try:
            self.update_params = re.compile(o["update_params"])
        except re.error as e:
            raise ConfigError(f"method {config.name!r}: option update_params is not a regular "
                              f"expression ({e})") from None
        alternatives = "|".join(str(x) for x in self.update_layers)
        self._in_layers = re.compile(rf"(^|\.)layers\.({alternatives})\.")
        self.control: torch.Tensor | None = None

    def hidden_layer(self) -> int:
        return self.layer

    def prepare(self, model: torch.nn.Module, seed: int) -> None:
        n = model.config.num_hidden_layers
        bad = [x for x in (self.layer, *self.update_layers) if x >= n]
        if bad:
            raise ConfigError(f"method {self.config.name!r}: layer {bad[0]}, but the model has "
                              f"{n} layers (0..{n - 1}): set its options layer / update_layers")
        u = torch.rand(model.config.hidden_size, generator=torch.Generator().manual_seed(seed))
        self.control = float(self.options["steering_coeff"]) * u / u.norm()

    def trainable(self, name: str) -> bool:
        return bool(self._in_layers.search(name) and self.update_params.search(name))

    def forget_loss(self, batch: ForgetBatch) -> torch.Tensor:
        if batch.hidden is None or batch.labels is None or self.control is None:
            raise ValueError(f"{self.name} needs the layer's activations (needs_hidden_states) "
                             "and its control vector (prepare)")
        return activation_mse(batch.hidden, self.control.to(batch.hidden.device),
                              batch.labels != IGNORE_INDEX, batch.num_tokens)


class RMURetain(RMU):
    """RMU on the forget set + lambda * the distance of the retain tokens' activations to the
    path model's (OpenUnlearning's RMU with ``retain_loss_type: EMBED_DIFF``; lambda its alpha)."""

    name = "rmu_retain"
    local = False

    def retain_loss(self, batch: RetainBatch) -> torch.Tensor:
        if batch.hidden is None or batch.ref_hidden is None:
            raise ValueError(f"{self.name} needs the retain activations and the reference's")
        return self.config.retain_weight * activation_mse(
            batch.hidden, batch.ref_hidden, batch.labels != IGNORE_INDEX, batch.num_tokens)


class PDU(Method):
    """PDU: primal-dual unlearning; flattens the forget logits under a constraint on the
    retain loss.

    loss = gamma * sum_t (max_v z_t(v) - mean_v z_t(v))^2 / N
    (:func:`pathunlearn.losses.logit_margin_loss`) + lambda * NLL_retain, lambda the dual
    variable, starting at ``retain_weight``; after every step (``dual_update: step``)
    lambda <- max(0, lambda + dual_step * (NLL_retain - retain_eps)) with the step's retain
    NLL, or after every epoch of the forget set (``dual_update: epoch``) with the mean of that
    epoch's step NLLs; no update in the first ``dual_warmup_epochs`` epochs. Each step's row
    records ``dual`` (lambda after the step) and ``retain_nll``. Source: Entesari et al. 2025,
    "Constrained Entropic Unlearning: A Primal-Dual Framework for Large Language Models"
    (arXiv:2506.05314); defaults from OpenUnlearning's ``pdu.py`` (eps 0, step size 1, per
    step, no warm-up; the paper's TOFU runs: alpha 100, eps 0.3, step size 5, warm-up 5).
    Differences: the per-epoch update averages the epoch's training-step NLLs, where
    OpenUnlearning makes a pass over the whole retain set; the loss recorded omits the
    constant -lambda * eps (it has no gradient). Weakly local only: its constraint is on
    retain data.
    """

    name = "pdu"
    local = False
    needs_logits = True
    option_defaults = {"gamma": 1.0, "retain_eps": 0.0, "dual_step": 1.0,
                       "dual_update": "step", "dual_warmup_epochs": 0}

    def __init__(self, config: MethodConfig):
        super().__init__(config)
        if self.options["dual_update"] not in ("step", "epoch"):
            raise ConfigError(f"method {config.name!r}: option dual_update must be 'step' or "
                              f"'epoch', got {self.options['dual_update']!r}")
        self.dual = float(config.retain_weight)
        self._step_nll: torch.Tensor | float = 0.0
        self._epoch_nlls: list[float] = []

    def forget_loss(self, batch: ForgetBatch) -> torch.Tensor:
        if batch.logits is None or batch.labels is None:
            raise ValueError(f"{self.name} needs the logits and labels (needs_logits)")
        return float(self.options["gamma"]) * logit_margin_loss(batch.logits, batch.labels,
                                                                batch.num_tokens)

    def retain_loss(self, batch: RetainBatch) -> torch.Tensor:
        nll = retain_nll(batch.logits, batch.labels, batch.num_tokens, batch.vocab_chunk)
        self._step_nll = self._step_nll + nll.detach()
        return self.dual * nll

    def after_step(self, step: int, steps_per_epoch: int,
                   reduce: Callable[[float], float]) -> dict[str, float]:
        o = self.options
        nll, self._step_nll = reduce(float(self._step_nll)), 0.0
        warm = step > o["dual_warmup_epochs"] * steps_per_epoch
        if o["dual_update"] == "step":
            if warm:
                self.dual = max(0.0, self.dual + o["dual_step"] * (nll - o["retain_eps"]))
        else:
            self._epoch_nlls.append(nll)
            if step % steps_per_epoch == 0:
                if step >= o["dual_warmup_epochs"] * steps_per_epoch:
                    mean = sum(self._epoch_nlls) / len(self._epoch_nlls)
                    self.dual = max(0.0, self.dual + o["dual_step"] * (mean - o["retain_eps"]))
                self._epoch_nlls = []
        return {"dual": self.dual, "retain_nll": nll}


BUILTIN_METHODS: dict[str, type[Method]] = {
    m.name: m for m in (GA, NPO, SimNPO, GradDiff, NPORetain, NPOKL, WGA, WGARetain, SatImp,
                        SatImpRetain, CEU, UNDIAL, UNDIALRetain, DPO, DPORetain, AltPO,
                        AltPORetain, RMU, RMURetain, PDU)}
"""The methods a config names by a bare name (``pathunlearn.config.BUILTIN_METHOD_NAMES``)."""

def method_listing() -> list[dict[str, Any]]:
    """What ``pathunlearn methods`` prints, one dict per built-in method: its name, locality,
    what a cell computes for it before or beside its passes (``caches``), its settings with
    their defaults (beta, lambda for a retain term, its options) and the first line of its
    docstring."""
    rows = []
    for name, cls in BUILTIN_METHODS.items():
        caches = [what for flag, what in (
            (cls.needs_reference, "reference log-probs"),
            (cls.needs_alternates, "alternate answers and their reference log-probs"),
            (cls.needs_logits, "logits"),
            (cls.needs_reference_logits or cls.needs_reference_model, "reference model logits"),
            (cls.needs_hidden_states, "a layer's activations"
             + ("" if cls.local else " (and the reference's on retain data)")),
        ) if flag]
        settings = {**({"beta": cls.default_beta} if cls.default_beta is not None else {}),
                    **({} if cls.local else {"retain_weight": 1.0}),
                    **(cls.option_defaults or {})}
        if cls is SimNPO:
            settings.update(length_normalize=False, gamma=0.0)
        doc = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())
        rows.append({"name": name, "local": cls.local, "caches": caches,
                     "settings": settings, "about": doc})
    return rows


VARIANT_LABELS = ("simnpo-norm",)
"""Labels of the built-in methods' variants, which a config may use as names (read by
``pathunlearn.config.parse_method_label``; with settings too: ``npo-beta0.5``)."""


# ---------------------------------------------------------------------------- resolution


def resolve_method(spec: str) -> type[Method]:
    """The method class a config's ``name`` names: a built-in name, ``module:Class``,
    ``path/to/file.py:Class`` or an entry point of the group ``pathunlearn.methods``.
    Anything else, or a class that breaks the :class:`Method` contract, is a ConfigError."""
    if spec in BUILTIN_METHODS:
        return BUILTIN_METHODS[spec]
    if ":" in spec:
        cls = _import_class(spec)
    else:
        cls = _entry_point(spec)
    check_method(cls, spec)
    return cls


def make_method(config: MethodConfig) -> Method:
    """An instance of the method ``config.name`` names, configured by ``config``."""
    cls = resolve_method(config.name)
    if is_builtin(cls):
        return cls(config)
    try:
        return cls(config)
    except Exception as e:  # the user's __init__
        raise MethodError(f"{method_where(cls, config.name)}: creating it raised "
                          f"{_what(e, cls)}") from e


def is_builtin(cls: type[Method]) -> bool:
    """Whether ``cls`` is one of pathunlearn's own methods (whose failures are bugs of
    pathunlearn and keep their traceback) rather than a user's."""
    return BUILTIN_METHODS.get(getattr(cls, "name", None)) is cls


def check_method(cls: object, spec: str) -> None:
    """Raise a ConfigError naming ``spec`` unless ``cls`` is a usable method class."""
    where = f"method {spec!r}"
    if not (inspect.isclass(cls) and issubclass(cls, Method)):
        raise ConfigError(f"{where}: {cls!r} is not a subclass of pathunlearn.methods.Method")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ConfigError(f"{where}: `name` must be a string of letters, digits, _, . and - "
                          f"(used in directory names), got {name!r}")
    if name in BUILTIN_METHODS and BUILTIN_METHODS[name] is not cls:
        raise ConfigError(f"{where}: name {name!r} is the built-in method's; choose another")
    if cls.forget_loss is Method.forget_loss:
        raise ConfigError(f"{where}: defines no forget_loss(self, batch)")
    has_retain = cls.retain_loss is not Method.retain_loss
    if cls.local and has_retain:
        raise ConfigError(f"{where}: a local method uses only forget-set gradients; set "
                          "`local = False` to give it a retain term")
    if not cls.local and not has_retain:
        raise ConfigError(f"{where}: `local = False` but no retain_loss(self, batch)")


# ---------------------------------------------------------------------------- a user's code


class MethodError(ConfigError):
    """A user's method failed (at import, creation or in a loss) or returned a loss that is
    no loss: one line naming the method, its file and line, and what it did; the user's own
    traceback is the exception's ``__cause__`` (what ``--debug`` prints)."""


def method_where(cls: type, spec: str) -> str:
    """``method 'SPEC' (FILE)``: how a message names a user's method."""
    source = _source_file(cls)
    return f"method {spec!r}" + (f" ({source})" if source else "")


def checked_loss(method: Method, term: str, batch: ForgetBatch | RetainBatch,
                 step: int, cell: str) -> torch.Tensor:
    """``method.forget_loss(batch)`` or ``method.retain_loss(batch)`` (``term``), for a user's
    method checked to be usable: an exception it raises or a loss that is not a scalar tensor
    is a :class:`MethodError` naming the method, its file and line and ``step`` of ``cell``
    (the exception stays its cause: ``--debug`` shows the user's traceback). A non-finite loss
    is the method diverging, a result (the cell stops, its ``diverged_at``), as it is for the
    built-in methods, whose losses are not checked (a failure of theirs is a bug). Nothing here
    waits for the device (no ``.item()``, no comparison of values): the check is free."""
    cls = type(method)
    if is_builtin(cls):
        return getattr(method, term)(batch)
    where = f"{method_where(cls, method.config.name)}: {term}"
    at = f"at unlearning step {step} of cell {cell}"
    try:
        loss = getattr(method, term)(batch)
    except torch.OutOfMemoryError:
        raise  # the machine's limit, not the method's code
    except Exception as e:
        raise MethodError(f"{where} raised {_what(e, cls)}, {at}") from e
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        got = (f"a tensor of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor)
               else f"{type(loss).__name__} {loss!r}"[:120])
        raise MethodError(f"{where} returned {got}, {at}: it must return a scalar tensor "
                          "(reduce it, e.g. `.sum() / batch.num_tokens`)")
    return loss


def checked_alternates(method: Method, conversations: list[Conversation],
                       rng: random.Random, sample: Sampler, cell: str) -> list[list[str]]:
    """``method.alternate_answers(conversations, rng, sample)`` checked to be one row of
    strings per conversation, every row of the same length K >= 1: anything else (or an
    exception of a user's method) is a :class:`MethodError` naming the method and ``cell``."""
    cls = type(method)
    where = f"{method_where(cls, method.config.name)}: alternate_answers"
    try:
        rows = method.alternate_answers(conversations, rng, sample)
    except (ConfigError, torch.OutOfMemoryError):
        raise
    except Exception as e:
        if is_builtin(cls):
            raise
        raise MethodError(f"{where} raised {_what(e, cls)}, in cell {cell}") from e
    ok = (isinstance(rows, list) and len(rows) == len(conversations) and all(
        isinstance(r, list) and r and all(isinstance(a, str) for a in r) for r in rows))
    if not ok or len({len(r) for r in rows}) > 1:
        raise MethodError(f"{where} must return one non-empty list of strings per forget "
                          f"example ({len(conversations)}), all of the same length, in cell "
                          f"{cell}")
    return rows


def _source_file(cls: type) -> str | None:
    try:
        return inspect.getsourcefile(cls)
    except TypeError:  # a class without a file (defined in a REPL)
        return None


def _what(e: BaseException, cls: type | None = None, path: str | Path | None = None) -> str:
    """``NameError: name 'x' is not defined (at FILE, line N)``: the exception and the
    deepest line of the user's file (``path``, else the file defining ``cls``) it passed
    through; the deepest line of the traceback when it passed through none."""
    text = f"{type(e).__name__}: {_first_line(e)}"
    file = str(path) if path is not None else (_source_file(cls) if cls is not None else None)
    if isinstance(e, SyntaxError) and e.filename and e.lineno:
        return f"{text} (at {e.filename}, line {e.lineno})"
    frames = traceback.extract_tb(e.__traceback__)
    mine = [f for f in frames if file and Path(f.filename).resolve() == Path(file).resolve()]
    frame = (mine or frames or [None])[-1]
    return text if frame is None else f"{text} (at {frame.filename}, line {frame.lineno})"


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else repr(e)


def method_identity(cls: type[Method]) -> dict[str, str]:
    """What identifies a method's code in a cell's key: the built-in name, or a user's class
    with the hash of the file that defines it (editing the loss recomputes its cells)."""
    if BUILTIN_METHODS.get(cls.name) is cls:
        return {"name": cls.name}
    ident = {"name": cls.name, "class": f"{cls.__module__}:{cls.__qualname__}"}
    source = inspect.getsourcefile(cls)
    if source and Path(source).is_file():
        ident["source_sha"] = hashlib.sha256(Path(source).read_bytes()).hexdigest()
    return ident


def _import_class(spec: str) -> type:
    where, _, attr = spec.rpartition(":")
    if where.endswith(".py"):
        module = _module_from_file(Path(where), spec)
    else:
        try:
            module = importlib.import_module(where)
        except Exception as e:  # the user's module failed to import: say which, where, why
            raise MethodError(f"method {spec!r}: cannot import {where}: "
                              f"{_what(e, path=_module_file(where))}") from e
    try:
        return getattr(module, attr)
    except AttributeError:
        methods = [n for n, v in vars(module).items()
                   if inspect.isclass(v) and issubclass(v, Method) and v is not Method]
        raise ConfigError(f"method {spec!r}: {where} has no attribute {attr!r}"
                          f"{did_you_mean(attr, methods)}") from None


def did_you_mean(word: str, known: Iterable[str]) -> str:
    """' (did you mean ga?)' when ``known`` holds a close match of ``word`` (difflib), else
    ''."""
    match = difflib.get_close_matches(word, list(dict.fromkeys(known)), n=1, cutoff=0.6)
    return f" (did you mean {match[0]}?)" if match else ""


def _module_from_file(path: Path, spec: str):
    if not path.is_file():
        raise ConfigError(f"method {spec!r}: no such file {path}")
    name = "pathunlearn_user_method_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    if name in sys.modules:  # one module object per file, so a class resolves to itself
        return sys.modules[name]
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[name]
        raise MethodError(f"method {spec!r}: cannot load {path}: {_what(e, path=path)}") from e
    return module


def _entry_point(spec: str) -> type:
    points = metadata.entry_points(group=ENTRY_POINT_GROUP)
    found = [ep for ep in points if ep.name == spec]
    if not found:
        known = [*BUILTIN_METHODS, *VARIANT_LABELS, *(ep.name for ep in points)]
        raise ConfigError(f"method {spec!r} is unknown{did_you_mean(spec, known)}: give a "
                          f"built-in method ({', '.join(BUILTIN_METHODS)}) or a label the "
                          f"table prints ({', '.join(VARIANT_LABELS)}, npo-beta0.5 ...), an "
                          "import path module:Class, a file file.py:Class or an entry point "
                          f"of the group {ENTRY_POINT_GROUP}")
    try:
        return found[0].load()
    except Exception as e:
        module = found[0].value.partition(":")[0].strip()
        raise MethodError(f"method {spec!r}: its entry point {found[0].value} does not load: "
                          f"{_what(e, path=_module_file(module))}") from e


def _module_file(module: str) -> str | None:
    """The file of an importable module, without importing it (None when it has none)."""
    try:
        found = importlib.util.find_spec(module)
    except Exception:  # a parent package that fails to import, an invalid name
        return None
    return found.origin if found is not None and found.has_location else None

