"""Hugging Face hub ids, offline-first: a model ``ORG/NAME[@REVISION]`` and a dataset
``hf:ORG/NAME[@REVISION][:SUBSET[:SPLIT]]`` resolved to a snapshot in the standard HF cache.

Resolution goes through ``huggingface_hub.snapshot_download`` as transformers' and datasets'
loaders do, so a model fetched by any HF tool is found here and the other way round. The
environment is read at each call (not at import, as ``huggingface_hub.constants`` does), so a
test or a caller may set it late:

- ``HF_HUB_CACHE`` (else ``HF_HOME/hub``, else ``~/.cache/huggingface/hub``): where snapshots
  live (``models--ORG--NAME/{refs/main, snapshots/<commit>/, blobs/}``);
- ``HF_HUB_OFFLINE=1``: nothing is downloaded; a revision is found from ``refs/`` (or is a
  commit hash) and its ``snapshots/<commit>/`` must exist;
- ``HF_TOKEN``: read by huggingface_hub itself for gated and private repos.

A :class:`Snapshot` carries the *resolved* commit hash: the base model's identity and the keys
of stage data hold it (:mod:`pathunlearn.plan`), so a new upstream revision never reuses results
trained from an old one. Within one process a revision is resolved once, so the plan's key and
the weights loaded later name the same commit.

Each way resolution can fail is its own one-line :class:`~pathunlearn.errors.UserError`: not in
the cache while offline, gated, no such repo or revision, the hub unreachable, and (for
:func:`model_ref`) a local-looking path that does not exist.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path

from pathunlearn.errors import ConfigError, UserError, one_line

DATASET_PREFIX = "hf:"
HUB_URL = "https://huggingface.co"
DATA_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet")
"""The data files a dataset snapshot is searched for (the formats :mod:`pathunlearn.data.io`
reads)."""
MODEL_FILES = ("*.json", "*.safetensors", "*.model", "*.txt", "*.jinja")
"""What a model snapshot downloads: configs, safetensors weights and tokenizer files; never a
repo's pickle, ONNX or GGUF variants (pathunlearn does not load them)."""
_TRUE = {"1", "ON", "YES", "TRUE"}


@dataclass(frozen=True)
class HubRef:
    """A repository on the hub, as the user named it."""

    repo_id: str
    """``ORG/NAME``."""
    revision: str | None = None
    """A branch, tag or commit hash; None: the default branch (``main``)."""
    kind: str = "model"
    """``model`` or ``dataset`` (huggingface_hub's ``repo_type``)."""

    @property
    def label(self) -> str:
        return f"{self.repo_id}@{self.revision}" if self.revision else self.repo_id

    @property
    def url(self) -> str:
        return f"{HUB_URL}/{'datasets/' if self.kind == 'dataset' else ''}{self.repo_id}"

    @property
    def fetch_command(self) -> str:
        name = self.label if self.kind == "model" else DATASET_PREFIX + self.label
        return f"pathunlearn {'model' if self.kind == 'model' else 'data'} fetch {name}"


@dataclass(frozen=True)
class Snapshot:
    """A resolved revision of a repository: its local directory and commit hash."""

    ref: HubRef
    path: Path
    commit: str

    @property
    def identity(self) -> dict:
        """What keys hold of it: the repository and the commit (never the local path)."""
        return {"repo": self.ref.repo_id, "kind": self.ref.kind, "commit": self.commit}


def cache_dir() -> Path:
    """The HF hub cache as huggingface_hub computes it, from the environment at call time."""
    if os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE"):
        value = os.environ.get("HF_HUB_CACHE") or os.environ["HUGGINGFACE_HUB_CACHE"]
        return Path(os.path.expandvars(value)).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache")),
        "huggingface")
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def offline() -> bool:
    """``HF_HUB_OFFLINE`` (or transformers' ``TRANSFORMERS_OFFLINE``) is set to a true value."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.upper() in _TRUE


# ---------------------------------------------------------------------------- naming


def split_revision(text: str) -> tuple[str, str | None]:
    """``ORG/NAME@REV`` -> (``ORG/NAME``, ``REV``); no ``@``: (text, None)."""
    repo, sep, revision = text.partition("@")
    return repo, (revision or None) if sep else None


def is_repo_id(text: str) -> bool:
    """Whether ``text`` is a valid ``ORG/NAME`` (the hub's rules: one slash, letters, digits,
    ``-_.``, no ``--`` or ``..``, at most 96 characters each side)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if text.count("/") != 1:
        return False
    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


