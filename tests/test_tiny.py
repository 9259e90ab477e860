"""The tiny preset: deterministic tokenizer and pretraining, cached, loadable by config."""

from __future__ import annotations

import copy
import json

import pytest

from pathunlearn.config import ModelConfig
from pathunlearn.files import is_done
from pathunlearn.models import load_model
from pathunlearn.tiny import TINY_RECIPE, tokenizer_corpus, train_tokenizer
from pathunlearn.train.pretrain import build_tiny, ensure_tiny


def test_tokenizer_training_is_deterministic(tiny_tokenizer):
    again = train_tokenizer(tokenizer_corpus(0), TINY_RECIPE["vocab_size"])
    assert again.backend_tokenizer.to_str() == tiny_tokenizer.backend_tokenizer.to_str()
    assert len(again) == TINY_RECIPE["vocab_size"]
    # the chat markers are single special tokens
    ids = again("<|im_start|>assistant\nHi<|im_end|>", add_special_tokens=False)["input_ids"]
    assert ids[0] == again.convert_tokens_to_ids("<|im_start|>")
    assert ids[-1] == again.eos_token_id == again.convert_tokens_to_ids("<|im_end|>")


def test_short_build_is_byte_identical_and_lowers_loss(tmp_path):
    recipe = copy.deepcopy(TINY_RECIPE)
    recipe["pretrain"]["epochs"] = 0.25  # ~10 steps: enough to compare bytes
    build_tiny(tmp_path / "a", recipe)
    build_tiny(tmp_path / "b", recipe)
    a = (tmp_path / "a" / "model.safetensors").read_bytes()
    b = (tmp_path / "b" / "model.safetensors").read_bytes()
    assert a == b
    info = json.loads((tmp_path / "a" / "recipe.json").read_text())
    assert info["last_loss"] < info["first_loss"] - 1.0


def test_cached_preset_is_pretrained_and_loads_from_config():
    directory = ensure_tiny(progress=False)
    assert is_done(directory)
    info = json.loads((directory / "recipe.json").read_text())
    assert info["last_loss"] < 0.3 * info["first_loss"]  # ln(1536) = 7.3 -> below ~2.2
    model, tok = load_model(ModelConfig())
    assert model.config.hidden_size == 128 and tok.chat_template
    assert ensure_tiny(progress=False) == directory  # cached: same directory, no rebuild


def test_tokenizer_corpus_ignores_sources_added_after_the_preset():
    # adding builtin:rcu (issue 8) must not change the preset: its cache key hashes this corpus
    from pathunlearn.tiny import TOKENIZER_SOURCES

    assert "rcu" not in TOKENIZER_SOURCES
    assert not any("[component A]" in text for text in tokenizer_corpus(0))


def test_pretrain_epochs_override_is_part_of_the_key(monkeypatch):
    from pathunlearn.errors import ConfigError
    from pathunlearn.tiny import EPOCHS_ENV, tiny_key, tiny_recipe

    monkeypatch.delenv(EPOCHS_ENV, raising=False)
    assert tiny_recipe() is TINY_RECIPE
    full = tiny_key()
    monkeypatch.setenv(EPOCHS_ENV, "2")
    assert tiny_recipe()["pretrain"]["epochs"] == 2 and TINY_RECIPE["pretrain"]["epochs"] == 12
    assert tiny_key() != full
    for bad in ("0", "-1", "many", "inf", "nan"):
        monkeypatch.setenv(EPOCHS_ENV, bad)
        with pytest.raises(ConfigError, match=EPOCHS_ENV):
            tiny_recipe()


