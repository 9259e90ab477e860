"""The field's metrics at a cell's eval points: TOFU's prob, truth ratio, ROUGE, forget quality
and model utility, and membership inference (LOSS, ZLib) with privleak, per item.

A probe set with ``metrics`` (``config.ProbeConfig``) and a ``role`` is a *field set*: each item
is scored on its own answer and, for the truth ratio, on its paraphrased answer (forget and
retain sets) and its perturbed answers, all after the item's question, so they share the
prompt in the scoring tries (:mod:`pathunlearn.eval.logprob`). Row layout per item, prompt-major
like every :class:`~pathunlearn.eval.probes.ProbeSet`: the answer, then the paraphrased answer
(where used), then the ``k`` perturbed answers. The NLL of a row is minus its per-token average
log-probability (OpenUnlearning's ``evaluate_probability``: the mean over the answer's tokens).

Per item (``items.jsonl``, one row per eval step, set and item): the NLLs, ``prob`` (exp(-NLL);
on ``real_authors``/``world_facts`` normalised over the options, TOFU's ``probability_w_options``),
``truth_ratio`` (:func:`pathunlearn.eval.tofu.truth_ratios`: the paraphrased answer is the true
one on forget/retain sets, the answer itself elsewhere), the greedy generation with its ROUGE-1
and ROUGE-L recall and MUSE's ROUGE-L F1 (``rougeL_f1``; at the first and last eval point unless
``probes.rouge_every``), and the LOSS and ZLib attack scores of forget and holdout items
(:mod:`pathunlearn.eval.mia`).

Aggregates (``metrics.jsonl``): ``<set>/prob``, ``<set>/truth_ratio`` (closer-to-1 on the forget
set, true-better elsewhere), ``<set>/rouge1``, ``<set>/rougeL``, ``<set>/rougeL_f1``; across sets:
``<forget set>/forget_quality`` (KS p-value of the forget truth ratios against the cell's
retrain model's, the retrain model *of the same path*), ``model_utility`` (harmonic mean of the
nine TOFU numbers, where the retain, real-authors and world-facts sets have prob, ROUGE and truth
ratio), ``mia_<attack>/auc`` (forget vs holdout) and ``mia_<attack>/privleak`` against the
retrain model's AUC. docs/metrics.md says where each comes from and where pathunlearn differs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from pathunlearn.data.conversation import Conversation
from pathunlearn.errors import DataError
from pathunlearn.eval import mia, tofu

OPTIONS_ROLES = ("real_authors", "world_facts")
"""Roles whose ``prob`` is normalised over the answer and its wrong options."""
PARAPHRASED_ROLES = ("forget", "retain")
"""Roles whose truth ratio's true answer is the paraphrased one."""
MIA_ATTACKS = ("loss", "zlib", "min_k", "min_k_plus_plus")
"""The attacks computed at eval points from the answers' token log-probabilities (no extra
forward pass); ``reference`` (against the path's retrain model) is added where the cell has
one (Min-K%++'s calibration by the next-token distribution is taken in the same pass). GradNorm
needs a backward pass per item (:func:`pathunlearn.eval.mia.gradnorm_score`, for a model at
hand)."""
PRIVLEAK_ATTACK = "min_k"
"""The attack the table's privleak is of: Min-K% Prob, as MUSE reports it (OpenUnlearning's
privleak pre-computes ``mia_min_k``)."""
UTILITY_ROLES = {"retain": "retain", "real_authors": "real_authors",
                 "world_facts": "world_facts"}


@dataclass(frozen=True)
class Layout:
    """Where an item's answers are among its rows: the answer at 0, the paraphrased answer
    at 1 when ``paraphrased``, then ``perturbed`` wrong answers."""

    paraphrased: bool
    perturbed: int

    @property
    def group_size(self) -> int:
        return 1 + self.paraphrased + self.perturbed


def layout_of(metrics: Sequence[str], role: str) -> tuple[bool, bool]:
    """(needs the paraphrased answer, needs the perturbed answers) for these metrics."""
    wants_tr = "truth_ratio" in metrics
    return (wants_tr and role in PARAPHRASED_ROLES,
            wants_tr or ("prob" in metrics and role in OPTIONS_ROLES))


def field_rows(name: str, items: Sequence[Conversation], metrics: Sequence[str],
               role: str) -> tuple[list[tuple[list[dict], str]], Layout]:
    """The rows of a field set, prompt-major, and their layout; a DataError naming the set,
    the item and the field where an item lacks what the metrics need, or the items' numbers
    of perturbed answers differ (TOFU's subsets give each item the same number)."""
    need_para, need_wrong = layout_of(metrics, role)
    rows, counts = [], set()
    for i, c in enumerate(items):
        answers = [c.response]
        if need_para:
            para = c.meta.get("paraphrased_answer")
            if not isinstance(para, str) or not para.strip():
                raise DataError(f"probe {name}: item {i} has no 'paraphrased_answer' (the "
                                "truth ratio of a forget or retain set needs it: TOFU's "
                                "forgetNN_perturbed / retain_perturbed subsets have it)")
            answers.append(para)
        if need_wrong:
            wrong = c.meta.get("perturbed_answer")
            if not isinstance(wrong, list) or not wrong:
                raise DataError(f"probe {name}: item {i} has no 'perturbed_answer' (needed by "
                                f"{'truth_ratio' if 'truth_ratio' in metrics else 'prob'} "
                                f"on a {role} set: TOFU's *_perturbed subsets have it)")
            counts.add(len(wrong))
            answers += wrong
        rows += [(list(c.prompt), a) for a in answers]
    if len(counts) > 1:
        raise DataError(f"probe {name}: items have {sorted(counts)} perturbed answers; every "
                        "item needs the same number")
    return rows, Layout(need_para, counts.pop() if counts else 0)