def looks_local(text: str) -> bool:
    """A path the user means as local: it starts with ``./ ../ / ~``, has more than one slash,
    or its first part exists here (``runs/model`` where ``runs/`` exists). transformers, too,
    takes an existing directory before a hub id."""
    if text.startswith(("./", "../", "/", "~", ".\\", "..\\")) or text in (".", ".."):
        return True
    repo, _ = split_revision(text)
    if repo.count("/") > 1 or "\\" in repo:
        return True
    head = repo.split("/", 1)[0]
    return bool(head) and "/" in repo and Path(head).exists()


def model_ref(path: str) -> HubRef | None:
    """The hub repository ``model.path`` names, or None for a local path that exists (a
    directory or a GGUF file). A path that is neither is a UserError: ``./foo: no such local
    directory`` when it looks local (:func:`looks_local`), else it is not a valid hub id."""
    if Path(path).expanduser().exists():
        return None
    if path.endswith(".gguf"):
        return None  # a GGUF file is always local (models.model_location says it is missing)
    repo, revision = split_revision(path)
    if looks_local(path):
        raise UserError(f"{path}: no such local directory")
    if not is_repo_id(repo):
        raise UserError(f"{path}: no such local directory, and not a hub id (ORG/NAME or "
                        "ORG/NAME@REVISION)")
    return HubRef(repo, revision, "model")


def model_snapshot(path: str, gguf_file: str | None = None) -> Snapshot | None:
    """The snapshot ``model.path`` resolves to when it is a hub id (None: a local path); its
    configs, safetensors and tokenizer files (:data:`MODEL_FILES`) and ``gguf_file``. A
    ConfigError prefixed ``model.path:`` when it cannot be resolved."""
    try:
        ref = model_ref(path)
        files = MODEL_FILES + ((gguf_file,) if gguf_file else ())
        return None if ref is None else resolve(ref, files)
    except UserError as e:
        raise ConfigError(f"model.path: {e}") from None


def dataset_ref(spec: str) -> tuple[HubRef, str | None, str | None]:
    """``hf:ORG/NAME[@REV][:SUBSET[:SPLIT]]`` -> (the dataset repository, subset, split)."""
    body = spec.removeprefix(DATASET_PREFIX)
    name, _, rest = body.partition(":")
    subset, _, split = rest.partition(":")
    repo, revision = split_revision(name)
    if not is_repo_id(repo):
        raise UserError(f"{spec}: not a hub dataset id (hf:ORG/NAME[@REVISION][:SUBSET[:SPLIT]])")
    if ":" in split:
        raise UserError(f"{spec}: too many parts (hf:ORG/NAME[@REVISION][:SUBSET[:SPLIT]])")
    return HubRef(repo, revision, "dataset"), subset or None, split or None


# ---------------------------------------------------------------------------- resolving


def resolve(ref: HubRef, allow_patterns: tuple[str, ...] | None = None) -> Snapshot:
    """The snapshot of ``ref`` in the HF cache, downloaded first when it is missing and the
    hub may be reached (as ``from_pretrained`` does); the hub is asked once per process for a
    given cache. Offline, the cache's ``refs/`` are read at every call (no network: cheap)."""
    cache = str(cache_dir().absolute())
    if offline():
        return _snapshot(ref, allow_patterns, cache, local_only=True)
    return _resolve(ref, allow_patterns, cache)


