"""Adapters on disk (labs.peft_format): the two-file layout, atomic saves, round trips, and a clear
error for every kind of broken or mismatched folder. A LoRA adapter on a tiny Llama is the subject."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import tiny_llama  # V x 64 (or `hidden`), MLP 128, 2 layers, 4 heads, 2 kv heads

from labs import peft_format
from labs.peft_format import CONFIG_NAME, WEIGHTS_NAME, load_adapter, read_adapter, save_adapter

V = 100


def ids() -> torch.Tensor:
    return torch.randint(0, V, (2, 7), generator=torch.Generator().manual_seed(1))  # (B, T)


@pytest.fixture
def adapted(impl):
    """A tiny Llama with LoRA whose B factors are non-zero (as after training)."""
    lora = impl("lora")
    model = lora.apply(tiny_llama(), lora.LoRAConfig(r=4, alpha=8))
    with torch.no_grad():
        for _, layer in lora.lora_layers(model):
            layer.lora_B.normal_(generator=torch.Generator().manual_seed(2))
    return model


@pytest.fixture
def saved(adapted, tmp_path):
    folder = tmp_path / "adapter"
    save_adapter(adapted, folder)
    return folder


def test_save_writes_exactly_the_two_files(saved):
    assert sorted(p.name for p in saved.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]  # no temp files left
    config = json.loads((saved / CONFIG_NAME).read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8
    _, state = read_adapter(saved)
    assert all(k.startswith("base_model.model.") and k.endswith((".lora_A.weight", ".lora_B.weight"))
               for k in state)


def test_round_trip_gives_identical_logits(adapted, saved):
    reloaded = load_adapter(tiny_llama(), saved)
    assert torch.equal(reloaded(ids()).logits, adapted(ids()).logits)
    assert reloaded.labs_adapter.config == adapted.labs_adapter.config


def test_a_failed_save_leaves_the_previous_adapter_intact(adapted, saved, monkeypatch):
    before = (saved / WEIGHTS_NAME).read_bytes()

    def broken(tensors, path, metadata=None):
        open(path, "wb").write(b"half a fi")
        raise OSError("disk full")

    monkeypatch.setattr(peft_format, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_adapter(adapted, saved)
    assert (saved / WEIGHTS_NAME).read_bytes() == before
    assert sorted(p.name for p in saved.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]


def test_saving_a_model_without_adapter_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no adapter"):
        save_adapter(tiny_llama(), tmp_path)


@pytest.mark.parametrize("missing", [CONFIG_NAME, WEIGHTS_NAME])
def test_missing_file_is_named(saved, missing):
    (saved / missing).unlink()
    with pytest.raises(FileNotFoundError, match=missing):
        load_adapter(tiny_llama(), saved)


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_adapter(tiny_llama(), tmp_path / "nowhere")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_weights_give_a_clear_error(saved, damage):
    file = saved / WEIGHTS_NAME
    data = file.read_bytes()
    file.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"not safetensors" * 50, "empty": b""}[damage])
    model = tiny_llama()
    with pytest.raises(ValueError, match=WEIGHTS_NAME):
        load_adapter(model, saved)
    assert not hasattr(model, "labs_adapter"), "a failed load must leave the base model untouched"


def test_corrupt_config_gives_a_clear_error(saved):
    (saved / CONFIG_NAME).write_text('{"peft_type": "LORA", "r": ')
    with pytest.raises(ValueError, match=CONFIG_NAME):
        load_adapter(tiny_llama(), saved)


def test_unknown_peft_type_is_named(saved):
    config = json.loads((saved / CONFIG_NAME).read_text())
    config["peft_type"] = "IA3"
    (saved / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(ValueError, match="IA3"):
        load_adapter(tiny_llama(), saved)


def test_another_kind_of_adapter_than_expected_is_refused(saved):
    with pytest.raises(ValueError, match="'prefix'"):
        load_adapter(tiny_llama(), saved, method="prefix")
    assert load_adapter(tiny_llama(), saved, method="lora").labs_adapter.method == "lora"


def test_adapter_for_another_base_model_is_refused_with_both_shapes(saved, impl):
    other = tiny_llama(hidden=32)
    with pytest.raises(ValueError, match=r"another base model.*\(4, 64\).*\(4, 32\)"):
        load_adapter(other, saved)
    assert not hasattr(other, "labs_adapter") and not impl("lora").lora_layers(other), \
        "the mismatched base model must be left as it was"


def test_loading_into_an_adapted_model_is_refused(adapted, saved):
    with pytest.raises(ValueError, match="already carries"):
        load_adapter(adapted, saved)


def test_unsupported_lora_variant_is_refused(saved):
    config = json.loads((saved / CONFIG_NAME).read_text())
    config["rank_pattern"] = {"q_proj": 2}
    (saved / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(ValueError, match="rank_pattern"):
        load_adapter(tiny_llama(), saved)


def test_dora_config_without_its_magnitudes_is_refused(saved):
    config = json.loads((saved / CONFIG_NAME).read_text())
    config["use_dora"] = True   # DoRA is read (notebook 15), but this file lacks its magnitude vectors
    (saved / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(ValueError, match="lora_magnitude_vector"):
        load_adapter(tiny_llama(), saved)
