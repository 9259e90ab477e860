"""The names of what a run records: probe names, metric keys of ``metrics.jsonl`` rows and
``summary.json`` fields. Writers (unlearning, probes) and readers (tables, plots, pairwise
distances) use these constants, so a name is spelled in one place.

A probe named ``P`` contributes the keys ``P/<statistic>``:

- label probes (a prompt x the unlearn target and its paraphrases): ``P/target``,
  ``P/paraphrase_mean``, ``P/paraphrase_var``, ``P/all_mean``;
- response probes (a prompt x its own response): ``P/mean`` (per-token average
  log-probability) or ``P/sum`` (summed log-probability, ``reduce: sum``).
"""

from __future__ import annotations

# ---------------------------------------------------------------------------- probe names
# (the default probe sets, :func:`pathunlearn.eval.probes.default_probe_configs`; utility
# probes are named ``<stage>_train`` / ``<stage>_paraphrased``, heldout sets ``heldout_<stage>``)

FORGET_LABEL_ID = "forget_label_id"
"""The unlearn target + paraphrases after held-out prompts of the forget stage's kind."""
FORGET_LABEL_OOD = "forget_label_ood"
"""The same after out-of-distribution prompts."""
FORGET_RESPONSE = "forget_response"
"""The forget set's own responses."""

# ---------------------------------------------------------------------------- statistics

TARGET, PARAPHRASE_MEAN, PARAPHRASE_VAR, ALL_MEAN = "target", "paraphrase_mean", \
    "paraphrase_var", "all_mean"
MEAN, SUM = "mean", "sum"


def key(probe: str, statistic: str) -> str:
    """The metric key of one statistic of one probe: ``forget_label_id/all_mean``."""
    return f"{probe}/{statistic}"


# ---------------------------------------------------------------------------- distances

RE_RETRAIN_KL = "re_retrain/kl"
"""d_KL to the retrain model on the held-out RE set (Definition 2.1)."""
RE_RETRAIN_MSE = "re_retrain/mse"
"""d_MSE (per-token log-probabilities) to the retrain model on the same set."""
RE_TOKENS = "re_tokens"
"""The log-probability of every held-out reference token (pairwise distances between
cells are computed from them afterwards)."""

# ---------------------------------------------------------------------------- step rows

STEP, LOSS, LR, GRAD_NORM = "step", "loss", "lr", "grad_norm"
DIVERGED = "diverged"
"""A final row ``{"step": k, "diverged": true, "reason": ...}`` marks a cell stopped by a
non-finite loss or probe."""

# ---------------------------------------------------------------------------- summary.json

MATH_BEFORE, MATH_AFTER = "math_before", "math_after"
MATH_NO_ANSWER_BEFORE, MATH_NO_ANSWER_AFTER = "math_no_answer_before", "math_no_answer_after"
MATH_SHUFFLED = "math_shuffled_baseline"
DIVERGED_AT = "diverged_at"
SATURATION = "saturation"
"""The saturation diagnostics at step 0 (:mod:`pathunlearn.eval.saturation`): forget token
probability, log-probability, gradient norm of the forget NLL, and the first step's gradient
norm of the method's loss."""
FORGET_TOKEN_PROB, FORGET_LOGP, FORGET_GRAD_NORM = ("forget_token_prob", "forget_logp",
                                                    "forget_grad_norm")
FIRST_GRAD_NORM = "first_step_grad_norm"
LMEVAL_BEFORE, LMEVAL_AFTER = "lmeval_before", "lmeval_after"
"""lm-eval results of the path model and of the unlearned model: {task: {metric: value}}."""
RETRAIN_FIELD = "retrain_field"
"""The cell's retrain model's values the field metrics compare with (:mod:`pathunlearn.eval.
field`): ``truth_ratios`` (per forget item) and ``auc`` (per MIA attack)."""

# ---------------------------------------------------------------------------- relearn.jsonl

RELEARN_DATA = "data"
"""The field of a relearning row naming its run: ``retain`` or ``forget``."""
