"""Every key of a run, and which settings feed them: the one place that answers "which
settings change my numbers?".

A config has two kinds of settings:

- **the study** (every top-level section not in :data:`RUNTIME_SECTIONS`): anything that can
  change a number the report shows. A key hashes the sections its unit depends on *whole*,
  every field, with no list of fields to keep or leave out; a new field is part of the keys
  the day it is added (``tests/test_keys.py`` walks every field and checks that it moves a
  key). A unit hashes a section as it applies to that unit: a prefix trains with one seed
  (``training.seed`` / ``seed_of`` resolved to it), a cell runs one method, one learning rate
  and one scheduler (in place of the lists of ``unlearning`` it is one entry of), and a local
  file is held by its name and content hash (:func:`keyed_source`), never by where it is
  reached from.
- **runtime settings** (:data:`RUNTIME_SECTIONS`): how fast and where a run computes, and
  where its outputs go. No key reads them, so changing one reuses every finished prefix and
  cell. A field is a runtime setting only if it runs the same computation (the same numbers
  on CPU, or the same up to the float rounding of another order of operations: another kernel,
  chunking, recomputation, N processes with the same batch sizes) or only says where outputs
  go. Batch sizes, ``model.attn_implementation`` and ``model.dtype`` stay in the study: they
  decide the padding of every micro-batch, the order gradients are summed in, or the
  arithmetic itself, and are part of the recipe a paper reports.

The keys, from the base of the trie to a cell:

- :func:`root_key`: the base model (:func:`base_identity`), ``model``, ``training`` (with the
  prefix's training seed);
- a prefix: its parent's key (or the root's) and its last stage (:func:`stage_identity`: the
  ``stages.NAME`` section and its data's content hash);
- :func:`matched_key`: the matched-start model: the leaf's parent, the forget stage,
  ``controls.matched_start``, the models whose level it matches and the probes;
- :func:`cell_key`: the cell's path model and retrain model (so everything above), its method
  (and the file defining a user's method), ``unlearning`` as the cell runs it, ``model``,
  ``probes`` (the section and the resolved probe rows, :func:`probes_key`), ``relearn``, and
  the stages named as retain data.

``seeds`` and ``paths`` decide which prefixes and cells exist (a seed and a path are part of
their keys). ``study`` (:data:`REPORT_ONLY`) changes what the report leads with, no number: the
report's own key hashes the whole config (:mod:`pathunlearn.report`).
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any, Protocol

from pathunlearn.config import ExperimentConfig, MethodConfig, source_path
from pathunlearn.data.adapters import parse_adapter
from pathunlearn.data.sources import BUILTIN_PREFIX, hub_part, localize
from pathunlearn.files import sha256_file

KEY_FORMAT = 2
"""Bump when what a key hashes changes, so old prefixes and cells are recomputed (2: runtime
settings in a section of their own, read by no key; whole sections hashed; the whole probes
section in every cell's key, e.g. ``probes.examples``, read by the step-0 saturation
diagnostics)."""
CELL_FORMAT = 3
"""Bump when what a cell records changes, so old cells are recomputed (2: saturation
diagnostics in summary.json; 3: relearning on the forget set reads only its first
relearn.forget_examples items, as documented; it read them all)."""

RUNTIME_SECTIONS = {
    "name": "where outputs go: OUTPUT_DIR/NAME",
    "output_dir": "where outputs go",
    "runtime": "device, compile, packing, vocab chunking, activation checkpointing: how fast",
    "distributed": "N processes compute what one does with the same batch sizes",
    "executor": "local or Ray: where each prefix and cell computes, the same numbers",
    "tracking": "copies of what the run wrote, to MLflow / W&B / TensorBoard",
}
"""The top-level sections of :class:`ExperimentConfig` that no key reads, and why."""

REPORT_ONLY = {
    "study": "which table and verdict the report leads with; every number is the same",
}
"""Study settings that change the report but no prefix or cell (the report's key hashes the
whole config)."""


class KeyedCell(Protocol):
    """What :func:`cell_key` reads of a cell (:class:`pathunlearn.plan.Cell`)."""

    method: MethodConfig
    lr: float
    scheduler: str
    model_key: str
    retrain_key: str | None

    def describe(self) -> dict: ...


def stable_hash(*parts: object) -> str:
    """A short stable hash of JSON-able parts (the keys of prefixes and cells)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()[:20]


# ---------------------------------------------------------------------------- prefixes


