"""Plan and train paths: a trie of prefixes, each distinct prefix trained once and cached.

A path is an ordered tuple of stages; its k-th prefix is its first k stages. Paths sharing a
prefix share its training, so the plan is the set of distinct prefixes (a trie whose root is
the base model, e.g. the tiny preset's pretraining). Each prefix is cached under a key that
hashes everything that determines its weights: the base model, every stage of the prefix with
its data and epochs, the finetuning and optimizer settings, and the training seed. A prefix is
trained from its parent's checkpoint with a fresh adapter (LoRA, merged after the stage) or on
all weights, a fresh optimizer and a fresh schedule.

Run directory: ``prefixes/<key>/`` holds the checkpoint (HF format, safetensors), the
prefix's ``metrics.jsonl``, ``prefix.json`` and the resolved ``config.yaml``; it exists once
its DONE marker does. Killing a run loses at most the prefix in progress, which the next run
retrains from its parent (bit-identically: training is deterministic on CPU).
"""

from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import dataclass
from pathlib import Path

from pathunlearn.config import ExperimentConfig, dump_config
from pathunlearn.files import atomic_dir, is_done, write_json, write_text

PREFIX_DIR = "prefixes"


@dataclass(frozen=True)
class Prefix:
    """One node of the trie: the first stages of some path, trained under one seed."""

    stages: tuple[str, ...]
    seed: int
    key: str
    parent_key: str | None  # None: the parent is the base model

    @property
    def stage(self) -> str:
        """The stage this node trains (its last)."""
        return self.stages[-1]

    @property
    def label(self) -> str:
        return " > ".join(self.stages)


@dataclass(frozen=True)
class TrainPlan:
    """The distinct prefixes to train (parents before children) and the paths they serve."""

    prefixes: tuple[Prefix, ...]
    paths: tuple[tuple[str, ...], ...]
    seeds: tuple[int, ...]
    naive_count: int  # stage-trainings without sharing: sum of path lengths over seeds
    leaves: dict[tuple[int, tuple[str, ...]], Prefix]  # (experiment seed, path) -> path model

    def leaf(self, path: tuple[str, ...], seed: int) -> Prefix:
        """The prefix that is the whole path (its path model) for experiment seed ``seed``."""
        return self.leaves[(seed, tuple(path))]

    def to_json(self) -> dict:
        return {"paths": [list(p) for p in self.paths], "seeds": list(self.seeds),
                "stage_trainings": len(self.prefixes), "naive_stage_trainings": self.naive_count,
                "prefixes": [{"stages": list(p.stages), "seed": p.seed, "key": p.key,
                              "parent": p.parent_key} for p in self.prefixes]}


def training_seed(cfg: ExperimentConfig, seed: int) -> int:
    """The seed staged training uses for experiment seed ``seed`` (see training.seed)."""
    return seed if cfg.training.seed is None else cfg.training.seed


def stage_seed(seed: int, stage: str) -> int:
    """Seed of one stage's data order and adapter init: fixed by (training seed, stage name),
    so a stage sees the same shuffles wherever it sits in a path."""
    return zlib.crc32(f"{seed}:{stage}".encode())


def stable_hash(*parts: object) -> str:
    """A short stable hash of JSON-able parts (cache keys of prefixes and cells)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()[:20]


def base_identity(cfg: ExperimentConfig) -> dict:
    """What identifies the base model: the preset's recipe key or the local path's config."""
    m = cfg.model
    if m.preset == "tiny":
        from pathunlearn.tiny import tiny_key

        return {"preset": "tiny", "key": tiny_key()}
    ident: dict = {"preset": m.preset, "path": m.path, "gguf_file": m.gguf_file}
    config_json = Path(m.path or "") / "config.json"
    if config_json.is_file():
        ident["config_sha"] = hashlib.sha256(config_json.read_bytes()).hexdigest()
    return ident


def stage_identity(cfg: ExperimentConfig, name: str) -> dict:
    """A stage's settings, plus the content hash of a local data file."""
    stage = cfg.stages[name]
    ident = {"name": name, **stage.model_dump(mode="json")}
    if not stage.source.startswith("builtin:") and Path(stage.source).is_file():
        ident["data_sha"] = hashlib.sha256(Path(stage.source).read_bytes()).hexdigest()
    return ident


def root_key(cfg: ExperimentConfig, seed: int) -> str:
    """Key of the trie root for one training seed: the base model and every shared setting."""
    m = cfg.model.model_dump(mode="json")
    training = cfg.training.model_dump(mode="json", exclude={"device"})
    return stable_hash("root", base_identity(cfg), m, training, training_seed(cfg, seed))


