"""Hub ids, offline-first (pathunlearn.hub): a model ``ORG/NAME[@REV]`` and ``hf:`` data
sources resolved from a cache laid out exactly as the hub's (``models--ORG--NAME/refs/main``
holding the commit, ``snapshots/<commit>/`` with the files, as links into ``blobs/`` or as plain
files: both occur), with ``HF_HUB_OFFLINE=1``. Nothing here touches the network: where the hub
would answer (a download, a gated repo) huggingface_hub's download function is replaced by one
that does what the hub's would (writes the cache layout, or raises the error the hub's own
response handler makes of the hub's answer)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from pathunlearn import hub
from pathunlearn.config import ModelConfig, load_config, validate_config
from pathunlearn.data.samples import write_release_samples
from pathunlearn.data.sources import load_source
from pathunlearn.errors import UserError
from pathunlearn.files import is_done
from pathunlearn.keys import root_key, stage_identity
from pathunlearn.models import check_model_files, model_location
from pathunlearn.plan import plan_run
from pathunlearn.rundir import unit_dir
from pathunlearn.tiny import tiny_dir

REV_A = "a" * 40
REV_B = "b" * 40
MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
               "tokenizer_config.json", "chat_template.jinja")


def add_snapshot(cache: Path, repo: str, files: dict[str, bytes], commit: str,
                 refs: tuple[str, ...] = ("main",), kind: str = "model",
                 links: bool = True) -> Path:
    """Lay ``files`` out as the hub's cache does: ``<kind>s--ORG--NAME/snapshots/<commit>/``,
    each file a relative link to ``blobs/<sha256>`` (``links``) or a plain file, and each ref
    a file holding the commit (no trailing newline, as huggingface_hub writes it)."""
    top = cache / f"{kind}s--{repo.replace('/', '--')}"
    snapshot = top / "snapshots" / commit
    for name, data in files.items():
        target = snapshot / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if links:
            blob = top / "blobs" / hashlib.sha256(data).hexdigest()
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(data)
            target.symlink_to(Path("../" * (len(Path(name).parts) + 1), "blobs", blob.name))
        else:
            target.write_bytes(data)
    for ref in refs:
        (top / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (top / "refs" / ref).write_text(commit)
    return snapshot


def tiny_files() -> dict[str, bytes]:
    """The shipped tiny preset's files: a real Hugging Face model directory."""
    return {name: (tiny_dir() / name).read_bytes() for name in MODEL_FILES
            if (tiny_dir() / name).is_file()}


