"""The built-in ``tiny`` model: a ~1M-parameter Llama with a locally trained byte-level BPE.

This module holds the recipe, the cache location and the pieces the build is made of (the
tokenizer, the initialised model); the build itself, which trains, is
:func:`pathunlearn.train.pretrain.build_tiny`, run by an explicit step: ``pathunlearn model
build``, or the first step of ``pathunlearn run`` / ``train`` (the root of the plan). Loading
the preset (:func:`tiny_location`) never trains.

The package ships the preset of the recipe below, built once (``pathunlearn/presets/
tiny-<key>/``, 4 MB); any other recipe (``$PATHUNLEARN_TINY_PRETRAIN_EPOCHS``, a changed recipe
or suite) is built once and cached (``$PATHUNLEARN_CACHE``, default ``~/.cache/pathunlearn``)
under a key that hashes the recipe and the text of the built-in sources in TOKENIZER_SOURCES,
so a change to either builds a new one. Building is deterministic: tokenizer trained on the suite's
text, weights initialised from a fixed seed, then a full-weight pretraining on
``builtin:general`` (chat-formatted text of the same kinds as the stages, with different facts;
12 epochs, ~3 min on 2 CPU cores). Without that pretraining, later stages overwrite earlier ones
entirely and path comparisons mean nothing; with less of it the model cannot answer a word
problem (see TINY_RECIPE).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
from pathlib import Path

import torch

from pathunlearn.errors import ConfigError, UserError
from pathunlearn.files import is_done

CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

# Everything that determines the preset; part of its cache key.
TINY_RECIPE = {
    "version": 2,
    "vocab_size": 1536,
    "architecture": {"hidden_size": 128, "intermediate_size": 352, "num_hidden_layers": 4,
                     "num_attention_heads": 4, "num_key_value_heads": 4,
                     "max_position_embeddings": 512, "rope_theta": 10000.0,
                     "tie_word_embeddings": True},
    "init_seed": 0,
    "data_seed": 0,
    # Packed rows of `row_length` tokens, loss on every token (plain LM pretraining). 12 epochs
    # (672 steps, ~3 min on 2 cores), not fewer: the model learns to copy numbers from the
    # question into its solution only late (after 4 or 8 epochs it copied 14-44 of 120
    # operands of built-in arithmetic test problems, after 12 epochs 118), and without copying
    # it cannot answer any word problem.
    "pretrain": {"source": "builtin:general", "epochs": 12, "row_length": 128,
                 "optim": {"lr": 3e-3, "batch_size": 16, "micro_batch_size": 16,
                           "scheduler": "cosine", "warmup": 0.05, "grad_clip": 1.0,
                           "weight_decay": 0.0}},
}


# The built-in sources the tokenizer is trained on (and whose text the cache key hashes). Kept
# out of TINY_RECIPE, whose dict is hashed as is: a source added to the suite later (e.g.
# ``rcu``, issue 8) must not change the preset, so it is not listed here.
TOKENIZER_SOURCES: tuple[str, ...] = ("instructions", "authors", "arithmetic", "refusals",
                                      "refusal-paraphrases", "general")


EPOCHS_ENV = "PATHUNLEARN_TINY_PRETRAIN_EPOCHS"


def tiny_recipe() -> dict:
    """TINY_RECIPE, with its pretraining epochs replaced by ``$PATHUNLEARN_TINY_PRETRAIN_EPOCHS``
    when set (e.g. ``1`` for a model built in ~20 s that has the preset's shape and tokenizer
    but not its skills: the test suite uses it to test mechanics). The override is part of
    the recipe and so of the cache key: the two builds never share a directory."""
    value = os.environ.get(EPOCHS_ENV)
    if not value:
        return TINY_RECIPE
    try:
        epochs = float(value)
    except ValueError:
        epochs = -1.0
    if not 0 < epochs < 1000:
        raise ConfigError(f"${EPOCHS_ENV} must be a number of epochs in (0, 1000), got "
                          f"{value!r}")
    recipe = copy.deepcopy(TINY_RECIPE)
    recipe["pretrain"]["epochs"] = int(epochs) if epochs.is_integer() else epochs
    return recipe


def cache_root() -> Path:
    return Path(os.environ.get("PATHUNLEARN_CACHE", Path.home() / ".cache" / "pathunlearn"))


def tokenizer_corpus(seed: int) -> list[str]:
    """Texts the tokenizer is trained on: every message of every split of TOKENIZER_SOURCES."""
    from pathunlearn.data.suite import builtin_splits, load_builtin

    texts = []
    for name in TOKENIZER_SOURCES:
        for split in builtin_splits(name):
            for conv in load_builtin(name, split, seed=seed):
                texts += [f"{m['role']}\n{m['content']}" for m in conv.messages]
    return texts


def tiny_key(recipe: dict | None = None) -> str:
    """Cache key: hash of the recipe (default :func:`tiny_recipe`) and of the suite text the
    preset is built from."""
    recipe = tiny_recipe() if recipe is None else recipe
    return _key(json.dumps(recipe, sort_keys=True))


@functools.lru_cache(maxsize=8)
def _key(recipe_json: str) -> str:
    # the suite is generated deterministically from the recipe's data seed: hash it once per
    # process (every plan computes the key)
    h = hashlib.sha256(recipe_json.encode())
    for text in tokenizer_corpus(json.loads(recipe_json)["data_seed"]):
        h.update(text.encode())
    return h.hexdigest()[:16]


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE (GPT-2 style pre-tokenisation) with ChatML special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", chat_template=CHATML_TEMPLATE)


def init_model(tokenizer, recipe: dict = TINY_RECIPE) -> torch.nn.Module:
    """A randomly initialised Llama sized by the recipe (seeded)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
                         **recipe["architecture"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe["init_seed"])
        return LlamaForCausalLM(config)


def packaged_dir(recipe: dict | None = None) -> Path:
    """Where the package ships the tiny preset of ``recipe`` (default :func:`tiny_recipe`),
    built by :func:`pathunlearn.train.pretrain.build_tiny` on 2 CPU cores and copied as is:
    ``pathunlearn/presets/tiny-<key>/``. Only the default recipe is shipped; a change to the
    recipe or to the suite's text changes the key, and that preset is built and cached."""
    return Path(__file__).parent / "presets" / f"tiny-{tiny_key(recipe)}"


def tiny_dir(recipe: dict | None = None) -> Path:
    """Where the tiny preset of ``recipe`` (default :func:`tiny_recipe`) is: the shipped copy
    when the package has one for this key, else its cache directory; it exists once its DONE
    marker does."""
    shipped = packaged_dir(recipe)
    return shipped if is_done(shipped) else cache_root() / f"tiny-{tiny_key(recipe)}"


def tiny_location() -> Path:
    """The directory of the built tiny preset (shipped with the package, or built and
    cached). Loading never trains: when the preset is not built yet this is a UserError saying
    how to build it."""
    directory = tiny_dir()
    if not is_done(directory):
        raise UserError(f"the tiny preset is not built yet (expected in {directory}): run "
                        "`pathunlearn model build` (once, ~3.5 min on 2 cores); `pathunlearn "
                        "run` and `pathunlearn train` build it first when it is missing")
    return directory
