"""Model loading, LoRA and checkpoint round trips on a small Llama (no network)."""

from __future__ import annotations

import pytest
import torch

from pathunlearn.config import LoraConfig, ModelConfig
from pathunlearn.errors import ConfigError, UserError
from pathunlearn.files import is_done
from pathunlearn.models import (
    apply_lora,
    check_architecture,
    check_model_files,
    count_parameters,
    load_adapter,
    load_model,
    load_pretrained,
    lora_targets,
    save_checkpoint,
)
from pathunlearn.tiny import init_model


@pytest.fixture
def model(tiny_tokenizer):
    return init_model(tiny_tokenizer)


def batch(tok):
    ids = tok("<|im_start|>user\nWhere was the author born?<|im_end|>\n")["input_ids"]
    return torch.tensor([ids])


def test_tiny_architecture_size(model, tiny_tokenizer):
    _, total = count_parameters(model)
    assert 0.5e6 < total < 1.5e6
    assert model.config.num_hidden_layers == 4 and model.config.hidden_size == 128
    assert model.config.vocab_size == len(tiny_tokenizer) <= 1536


def test_save_load_round_trip_gives_identical_logits(model, tiny_tokenizer, tmp_path):
    x = batch(tiny_tokenizer)
    with torch.no_grad():
        before = model(x).logits
    save_checkpoint(model, tiny_tokenizer, tmp_path / "ckpt", resolved_config="name: t\n")
    assert is_done(tmp_path / "ckpt")
    files = {p.name for p in (tmp_path / "ckpt").iterdir()}
    assert "model.safetensors" in files and "config.yaml" in files
    assert not any(f.endswith((".bin", ".pt", ".pth")) for f in files)
    loaded, tok = load_pretrained(tmp_path / "ckpt")
    with torch.no_grad():
        after = loaded(x).logits
    assert torch.equal(before, after)
    assert tok.chat_template == tiny_tokenizer.chat_template


def test_lora_leaves_base_weights_untouched_and_trains_adapter(model, tiny_tokenizer):
    base = {k: v.clone() for k, v in model.state_dict().items()}
    peft_model = apply_lora(model, LoraConfig(rank=4, alpha=8), seed=0)
    trainable, total = count_parameters(peft_model)
    assert 0 < trainable < total / 5
    adapters = {n: p.clone() for n, p in peft_model.named_parameters() if p.requires_grad}
    assert all("lora_" in n for n in adapters)
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    x = batch(tiny_tokenizer)
    for _ in range(3):
        loss = peft_model(x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    for name, p in peft_model.get_base_model().named_parameters():
        if "lora_" in name:
            continue
        key = name.replace(".base_layer", "")
        assert torch.equal(p, base[key]), name
    changed = [n for n, p in peft_model.named_parameters() if p.requires_grad
               and not torch.equal(p, adapters[n])]
    assert any("lora_B" in n for n in changed) and any("lora_A" in n for n in changed)


def test_lora_save_writes_adapter_and_merged_weights(model, tiny_tokenizer, tmp_path):
    peft_model = apply_lora(model, LoraConfig(rank=4, alpha=8), seed=0)
    with torch.no_grad():  # make the adapter non-trivial
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    x = batch(tiny_tokenizer)
    with torch.no_grad():
        adapted = peft_model(x).logits
    merged = save_checkpoint(peft_model, tiny_tokenizer, tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "adapter" / "adapter_model.safetensors").is_file()
    loaded, _ = load_pretrained(tmp_path / "ckpt")
    with torch.no_grad():
        assert torch.allclose(loaded(x).logits, adapted, atol=1e-5)
        assert torch.allclose(merged(x).logits, adapted, atol=1e-5)


def test_lora_is_seeded(model, tiny_tokenizer):
    import copy

    a = apply_lora(copy.deepcopy(model), LoraConfig(rank=4), seed=3)
    b = apply_lora(copy.deepcopy(model), LoraConfig(rank=4), seed=3)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_lora_targets_filter_and_error(model):
    assert lora_targets(model, LoraConfig(target_modules=["q_proj"], mlp=True)) == [
        "q_proj", "gate_proj", "up_proj", "down_proj"]
    with pytest.raises(ConfigError, match="target_modules"):
        lora_targets(model, LoraConfig(target_modules=["c_attn"], mlp=False))


def test_bad_model_paths_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="no config.json"):
        load_model(ModelConfig(preset=None, path=str(tmp_path)))
    with pytest.raises(ConfigError, match="GGUF file"):
        load_model(ModelConfig(preset=None, path=str(tmp_path / "m.gguf")))
    # a path that is meant as local and is not there: not "no config.json", never the hub
    with pytest.raises(ConfigError, match=r"^model.path: .*/nosuch: no such local directory$"):
        load_model(ModelConfig(path=str(tmp_path / "nosuch")))


