"""Build the base model of a plan: the ``tiny`` preset is pretrained here, once, and cached.

The recipe, the tokenizer and the cache location are :mod:`pathunlearn.tiny`'s; this module is
the one step that trains it, run explicitly (``pathunlearn model build``) or as the root of a
plan (:func:`ensure_base`, called by ``pathunlearn run`` / ``train`` / ``unlearn`` before the
first stage). Loading a model never builds one.
"""

from __future__ import annotations

from pathlib import Path

from pathunlearn.config import ModelConfig, OptimConfig
from pathunlearn.data.batching import pack
from pathunlearn.data.chat import EncodedExample, tokenize_conversations
from pathunlearn.files import atomic_dir, is_done, write_json
from pathunlearn.rundir import METRICS
from pathunlearn.tiny import (
    TINY_RECIPE,
    init_model,
    tiny_dir,
    tiny_recipe,
    tokenizer_corpus,
    train_tokenizer,
)
from pathunlearn.train.staged import train_stage


def build_tiny(out_dir: Path, recipe: dict = TINY_RECIPE, progress: bool = False) -> Path:
    """Train the tokenizer, initialise and pretrain the model, save it atomically."""
    from transformers.utils import logging as hf_logging

    from pathunlearn.data.sources import load_source

    hf_logging.disable_progress_bar()  # a "writing shards" bar after the pretraining bar
    tokenizer = train_tokenizer(tokenizer_corpus(recipe["data_seed"]), recipe["vocab_size"])
    model = init_model(tokenizer, recipe)
    pre = recipe["pretrain"]
    conversations = load_source(pre["source"], seed=recipe["data_seed"])
    encoded, _ = tokenize_conversations(tokenizer, conversations, pre["row_length"])
    examples = pack([EncodedExample(e.input_ids, e.input_ids) for e in encoded], pre["row_length"])
    with atomic_dir(out_dir) as tmp:
        result = train_stage(model, examples, OptimConfig(**pre["optim"]), epochs=pre["epochs"],
                             seed=recipe["init_seed"], pad_id=tokenizer.pad_token_id,
                             stage="pretrain", metrics_path=tmp / METRICS,
                             progress=progress)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "recipe.json", {"recipe": recipe, "first_loss": result.first_loss,
                                         "last_loss": result.last_loss, "steps": result.steps,
                                         "seconds": result.seconds})
    return out_dir


def ensure_tiny(progress: bool = True, log=None) -> Path:
    """The directory of the cached tiny preset, building it first when missing."""
    recipe = tiny_recipe()
    out = tiny_dir(recipe)
    if not is_done(out):
        if log is not None:
            log(f"building the tiny preset (once, ~3.5 min on 2 cores) in {out}")
        build_tiny(out, recipe, progress=progress)
    return out


def ensure_base(model: ModelConfig, *, progress: bool = False, log=None) -> None:
    """Build the config's base model when it is a preset that is built locally and missing
    (``tiny``); local checkpoints and ``smollm2`` need nothing built."""
    if model.preset == "tiny":
        ensure_tiny(progress=progress, log=log)