@pytest.mark.slow
def test_real_preset_answers_arithmetic_above_the_shuffled_baseline(monkeypatch):
    """Issue 6: after the demo's arithmetic stage the tiny preset answers the built-in test
    problems measurably above the shuffled-answer baseline (measured: 13.3% greedy vs 2.0%)."""
    import torch

    from pathunlearn.config import builtin_config_path, load_config
    from pathunlearn.data.sources import load_source
    from pathunlearn.eval.math import evaluate_math
    from pathunlearn.models import load_pretrained
    from pathunlearn.tiny import EPOCHS_ENV
    from pathunlearn.train.staged import train_stage
    from pathunlearn.train.unlearn import encode_stage

    monkeypatch.delenv(EPOCHS_ENV, raising=False)  # the real preset (shipped)
    cfg = load_config(builtin_config_path("demo"))
    model, tok = load_pretrained(ensure_tiny(progress=False))
    torch.manual_seed(0)
    train_stage(model, encode_stage(cfg, tok, "arithmetic"), cfg.training,
                epochs=cfg.stages["arithmetic"].epochs, seed=0, pad_id=tok.pad_token_id)
    test = load_source("builtin:arithmetic:test")
    result = evaluate_math(model, tok, test, greedy=True, prompt_style="plain",
                           max_new_tokens=cfg.unlearning.math.max_new_tokens)
    assert result.num_questions == 60
    assert result.accuracy >= 0.08 and result.accuracy >= 3 * result.shuffled_accuracy, (
        result.accuracy, result.shuffled_accuracy)


def test_loading_never_builds_and_model_build_does(tmp_path, monkeypatch, cli):
    """Issue 12: a missing preset is a one-line error naming the command that builds it;
    `pathunlearn model build` builds it, and then it loads."""
    from pathunlearn.errors import UserError
    from pathunlearn.tiny import EPOCHS_ENV, tiny_dir

    monkeypatch.setenv("PATHUNLEARN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(EPOCHS_ENV, "0.25")  # ~10 steps: a build in seconds
    with pytest.raises(UserError, match="pathunlearn model build"):
        load_model(ModelConfig())
    assert not (tmp_path / "cache").exists()  # loading built nothing
    info = cli("model", "info")
    assert info.code == 2 and len(info.err.strip().splitlines()) == 1
    assert "not built yet" in info.err
    built = cli("model", "build")
    assert built.code == 0, built.err
    assert is_done(tiny_dir()) and str(tiny_dir()) in "".join(built.out.split())
    model, _ = load_model(ModelConfig())
    assert model.config.hidden_size == 128


def test_the_package_ships_the_default_preset(monkeypatch):
    """Issue 16: the default recipe's preset is package data, found without building."""
    import json

    from pathunlearn.tiny import EPOCHS_ENV, packaged_dir, tiny_location

    monkeypatch.delenv(EPOCHS_ENV, raising=False)
    shipped = packaged_dir()
    assert tiny_location() == shipped and is_done(shipped)
    assert json.loads((shipped / "recipe.json").read_text())["recipe"] == TINY_RECIPE
    monkeypatch.setenv(EPOCHS_ENV, "3")  # another recipe is not shipped: built and cached
    assert not is_done(packaged_dir())


@pytest.mark.slow
def test_rebuilding_the_shipped_preset_is_byte_identical(tmp_path, monkeypatch):
    """The shipped weights are what `build_tiny` makes of the recipe (~1.5 min on 2 cores; the
    shipped copy was built on an x86-64 CPU with torch 2.13 and 2 torch threads: another CPU,
    torch or thread count rounds differently; the suite's workers run 1 thread, so the test
    sets 2)."""
    import torch

    from pathunlearn.tiny import EPOCHS_ENV, packaged_dir
    from pathunlearn.train.pretrain import build_tiny

    monkeypatch.delenv(EPOCHS_ENV, raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        built = build_tiny(tmp_path / "tiny", TINY_RECIPE)
    finally:
        torch.set_num_threads(threads)
    for name in ("model.safetensors", "tokenizer.json", "config.json", "tokenizer_config.json"):
        assert (built / name).read_bytes() == (packaged_dir() / name).read_bytes(), name
