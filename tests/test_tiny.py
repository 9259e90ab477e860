"""The tiny preset: deterministic tokenizer and pretraining, cached, loadable by config."""

from __future__ import annotations

import copy
import json

from pathunlearn.config import ModelConfig
from pathunlearn.files import is_done
from pathunlearn.models import load_model
from pathunlearn.tiny import TINY_RECIPE, build_tiny, ensure_tiny, tokenizer_corpus, train_tokenizer


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