def cached(ref: HubRef, allow_patterns: tuple[str, ...] | None = None) -> Snapshot | None:
    """The snapshot of ``ref`` when the cache holds it (never the network), else None."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:  # (an incomplete snapshot, huggingface_hub >= 2, is a LocalEntryNotFoundError too)
        path = Path(snapshot_download(ref.repo_id, repo_type=ref.kind, revision=ref.revision,
                                      cache_dir=str(cache_dir()), local_files_only=True,
                                      allow_patterns=_patterns(allow_patterns)))
    except LocalEntryNotFoundError:
        return None
    except Exception as e:
        raise _error(ref, e) from None
    return Snapshot(ref, path, path.name)


def fetch(ref: HubRef, allow_patterns: tuple[str, ...] | None = None,
          download=None) -> tuple[Snapshot, bool]:
    """(snapshot, whether the cache held that commit already): ``pathunlearn model fetch`` /
    ``data fetch``. Online the hub is asked for the revision's commit (a branch may have
    moved) and what is missing is downloaded; offline the cache must hold it. ``download``
    stands in for ``huggingface_hub.snapshot_download`` (tests)."""
    before = cached(ref, allow_patterns)
    if offline():
        if before is None:
            raise _missing(ref)
        return before, True
    after = _snapshot(ref, allow_patterns, str(cache_dir()), local_only=False, download=download)
    return after, before is not None and before.commit == after.commit


def fetch_model(model_id: str, download=None) -> str:
    """``pathunlearn model fetch ORG/NAME[@REV]``: the model's configs, safetensors and
    tokenizer in the HF cache; the line saying where and at which commit."""
    repo, revision = split_revision(model_id)
    if not is_repo_id(repo):
        raise UserError(f"{model_id}: not a hub id (ORG/NAME or ORG/NAME@REVISION)")
    return fetch_line(*fetch(HubRef(repo, revision, "model"), MODEL_FILES, download))


def fetch_dataset(spec: str, download=None) -> str:
    """``pathunlearn data fetch hf:ORG/NAME[@REV][:SUBSET[:SPLIT]]`` (``hf:`` may be left
    out): the dataset's files (a subset's, when named) in the HF cache; the line saying where
    and at which commit, and the file a subset and split name."""
    spec = spec if spec.startswith(DATASET_PREFIX) else DATASET_PREFIX + spec
    ref, subset, split = dataset_ref(spec)
    snapshot, was_cached = fetch(ref, dataset_patterns(subset), download)
    line = fetch_line(snapshot, was_cached)
    if subset is not None:
        line += f"; {spec}: {locate(snapshot, subset, split, spec)}"
    return line


def fetch_line(snapshot: Snapshot, was_cached: bool) -> str:
    if was_cached:
        return f"{snapshot.ref.label}: already in the cache at {snapshot.commit} ({snapshot.path})"
    return f"{snapshot.ref.label}: downloaded {snapshot.commit} into {snapshot.path}"


@functools.lru_cache(maxsize=64)
def _resolve(ref: HubRef, allow_patterns: tuple[str, ...] | None, cache: str) -> Snapshot:
    # memoised: the hub is asked once per process, and the commit the plan keys on is the
    # commit the weights are loaded from even if `main` moves meanwhile
    return _snapshot(ref, allow_patterns, cache, local_only=False)


def _patterns(allow_patterns: tuple[str, ...] | None) -> list[str] | None:
    return list(allow_patterns) if allow_patterns else None


def _snapshot(ref: HubRef, allow_patterns: tuple[str, ...] | None, cache: str,
              local_only: bool, download=None) -> Snapshot:
    """``snapshot_download`` (or ``download``) of ``ref``; any failure is one UserError."""
    if download is None:
        from huggingface_hub import snapshot_download as download
    try:
        path = Path(download(ref.repo_id, repo_type=ref.kind, revision=ref.revision,
                             cache_dir=cache, local_files_only=local_only,
                             allow_patterns=_patterns(allow_patterns)))
    except Exception as e:
        raise _error(ref, e) from None
    return Snapshot(ref, path, path.name)


def _missing(ref: HubRef) -> UserError:
    """Not in the cache: offline, or the hub could not be reached."""
    if offline():
        return UserError(f"{ref.label}: not in the local cache and HF_HUB_OFFLINE is set "
                         f"(run `{ref.fetch_command}` on a machine with network)")
    return UserError(f"{ref.label}: not in the local cache ({cache_dir()}) and the hub "
                     f"cannot be reached; check the network, or run `{ref.fetch_command}` "
                     "where there is one")


def _error(ref: HubRef, e: Exception) -> UserError:
    """The one line for a failed resolution of ``ref``; an error of no known kind is raised
    as it is (a bug, or something this module should learn to say)."""
    from huggingface_hub import errors
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    incomplete = getattr(errors, "IncompleteSnapshotError", ())  # huggingface_hub >= 2

    what = "model" if ref.kind == "model" else "dataset"
    if isinstance(e, GatedRepoError):  # before RepositoryNotFoundError: it is a subclass
        return UserError(f"{ref.label}: gated: set HF_TOKEN (and accept the terms at {ref.url})")
    if isinstance(e, RepositoryNotFoundError):
        return UserError(f"{ref.label}: no such {what} on the Hugging Face hub (a private one "
                         "needs HF_TOKEN)")
    if isinstance(e, RevisionNotFoundError):
        return UserError(f"{ref.label}: {ref.repo_id} has no revision {ref.revision!r}")
    if isinstance(e, HFValidationError):
        return UserError(f"{ref.label}: not a hub id ({one_line(e, first=True)})")
    if isinstance(e, incomplete):
        return UserError(f"{ref.label}: its snapshot in the cache is incomplete and the hub "
                         f"cannot be asked (run `{ref.fetch_command}` with network)")
    if isinstance(e, LocalEntryNotFoundError):
        return _missing(ref)
    if isinstance(e, HfHubHTTPError):
        return UserError(f"{ref.label}: the hub refused it: {one_line(e, first=True)}")
    if isinstance(e, OSError):
        return UserError(f"{ref.label}: cannot write the cache {cache_dir()}: "
                         f"{e.strerror or one_line(e, first=True)}")
    raise e


# ---------------------------------------------------------------------------- datasets


def dataset_patterns(subset: str | None) -> tuple[str, ...] | None:
    """The files of a subset (all files: None): ``SUBSET/...``, ``SUBSET.*`` at the root,
    and ``data/...`` (the hub's layout of a dataset without subsets)."""
    if subset is None:
        return None
    return (f"{subset}/*", f"{subset}.*", "data/*", "*.md")


def resolve_dataset(spec: str) -> Path:
    """The local path ``hf:ORG/NAME[@REV][:SUBSET[:SPLIT]]`` names, in its snapshot: without
    a subset, the snapshot's directory (a release an adapter reads whole: ``tofu:``,
    ``sorry-bench:``); with one, the data file of that subset and split (see
    :func:`locate`)."""
    return dataset_snapshot(spec)[1]


def dataset_snapshot(spec: str) -> tuple[Snapshot, Path]:
    """(the snapshot, the path in it) of a ``hf:`` source."""
    ref, subset, split = dataset_ref(spec)
    snapshot = resolve(ref, dataset_patterns(subset))
    return snapshot, locate(snapshot, subset, split, spec)


def locate(snapshot: Snapshot, subset: str | None, split: str | None, spec: str) -> Path:
    """The file of ``subset`` / ``split`` in a dataset snapshot, in the hub's layouts:

    - ``SUBSET/SPLIT-00000-of-00001.parquet`` (or ``SUBSET/SPLIT.jsonl``, ``SUBSET/SPLIT/*``),
      e.g. ``openai/gsm8k``: ``main/test-00000-of-00001.parquet``;
    - ``data/SPLIT-*.parquet`` for a dataset without subsets (subset ``default``);
    - ``SUBSET.json`` / ``.jsonl`` / ``.parquet`` / ``.csv`` at the root, one file per subset,
      e.g. ``locuslab/TOFU``: ``full.json``, ``forget10_perturbed.json``.

    No split: ``train`` when the subset has it, else its only split. A split in several shards
    is an error (one file is read)."""
    root = snapshot.path
    if subset is None:
        return root
    where = f"{spec}: {snapshot.ref.label} at {snapshot.commit[:10]}"
    if subset == "default" and not (root / subset).is_dir() and (root / "data").is_dir():
        folder = root / "data"
    elif (root / subset).is_dir():
        folder = root / subset
    else:
        files = [root / f"{subset}{suffix}" for suffix in DATA_SUFFIXES
                 if (root / f"{subset}{suffix}").is_file()]
        if not files:
            raise UserError(f"{where}: no subset {subset!r} (it has "
                            f"{', '.join(subsets(root)) or 'no data files'})")
        if split not in (None, "train"):
            raise UserError(f"{where}: subset {subset!r} is one file ({files[0].name}) with "
                            f"only a train split, not {split!r}")
        return files[0]
    splits = _splits(folder)
    if split is None:
        if "train" in splits or len(splits) == 1:
            split = "train" if "train" in splits else next(iter(splits))
        else:
            raise UserError(f"{where}: subset {subset!r} has splits {', '.join(splits) or 'none'}"
                            f"; name one: hf:{snapshot.ref.label}:{subset}:SPLIT")
    if split not in splits:
        raise UserError(f"{where}: subset {subset!r} has no split {split!r} (it has "
                        f"{', '.join(splits) or 'no data files'})")
    files = splits[split]
    if len(files) > 1:
        raise UserError(f"{where}: split {split!r} of {subset!r} is {len(files)} shards; "
                        "pathunlearn reads one file per split")
    return files[0]


def subsets(root: Path) -> list[str]:
    """The subsets a dataset snapshot has: its data folders and its root data files."""
    found = [p.name for p in sorted(root.iterdir()) if not p.name.startswith(".")
             and (p.is_dir() and p.name != "data" or p.suffix in DATA_SUFFIXES)]
    names = [p.removesuffix(Path(p).suffix) if Path(p).suffix in DATA_SUFFIXES else p
             for p in found]
    return list(dict.fromkeys(names + (["default"] if (root / "data").is_dir() else [])))


_SHARD = re.compile(r"^(?P<split>.+?)(-\d{5}-of-\d{5})?$")


def _splits(folder: Path) -> dict[str, list[Path]]:
    """Split name -> its files in a subset's folder (``test-00000-of-00001.parquet``,
    ``test.jsonl`` or ``test/0000.parquet``: the parquet branch's layout)."""
    splits: dict[str, list[Path]] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix in DATA_SUFFIXES:
            splits.setdefault(_SHARD.match(p.stem)["split"], []).append(p)
        elif p.is_dir() and not p.name.startswith("."):
            files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix in DATA_SUFFIXES)
            if files:
                splits.setdefault(p.name, []).extend(files)
    return splits