def root_key(cfg: ExperimentConfig, base: dict, tseed: int) -> str:
    """Key of the trie root for one training seed: the base model, the whole ``model``
    section and the whole ``training`` section with ``tseed`` as its seed (``seed`` /
    ``seed_of`` resolved: experiment seeds that share a training seed share the prefixes)."""
    training = cfg.training.model_copy(update={"seed": tseed, "seed_of": None})
    return stable_hash("root", KEY_FORMAT, base, cfg.model.model_dump(mode="json"),
                       training.model_dump(mode="json"))


def prefix_key(parent: str, stage: dict) -> str:
    """A prefix: its parent's key (or :func:`root_key`) and the stage it trains (``stage``:
    its :func:`stage_identity`, computed once per plan for all the prefixes that train it)."""
    return stable_hash(parent, stage)


def base_identity(cfg: ExperimentConfig) -> dict:
    """What identifies the base model: the preset's recipe key or the local path's config."""
    m = cfg.model
    if m.preset == "tiny":
        from pathunlearn.tiny import tiny_key

        return {"preset": "tiny", "key": tiny_key()}
    ident: dict = {"preset": m.preset, "path": m.path, "gguf_file": m.gguf_file}
    from pathunlearn.hub import model_snapshot

    # a hub id keys on its repository and resolved commit: a new upstream revision is a new
    # base model, never the old one's results
    snapshot = model_snapshot(m.path, m.gguf_file) if m.preset is None and m.path else None
    if snapshot is not None:
        ident["hub"] = snapshot.identity
    config_json = (snapshot.path if snapshot else Path(m.path or "")) / "config.json"
    if config_json.is_file():
        ident["config_sha"] = sha256_file(config_json)
    return ident


CHAT_STAGE_DEFAULTS = {"kind": "chat", "text_key": None}
"""Stage fields added with text stages (issue 27), left out of a stage's identity at these
values, so every chat stage (and every finished prefix) keeps its key; any other value is in
it: a chat and a text stage of the same source never share a checkpoint."""


def stage_identity(cfg: ExperimentConfig, name: str) -> dict:
    """A stage's whole section, its source as keys hold it, plus the content hash of its
    local data file (a plain file, or the file an adapter reads: ``tofu:FILE``)."""
    stage = cfg.stages[name]
    sha = data_sha(stage.source)  # read once: the keyed source holds it too
    section = stage.model_dump(mode="json")
    for field, default in CHAT_STAGE_DEFAULTS.items():  # a chat stage keys as it always did
        if section[field] == default:
            del section[field]
    ident = {"name": name, **section, "source": _keyed(stage.source, sha)}
    if sha is not None:
        ident["data_sha"] = sha
    if (hub_spec := hub_part(stage.source)) is not None:  # the hub dataset's resolved commit
        from pathunlearn.hub import dataset_snapshot

        ident["hub"] = dataset_snapshot(hub_spec)[0].identity
    return ident


def keyed_source(source: str) -> str:
    """A source as keys hold it: where its local file is replaced by what it holds (the
    file's or release directory's name and content hash, :func:`data_sha`), so the same data
    keys the same from any working directory or config folder, and other data under the same
    path never does (``data/a.jsonl`` -> ``a.jsonl#<sha256>``; ``tofu:../TOFU:forget10`` ->
    ``tofu:TOFU#<sha256>:forget10``). Built-in, stage and hub sources are kept as written (a
    hub dataset keys on its resolved commit, :func:`stage_identity`)."""
    return _keyed(source, data_sha(source))


def _keyed(source: str, sha: str | None) -> str:
    """:func:`keyed_source` with the source's :func:`data_sha` already known."""
    parts = source_path(source) if source else None
    if parts is None:
        return source
    head, path, tail = parts
    return f"{head}{Path(path).name}{f'#{sha}' if sha else ''}{tail}"


def data_sha(source: str) -> str | None:
    """The content hash of the local file a source reads, or of the files an adapter reads in
    a release directory (``tofu:DIR``: every subset's file, by name); None: a built-in source,
    or no such file."""
    source = localize(source)  # a hub dataset: the files of its snapshot
    data = data_file(source)
    if data is not None and data.is_dir() and (adapted := parse_adapter(source)) is not None:
        from pathunlearn.data.adapters import adapter_files

        files = adapter_files(adapted[0], adapted[1])
        return stable_hash([[str(f.relative_to(data)), sha256_file(f)]
                            for f in files]) if files else None
    return sha256_file(data) if data is not None and data.is_file() else None


def data_file(source: str) -> Path | None:
    """The local file (or release directory) a source reads (None for a built-in source); a
    hub dataset's is in its snapshot."""
    if source.startswith(BUILTIN_PREFIX):
        return None
    source = localize(source)
    adapted = parse_adapter(source)
    if adapted is None:
        return Path(source)
    from pathunlearn.data.adapters import split_location

    return Path(split_location(adapted[0], adapted[1])[0])