def plan_paths(cfg: ExperimentConfig, paths: list[tuple[str, ...]] | None = None,
               seeds: list[int] | None = None) -> TrainPlan:
    """The trie of distinct prefixes over ``paths`` (default: the config's) and ``seeds``."""
    paths = list(dict.fromkeys(tuple(p) for p in (paths or cfg.paths.expand())))
    seeds = list(dict.fromkeys(seeds if seeds is not None else cfg.seeds))
    trie: dict[tuple[int, tuple[str, ...]], Prefix] = {}  # (training seed, stages) -> node
    leaves = {}
    for seed in seeds:
        tseed = training_seed(cfg, seed)
        for path in paths:
            parent = None
            for k in range(1, len(path) + 1):
                node = trie.get((tseed, path[:k]))
                if node is None:
                    key = stable_hash(parent or root_key(cfg, seed), stage_identity(cfg, path[k - 1]))
                    node = trie[(tseed, path[:k])] = Prefix(path[:k], tseed, key, parent)
                parent = node.key
            leaves[(seed, path)] = node
    return TrainPlan(tuple(trie.values()), tuple(paths), tuple(seeds),
                     naive_count=len(seeds) * sum(len(p) for p in paths), leaves=leaves)


def prefix_dir(run_dir: Path, prefix: Prefix) -> Path:
    return Path(run_dir) / PREFIX_DIR / prefix.key


def path_model_dir(run_dir: Path, plan: TrainPlan, path: tuple[str, ...], seed: int) -> Path:
    """Checkpoint directory of the model trained along ``path`` under experiment seed ``seed``."""
    return prefix_dir(run_dir, plan.leaf(path, seed))


# ---------------------------------------------------------------------------- training


def train_prefix(cfg: ExperimentConfig, prefix: Prefix, run_dir: Path, *,
                 progress: bool = False) -> dict:
    """Train one prefix from its parent's checkpoint (or the base model) and save it atomically.

    Returns the summary written to ``prefix.json``.
    """
    from pathunlearn.data.chat import tokenize_conversations
    from pathunlearn.data.sources import load_stage
    from pathunlearn.models import (
        apply_lora,
        load_checkpoint,
        load_model,
        resolve_device,
        write_checkpoint,
    )
    from pathunlearn.train.staged import train_stage

    device = resolve_device(cfg.training.device)
    if prefix.parent_key is None:
        model, tokenizer = load_model(cfg.model, device=device)
    else:
        parent = Path(run_dir) / PREFIX_DIR / prefix.parent_key
        model, tokenizer = load_checkpoint(parent, cfg.model, device)
    stage = cfg.stages[prefix.stage]
    seed = stage_seed(prefix.seed, prefix.stage)
    conversations = load_stage(stage)
    examples, n_truncated = tokenize_conversations(tokenizer, conversations, cfg.model.max_length)
    if cfg.model.finetuning == "lora":
        model = apply_lora(model, cfg.model.lora, seed=seed)
    with atomic_dir(prefix_dir(run_dir, prefix)) as tmp:
        result = train_stage(model, examples, cfg.training, epochs=stage.epochs, seed=seed,
                             pad_id=tokenizer.pad_token_id, precision=cfg.training.precision,
                             stage=prefix.stage, metrics_path=tmp / "metrics.jsonl",
                             progress=progress)
        write_checkpoint(model, tokenizer, tmp)
        summary = {"stages": list(prefix.stages), "seed": prefix.seed, "key": prefix.key,
                   "parent": prefix.parent_key, "examples": len(examples),
                   "truncated": n_truncated, "steps": result.steps,
                   "first_loss": result.first_loss, "last_loss": result.last_loss,
                   "target_tokens": result.target_tokens, "seconds": result.seconds}
        write_json(tmp / "prefix.json", summary)
        write_text(tmp / "config.yaml", dump_config(cfg))
    return summary


def train_paths(cfg: ExperimentConfig, plan: TrainPlan | None = None, *,
                run_dir: Path | None = None, progress: bool = False, log=print) -> TrainPlan:
    """Train every prefix of the plan that has no DONE checkpoint yet, parents first."""
    plan = plan or plan_paths(cfg)
    run_dir = Path(run_dir or cfg.run_dir)
    write_json(run_dir / "plan.json", plan.to_json())
    todo = [p for p in plan.prefixes if not is_done(prefix_dir(run_dir, p))]
    log(f"{len(plan.prefixes)} stage-trainings planned ({plan.naive_count} without sharing), "
        f"{len(plan.prefixes) - len(todo)} already done")
    for i, prefix in enumerate(todo, 1):
        s = train_prefix(cfg, prefix, run_dir, progress=progress)
        log(f"[{i}/{len(todo)}] seed {prefix.seed}: {prefix.label}  loss {s['first_loss']:.3f} -> "
            f"{s['last_loss']:.3f}  ({s['steps']} steps, {s['seconds']:.1f}s"
            f"{', ' + str(s['truncated']) + ' truncated' if s['truncated'] else ''})")
    return plan