@dataclass(frozen=True)
class FieldSet:
    """What the field metrics need of one probe set."""

    name: str
    role: str
    metrics: tuple[str, ...]
    layout: Layout
    answers: tuple[str, ...]
    """Each item's own answer (ROUGE's reference, ZLib's text)."""
    prompts: tuple[list[dict], ...]

    @classmethod
    def of(cls, probe) -> FieldSet:
        g = probe.group_size
        layout = Layout(probe.paraphrased, g - 1 - probe.paraphrased)
        return cls(probe.name, probe.role, tuple(probe.metrics), layout,
                   tuple(t for _, t in probe.rows[::g]), tuple(p for p, _ in probe.rows[::g]))


def item_values(fs: FieldSet, rows: dict, generations: Sequence[str] | None = None
                ) -> list[dict]:
    """Per item of ``fs``: its NLLs and per-item metrics (module docstring) from its rows'
    scores (``rows``: :func:`~pathunlearn.eval.probes.score_probe_rows`'s entry: ``mean``
    per-token average log-probabilities (N,); ``tokens``, each row's token log-probabilities,
    needed with ``mia``; ``hits``, each row's argmax hits, needed with ``memorization``), and
    ROUGE of ``generations`` when given."""
    nll = -np.asarray(rows["mean"], dtype=np.float64).reshape(-1, fs.layout.group_size)
    p = 1 + fs.layout.paraphrased
    out = []
    for i, row in enumerate(nll):
        item: dict = {"item": i, "nll": {"answer": float(row[0])}}
        if fs.layout.paraphrased:
            item["nll"]["paraphrased"] = float(row[1])
        if fs.layout.perturbed:
            item["nll"]["perturbed"] = [float(v) for v in row[p:]]
        out.append(item)
    answers = [it["nll"]["answer"] for it in out]
    wrong = [it["nll"].get("perturbed", []) for it in out]
    if "prob" in fs.metrics or "mia" in fs.metrics:
        probs = (tofu.normalised_probs(answers, wrong) if fs.role in OPTIONS_ROLES
                 else tofu.probs(answers))
        for it, v in zip(out, probs, strict=True):
            it["prob"] = v
    if "truth_ratio" in fs.metrics:
        true = [it["nll"]["paraphrased"] for it in out] if fs.layout.paraphrased else answers
        for it, v in zip(out, tofu.truth_ratios(true, wrong), strict=True):
            it["truth_ratio"] = v
    g = fs.layout.group_size
    if "mia" in fs.metrics:
        for i, (it, text) in enumerate(zip(out, fs.answers, strict=True)):
            it["mia_loss"] = mia.loss_score(it["nll"]["answer"])
            it["mia_zlib"] = mia.zlib_score(it["nll"]["answer"], text)
            it["mia_min_k"] = mia.min_k_score([float(v) for v in rows["tokens"][i * g]],
                                              mia.DEFAULT_K)
            it["mia_min_k_plus_plus"] = mia.min_k_score([float(v) for v in rows["z"][i * g]],
                                                        mia.DEFAULT_K)
    if "memorization" in fs.metrics:
        for i, it in enumerate(out):
            hits = [bool(h) for h in rows["hits"][i * g]]
            it["exact_memorization"] = tofu.exact_memorization(hits)
            it["extraction_strength"] = tofu.extraction_strength(hits)
    if generations is not None:
        for it, text, r in zip(out, generations, tofu.rouge_scores(fs.answers, generations),
                               strict=True):
            it.update(generation=text, rouge1=r.rouge1, rougeL=r.rougeL, rougeL_f1=r.rougeL_f1)
    return out


def set_metrics(fs: FieldSet, items: list[dict]) -> dict[str, float]:
    """The set's aggregates over its items: ``<name>/prob``, ``/truth_ratio``,
    ``/exact_memorization``, ``/extraction_strength``, ``/rouge1``, ``/rougeL`` (TOFU's
    recalls), ``/rougeL_f1`` (MUSE's F1; each the mean over items; the ones measured)."""
    out = {}
    if "prob" in fs.metrics:
        out[f"{fs.name}/prob"] = float(np.mean([it["prob"] for it in items]))
    if "truth_ratio" in fs.metrics:
        out[f"{fs.name}/truth_ratio"] = tofu.truth_ratio([it["truth_ratio"] for it in items],
                                                         forget=fs.role == "forget")
    if "memorization" in fs.metrics:
        for key in ("exact_memorization", "extraction_strength"):
            out[f"{fs.name}/{key}"] = float(np.mean([it[key] for it in items]))
    if items and "rougeL" in items[0]:
        out[f"{fs.name}/rouge1"] = float(np.mean([it["rouge1"] for it in items]))
        out[f"{fs.name}/rougeL"] = float(np.mean([it["rougeL"] for it in items]))
        out[f"{fs.name}/rougeL_f1"] = float(np.mean([it["rougeL_f1"] for it in items]))
    return out


