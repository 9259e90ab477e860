"""The plan of a run: every model it trains and every unlearning run, each with its key.

:func:`plan_run` is the one place that decides what a run produces and where:

- ``base``: the base model's identity (a preset's recipe key, or a local checkpoint's path and
  config hash); a preset that is built locally (``tiny``) is built before the first stage;
- ``prefixes``: the trie of distinct prefixes (first k stages) of every path *and* of every
  path's retrain baseline (the path without the forget stage, Definition 2.1), per training
  seed, parents first; each is trained once and cached in ``prefixes/<key>/``;
- ``cells``: one unlearning run per (path, method, experiment seed, swept lr, swept scheduler),
  with the keys of its path model and of its retrain model, and its own key;
- ``probe_notes``: the default probe sets left out because their data lack the fields they
  need (:func:`pathunlearn.eval.probes.default_probes`), a line each; the report shows them.

Every key comes from :mod:`pathunlearn.keys`, which hashes the study's sections whole and
reads no runtime setting (device, compile, ..., output directory: a run directory can be
moved and rerun on other hardware).

``pathunlearn train``, ``unlearn``, ``run`` and ``report`` all use this plan; ``plan.json``
(:meth:`Plan.to_json`) holds it and is the same whichever command wrote it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from functools import cached_property

from pathunlearn.config import ExperimentConfig, MethodConfig
from pathunlearn.errors import ConfigError
from pathunlearn.eval.probes import ProbeSet, resolve_probes
from pathunlearn.keys import (
    base_identity,
    cell_common,
    cell_key,
    matched_key,
    prefix_key,
    probes_key,
    root_key,
    stable_hash,
    stage_identity,
)
from pathunlearn.methods import method_identity, resolve_method

PLAN_FORMAT = 2
"""Version of plan.json (2: the probe sets' hash)."""

Path_ = tuple[str, ...]
"""A path: stage names in training order."""


@dataclass(frozen=True)
class Prefix:
    """One node of the trie: the first stages of some path, trained under one seed."""

    stages: Path_
    seed: int
    """The training seed (see ``training.seed``)."""
    key: str
    parent_key: str | None
    """None: the parent is the base model."""

    @property
    def stage(self) -> str:
        """The stage this node trains (its last)."""
        return self.stages[-1]

    @property
    def label(self) -> str:
        return " > ".join(self.stages)

    @property
    def parts(self) -> tuple[str, ...]:
        """Its directory under the run's prefixes (:func:`pathunlearn.rundir.unit_dir`)."""
        return (path_part(self.key, "prefix key"),)

    def to_json(self) -> dict:
        return {"stages": list(self.stages), "seed": self.seed, "key": self.key,
                "parent": self.parent_key}

    @classmethod
    def from_json(cls, data: dict) -> Prefix:
        return cls(tuple(data["stages"]), int(data["seed"]), data["key"], data["parent"])


_SAFE_PART = re.compile(r"[A-Za-z0-9_@+-][A-Za-z0-9_.@+-]*")


def path_part(name: str, what: str) -> str:
    """``name`` if it is one safe path component (letters, digits, ``_.@+-``, not starting
    with ``.``: never ``..``, a separator or a hidden name); else a ConfigError. The config
    rejects what would build such a name; this is the second line of defence (issue 24)."""
    if not isinstance(name, str) or not _SAFE_PART.fullmatch(name):
        raise ConfigError(f"{what} {name!r} cannot name a directory of the run (one path "
                          "component of letters, digits and _.@+-, not starting with .)")
    return name


def number_part(value: float) -> str:
    """A number as a directory name holds it: ``format(value, 'g')`` where that reads back
    as the same number (``2e-05``, ``0.5``), else the shortest text that does (``repr``), so
    two different numbers never share a directory (``1e-05`` and ``1.0000001e-05``)."""
    short = format(value, "g")
    return short if float(short) == value else repr(float(value))


@dataclass(frozen=True)
class Cell:
    """One unlearning run: its identity, where it lives and the keys it depends on.

    The same object names the directory the unlearning loop writes
    (:attr:`parts`, under ``cells/``) and the one the report reads back (:func:`pathunlearn.rundir.load_run`).
    """

    path: Path_
    method: MethodConfig
    method_label: str
    """Directory-safe name: the method's name, plus the settings that tell apart methods of
    the same name (``npo-beta0.5``)."""
    seed: int
    """The experiment seed."""
    lr: float
    scheduler: str
    local: bool
    """Whether the method uses only forget-set gradients."""
    sweep: tuple[str, ...] = ()
    """Extra directory levels when the config sweeps lrs / schedulers (``lr2e-05``,
    ``cosine``)."""
    key: str = ""
    model_key: str = ""
    """The key of the path model the cell starts from (a prefix)."""
    retrain_key: str | None = None
    """The key of the retrain model it is compared with; None: no retrain baseline (a path
    made of the forget stage only)."""
    method_description: str = ""
    """What the method is, in one line (:meth:`pathunlearn.methods.Method.describe`)."""
    control: str | None = None
    """``matched_start``: a cell of the matched-start control (its path model is the
    forget-last path's :class:`Matched` model); None: a cell of the study."""

    @property
    def path_label(self) -> str:
        return "-".join(self.path)

    @property
    def sweep_label(self) -> str:
        return " ".join(self.sweep)

    @property
    def parts(self) -> tuple[str, ...]:
        """Its directory under the run's cells, ``<path>[@<control>]/<method>/<seed>[/<lr>]
        [/<scheduler>]`` (:func:`pathunlearn.rundir.unit_dir`)."""
        top = self.path_label + (f"@{self.control}" if self.control else "")
        parts = [top, self.method_label, str(self.seed), *self.sweep]
        return tuple(path_part(p, "cell directory") for p in parts)

    def describe(self) -> dict:
        """The identity fields every row and summary of the cell carries."""
        return {"path": list(self.path), "method": self.method_label, "seed": self.seed,
                "lr": self.lr, "scheduler": self.scheduler, "local": self.local,
                **({"control": self.control} if self.control else {})}

    def to_json(self) -> dict:
        return {**self.describe(), "method_config": self.method.model_dump(mode="json"),
                "method_description": self.method_description, "sweep": list(self.sweep),
                "key": self.key, "model": self.model_key, "retrain": self.retrain_key}

    @classmethod
    def from_json(cls, data: dict) -> Cell:
        return cls(tuple(data["path"]), MethodConfig.model_validate(data["method_config"]),
                   data["method"], int(data["seed"]), float(data["lr"]), data["scheduler"],
                   bool(data["local"]), tuple(data["sweep"]), data["key"], data["model"],
                   data["retrain"], data.get("method_description", ""), data.get("control"))


@dataclass(frozen=True)
class Matched:
    """The matched-start control's path model of one forget-last path and training seed: its
    last (forget) stage trained again from ``parent_key`` and stopped where the control's
    metric reaches the starting level of the ``others`` (the other paths' path models of the
    same training seed). Stored like a prefix, in ``prefixes/<key>/``."""

    path: Path_
    seed: int
    """The training seed."""
    key: str
    parent_key: str | None
    leaf_key: str
    """The regular path model, whose training it repeats up to the stopping step."""
    others: tuple[str, ...]

    @property
    def parts(self) -> tuple[str, ...]:
        return (path_part(self.key, "prefix key"),)

    def to_json(self) -> dict:
        return {"path": list(self.path), "seed": self.seed, "key": self.key,
                "parent": self.parent_key, "leaf": self.leaf_key, "others": list(self.others)}

    @classmethod
    def from_json(cls, data: dict) -> Matched:
        return cls(tuple(data["path"]), int(data["seed"]), data["key"], data["parent"],
                   data["leaf"], tuple(data["others"]))


@dataclass(frozen=True)
class Plan:
    """Everything a run trains and unlearns (see the module docstring)."""

    base: dict
    prefixes: tuple[Prefix, ...]
    """Parents before children."""
    paths: tuple[Path_, ...]
    """The config's paths, in config order."""
    retrain_paths: tuple[Path_, ...]
    """The retrain baselines of the paths (distinct, in order of first use)."""
    seeds: tuple[int, ...]
    cells: tuple[Cell, ...]
    leaves: dict[tuple[int, Path_], str] = field(repr=False)
    """(experiment seed, path or retrain path) -> the key of the prefix that is the whole
    path."""
    probes_sha: str = ""
    """Hash of the resolved probe sets (part of every cell's key)."""
    probes: tuple[ProbeSet, ...] = field(default=(), repr=False, compare=False)
    """The resolved probe sets (RUN_DIR/probes.json), when planned (not read back from
    plan.json)."""
    matched: tuple[Matched, ...] = ()
    """The matched-start control's path models (``controls.matched_start``), one per
    forget-last path and training seed."""
    probe_notes: tuple[str, ...] = ()
    """The default probe sets left out (their source lacks the fields they need), a line
    each: ``NAME: left out: WHY`` (``eval.probes.default_probes``); the report shows them."""

    @property
    def naive_count(self) -> int:
        """Stage-trainings without sharing prefixes: every distinct path model and retrain
        model (per training seed) trained from the base model on its own."""
        by_key = self._by_key
        return sum(len(path) for path, _ in {(path, by_key[key].seed)
                                             for (_, path), key in self.leaves.items()})

    def leaf(self, path: Path_, seed: int) -> Prefix:
        """The prefix that is the whole ``path`` (its path model) for experiment seed
        ``seed``."""
        return self._by_key[self.leaves[(seed, tuple(path))]]

    @cached_property
    def _by_key(self) -> dict[str, Prefix]:
        return {p.key: p for p in self.prefixes}

    def to_json(self) -> dict:
        """plan.json: a function of the config alone (no state, no time)."""
        return {"format": PLAN_FORMAT, "base": self.base, "probes_sha": self.probes_sha,
                "paths": [list(p) for p in self.paths],
                "retrain_paths": [list(p) for p in self.retrain_paths],
                "seeds": list(self.seeds), "stage_trainings": len(self.prefixes),
                "naive_stage_trainings": self.naive_count,
                "prefixes": [p.to_json() for p in self.prefixes],
                "leaves": [{"seed": s, "path": list(p), "key": k}
                           for (s, p), k in self.leaves.items()],
                "cells": [c.to_json() for c in self.cells],
                "matched": [m.to_json() for m in self.matched],
                "probe_notes": list(self.probe_notes)}

    @classmethod
    def from_json(cls, data: dict) -> Plan:
        return cls(data["base"], tuple(Prefix.from_json(p) for p in data["prefixes"]),
                   tuple(tuple(p) for p in data["paths"]),
                   tuple(tuple(p) for p in data["retrain_paths"]),
                   tuple(data["seeds"]), tuple(Cell.from_json(c) for c in data["cells"]),
                   {(int(e["seed"]), tuple(e["path"])): e["key"] for e in data["leaves"]},
                   data["probes_sha"],
                   matched=tuple(Matched.from_json(m) for m in data.get("matched", [])),
                   probe_notes=tuple(data.get("probe_notes", [])))


# ---------------------------------------------------------------------------- planning


def plan_run(cfg: ExperimentConfig, check: bool = True) -> Plan:
    """The whole plan of ``cfg``: base model, prefixes (paths and retrain baselines), cells.

    First checks every input (:func:`pathunlearn.checks.check_inputs`: every stage's data,
    method, probe source, the model's files, the output directory) and raises one
    ConfigError listing every problem, a line each, before any work starts. ``check=False``
    skips that (the methods and probe sets are still resolved).
    """
    probes, notes = None, None
    if check:
        from pathunlearn.checks import inspect_inputs

        found = inspect_inputs(cfg)
        if found.problems:
            raise ConfigError("\n".join(found.problems)) from found.cause  # --debug: the user's
        probes, notes = found.probes, found.notes  # resolved while checking: not read again
    if notes is None:
        from pathunlearn.eval.probes import probe_configs_and_notes

        notes = probe_configs_and_notes(cfg)[1]
    paths = cfg.paths.expand()
    retrain = list(dict.fromkeys(r for r in (retrain_path(cfg, p) for p in paths) if r))
    seeds = list(dict.fromkeys(cfg.seeds))
    base = base_identity(cfg)
    prefixes, leaves = _trie(cfg, base, paths + [r for r in retrain if r not in paths], seeds)
    probes = tuple(resolve_probes(cfg) if probes is None else probes)
    probes_sha = probes_key(cfg, [p.to_json() for p in probes])
    matched = _matched(cfg, paths, seeds, prefixes, leaves, probes_sha)
    cells = _cells(cfg, paths, leaves, probes_sha, matched)
    return Plan(base, prefixes, tuple(paths), tuple(retrain), tuple(seeds), tuple(cells),
                leaves, probes_sha, probes, tuple({m.key: m for m in matched.values()}.values()),
                tuple(notes))


def _matched(cfg: ExperimentConfig, paths: list[Path_], seeds: list[int],
             prefixes: tuple[Prefix, ...], leaves: dict[tuple[int, Path_], str],
             probes_sha: str) -> dict[tuple[int, Path_], Matched]:
    """(experiment seed, forget-last path) -> its matched-start model (``controls.
    matched_start``; empty when off). The key hashes the leaf's parent, the forget stage, the
    control's settings, the probe sets (the metric is one) and the models whose level it
    matches."""
    control = cfg.controls.matched_start
    if control is None:
        return {}
    forget = cfg.paths.forget_stage
    by_key = {p.key: p for p in prefixes}
    out: dict[tuple[int, Path_], Matched] = {}
    for seed in seeds:
        others = tuple(sorted({leaves[(seed, p)] for p in paths if p[-1] != forget}))
        for path in (p for p in paths if p[-1] == forget):
            leaf = by_key[leaves[(seed, path)]]
            key = matched_key(cfg, leaf.parent_key, leaf.seed, others, probes_sha)
            out[(seed, path)] = Matched(path, leaf.seed, key, leaf.parent_key, leaf.key, others)
    return out


def _trie(cfg: ExperimentConfig, base: dict, paths: list[Path_], seeds: list[int]):
    """The distinct prefixes of ``paths`` per training seed (parents first), and the leaf key
    of every (experiment seed, path)."""
    nodes: dict[tuple[int, Path_], Prefix] = {}  # (training seed, stages) -> node
    leaves: dict[tuple[int, Path_], str] = {}
    stages = {s: stage_identity(cfg, s) for s in dict.fromkeys(s for p in paths for s in p)}
    for seed in seeds:
        tseed = training_seed(cfg, seed)
        for path in paths:
            parent = None
            for k in range(1, len(path) + 1):
                node = nodes.get((tseed, path[:k]))
                if node is None:
                    key = prefix_key(parent or root_key(cfg, base, tseed), stages[path[k - 1]])
                    node = nodes[(tseed, path[:k])] = Prefix(path[:k], tseed, key, parent)
                parent = node.key
            leaves[(seed, path)] = parent
    return tuple(nodes.values()), leaves


def _cells(cfg: ExperimentConfig, paths: list[Path_], leaves: dict[tuple[int, Path_], str],
           probes_sha: str, matched: dict[tuple[int, Path_], Matched]) -> list[Cell]:
    """Every (path x method x seed x lr x scheduler) of the config, keyed; then the same for
    the matched-start control's models (``control`` set)."""
    u = cfg.unlearning
    classes = []
    for i, m in enumerate(u.methods):
        try:
            classes.append(resolve_method(m.name))
        except ConfigError as e:
            raise ConfigError(f"unlearning.methods.{i}.name: {e}") from e.__cause__
    objects = [cls(m) for cls, m in zip(classes, u.methods, strict=True)]
    # a user's file hashed once each; with the data files a method's options name (DPO's
    # alternates), so editing either recomputes the cells
    identities = [method_identity(cls) | obj.data_identity()
                  for cls, obj in zip(classes, objects, strict=True)]
    labels = method_labels(u.methods, [c.name for c in classes], [o.variant() for o in objects])
    lrs, schedulers = u.lrs or [u.lr], u.schedulers or [u.scheduler]
    common = cell_common(cfg, probes_sha)
    cells, controls = [], []
    for path in paths:
        retrain = retrain_path(cfg, path)
        for method, cls, obj, ident, label in zip(u.methods, classes, objects, identities,
                                                  labels, strict=True):
            for seed in cfg.seeds:
                for lr in lrs:
                    for sched in schedulers:
                        sweep = ((f"lr{number_part(lr)}",) if u.lrs else ()) + (
                            (sched,) if u.schedulers else ())
                        cell = Cell(tuple(path), method, label, seed, lr, sched, cls.local,
                                    sweep, model_key=leaves[(seed, path)],
                                    retrain_key=leaves[(seed, retrain)] if retrain else None,
                                    method_description=obj.describe())
                        cells.append(replace(cell, key=cell_key(cfg, cell, ident, common)))
                        if (seed, path) in matched:
                            control = replace(cell, control="matched_start",
                                              model_key=matched[(seed, path)].key)
                            controls.append(replace(control, key=cell_key(
                                cfg, control, ident, common)))
    return cells + controls


def retrain_path(cfg: ExperimentConfig, path: Path_) -> Path_:
    """The retrain baseline's path: ``path`` without the forget stage (Definition 2.1)."""
    return tuple(s for s in path if s != cfg.paths.forget_stage)


def position(path: Path_, forget_stage: str) -> int:
    """1-based position of the forget stage in ``path`` (every path of a valid config holds
    it)."""
    return path.index(forget_stage) + 1


def method_labels(methods: list[MethodConfig], names: list[str],
                  variants: list[list[str]]) -> list[str]:
    """Directory-safe labels: each method's name (``names``: its class's), its variant
    (``variants``: settings that change what the method is, always named, e.g.
    ``simnpo-norm``), then the settings that tell apart methods of the same name
    (``npo-beta0.5``, ``npo-beta1``)."""

    def settings(m: MethodConfig) -> dict[str, object]:
        return {"beta": m.beta, "lambda": m.retain_weight, "gamma": m.gamma,
                "norm": m.length_normalize,
                **{f"opt-{k}": v for k, v in sorted(m.options.items())}}

    labels = []
    for m, name, variant in zip(methods, names, variants, strict=True):
        group = [settings(o) for o, n in zip(methods, names, strict=True) if n == name]
        # a setting some method of the group names as its variant tells them apart already
        named = {p for v, n in zip(variants, names, strict=True) if n == name for p in v}
        differing = [k for k in settings(m) if len({repr(g.get(k)) for g in group}) > 1
                     and k not in named]
        labels.append("-".join([name, *variant]
                               + [_setting(k, settings(m).get(k)) for k in differing]))
    for i, label in enumerate(labels):
        path_part(label, f"unlearning.methods.{i}: the label")  # a user class's `name`
        if label in labels[:i]:
            raise ConfigError(f"unlearning.methods.{i}: its label {label!r} is also method "
                              f"{labels.index(label)}'s; each method needs its own directory "
                              "(give them different settings, or drop one)")
    return labels


def _setting(key: str, value: object) -> str:
    """One setting in a method's label: ``beta0.5``, ``norm`` / ``nonorm``; an option value
    that is not a plain word (a path, a list, ...) by a short hash of it, so a label is
    always one safe directory name."""
    if isinstance(value, bool):
        return key if value else f"no{key}"
    if isinstance(value, int | float):
        return f"{key}{number_part(value)}"
    if value is None:
        return f"{key}default"
    if isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9_+-][A-Za-z0-9_.+-]{0,31}", value):
        return f"{key}{value}"
    return f"{key}{stable_hash(value)[:8]}"


# ---------------------------------------------------------------------------- seeds


def training_seed(cfg: ExperimentConfig, seed: int) -> int:
    """The seed staged training uses for experiment seed ``seed`` (see training.seed and
    training.seed_of)."""
    if cfg.training.seed_of is not None:
        return cfg.training.seed_of[seed]
    return seed if cfg.training.seed is None else cfg.training.seed
