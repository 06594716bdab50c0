"""Graded tests for notebook 04 (bottleneck adapters), exercises 4.1-4.6, and their invariants.

Tiny random models: a BERT classifier (D=32, 2 layers), a Llama (D=64, 2 layers) and a GPT-2
(D=32, 2 layers, Conv1D layers). Expected counts come from the formula 2 m D + m + D per adapter.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from conftest import tiny_bert, tiny_gpt2, tiny_llama

V, L = 100, 2                       # vocabulary, layers
BD, BF, BH = 32, 64, 2              # BERT: width, MLP width, heads
LD, LF, LH, KV = 64, 128, 4, 2      # Llama: width, MLP width, heads, kv heads
M = 8                               # bottleneck m used throughout
LABELS = 2
# The shared tiny models (tests/conftest.py) at their defaults are exactly these shapes:
# BERT V x BD, MLP BF, BH heads; Llama V x LD, MLP LF, LH heads, KV kv heads; GPT-2 V x BD, BH heads.


def ids(batch: int = 2, tokens: int = 6) -> torch.Tensor:
    return torch.randint(0, V, (batch, tokens), generator=torch.Generator().manual_seed(1))  # (B, T)


def per_adapter(d: int, m: int = M) -> int:
    return 2 * m * d + m + d


def perturb(module: nn.Module, seed: int = 3) -> None:
    """Give every adapter_up a random value, as training would (so the adapter is no longer identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "adapter_up" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def trainable_names(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


# ---------------------------------------------------------------------------------------------
# 4.1 BottleneckAdapter.__init__
# ---------------------------------------------------------------------------------------------
@pytest.mark.exercise("4.1", points=1)
def test_adapter_shapes_and_names(impl):
    adapters = impl("adapters")
    adapter = adapters.BottleneckAdapter(48, 6)
    shapes = {n: tuple(p.shape) for n, p in adapter.named_parameters()}
    assert shapes == {"adapter_down.weight": (6, 48), "adapter_down.bias": (6,),
                      "adapter_up.weight": (48, 6), "adapter_up.bias": (48,)}, \
        f"expected adapter_down = Linear(D, m) and adapter_up = Linear(m, D), got {shapes}"


@pytest.mark.exercise("4.1", points=2)
def test_adapter_near_identity_init(impl):
    adapters = impl("adapters")
    torch.manual_seed(0)
    adapter = adapters.BottleneckAdapter(48, 6)
    assert torch.count_nonzero(adapter.adapter_up.weight) == 0 and torch.count_nonzero(adapter.adapter_up.bias) == 0, \
        "adapter_up (weight and bias) should start at zero, so the adapter starts as the identity"
    assert adapter.adapter_down.weight.abs().sum() > 0, \
        "adapter_down must stay random: with both zero, no gradient would ever reach it"


@pytest.mark.exercise("4.1", points=1)
def test_adapter_activation_choice(impl):
    adapters = impl("adapters")
    assert isinstance(adapters.BottleneckAdapter(8, 2, "relu").activation, nn.ReLU)
    assert isinstance(adapters.BottleneckAdapter(8, 2).activation, nn.GELU), "gelu is the default"
    with pytest.raises(ValueError, match="tanh"):
        adapters.BottleneckAdapter(8, 2, "tanh")


# ---------------------------------------------------------------------------------------------
# 4.2 BottleneckAdapter.forward
# ---------------------------------------------------------------------------------------------
@pytest.mark.exercise("4.2", points=1)
def test_adapter_is_identity_at_init(impl):
    adapters = impl("adapters")
    h = torch.randn(2, 5, 16)  # (B, T, D)
    out = adapters.BottleneckAdapter(16, 4)(h)
    assert out.shape == h.shape, f"output shape {tuple(out.shape)} should equal input shape {tuple(h.shape)}"
    assert torch.equal(out, h), "with adapter_up = 0 the adapter must return its input exactly (residual)"


@pytest.mark.exercise("4.2", points=2)
def test_adapter_forward_formula(impl):
    adapters = impl("adapters")
    for activation, f in (("gelu", F.gelu), ("relu", F.relu)):
        adapter = adapters.BottleneckAdapter(16, 4, activation)
        perturb(adapter)
        h = torch.randn(2, 5, 16)
        down, up = adapter.adapter_down, adapter.adapter_up
        expected = h + F.linear(f(F.linear(h, down.weight, down.bias)), up.weight, up.bias)
        torch.testing.assert_close(adapter(h), expected,
                                   msg=f"forward should be h + up({activation}(down(h)))")


# ---------------------------------------------------------------------------------------------
# 4.3 AdapterWrapped.forward
# ---------------------------------------------------------------------------------------------
@pytest.mark.exercise("4.3", points=1)
def test_wrapper_applies_adapter_after_base(impl):
    adapters = impl("adapters")
    torch.manual_seed(0)
    base = nn.Linear(12, 16)
    adapter = adapters.BottleneckAdapter(16, 4)
    wrapped = adapters.AdapterWrapped(base, adapter)
    x = torch.randn(2, 3, 12)  # (B, T, D_in)
    assert torch.equal(wrapped(x), base(x)), "at init the wrapped layer should equal the base layer"
    perturb(adapter)
    torch.testing.assert_close(wrapped(x), adapter(base(x)), msg="forward should be adapter(base_layer(x))")


# ---------------------------------------------------------------------------------------------
# 4.4 adapter_targets
# ---------------------------------------------------------------------------------------------
@pytest.mark.exercise("4.4", points=1)
def test_targets_bert(impl):
    adapters = impl("adapters")
    houlsby = [f"bert.encoder.layer.{i}.{part}" for i in range(L)
               for part in ("attention.output.dense", "output.dense")]
    assert adapters.adapter_targets(tiny_bert(), "houlsby") == houlsby, \
        "houlsby: after the attention output projection and after the MLP output, in model order"
    assert adapters.adapter_targets(tiny_bert(), "pfeiffer") == houlsby[1::2], \
        "pfeiffer: only after the MLP (output.dense, not attention.output.dense)"


@pytest.mark.exercise("4.4", points=1)
def test_targets_llama_and_gpt2(impl):
    adapters = impl("adapters")
    llama = [f"model.layers.{i}.{part}" for i in range(L) for part in ("self_attn.o_proj", "mlp.down_proj")]
    assert adapters.adapter_targets(tiny_llama(), "houlsby") == llama
    assert adapters.adapter_targets(tiny_llama(), "pfeiffer") == llama[1::2]
    gpt2 = [f"transformer.h.{i}.{part}" for i in range(L) for part in ("attn.c_proj", "mlp.c_proj")]
    assert adapters.adapter_targets(tiny_gpt2(), "houlsby") == gpt2, "GPT-2's Conv1D layers count as linear"


@pytest.mark.exercise("4.4", points=1)
def test_targets_errors(impl):
    adapters = impl("adapters")
    with pytest.raises(ValueError, match="middle"):
        adapters.adapter_targets(tiny_bert(), "middle")
    with pytest.raises(ValueError):  # an MLP has no transformer sublayers
        adapters.adapter_targets(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), "houlsby")


# ---------------------------------------------------------------------------------------------
# 4.5 inject_adapters
# ---------------------------------------------------------------------------------------------
@pytest.mark.exercise("4.5", points=2)
def test_inject_wraps_the_original_layers(impl):
    adapters = impl("adapters")
    model = tiny_bert()
    originals = {n: model.get_submodule(n) for n in adapters.adapter_targets(model, "houlsby")}
    names = adapters.inject_adapters(model, adapters.AdapterConfig(bottleneck=M))
    assert names == list(originals), "inject_adapters should return the wrapped names in model order"
    for name, layer in originals.items():
        wrapped = model.get_submodule(name)
        assert isinstance(wrapped, adapters.AdapterWrapped), f"{name} is not wrapped"
        assert wrapped.base_layer is layer, f"{name}: wrap the original layer object, do not copy it"
        assert wrapped.adapter.adapter_down.weight.shape == (M, BD), f"{name}: adapter should be Linear(D={BD}, m={M})"


@pytest.mark.exercise("4.5", points=2)
def test_inject_keeps_outputs_at_init(impl):
    adapters = impl("adapters")
    for build, placement in ((tiny_bert, "houlsby"), (tiny_llama, "houlsby"), (tiny_gpt2, "pfeiffer")):
        base = build()(ids()).logits
        model = build()
        adapters.inject_adapters(model, adapters.AdapterConfig(bottleneck=M, placement=placement))
        wrapped = [m for m in model.modules() if isinstance(m, adapters.AdapterWrapped)]
        per_block = 2 if placement == "houlsby" else 1
        assert len(wrapped) == per_block * L, \
            f"{type(model).__name__}: {placement} puts {per_block} adapters in each of {L} blocks, found {len(wrapped)}"
        assert torch.equal(model(ids()).logits, base), \
            f"{type(model).__name__}: with near-identity adapters the outputs must equal the base model's"


@pytest.mark.exercise("4.5", points=1)
def test_inject_follows_dtype_and_width(impl):
    adapters = impl("adapters")
    model = tiny_llama().to(torch.float64)
    adapters.inject_adapters(model, adapters.AdapterConfig(reduction_factor=16, placement="pfeiffer"))
    adapter = model.model.layers[0].mlp.down_proj.adapter
    assert adapter.adapter_up.weight.dtype == torch.float64, "create the adapter in the layer's dtype"
    assert adapter.adapter_up.weight.shape == (LD, LD // 16), "reduction_factor 16 means m = D // 16"


# ---------------------------------------------------------------------------------------------
# 4.6 adapter_parameter_count
# ---------------------------------------------------------------------------------------------
@pytest.mark.exercise("4.6", points=1)
def test_parameter_count_formula(impl):
    adapters = impl("adapters")
    cfg = adapters.AdapterConfig
    assert adapters.adapter_parameter_count(384, 6, cfg(bottleneck=64)) == 6 * 2 * (2 * 64 * 384 + 64 + 384)
    assert adapters.adapter_parameter_count(576, 30, cfg(bottleneck=16, placement="pfeiffer")) == \
        30 * (2 * 16 * 576 + 16 + 576), "pfeiffer has one adapter per block"
    assert adapters.adapter_parameter_count(576, 30, cfg(reduction_factor=16)) == 30 * 2 * (2 * 36 * 576 + 36 + 576)


@pytest.mark.exercise("4.6", points=1)
def test_parameter_count_matches_injected_model(impl):
    adapters = impl("adapters")
    model = tiny_llama()
    config = adapters.AdapterConfig(bottleneck=M)
    adapters.inject_adapters(model, config)
    added = sum(p.numel() for n, p in model.named_parameters() if ".adapter." in n)
    assert adapters.adapter_parameter_count(LD, L, config) == added == L * 2 * per_adapter(LD)


# ---------------------------------------------------------------------------------------------
# Invariants (not graded)
# ---------------------------------------------------------------------------------------------
def test_apply_trains_adapters_and_norms_exactly(impl):
    adapters = impl("adapters")
    model = adapters.apply(tiny_bert(), adapters.AdapterConfig(bottleneck=M))
    params = dict(model.named_parameters())
    norms = (1 + 2 * L) * 2 * BD  # embedding LN + 2 per layer, weight and bias each
    assert sum(params[n].numel() for n in trainable_names(model)) == L * 2 * per_adapter(BD) + norms
    lean = adapters.apply(tiny_llama(), adapters.AdapterConfig(bottleneck=M, placement="pfeiffer", train_norms=False))
    assert all(".adapter." in n for n in trainable_names(lean))
    assert sum(p.numel() for p in lean.parameters() if p.requires_grad) == L * per_adapter(LD)


def test_frozen_weights_bit_identical_after_a_step(impl):
    adapters = impl("adapters")
    model = adapters.apply(tiny_llama(), adapters.AdapterConfig(bottleneck=M, train_norms=False))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x = ids()
    model(x, labels=x).loss.backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(".adapter." in n for n in changed), f"frozen weights moved: {sorted(changed)[:3]}"
    assert any("adapter_up" in n for n in changed), "adapter_up must get a gradient at step 1"


def test_apply_twice_is_refused_without_touching_the_model(impl):
    adapters = impl("adapters")
    model = adapters.apply(tiny_bert(), adapters.AdapterConfig(bottleneck=M))
    layers = dict(model.named_modules())
    with pytest.raises(ValueError, match="already"):
        adapters.apply(model, adapters.AdapterConfig(bottleneck=M))
    assert dict(model.named_modules()).keys() == layers.keys(), "a refused apply must not wrap again"


def test_bad_config_values(impl):
    AdapterConfig = impl("adapters").AdapterConfig
    for bad in ({"bottleneck": 0}, {"reduction_factor": -2}, {"placement": "parallel"},
                {"activation": "swish"}, {"train_norms": "no"}):
        with pytest.raises(ValueError, match="|".join(map(str, bad.values()))):
            AdapterConfig(**bad)
    with pytest.raises(ValueError, match="reduction_factor"):
        AdapterConfig(reduction_factor=128).width(64)


def _trained_adapter_bert(adapters):
    from labs.methods import train_task_head
    model = adapters.apply(tiny_bert(), adapters.AdapterConfig(bottleneck=M))
    train_task_head(model)
    perturb(model)
    with torch.no_grad():
        model.bert.encoder.layer[0].output.LayerNorm.weight.add_(0.5)
        model.classifier.weight.mul_(2)
    return model


def test_round_trip_gives_identical_logits(impl):
    adapters = impl("adapters")
    model = _trained_adapter_bert(adapters)
    config, state = adapters.to_peft(model)
    assert config["peft_type"] == "LABS_BOTTLENECK_ADAPTER" and config["bottleneck"] == M
    assert "base_model.model.bert.encoder.layer.0.output.dense.adapter.adapter_down.weight" in state
    fresh = adapters.from_peft(tiny_bert(), config, state)
    assert not torch.equal(fresh(ids()).logits, tiny_bert()(ids()).logits)
    assert torch.equal(fresh(ids()).logits, model(ids()).logits)
    assert trainable_names(fresh) == trainable_names(model)


def test_round_trip_through_peft_format_files(impl, tmp_path):
    from labs import peft_format  # first-party: a broken module fails this test, never skips it
    adapters = impl("adapters")
    model = adapters.apply(tiny_llama(), adapters.AdapterConfig(bottleneck=M, placement="pfeiffer"))
    perturb(model)
    peft_format.save_adapter(model, tmp_path / "adapter")
    fresh = peft_format.load_adapter(tiny_llama(), tmp_path / "adapter")
    assert torch.equal(fresh(ids()).logits, model(ids()).logits)


def test_wrong_base_model_is_refused(impl):
    adapters = impl("adapters")
    config, state = adapters.to_peft(_trained_adapter_bert(adapters))
    with pytest.raises(ValueError, match="another base model") as err:
        adapters.from_peft(tiny_bert(hidden=48), config, state)
    assert "32" in str(err.value) and "48" in str(err.value), "both shapes should be named"
    with pytest.raises(ValueError, match="LABS_BOTTLENECK_ADAPTER"):
        adapters.from_peft(tiny_bert(), {**config, "peft_type": "LORA"}, state)


def test_prepare_for_finetune_options(impl):
    adapters = impl("adapters")
    from types import SimpleNamespace
    task = SimpleNamespace(kind="generate")
    model = adapters.prepare_for_finetune(tiny_llama(), task, {"bottleneck": "4", "placement": "pfeiffer",
                                                               "train_norms": "false"})
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == L * per_adapter(LD, 4)
    with pytest.raises(ValueError, match="rank"):
        adapters.prepare_for_finetune(tiny_llama(), task, {"rank": "8"})
    with pytest.raises(ValueError, match="four"):
        adapters.prepare_for_finetune(tiny_llama(), task, {"bottleneck": "four"})
