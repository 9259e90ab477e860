"""Check every input of a run before any work: all problems at once, one line each.

:func:`check_inputs` reads what a run will read, in the order a user fixes it:

- every stage a path or a weakly-local method uses: its source loaded exactly as training
  reads it (a built-in name and split, an adapter's file and split, a data file's every record);
- every unlearning method (a user's method imported and its contract checked);
- every probe set, default or configured, with its source and targets;
- the math questions when ``unlearning.math.questions`` > 0, with their gold answers;
- the base model's files (:func:`pathunlearn.models.check_model_files`): a directory's
  config.json, safetensors weights and tokenizer, a GGUF file's header, a hub id's snapshot in
  the HF cache (:mod:`pathunlearn.hub`: not cached while offline, gated, no such repo or
  revision, and a local-looking path that does not exist are each their own line); and the
  device;
- the output directory: a directory this process can write;
- the optional engines the config asks for (``executor.kind: ray``, ``tracking.*``) are
  installed, and something answers at ``executor.address`` (:func:`check_ray_address`).

Each problem is one line ``KEY: FILE: record N: problem`` (the config key first, then where in
the file). :func:`pathunlearn.plan.plan_run` raises them together as one
:class:`~pathunlearn.errors.ConfigError` (a line each), so ``pathunlearn train --plan`` and
``pathunlearn config check`` list them all and ``run`` / ``train`` / ``unlearn`` stop before the
first training step. Nothing here writes to the run directory.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from pathunlearn.config import ExperimentConfig
from pathunlearn.errors import UserError
from pathunlearn.eval.probes import ProbeSet
from pathunlearn.files import check_writable


class Problems:
    """Lines collected from the checks; ``with problems.at(KEY):`` turns a UserError raised in
    its body into lines prefixed with ``KEY``. The first such error with a cause (a user's
    method that failed: its own traceback) is kept as ``cause``, what ``--debug`` shows."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.cause: UserError | None = None

    @contextmanager
    def at(self, key: str) -> Iterator[None]:
        try:
            yield
        except UserError as e:
            self.lines += [f"{key}: {line}" if key else line for line in str(e).splitlines()]
            if self.cause is None and e.__cause__ is not None:
                self.cause = e

    def add(self, line: str) -> None:
        self.lines.append(line)

    def __bool__(self) -> bool:
        return bool(self.lines)


def used_stages(cfg: ExperimentConfig) -> list[str]:
    """Stages a path or a weakly-local method reads, in order of first use."""
    named = [s for path in cfg.paths.expand() for s in path] + list(cfg.unlearning.retain_stages)
    return list(dict.fromkeys(named))


def check_inputs(cfg: ExperimentConfig) -> list[str]:
    """Every problem with ``cfg``'s inputs, one line each (empty: all good); see the module
    docstring for what is read."""
    return inspect_inputs(cfg).problems


@dataclass
class Inspection:
    """What :func:`inspect_inputs` found: the problems, and the probe sets it resolved (in
    :func:`pathunlearn.eval.probes.probe_configs` order; None unless every one resolved), so
    a plan need not load their sources a second time."""

    problems: list[str]
    probes: list[ProbeSet] | None
    notes: list[str] = field(default_factory=list)
    """The default probe sets left out, a line each (``eval.probes.default_probes``)."""
    cause: UserError | None = None
    """The first problem raised with a traceback worth showing (``Problems.cause``)."""


def inspect_inputs(cfg: ExperimentConfig) -> Inspection:
    """Check every input of ``cfg`` (module docstring), keeping the resolved probe sets."""
    problems = Problems()
    broken = _check_stages(cfg, problems)
    _check_methods(cfg, problems, broken)
    probes, notes = _check_probes(cfg, problems, broken)
    _check_math(cfg, problems)
    _check_lmeval(cfg, problems)
    _check_gradnorm(cfg, problems)
    from pathunlearn.models import check_architecture, check_model_files, resolve_device

    model_lines = check_model_files(cfg.model) or check_architecture(cfg.model)
    for line in model_lines:
        problems.add(line)
    if not model_lines:
        _check_truncation(cfg, problems, broken)
    with problems.at("runtime.device"):
        resolve_device(cfg.runtime.device)
    _check_distributed(cfg, problems)
    with problems.at("output_dir"):
        check_writable(cfg.run_dir)
    _check_engines(cfg, problems)
    return Inspection(problems.lines, probes, notes, problems.cause)


def _check_engines(cfg: ExperimentConfig, problems: Problems) -> None:
    """The optional engines the config asks for are installed (nothing is imported), and a
    Ray cluster's address answers."""
    from pathunlearn.extras import installed, missing_line

    wanted = [("ray", "executor.kind", "ray")] if cfg.executor.kind == "ray" else []
    wanted += [(module, f"tracking.{name}", name) for name, module in
               (("mlflow", "mlflow"), ("wandb", "wandb"), ("tensorboard", "tensorboard"))
               if getattr(cfg.tracking, name) is not None]
    for module, key, extra in wanted:
        if not installed(module):
            problems.add(missing_line(module, key, extra))
    if cfg.executor.address is not None:
        with problems.at("executor.address"):
            check_ray_address(cfg.executor.address)