def test_check_model_files_gives_the_hub_line_before_loading(tmp_path, monkeypatch):
    # a hub id the (empty, offline) cache lacks is one line from the checks, as a local
    # directory's problems are; nothing is loaded or downloaded
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    assert check_model_files(ModelConfig(path="acme/absent")) == [
        "model.path: acme/absent: not in the local cache and HF_HUB_OFFLINE is set (run "
        "`pathunlearn model fetch acme/absent` on a machine with network)"]
    assert not (tmp_path / "hub").exists()


def test_interrupted_save_leaves_previous_checkpoint(model, tiny_tokenizer, tmp_path):
    save_checkpoint(model, tiny_tokenizer, tmp_path / "ckpt", resolved_config="v: 1\n")

    class Boom(RuntimeError):
        pass

    class BadTokenizer:
        def save_pretrained(self, _):
            raise Boom

    with pytest.raises(Boom):
        save_checkpoint(model, BadTokenizer(), tmp_path / "ckpt", resolved_config="v: 2\n")
    assert (tmp_path / "ckpt" / "config.yaml").read_text() == "v: 1\n"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


# ---- issue 25: safetensors only, and what the model's config shows, before any work

def test_a_pickled_adapter_where_an_adapter_was_is_never_unpickled(model, tiny_tokenizer,
                                                                   tmp_path, monkeypatch):
    import copy

    peft_model = apply_lora(copy.deepcopy(model), LoraConfig(rank=4), seed=0)
    peft_model.save_pretrained(tmp_path / "adapter")
    weights = tmp_path / "adapter" / "adapter_model.safetensors"
    from safetensors.torch import load_file

    torch.save(load_file(weights), tmp_path / "adapter" / "adapter_model.bin")  # peft reads it
    weights.unlink()
    loads = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a) or {})
    with pytest.raises(UserError) as e:
        load_adapter(copy.deepcopy(model), tmp_path / "adapter")
    assert "adapter_model.bin: pickle files are never loaded" in str(e.value)
    assert "\n" not in str(e.value) and loads == []
    with pytest.raises(UserError, match="no adapter directory"):  # peft would ask the hub
        load_adapter(copy.deepcopy(model), tmp_path / "nothing")


def test_a_pickled_model_is_refused_before_transformers(tmp_path, monkeypatch):
    from pathunlearn.tiny import tiny_location

    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((tiny_location() / name).read_bytes())
    (tmp_path / "model.pt").write_bytes(b"\x80\x04K\x01.")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("unpickled"))
    with pytest.raises(ConfigError, match="only model.pt: pickle files are never loaded"):
        load_pretrained(tmp_path)


def test_the_model_config_shows_a_bad_attention_or_lora_target_before_any_load():
    tiny = {"preset": "tiny"}
    assert check_architecture(ModelConfig(**tiny)) == []
    assert check_architecture(ModelConfig(**tiny, finetuning="lora")) == []
    [line] = check_architecture(ModelConfig(**tiny, attn_implementation="bogus"))
    assert line.startswith("model.attn_implementation: 'bogus': ") and "not supported" in line
    [line] = check_architecture(ModelConfig(**tiny, finetuning="lora",
                                            lora=LoraConfig(target_modules=["c_attn"], mlp=False)))
    assert line.startswith("model.lora.target_modules: 'c_attn' does not exist")
    assert "q_proj" in line  # the names it has
    # one typo among names that exist: peft would train the others and say nothing
    [line] = check_architecture(ModelConfig(**tiny, finetuning="lora", lora=LoraConfig(
        target_modules=["q_proj", "v_prj"], mlp=False)))
    assert line.startswith("model.lora.target_modules: 'v_prj' does not exist in the model")
