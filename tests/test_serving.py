"""One base serving several LoRA adapters (labs.serving): each request gets its own adapter's
logits, switching back restores them exactly, the base's weights never change, and bad input is
refused with a clear error. Three LoRA adapters (non-zero B from different seeds) on a tiny Llama."""
from __future__ import annotations

import pytest
import torch

from conftest import tiny_llama  # V x 64, MLP 128, 2 layers, 4 heads, 2 kv heads

from labs.peft_format import load_adapter, save_adapter
from labs.serving import AdapterServer

V = 100


def ids() -> torch.Tensor:
    return torch.randint(0, V, (2, 7), generator=torch.Generator().manual_seed(1))  # (B, T)


@pytest.fixture
def impl_name(request) -> str:
    return request.config.getoption("--impl")


def save_lora(lora, folder, seed: int, hidden: int = 64, r: int = 4):
    """A LoRA adapter on a fresh tiny base whose B factors are non-zero (as after training)."""
    model = lora.apply(tiny_llama(hidden=hidden), lora.LoRAConfig(r=r, alpha=8))
    with torch.no_grad():
        for _, layer in lora.lora_layers(model):
            layer.lora_B.normal_(generator=torch.Generator().manual_seed(seed))
    return save_adapter(model, folder)


@pytest.fixture
def folders(impl, tmp_path):
    lora = impl("lora")
    return {name: save_lora(lora, tmp_path / name, seed) for name, seed in (("a", 1), ("b", 2), ("c", 3))}


@pytest.fixture
def server(folders, impl_name):
    server = AdapterServer(tiny_llama(), impl=impl_name)
    for name, folder in folders.items():
        server.add(name, folder)
    return server


def alone(folder) -> torch.Tensor:
    """The logits of one adapter loaded on its own base, as if it were the only fine-tuned model."""
    with torch.no_grad():
        return load_adapter(tiny_llama(), folder)(ids()).logits


def test_each_request_gets_its_own_adapters_logits(server, folders):
    expected = {name: alone(folder) for name, folder in folders.items()}
    for name in ("b", "a", "c", "a", "b"):
        assert torch.equal(server(name, input_ids=ids()).logits, expected[name]), name
    assert not torch.allclose(expected["a"], expected["b"])  # the adapters really differ


def test_switching_back_restores_the_logits_exactly(server):
    first = server("a", input_ids=ids()).logits
    server("b", input_ids=ids())
    server.use("c")
    assert torch.equal(server("a", input_ids=ids()).logits, first)


def test_the_base_weights_are_unchanged_after_serving(server):
    base = {n: p.clone() for n, p in tiny_llama().named_parameters()}
    for name in ("a", "b", "c", "a"):
        server(name, input_ids=ids())
    served = {n.replace(".base_layer", ""): p for n, p in server.model.named_parameters() if ".lora_" not in n}
    assert served.keys() == base.keys()
    assert all(torch.equal(served[n], base[n]) for n in base)
    assert not any(p.requires_grad for p in server.model.parameters())


def test_memory_is_counted_per_adapter(server):
    sizes = server.adapter_bytes()
    assert list(sizes) == ["a", "b", "c"] and len(set(sizes.values())) == 1 and sizes["a"] > 0


def test_an_unknown_adapter_name_is_refused_with_the_known_ones(server):
    with pytest.raises(KeyError, match=r"'nope'.*'a', 'b', 'c'"):
        server("nope", input_ids=ids())
    with pytest.raises(KeyError, match="none yet"):
        AdapterServer(tiny_llama()).use("a")


def test_an_adapter_for_another_base_shape_is_refused(server, impl, tmp_path, impl_name):
    wide = save_lora(impl("lora"), tmp_path / "wide", seed=4, hidden=96)
    with pytest.raises(ValueError, match=r"another base model.*\(4, 96\).*\(4, 64\)"):
        server.add("wide", wide)
    assert server.names == ["a", "b", "c"]
    with pytest.raises(ValueError, match="another base model"):  # as the first adapter of a server too
        AdapterServer(tiny_llama(), impl=impl_name).add("wide", wide)


def test_other_bad_input_is_refused(server, impl, tmp_path, folders):
    with pytest.raises(ValueError, match="already served"):
        server.add("a", folders["b"])
    with pytest.raises(ValueError, match="r=8.*r=4"):
        server.add("r8", save_lora(impl("lora"), tmp_path / "r8", seed=5, r=8))
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        server.add("missing", tmp_path / "nothing-here")
    with pytest.raises(ValueError, match="already carries"):
        AdapterServer(server.model)