def check_ray_address(address: str, timeout: float = 3.0) -> None:
    """A UserError unless something listens at a Ray address ``HOST:PORT`` or
    ``ray://HOST:PORT`` (``auto`` is left to Ray, which fails at once without a cluster), so a
    wrong address fails in seconds rather than after Ray's own connection timeout."""
    import socket

    if address == "auto":
        return
    host, sep, port = address.removeprefix("ray://").rstrip("/").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise UserError(f"{address!r}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise UserError(f"no Ray cluster answers at {address} ({reason}); start one with "
                        "`ray start --head` or fix the address") from None


def _check_stages(cfg: ExperimentConfig, problems: Problems) -> set[str]:
    """Load every used stage as training will; returns the names of the broken ones."""
    from pathunlearn.data.sources import load_stage

    broken = set()
    for name in used_stages(cfg):
        before = len(problems.lines)
        with problems.at(f"stages.{name}.source"):
            if not load_stage(cfg.stages[name]):
                raise UserError(f"{cfg.stages[name].source}: no items")
        if len(problems.lines) > before:
            broken.add(name)
    return broken


def _check_truncation(cfg: ExperimentConfig, problems: Problems, broken: set[str]) -> None:
    """Every trained stage keeps a target token after truncation to ``model.max_length``
    (issue 24: a stage with none trained on nothing and crashed unlearning later). Needs the
    model's tokenizer: skipped while a preset is not built yet or for a GGUF file (training
    checks it then, :func:`pathunlearn.train.paths.train_prefix`). Stops at a stage's first
    example with a target, so a healthy stage costs one tokenisation."""
    from pathunlearn.models import model_location

    try:
        directory, gguf = model_location(cfg.model)
    except UserError:
        return
    if gguf or not (directory / "tokenizer_config.json").is_file():
        return
    from transformers import AutoTokenizer

    from pathunlearn.data.chat import encode_conversation, ensure_chat_template
    from pathunlearn.data.sources import load_stage

    tokenizer = AutoTokenizer.from_pretrained(directory)
    ensure_chat_template(tokenizer)
    trained = dict.fromkeys(s for path in cfg.paths.expand() for s in path)
    for name in (s for s in trained if s not in broken):
        conversations = load_stage(cfg.stages[name])
        if not any(encode_conversation(tokenizer, c.messages, cfg.model.max_length).num_targets
                   for c in conversations):
            problems.add(truncated_line(name, len(conversations), cfg.model.max_length))


def truncated_line(stage: str, n: int, max_length: int) -> str:
    """The line of a stage with no token left to train on after truncation."""
    return (f"stages.{stage}: every answer of its {n} example(s) is cut off by model.max_length "
            f"({max_length} tokens): no target token left to train on; raise model.max_length "
            "or shorten the prompts")


def _check_methods(cfg: ExperimentConfig, problems: Problems, broken: set[str]) -> None:
    """Every method resolves; one that needs alternate answers (DPO) does not meet a forget
    stage of raw text (which has no answer to replace); AltPO's file of alternates holds
    every forget question's; one that reads a decoder layer (RMU)
    names layers the model has, where its config.json tells (a GGUF model: at the cell)."""
    from pathunlearn.methods import AltPO, make_method, read_alternates_file, resolve_method

    forget = cfg.stages.get(cfg.paths.forget_stage)
    layers = _model_layers(cfg)
    for i, method in enumerate(cfg.unlearning.methods):
        cls = None
        with problems.at(f"unlearning.methods.{i}.name"):
            cls = resolve_method(method.name)
        if cls is None:
            continue
        with problems.at(f"unlearning.methods.{i}"):
            obj = make_method(method)  # a built-in method checks its options here
            if cls.needs_alternates and forget is not None and forget.kind == "text":
                problems.add(f"unlearning.methods.{i}: {method.name} replaces each forget "
                             f"answer by an alternate, but the forget stage "
                             f"{cfg.paths.forget_stage!r} is raw text (kind: text) with no "
                             "answer to replace; use a chat forget stage or another method")
            elif (isinstance(obj, AltPO) and obj.options["alternates"] and forget is not None
                  and cfg.paths.forget_stage not in broken):  # (a broken stage is said once)
                from pathunlearn.data.sources import load_stage

                # every forget question has its alternates in the file, before any work
                read_alternates_file(obj.options["alternates"], method.name, obj.samples,
                                     load_stage(forget))
            if cls.needs_hidden_states and layers is not None:
                bad = [x for x in (obj.hidden_layer(), *getattr(obj, "update_layers", []))
                       if x >= layers]
                if bad:
                    problems.add(f"unlearning.methods.{i}: {method.name} reads layer {bad[0]}, "
                                 f"but the model has {layers} layers (0..{layers - 1}): set "
                                 "its options layer / update_layers")


