"""Shared surgery: freezing, counting, and swapping Linear / Conv1D modules by name."""
from __future__ import annotations

from functools import partial

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel
from transformers.pytorch_utils import Conv1D

import conftest
from labs import surgery


tiny_llama = partial(conftest.tiny_llama, 101, 32, 64, tie_word_embeddings=True, eval_mode=False)


class Tagged(nn.Module):
    """A stand-in wrapper: remembers the layer it wraps."""
    def __init__(self, layer):
        super().__init__()
        self.base_layer = layer

    def forward(self, x):
        return self.base_layer(x)


def test_tied_embeddings_are_counted_once():
    model = tiny_llama()
    embed = model.model.embed_tokens.weight.numel()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    expected = sum(p.numel() for n, p in model.named_parameters())  # named_parameters dedups too
    count = surgery.count_parameters(model)
    assert count.total == expected and count.trainable == expected
    surgery.freeze(model)
    names = surgery.unfreeze(model, lambda n: n.endswith("embed_tokens.weight"))
    assert names == ["model.embed_tokens.weight"]
    assert surgery.count_parameters(model).trainable == embed
    assert "trainable" in str(surgery.count_parameters(model)) and "%" in str(surgery.count_parameters(model))


def test_replace_modules_on_llama_names_what_it_touched():
    model = tiny_llama()
    replaced = surgery.replace_modules(model, surgery.match_names(["q_proj", "v_proj"]), lambda n, m: Tagged(m))
    assert replaced == [f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")]
    assert isinstance(model.model.layers[1].self_attn.v_proj, Tagged)


def test_replace_modules_on_bert_suffixes_and_all_linear():
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=64))
    replaced = surgery.replace_modules(model, surgery.match_names("attention.self.query"), lambda n, m: Tagged(m))
    assert replaced == ["encoder.layer.0.attention.self.query", "encoder.layer.1.attention.self.query"]
    every = surgery.replace_modules(model, surgery.match_names("all-linear"), lambda n, m: Tagged(m))
    assert "pooler.dense" in every and len(every) == 2 * 6 - 2 + 1 + 2  # base_layer Linears of the first swap too


def test_conv1d_dims_and_weight_view_match_linear_layout():
    conv = Conv1D(nf=6, nx=4)  # in 4, out 6; weight stored (in, out)
    assert surgery.linear_dims(conv) == (4, 6)
    assert surgery.linear_weight(conv).shape == (6, 4)
    x = torch.randn(3, 4)
    assert torch.allclose(conv(x), x @ surgery.linear_weight(conv).T + conv.bias)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=2, n_positions=32))
    replaced = surgery.replace_modules(model, surgery.match_names("c_attn"), lambda n, m: Tagged(m))
    assert replaced == ["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"]


def test_a_target_that_matches_nothing_names_the_layers_that_exist():
    with pytest.raises(ValueError, match=r"q_proj.*v_proj|k_proj") as err:
        surgery.replace_modules(tiny_llama(), surgery.match_names(["query"]), lambda n, m: m)
    assert "no modules matched" in str(err.value)
    with pytest.raises(ValueError, match="target_modules is empty"):
        surgery.match_names([])
    with pytest.raises(TypeError, match="not a linear layer"):
        surgery.linear_dims(nn.LayerNorm(4))


def test_a_second_adapter_is_refused():
    model = tiny_llama()
    with pytest.raises(ValueError, match="carries no adapter"):
        surgery.adapter_record(model)
    surgery.mark_adapted(model, {"r": 4}, "solutions.lora")
    assert surgery.adapter_record(model).method == "lora"
    with pytest.raises(ValueError, match="already carries a 'lora' adapter"):
        surgery.mark_adapted(model, {}, "solutions.prefix_tuning")


def test_trainable_parameters_and_state_dict_follow_requires_grad():
    model = tiny_llama()
    surgery.freeze(model)
    assert surgery.trainable_parameters(model) == [] and surgery.trainable_state_dict(model) == {}
    surgery.unfreeze(model, lambda n: "norm" in n)
    assert all("norm" in n for n in surgery.trainable_state_dict(model))