def release_files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty hub cache in HF_HUB_CACHE, offline."""
    directory = tmp_path / "hf-cache"
    directory.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(directory))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return directory


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    """The release samples (TOFU directory, SORRY-BENCH directory, GSM8K's hub parquet)."""
    return write_release_samples(tmp_path_factory.mktemp("releases"), 8)


def hub_error(status: int, code: str, url: str):
    """The exception huggingface_hub raises for the hub's answer ``status`` with header
    ``X-Error-Code: code`` (made by its own response handler, not by hand)."""
    import httpx2
    from huggingface_hub.utils import hf_raise_for_status

    response = httpx2.Response(status, headers={"X-Error-Code": code},
                               request=httpx2.Request("GET", url))
    try:
        hf_raise_for_status(response)
    except Exception as e:
        return e
    raise AssertionError("hf_raise_for_status raised nothing")


# ---------------------------------------------------------------------------- naming


@pytest.mark.parametrize("text,expected", [
    ("HuggingFaceTB/SmolLM2-135M-Instruct", ("HuggingFaceTB/SmolLM2-135M-Instruct", None)),
    ("acme/tiny@v1.0", ("acme/tiny", "v1.0")),
    ("acme/tiny@refs/pr/1", ("acme/tiny", "refs/pr/1")),
])
def test_hub_ids_are_parsed_with_their_revision(text, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ref = hub.model_ref(text)
    assert (ref.repo_id, ref.revision, ref.kind) == (*expected, "model")


@pytest.mark.parametrize("text", ["./foo", "../foo", "/no/such/dir", "~/nosuch-model",
                                  "a/b/c", "runs/model"])
def test_a_local_looking_path_that_does_not_exist_is_no_such_local_directory(
        text, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()  # `runs/model`: its first part exists, so it is meant as local
    with pytest.raises(UserError, match=r"^" + text.replace(".", r"\.") +
                       ": no such local directory$"):
        hub.model_ref(text)


def test_an_existing_local_directory_wins_over_a_hub_id(tmp_path, monkeypatch, cache):
    add_snapshot(cache, "acme/tiny", tiny_files(), REV_A)
    monkeypatch.chdir(tmp_path)
    local = tmp_path / "acme" / "tiny"
    shutil.copytree(tiny_dir(), local)
    assert hub.model_ref("acme/tiny") is None
    assert model_location(ModelConfig(path="acme/tiny")) == (Path("acme/tiny"), None)


def test_setting_path_clears_the_preset_in_a_file_and_as_an_override():
    assert ModelConfig(path="acme/tiny").preset is None
    assert ModelConfig(preset="tiny", path="acme/tiny").preset is None
    cfg = load_config(None, ["model.path=acme/tiny"])  # the demo config says `preset: tiny`
    assert (cfg.model.preset, cfg.model.path) == (None, "acme/tiny")
    with pytest.raises(ValidationError, match="give one of `preset` and `path`"):
        ModelConfig(preset=None)


@pytest.mark.parametrize("variable", ["HF_HUB_CACHE", "HF_HOME"])
def test_the_cache_follows_hf_hub_cache_and_hf_home(variable, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv(variable, str(tmp_path / "x"))
    assert hub.cache_dir() == tmp_path / "x" / ("hub" if variable == "HF_HOME" else "")


# ---------------------------------------------------------------------------- models


def small_config(tmp_path, model_path: str, **model):
    return validate_config({
        "name": "hub", "output_dir": str(tmp_path / "runs"), "seeds": [0],
        "model": {"path": model_path, **model},
        "stages": {"instructions": {"source": "builtin:instructions", "epochs": 2,
                                    "max_examples": 32},
                   "refusals": {"source": "builtin:refusals", "max_examples": 16}},
        "paths": {"forget_stage": "refusals", "orders": [["instructions", "refusals"]]},
        "training": {"lr": 3e-3, "batch_size": 8, "micro_batch_size": 8}})


def test_a_hub_model_from_the_cache_loads_and_trains(tmp_path, cache):
    # plain files in the snapshot (links into blobs/: the end-to-end run below)
    from pathunlearn.train.paths import train_paths

    snapshot = add_snapshot(cache, "acme/tiny", tiny_files(), REV_A, links=False)
    cfg = small_config(tmp_path, "acme/tiny")
    assert model_location(cfg.model) == (snapshot, None)
    plan = train_paths(cfg, log=lambda *_: None)
    assert plan.base["hub"] == {"repo": "acme/tiny", "kind": "model", "commit": REV_A}
    first = unit_dir(cfg.run_dir, plan.prefixes[0])
    assert is_done(first) and (first / "adapter" / "adapter_model.safetensors").is_file()
    rows = [json.loads(x) for x in (first / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["loss"] < rows[0]["loss"]
    saved = yaml.safe_load((first / "config.yaml").read_text())["model"]
    assert (saved["preset"], saved["path"]) == (None, "acme/tiny")
    # offline: nothing was downloaded or added to the cache
    assert sorted(p.name for p in (cache / "models--acme--tiny" / "snapshots").iterdir()) == [
        REV_A]


def test_a_revision_picks_its_snapshot(cache):
    a = add_snapshot(cache, "acme/tiny", tiny_files(), REV_A, refs=("main", "v1"))
    changed = {**tiny_files(), "generation_config.json": b'{"max_length": 7}\n'}
    b = add_snapshot(cache, "acme/tiny", changed, REV_B, refs=("v2",))
    assert model_location(ModelConfig(path="acme/tiny"))[0] == a
    assert model_location(ModelConfig(path="acme/tiny@v1"))[0] == a
    assert model_location(ModelConfig(path="acme/tiny@v2"))[0] == b
    assert model_location(ModelConfig(path=f"acme/tiny@{REV_B}"))[0] == b  # a commit hash


def test_the_resolved_commit_is_in_the_keys(tmp_path, cache):
    add_snapshot(cache, "acme/tiny", tiny_files(), REV_A)
    add_snapshot(cache, "acme/tiny", tiny_files(), REV_B, refs=("v2",))  # same files
    at_a = plan_run(small_config(tmp_path, "acme/tiny"), check=False)
    at_b = plan_run(small_config(tmp_path, "acme/tiny@v2"), check=False)
    assert at_a.base["hub"]["commit"] == REV_A and at_b.base["hub"]["commit"] == REV_B
    assert root_key(small_config(tmp_path, "acme/tiny"), at_a.base, 0) != root_key(
        small_config(tmp_path, "acme/tiny"), at_b.base, 0)
    assert not {p.key for p in at_a.prefixes} & {p.key for p in at_b.prefixes}
    # upstream moves `main` to a new commit with the same files: a new base, new keys
    (cache / "models--acme--tiny" / "refs" / "main").write_text(REV_B)
    moved = plan_run(small_config(tmp_path, "acme/tiny"), check=False)
    assert moved.base["hub"]["commit"] == REV_B
    assert not {p.key for p in at_a.prefixes} & {p.key for p in moved.prefixes}


def test_a_local_model_keeps_its_identity(tmp_path):
    # the hub's fields appear only for a hub id: a local directory's keys do not change
    local = tmp_path / "m"
    shutil.copytree(tiny_dir(), local)
    assert "hub" not in plan_run(small_config(tmp_path, str(local)), check=False).base


# ---------------------------------------------------------------------------- the messages


def check_lines(cli, *overrides):
    result = cli("config", "check", *overrides)
    assert result.code == 2 and "Traceback" not in result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    return lines[0]


def test_not_in_the_cache_while_offline_says_how_to_fetch(cli, cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = check_lines(cli, "model.path=acme/absent")
    assert line == ("error: model.path: acme/absent: not in the local cache and HF_HUB_OFFLINE "
                    "is set (run `pathunlearn model fetch acme/absent` on a machine with "
                    "network)")
    add_snapshot(cache, "acme/tiny", tiny_files(), REV_A)
    assert "acme/tiny@v9: not in the local cache" in check_lines(cli, "model.path=acme/tiny@v9")


def test_gated_repo_says_set_hf_token(cli, cache, tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    gated = hub_error(401, "GatedRepo", "https://huggingface.co/api/models/acme/gated/revision/main")
    assert type(gated).__name__ == "GatedRepoError"

    def snapshot_download(repo_id, **kwargs):
        raise gated

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    assert check_lines(cli, "model.path=acme/gated") == (
        "error: model.path: acme/gated: gated: set HF_TOKEN (and accept the terms at "
        "https://huggingface.co/acme/gated)")


def test_a_gated_dataset_names_its_dataset_page(cache, monkeypatch):
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE")
    gated = hub_error(403, "GatedRepo", "https://huggingface.co/api/datasets/sorry-bench/"
                                        "sorry-bench-202406/revision/main")

    def snapshot_download(repo_id, **kwargs):
        raise gated

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    with pytest.raises(UserError) as e:
        load_source("sorry-bench:hf:sorry-bench/sorry-bench-202406")
    assert str(e.value) == (
        "sorry-bench/sorry-bench-202406: gated: set HF_TOKEN (and accept the terms at "
        "https://huggingface.co/datasets/sorry-bench/sorry-bench-202406)")


def test_a_repo_or_revision_the_hub_does_not_have(cli, cache, tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    errors = {"acme/nosuch": hub_error(404, "RepoNotFound",
                                       "https://huggingface.co/api/models/acme/nosuch"),
              "acme/tiny": hub_error(404, "RevisionNotFound",
                                     "https://huggingface.co/api/models/acme/tiny/revision/v9")}

    def snapshot_download(repo_id, **kwargs):
        raise errors[repo_id]

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    assert check_lines(cli, "model.path=acme/nosuch") == (
        "error: model.path: acme/nosuch: no such model on the Hugging Face hub (a private one "
        "needs HF_TOKEN)")
    assert check_lines(cli, "model.path=acme/tiny@v9") == (
        "error: model.path: acme/tiny@v9: acme/tiny has no revision 'v9'")


def test_a_missing_local_directory_is_its_own_line(cli, cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert check_lines(cli, "model.path=./foo") == (
        "error: model.path: ./foo: no such local directory")


def test_a_snapshot_without_config_json_names_the_repo(cache):
    add_snapshot(cache, "acme/weights", {"model.safetensors": b"x"}, REV_A)
    assert check_model_files(ModelConfig(path="acme/weights")) == [
        f"model.path: acme/weights: its snapshot {cache}/models--acme--weights/snapshots/"
        f"{REV_A} has no config.json (not a transformers model)"]


# ---------------------------------------------------------------------------- fetch


def test_fetch_offline_reports_what_the_cache_holds(cli, cache):
    snapshot = add_snapshot(cache, "acme/tiny", tiny_files(), REV_A)
    result = cli("model", "fetch", "acme/tiny")
    assert result.code == 0
    assert result.out.strip() == f"acme/tiny: already in the cache at {REV_A} ({snapshot})"
    missing = cli("model", "fetch", "acme/absent")
    assert missing.code == 2 and "acme/absent: not in the local cache and HF_HUB_OFFLINE" \
        in missing.err
    assert "not a hub id" in cli("model", "fetch", "./tiny").err


def test_fetch_downloads_into_the_cache_and_then_finds_it(cache, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    calls = []

    def download(repo_id, *, repo_type, revision, cache_dir, local_files_only, allow_patterns):
        # what snapshot_download does online: resolve the revision, write refs/ and the
        # snapshot's files, return the snapshot's directory
        calls.append((repo_id, repo_type, revision, allow_patterns))
        return str(add_snapshot(Path(cache_dir), repo_id, tiny_files(), REV_B))

    line = hub.fetch_model("acme/tiny", download=download)
    snapshot = cache / "models--acme--tiny" / "snapshots" / REV_B
    assert line == f"acme/tiny: downloaded {REV_B} into {snapshot}"
    assert calls == [("acme/tiny", "model", None, list(hub.MODEL_FILES))]
    # the hub's answer is the commit the cache has: nothing new
    assert hub.fetch_model("acme/tiny", download=lambda *a, **k: str(snapshot)) == (
        f"acme/tiny: already in the cache at {REV_B} ({snapshot})")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # and a run offline finds it
    assert model_location(ModelConfig(path="acme/tiny"))[0] == snapshot


def test_data_fetch_names_the_file_of_a_subset(cli, cache, releases):
    snapshot = add_snapshot(cache, "openai/gsm8k",
                            release_files(releases["gsm8k_test_parquet"].parent.parent), REV_A,
                            kind="dataset")
    result = cli("data", "fetch", "hf:openai/gsm8k:main:test")
    assert result.code == 0, result.err
    assert result.out.strip() == (
        f"openai/gsm8k: already in the cache at {REV_A} ({snapshot}); hf:openai/gsm8k:main:"
        f"test: {snapshot}/main/test-00000-of-00001.parquet")


# ---------------------------------------------------------------------------- hf: sources


def test_hf_sources_load_from_the_snapshot(cache, releases):
    gsm8k_dir = releases["gsm8k_test_parquet"].parent.parent
    add_snapshot(cache, "openai/gsm8k", release_files(gsm8k_dir), REV_A, kind="dataset")
    test = load_source("gsm8k:hf:openai/gsm8k:main:test")
    local = load_source(f"gsm8k:{releases['gsm8k_test_parquet']}")
    assert [c.messages for c in test] == [c.messages for c in local] and test
    assert len(load_source("gsm8k:hf:openai/gsm8k:main")) == len(  # no split: train
        load_source(f"gsm8k:{releases['gsm8k_train_parquet']}"))
    chat = {"data/train-00000-of-00001.jsonl": b"".join(
        json.dumps({"messages": [{"role": "user", "content": f"q{i}"},
                                 {"role": "assistant", "content": f"a{i}"}]}).encode() + b"\n"
        for i in range(3))}
    add_snapshot(cache, "acme/chat", chat, REV_B, kind="dataset", links=False)
    assert [c.response for c in load_source("hf:acme/chat:default:train")] == ["a0", "a1", "a2"]


def test_release_adapters_read_the_snapshot_directory(cache, releases):
    add_snapshot(cache, "locuslab/TOFU", release_files(releases["tofu"]), REV_A, kind="dataset")
    add_snapshot(cache, "sorry-bench/sorry-bench-202406", release_files(releases["sorry_bench"]),
                 REV_B, kind="dataset")
    for subset in ("", ":full", ":forget10"):
        hub_rows = load_source(f"tofu:hf:locuslab/TOFU{subset}")
        local_rows = load_source(f"tofu:{releases['tofu']}{subset}")
        assert [c.messages for c in hub_rows] == [c.messages for c in local_rows] and hub_rows
    hub_rows = load_source("sorry-bench:hf:sorry-bench/sorry-bench-202406:test")
    local_rows = load_source(f"sorry-bench:{releases['sorry_bench']}:test")
    assert [c.messages for c in hub_rows] == [c.messages for c in local_rows] and hub_rows


def test_a_hub_dataset_commit_is_in_the_stage_key(tmp_path, cache, releases):
    files = release_files(releases["tofu"])
    add_snapshot(cache, "locuslab/TOFU", files, REV_A, kind="dataset")
    add_snapshot(cache, "locuslab/TOFU", files, REV_B, kind="dataset", refs=("v2",))

    def cfg(source):
        return validate_config({"stages": {"f": {"source": source}},
                                "paths": {"forget_stage": "f", "orders": [["f"]]},
                                "probes": {"defaults": False,
                                           "sets": [{"name": "p", "source": "stage:f"}]}})

    a, b = cfg("tofu:hf:locuslab/TOFU:full"), cfg("tofu:hf:locuslab/TOFU@v2:full")
    assert stage_identity(a, "f")["hub"] == {"repo": "locuslab/TOFU", "kind": "dataset",
                                             "commit": REV_A}
    assert stage_identity(b, "f")["hub"]["commit"] == REV_B
    assert plan_run(a, check=False).prefixes[0].key != plan_run(b, check=False).prefixes[0].key


@pytest.mark.parametrize("spec,message", [
    ("hf:acme/chat:nosuch", "hf:acme/chat:nosuch: acme/chat at bbbbbbbbbb: no subset 'nosuch' "
                            "(it has default)"),
    ("hf:acme/chat:default:dev", "no split 'dev' (it has train)"),
    ("hf:acme/chat", "hf:acme/chat: a whole dataset; name its subset and split "
                     "(hf:acme/chat:SUBSET[:SPLIT]; it has default)"),
    ("hf:acme", "hf:acme: not a hub dataset id"),
    ("hf:acme/absent", "acme/absent: not in the local cache and HF_HUB_OFFLINE is set (run "
                       "`pathunlearn data fetch hf:acme/absent` on a machine with network)"),
])
def test_bad_hf_sources_are_one_line(spec, message, cache):
    add_snapshot(cache, "acme/chat", {"data/train.jsonl": b'{"messages": []}\n'}, REV_B,
                 kind="dataset")
    with pytest.raises(UserError) as e:
        load_source(spec)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_run_end_to_end_on_a_hub_model(cli, tmp_path, cache, monkeypatch):
    # the issue's must-show: `model.path=acme/tiny` from a hub-layout cache, offline, through
    # `pathunlearn run` (train, unlearn, report) over a config that names the tiny preset
    add_snapshot(cache, "acme/tiny", tiny_files(), REV_A)
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump({
        "name": "hubrun", "output_dir": "runs", "seeds": [0], "model": {"preset": "tiny"},
        "stages": {"instructions": {"source": "builtin:instructions", "max_examples": 32},
                   "refusals": {"source": "builtin:refusals", "max_examples": 16}},
        "paths": {"forget_stage": "refusals", "order": ["instructions"], "positions": [1, 2]},
        "training": {"lr": 3e-3, "batch_size": 8, "micro_batch_size": 8},
        "unlearning": {"methods": [{"name": "ga"}], "steps": 2, "batch_size": 4,
                       "micro_batch_size": 4}}))
    result = cli("run", str(config), "model.path=acme/tiny")
    assert result.code == 0, result.err
    run = tmp_path / "runs" / "hubrun"
    plan = json.loads((run / "plan.json").read_text())
    assert plan["base"]["hub"] == {"repo": "acme/tiny", "kind": "model", "commit": REV_A}
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["path"] == "acme/tiny"
    results = json.loads((run / "results.json").read_text())
    assert results and (run / "report.html").is_file()
    assert len(list((run / "cells").rglob("summary.json"))) == 2  # one cell per path
