"""Hidden graded tests for notebook 05 (LoRA): a layer with a bias, 3-D inputs, a trained-looking
(non-zero) B, and an MLP-only target list."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM


def layer_with_update(lora, r: int = 3, alpha: float = 6.0, use_rslora: bool = False):
    torch.manual_seed(0)
    layer = lora.LoRALinear(nn.Linear(10, 7, bias=True), r=r, alpha=alpha, use_rslora=use_rslora)
    with torch.no_grad():
        layer.lora_B.normal_()  # as if trained: B = 0 would hide most mistakes
    return layer


@pytest.mark.exercise("5.2", points=1)
def test_forward_on_a_batch_of_sequences_with_bias(impl):
    layer = layer_with_update(impl("lora"))
    x = torch.randn(2, 5, 10)  # (B, T, in)
    expected = layer.base_layer(x) + (x @ layer.lora_A.T @ layer.lora_B.T) * (6.0 / 3)
    out = layer(x)
    assert out.shape == (2, 5, 7), f"output should be (B, T, out) = (2, 5, 7), got {tuple(out.shape)}"
    torch.testing.assert_close(out, expected, msg="forward should be base(x) + (x A^T B^T) * alpha / r")


@pytest.mark.exercise("5.3", points=1)
def test_delta_weight_uses_the_rslora_scaling(impl):
    layer = layer_with_update(impl("lora"), r=4, alpha=8.0, use_rslora=True)
    expected = (layer.lora_B @ layer.lora_A) * (8.0 / math.sqrt(4))
    torch.testing.assert_close(layer.delta_weight(), expected,
                               msg="with use_rslora the update is scaled by alpha / sqrt(r)")


@pytest.mark.exercise("5.4", points=1)
def test_merge_moves_the_update_into_the_weight_and_keeps_the_bias(impl):
    layer = layer_with_update(impl("lora"))
    weight, bias = layer.base_layer.weight.detach().clone(), layer.base_layer.bias.detach().clone()
    x = torch.randn(4, 10)
    before = layer(x)
    layer.merge()
    torch.testing.assert_close(layer.base_layer.weight.detach(), weight + layer.delta_weight().detach(),
                               msg="merge should add delta_weight() into the base weight")
    assert torch.equal(layer.base_layer.bias, bias), "merge should leave the bias alone"
    torch.testing.assert_close(layer(x), before, msg="a merged layer should compute the same outputs")


@pytest.mark.exercise("5.6", points=1)
def test_apply_to_mlp_layers_only(impl):
    lora = impl("lora")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=24,
                                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1))
    lora.apply(model, lora.LoRAConfig(r=2, target_modules=("gate_proj", "down_proj")))
    wrapped = sorted(name.rsplit(".", 1)[-1] for name, _ in lora.lora_layers(model))
    assert wrapped == ["down_proj", "down_proj", "gate_proj", "gate_proj"], \
        f"only gate_proj and down_proj of both layers should be wrapped, got {wrapped}"
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    per_layer = 2 * (16 + 24) + 2 * (24 + 16)  # gate (16 -> 24) and down (24 -> 16), r = 2
    assert trainable == 2 * per_layer, f"expected {2 * per_layer} trainable LoRA numbers, got {trainable}"