@dataclass
class FieldReference:
    """A reference model's values the cross-set metrics compare with (the path's retrain
    model): per-item forget truth ratios and the MIA AUCs."""

    truth_ratios: list[float] = field(default_factory=list)
    auc: dict[str, float] = field(default_factory=dict)
    nll: dict[str, list[float]] = field(default_factory=dict)
    """Role (forget, holdout) -> its items' answer NLLs: the Reference attack's calibration."""

    def to_json(self) -> dict:
        return {"truth_ratios": self.truth_ratios, "auc": self.auc, "nll": self.nll}


def by_role(sets: Sequence[FieldSet], items: dict[str, list[dict]]) -> dict[str, tuple]:
    """Role -> (its set, its items) for the sets measured."""
    return {fs.role: (fs, items[fs.name]) for fs in sets if fs.name in items}


def reference_of(sets: Sequence[FieldSet], items: dict[str, list[dict]]) -> FieldReference:
    """What a retrain model's items give the cross-set metrics of the cells compared with it."""
    roles = by_role(sets, items)
    ref = FieldReference()
    if "forget" in roles and "truth_ratio" in roles["forget"][0].metrics:
        ref.truth_ratios = [it["truth_ratio"] for it in roles["forget"][1]]
    ref.auc = mia_aucs(roles)
    if ref.auc:
        ref.nll = {r: [it["nll"]["answer"] for it in roles[r][1]] for r in ("forget", "holdout")}
    return ref


def mia_aucs(roles: dict[str, tuple]) -> dict[str, float]:
    """Attack -> AUC of forget (members) against holdout (non-members), where both sets have
    ``mia``."""
    if not all(r in roles and "mia" in roles[r][0].metrics for r in ("forget", "holdout")):
        return {}
    forget, holdout = roles["forget"][1], roles["holdout"][1]
    attacks = [a for a in (*MIA_ATTACKS, "gradnorm")
               if all(f"mia_{a}" in it for it in forget + holdout)]
    return {a: mia.auc([it[f"mia_{a}"] for it in forget], [it[f"mia_{a}"] for it in holdout])
            for a in attacks}


def cross_metrics(sets: Sequence[FieldSet], items: dict[str, list[dict]], set_values: dict,
                  reference: FieldReference | None) -> dict[str, float]:
    """Forget quality, model utility, MIA AUCs and privleak (module docstring) from the sets'
    items and aggregates; each only where its parts were measured."""
    roles = by_role(sets, items)
    out: dict[str, float] = {}
    if reference is not None and reference.truth_ratios and "forget" in roles \
            and "truth_ratio" in roles["forget"][0].metrics:
        fs, its = roles["forget"]
        out[f"{fs.name}/forget_quality"] = tofu.forget_quality(
            [it["truth_ratio"] for it in its], reference.truth_ratios)
    parts = utility_parts(roles, set_values)
    if parts is not None:
        out["model_utility"] = tofu.model_utility(parts)
    for attack, value in mia_aucs(roles).items():
        out[f"mia_{attack}/auc"] = value
        # the retrain model separating forget from holdout perfectly (AUC 1, common with a
        # handful of items) leaves privleak undefined: MUSE's 1e-10 guard would make it ~1e12
        if reference is not None and reference.auc.get(attack, 1.0) < 1.0:
            out[f"mia_{attack}/privleak"] = mia.privleak(value, reference.auc[attack])
    if reference is not None and reference.nll and "forget" in roles and "holdout" in roles:
        out["mia_reference/auc"] = mia.auc(
            *(reference_scores(roles[r][1], reference.nll[r]) for r in ("forget", "holdout")))
    return {k: v for k, v in out.items() if math.isfinite(v)}


def reference_scores(items: list[dict], reference_nll: list[float]) -> list[float]:
    """The Reference attack's scores: each item's answer NLL minus the retrain model's."""
    return [mia.reference_score(it["nll"]["answer"], ref)
            for it, ref in zip(items, reference_nll, strict=True)]


def utility_parts(roles: dict[str, tuple], set_values: dict) -> dict[str, float] | None:
    """The nine numbers of TOFU's model utility, or None unless every one was measured."""
    parts = {}
    for role, prefix in UTILITY_ROLES.items():
        if role not in roles:
            return None
        name = roles[role][0].name
        for metric, key in (("prob", "prob"), ("rouge", "rougeL"), ("truth_ratio", "truth_ratio")):
            value = set_values.get(f"{name}/{key}")
            if value is None:
                return None
            parts[f"{prefix}_{metric}"] = value
    return parts