def _model_layers(cfg: ExperimentConfig) -> int | None:
    """The model's number of decoder layers from its directory's config.json (None where
    there is none to read, e.g. a GGUF file, or it does not say)."""
    from pathunlearn.models import model_location

    try:
        directory, gguf = model_location(cfg.model)
        if gguf is not None or not (directory / "config.json").is_file():
            return None
        layers = json.loads((directory / "config.json").read_text()).get("num_hidden_layers")
    except (UserError, OSError, ValueError):  # reported where the model is checked, or later
        return None
    return layers if isinstance(layers, int) else None


def _check_probes(cfg: ExperimentConfig, problems: Problems,
                  broken: set[str]) -> tuple[list[ProbeSet] | None, list[str]]:
    """Every probe set, each on its own, except those that read a broken stage (reported
    already); returns them all, resolved, when none had a problem, and the notes of the
    defaults left out."""
    from pathunlearn.eval.probes import probe_configs_and_notes, probe_set

    configs, notes = list(cfg.probes.sets), []
    before = len(problems.lines)
    if not broken:  # the defaults read every stage
        with problems.at("probes.defaults"):
            configs, notes = probe_configs_and_notes(cfg)
    resolved = not broken and len(problems.lines) == before  # every probe name is known
    control = cfg.controls.matched_start
    if control is not None and resolved:
        name = control.metric.rsplit("/", 1)[0]
        if name not in {c.name for c in configs}:
            problems.add(f"controls.matched_start.metric: no probe named {name!r} in this run "
                         f"({', '.join(c.name for c in configs)})")
    sets = []
    for config in configs:
        if config.stage_source in broken:
            continue
        index = next((i for i, p in enumerate(cfg.probes.sets) if p.name == config.name), None)
        key = f"probes.sets.{index}" if index is not None else f"probes (default {config.name})"
        with problems.at(key):
            sets.append(probe_set(cfg, config))
            empty_targets(sets[-1])
    return (sets if resolved and len(sets) == len(configs) else None), notes


def empty_targets(probe: ProbeSet) -> None:
    """A UserError if a row of ``probe`` has a blank target: it has no token to score, found
    otherwise when the first cell scores it, after every prefix trained (issue 25)."""
    blank = next((i for i, (_, target) in enumerate(probe.rows) if not target.strip()), None)
    if blank is not None:
        raise UserError(f"probe {probe.name}: row {blank + 1} has an empty target "
                        f"{probe.rows[blank][1]!r} (no token to score); drop it or give text")


def _check_distributed(cfg: ExperimentConfig, problems: Problems) -> None:
    """Under a launcher (torchrun: WORLD_SIZE > 1), every effective batch must split evenly
    across the processes (so each computes its share of the single-process step), and FSDP
    needs full finetuning."""
    from pathunlearn import distributed

    world = distributed.launched()
    if world == 1:
        return
    sizes = {"training.batch_size": cfg.training.batch_size,
             "unlearning.batch_size": cfg.unlearning.batch_size}
    for key, size in sizes.items():
        if size % world:
            problems.add(f"{key}: {size} examples do not split over the {world} processes "
                         f"the launcher started (WORLD_SIZE={world}); use a multiple of {world}")
    if cfg.distributed.strategy == "fsdp" and cfg.model.finetuning == "lora":
        problems.add("distributed.strategy: fsdp shards full finetuning; with LoRA use ddp")
    with problems.at("distributed.backend"):
        distributed.backend_for(cfg.distributed.backend)


def _check_gradnorm(cfg: ExperimentConfig, problems: Problems) -> None:
    """The GradNorm attack takes a backward pass per item on the model as one process holds
    it: not under a launcher (a sharded model's gradient is split across processes)."""
    from pathunlearn import distributed

    if distributed.launched() > 1 and any("gradnorm" in p.metrics for p in cfg.probes.sets):
        problems.add("probes.sets: the metric gradnorm is not supported under torchrun; leave "
                     "it out there (the other attacks are)")


def _check_lmeval(cfg: ExperimentConfig, problems: Problems) -> None:
    """lm-eval is installed and knows every task (its data loaded), before any work; not
    under a launcher (each process would score every task)."""
    settings = cfg.unlearning.lmeval
    if not settings.tasks:
        return
    from pathunlearn import distributed

    if distributed.launched() > 1:
        problems.add("unlearning.lmeval: not supported under torchrun; run `pathunlearn eval "
                     "lmeval` on the saved models (unlearning.save_model: true) instead")
        return
    from pathunlearn.eval.lmeval import load_tasks

    with problems.at("unlearning.lmeval"):
        load_tasks(settings.tasks, settings.include_path or None)


def _check_math(cfg: ExperimentConfig, problems: Problems) -> None:
    math = cfg.unlearning.math
    if not math.questions:
        return
    from pathunlearn.data.sources import load_source
    from pathunlearn.eval.math import gold_answers

    with problems.at("unlearning.math.source"):
        gold_answers(load_source(math.source, max_examples=math.questions))