# ---------------------------------------------------------------------------- probes, cells


PROBE_SET_DEFAULTS = {"continuation": None}
"""Probe-set fields added with choice probes (issue 27), left out of the probes' identity at
these values, so every cell and matched-start model of an earlier run keeps its key (as
:data:`CHAT_STAGE_DEFAULTS` does for stages); any other value is in it."""


def probes_key(cfg: ExperimentConfig, resolved: list[dict]) -> str:
    """The whole ``probes`` section (sources as keys hold them) and the resolved probe sets
    (``resolved``: each set's JSON, :meth:`pathunlearn.eval.probes.ProbeSet.to_json`, every
    row): what every cell and matched-start model measures with. The section counts beside
    the rows: ``probes.examples`` also sizes the step-0 saturation diagnostics."""
    keyed = functools.cache(keyed_source)  # a set's source is in the section and its rows
    section = cfg.probes.model_dump(mode="json")
    if section["precision"] == "fp32":  # (keys from before the option stay as they were)
        del section["precision"]
    for entry in section["sets"]:
        for field, default in PROBE_SET_DEFAULTS.items():  # a set keys as it always did
            if entry[field] == default:
                del entry[field]
        entry["source"] = keyed(entry["source"])
        if isinstance(entry["targets"], str):
            entry["targets"] = keyed(entry["targets"])
    rows = [{**p, "source": keyed(p["source"])} for p in resolved]
    return stable_hash("probes", section, rows)


def matched_key(cfg: ExperimentConfig, parent_key: str | None, seed: int,
                others: tuple[str, ...], probes: str) -> str:
    """The matched-start model of one forget-last path: the leaf's parent, the training seed,
    the forget stage, the whole ``controls.matched_start`` section, the models whose level it
    matches and the probe sets (``probes``: :func:`probes_key`; the metric is one)."""
    control = cfg.controls.matched_start
    assert control is not None, "matched_key without controls.matched_start"
    return stable_hash("matched_start", KEY_FORMAT, parent_key, seed,
                       stage_identity(cfg, cfg.paths.forget_stage),
                       control.model_dump(mode="json"), others, probes)


def cell_common(cfg: ExperimentConfig, probes: str) -> dict:
    """What every cell of ``cfg`` hashes alike (computed once per plan): the whole ``model``,
    ``relearn`` and probe sets (``probes``: :func:`probes_key`), the stages named as retain
    data, and the math questions' source as keys hold it."""
    lmeval = cfg.unlearning.lmeval
    return {"format": [KEY_FORMAT, CELL_FORMAT], "model": cfg.model.model_dump(mode="json"),
            "relearn": cfg.relearn.model_dump(mode="json"), "probes": probes,
            "retain": [stage_identity(cfg, s) for s in cfg.unlearning.retain_stages],
            "math_source": keyed_source(cfg.unlearning.math.source),
            **({"lmeval_files": files_sha(lmeval.include_path)} if lmeval.tasks else {})}


def files_sha(directories: list[str]) -> str:
    """Hash of every file under ``directories`` (its path relative to its directory and its
    content): a local lm-eval task's YAML and data, so editing them keys the cells anew."""
    entries = []
    for d in directories:
        root = Path(d)
        for f in sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []:
            entries.append([d, str(f.relative_to(root)), sha256_file(f)])
    return stable_hash(entries)


def unlearning_of(cfg: ExperimentConfig, method: MethodConfig, lr: float,
                  scheduler: str, math_source: str) -> dict[str, Any]:
    """The whole ``unlearning`` section as one cell runs it: its method, lr and scheduler in
    place of the lists it is one entry of (adding a method or a swept value keys no other
    cell anew), the math source as keys hold it."""
    u = cfg.unlearning.model_copy(update={"methods": [method], "lrs": None, "schedulers": None,
                                          "lr": lr, "scheduler": scheduler})
    section = u.model_dump(mode="json")
    section["math"]["source"] = math_source
    return section


def cell_key(cfg: ExperimentConfig, cell: KeyedCell, method_identity: dict,
             common: dict) -> str:
    """Hash of everything that determines a cell's results: its path model and the retrain
    model it is compared with (keys that hold every stage and setting above them), its
    identity (path, method label, seed, lr, scheduler, control), the method
    (``method_identity``: :func:`pathunlearn.methods.method_identity`, a user's file's hash),
    ``unlearning`` as it runs it (:func:`unlearning_of`) and ``common``
    (:func:`cell_common`)."""
    return stable_hash(cell.model_key, cell.retrain_key, cell.describe(), method_identity,
                       unlearning_of(cfg, cell.method, cell.lr, cell.scheduler,
                                     common["math_source"]), common)
