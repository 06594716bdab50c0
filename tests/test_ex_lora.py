"""Graded tests for notebook 05 (LoRA): exercises 5.1-5.6 on tiny random models, then invariants
and parity with Hugging Face peft (not graded: they check the reference against peft itself)."""
from __future__ import annotations

import copy
import math
from functools import partial

import pytest
import torch
from torch import nn
from transformers import BertForSequenceClassification
from transformers.pytorch_utils import Conv1D

import conftest
from conftest import tiny_llama  # V x D, MLP F, L layers, H heads, KV kv heads: the shared defaults

V, D, F, L, H, KV = 100, 64, 128, 2, 4, 2  # vocabulary, width, MLP width, layers, heads, kv heads


tiny_gpt2 = partial(conftest.tiny_gpt2, V, 32, L, 4, bos_token_id=0, eos_token_id=0)
tiny_bert = partial(conftest.tiny_bert, V, 32, 64, L, 4)


def ids(batch: int = 2, tokens: int = 7) -> torch.Tensor:
    return torch.randint(0, V, (batch, tokens), generator=torch.Generator().manual_seed(1))  # (B, T)


def linear(in_features: int = 16, out_features: int = 24, bias: bool = True) -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(in_features, out_features, bias=bias)


def randomize_B(layer) -> None:
    """Give B non-zero values, as training would, so the LoRA path contributes."""
    with torch.no_grad():
        layer.lora_B.normal_(generator=torch.Generator().manual_seed(2))


def x_in(in_features: int = 16) -> torch.Tensor:
    return torch.randn(2, 5, in_features, generator=torch.Generator().manual_seed(3))  # (B, T, in)


# ---------------------------------------------------------------------------------------------
# 5.1 LoRALinear.__init__: the factors, their initialisation, the scaling
# ---------------------------------------------------------------------------------------------
@pytest.mark.exercise("5.1", points=1)
def test_factors_have_lora_shapes(impl):
    lora = impl("lora")
    layer = lora.LoRALinear(linear(16, 24), r=4, alpha=8)
    assert isinstance(layer.lora_A, nn.Parameter) and isinstance(layer.lora_B, nn.Parameter), \
        "lora_A and lora_B should be nn.Parameter so the optimizer sees them"
    assert tuple(layer.lora_A.shape) == (4, 16), f"lora_A should be (r, in) = (4, 16), got {tuple(layer.lora_A.shape)}"
    assert tuple(layer.lora_B.shape) == (24, 4), f"lora_B should be (out, r) = (24, 4), got {tuple(layer.lora_B.shape)}"
    assert layer.lora_A.requires_grad and layer.lora_B.requires_grad, "the LoRA factors must be trainable"


@pytest.mark.exercise("5.1", points=1)
def test_B_is_zero_and_A_is_kaiming_uniform(impl):
    lora = impl("lora")
    torch.manual_seed(0)
    layer = lora.LoRALinear(linear(64, 32), r=8, alpha=16)
    assert torch.count_nonzero(layer.lora_B) == 0, "lora_B must start at zero, so B @ A = 0 at step 0"
    bound = 1 / math.sqrt(64)  # kaiming_uniform_(a=sqrt(5)) on (r, in) draws from U(-1/sqrt(in), 1/sqrt(in))
    A = layer.lora_A.detach()
    assert A.abs().max() <= bound + 1e-6, "lora_A values exceed Kaiming-uniform(a=sqrt(5))'s bound 1/sqrt(in)"
    assert A.abs().max() > bound / 2 and A.std() > bound / 4, \
        "lora_A looks (almost) zero: it needs a random init (if both were zero, neither would ever learn)"


@pytest.mark.exercise("5.1", points=1)
@pytest.mark.parametrize("use_rslora", [False, True])
def test_scaling_is_alpha_over_r_or_sqrt_r(impl, use_rslora):
    lora = impl("lora")
    layer = lora.LoRALinear(linear(), r=16, alpha=8, use_rslora=use_rslora)
    want = 8 / math.sqrt(16) if use_rslora else 8 / 16
    assert layer.scaling == pytest.approx(want), \
        f"scaling should be alpha/{'sqrt(r)' if use_rslora else 'r'} = {want}, got {layer.scaling}"


@pytest.mark.exercise("5.1", points=1)
def test_factors_follow_conv1d_dims(impl):
    lora = impl("lora")
    torch.manual_seed(0)
    layer = lora.LoRALinear(Conv1D(24, 16), r=4, alpha=8)  # Conv1D(nf=out, nx=in), weight (in, out)
    assert tuple(layer.lora_A.shape) == (4, 16) and tuple(layer.lora_B.shape) == (24, 4), \
        "for GPT-2's Conv1D read (in, out) with labs.surgery.linear_dims: its weight is stored (in, out)"


# ---------------------------------------------------------------------------------------------
# 5.2 LoRALinear.forward
# ---------------------------------------------------------------------------------------------
@pytest.mark.exercise("5.2", points=1)
def test_new_layer_equals_base_layer(impl):
    lora = impl("lora")
    base = linear()
    layer = lora.LoRALinear(copy.deepcopy(base), r=4, alpha=8)
    x = x_in()
    assert torch.equal(layer(x), base(x)), "with B = 0 the wrapped layer must return exactly base(x)"


@pytest.mark.exercise("5.2", points=2)
def test_forward_adds_scaled_low_rank_update(impl):
    lora = impl("lora")
    base = linear()
    layer = lora.LoRALinear(copy.deepcopy(base), r=4, alpha=12)
    randomize_B(layer)
    x = x_in()
    A, B = layer.lora_A.detach(), layer.lora_B.detach()
    want = base(x) + (x @ A.T @ B.T) * (12 / 4)  # (B, T, out)
    assert torch.allclose(layer(x), want, atol=1e-5), "forward should be base(x) + (x @ A^T @ B^T) * alpha / r"


@pytest.mark.exercise("5.2", points=1)
def test_dropout_acts_on_the_lora_input_only(impl):
    lora = impl("lora")
    base = linear()
    layer = lora.LoRALinear(copy.deepcopy(base), r=4, alpha=8, dropout=0.5).train()
    randomize_B(layer)
    x = x_in()
    torch.manual_seed(5)
    got = layer(x)
    torch.manual_seed(5)
    dropped = nn.functional.dropout(x, 0.5, training=True)  # the same mask, drawn from the same seed
    A, B = layer.lora_A.detach(), layer.lora_B.detach()
    want = base(x) + (dropped @ A.T @ B.T) * 2.0
    assert torch.allclose(got, want, atol=1e-5), \
        "apply self.dropout once, to the input of the LoRA path (base_layer sees the untouched x)"


@pytest.mark.exercise("5.2", points=1)
def test_merged_layer_skips_the_lora_path(impl):
    lora = impl("lora")
    base = linear()
    layer = lora.LoRALinear(copy.deepcopy(base), r=4, alpha=8)
    randomize_B(layer)
    layer.merged = True  # pretend the update already lives in the base weight
    x = x_in()
    assert torch.equal(layer(x), base(x)), "while merged, forward must return base_layer(x) only"


@pytest.mark.exercise("5.2", points=1)
def test_forward_on_a_bf16_base_layer(impl):
    lora = impl("lora")
    base = linear().to(torch.bfloat16)
    layer = lora.LoRALinear(copy.deepcopy(base), r=4, alpha=8)
    assert layer.lora_A.dtype == torch.float32, "the factors train in float32 even on a bf16 base (adapter_dtype)"
    randomize_B(layer)
    x = x_in().to(torch.bfloat16)                                  # (B, T, in), bf16 like the base layer
    out = layer(x)
    assert out.dtype == torch.bfloat16, \
        f"the output has the base layer's dtype (bfloat16), got {out.dtype}: cast the LoRA update back to it"
    A, B = layer.lora_A.detach(), layer.lora_B.detach()
    want = base(x).float() + (x.float() @ A.T @ B.T) * 2.0         # the LoRA path in float32
    assert torch.allclose(out.float(), want, atol=5e-2, rtol=2e-2), \
        "on a bf16 base the output is off: compute (x @ A^T @ B^T) * alpha / r in float32 and add it to base(x)"


@pytest.mark.exercise("5.2", points=1)
def test_conv1d_path_equals_linear_path(impl):
    lora = impl("lora")
    lin = linear(16, 24)
    conv = Conv1D(24, 16)
    with torch.no_grad():  # the same map stored the other way round
        conv.weight.copy_(lin.weight.T)
        conv.bias.copy_(lin.bias)
    a, b = lora.LoRALinear(lin, r=4, alpha=8), lora.LoRALinear(conv, r=4, alpha=8)
    randomize_B(a)
    with torch.no_grad():
        b.lora_A.copy_(a.lora_A)
        b.lora_B.copy_(a.lora_B)
    x = x_in()
    assert torch.allclose(a(x), b(x), atol=1e-5), "LoRA around a Conv1D should compute what it does around nn.Linear"


# ---------------------------------------------------------------------------------------------
# 5.3 LoRALinear.delta_weight
# ---------------------------------------------------------------------------------------------
@pytest.mark.exercise("5.3", points=1)
def test_delta_weight_is_scaled_B_times_A(impl):
    lora = impl("lora")
    layer = lora.LoRALinear(linear(16, 24), r=4, alpha=6)
    assert torch.count_nonzero(layer.delta_weight()) == 0, "delta_weight must be zero at init (B = 0)"
    randomize_B(layer)
    delta = layer.delta_weight()
    assert tuple(delta.shape) == (24, 16), f"delta_weight should be (out, in) = (24, 16), got {tuple(delta.shape)}"
    want = (layer.lora_B @ layer.lora_A) * 1.5
    assert torch.allclose(delta, want, atol=1e-6), "delta_weight should be (B @ A) * scaling"


@pytest.mark.exercise("5.3", points=1)
def test_delta_weight_is_out_by_in_for_conv1d_too(impl):
    lora = impl("lora")
    torch.manual_seed(0)
    layer = lora.LoRALinear(Conv1D(24, 16), r=4, alpha=8, use_rslora=True)
    randomize_B(layer)
    delta = layer.delta_weight()
    assert tuple(delta.shape) == (24, 16), "delta_weight is (out, in) whatever the layer's storage layout"
    assert torch.allclose(delta, (layer.lora_B @ layer.lora_A) * (8 / 2), atol=1e-6), \
        "with use_rslora the scaling is alpha / sqrt(r)"


# ---------------------------------------------------------------------------------------------
# 5.4 merge / 5.5 unmerge
# ---------------------------------------------------------------------------------------------
@pytest.mark.exercise("5.4", points=2)
@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_merged_output_equals_unmerged_output(impl, kind):
    lora = impl("lora")
    torch.manual_seed(0)
    layer = lora.LoRALinear(linear(16, 24) if kind == "linear" else Conv1D(24, 16), r=4, alpha=8)
    randomize_B(layer)
    x = x_in()
    before = layer(x)
    layer.merge()
    assert layer.merged, "merge() should set self.merged = True"
    assert torch.allclose(layer(x), before, atol=1e-5), "after merge() the layer must compute the same outputs"
    assert torch.allclose(layer.base_layer(x), before, atol=1e-5), \
        "merge() should add delta_weight() into the base layer's weight (the base alone now gives the output)"


@pytest.mark.exercise("5.4", points=1)
def test_merging_twice_changes_nothing(impl):
    lora = impl("lora")
    layer = lora.LoRALinear(linear(), r=4, alpha=8)
    randomize_B(layer)
    original = layer.base_layer.weight.detach().clone()
    layer.merge()
    once = layer.base_layer.weight.detach().clone()
    assert layer.merged and torch.allclose(once, original + layer.delta_weight(), atol=1e-6), \
        "the first merge() adds delta_weight() into the base weight and sets merged"
    layer.merge()
    assert torch.equal(layer.base_layer.weight, once), "a second merge() must not add the update again"


@pytest.mark.exercise("5.5", points=1)
@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_unmerge_restores_the_base_weight(impl, kind):
    lora = impl("lora")
    torch.manual_seed(0)
    layer = lora.LoRALinear(linear(16, 24) if kind == "linear" else Conv1D(24, 16), r=4, alpha=8)
    randomize_B(layer)
    original = layer.base_layer.weight.detach().clone()
    x = x_in()
    before = layer(x)
    layer.merge()
    layer.unmerge()
    assert not layer.merged, "unmerge() should set self.merged = False"
    assert torch.allclose(layer.base_layer.weight, original, atol=1e-6), \
        "unmerge() should subtract delta_weight() from the base weight again"
    assert torch.allclose(layer(x), before, atol=1e-5), "after unmerge() the outputs should be as before merging"


@pytest.mark.exercise("5.5", points=1)
def test_unmerge_without_merge_changes_nothing(impl):
    lora = impl("lora")
    layer = lora.LoRALinear(linear(), r=4, alpha=8)
    randomize_B(layer)
    original = layer.base_layer.weight.detach().clone()
    layer.unmerge()
    assert torch.equal(layer.base_layer.weight, original), "unmerge() on an unmerged layer must do nothing"
    assert not layer.merged, "unmerge() on an unmerged layer leaves merged = False"
    layer.merge()
    layer.unmerge()  # ...and on a merged one it really undoes the merge
    assert not layer.merged and torch.allclose(layer.base_layer.weight, original, atol=1e-6), \
        "unmerge() after merge() subtracts the update again and clears merged"


# ---------------------------------------------------------------------------------------------
# 5.6 apply
# ---------------------------------------------------------------------------------------------
def lora_count(model: nn.Module, suffixes: tuple[str, ...], r: int) -> int:
    """r * (in + out) for every linear layer whose name ends with one of `suffixes`: the arithmetic."""
    from labs.surgery import is_linear, linear_dims
    return sum(r * sum(linear_dims(m)) for n, m in model.named_modules()
               if is_linear(m) and n.rsplit(".", 1)[-1] in suffixes)


@pytest.mark.exercise("5.6", points=1)
def test_apply_trains_exactly_the_lora_factors(impl):
    lora = impl("lora")
    from labs.surgery import count_parameters
    model = tiny_llama()
    total = count_parameters(model).total
    want = lora_count(model, ("q_proj", "v_proj"), r=4)  # v_proj is narrower than q_proj (GQA)
    returned = lora.apply(model, lora.LoRAConfig(r=4, alpha=8, target_modules=("q_proj", "v_proj")))
    assert returned is model, "apply should return the model it changed"
    count = count_parameters(model)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all("lora_A" in n or "lora_B" in n for n in trainable), \
        f"only LoRA factors may train; also trainable: {[n for n in trainable if 'lora_' not in n][:3]}"
    assert count.trainable == want, f"expected r * (in + out) per target = {want:,} trainable, got {count.trainable:,}"
    assert count.total == total + want, "apply should add exactly the LoRA factors to the total"


@pytest.mark.exercise("5.6", points=1)
def test_applied_model_equals_base_model_at_init(impl):
    lora = impl("lora")
    model = tiny_llama()
    base_logits = model(ids()).logits
    lora.apply(model, lora.LoRAConfig(r=4, alpha=8))
    wrapped = [n for n, m in model.named_modules() if isinstance(m, lora.LoRALinear)]
    assert len(wrapped) == 2 * L, f"the default targets q_proj, v_proj should wrap {2 * L} layers, got {wrapped}"
    assert torch.equal(model(ids()).logits, base_logits), "at init (B = 0) the adapted model must equal the base"


@pytest.mark.exercise("5.6", points=2)
def test_base_weights_are_bit_identical_after_a_step(impl):
    lora = impl("lora")
    from labs.surgery import trainable_parameters
    model = tiny_llama()
    lora.apply(model, lora.LoRAConfig(r=4, alpha=8, target_modules=("q_proj", "k_proj", "v_proj", "o_proj")))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(trainable_parameters(model), lr=1e-2)
    model(ids(), labels=ids()).loss.backward()
    opt.step()
    after = dict(model.named_parameters())
    changed_base = [n for n in before if "lora_" not in n and not torch.equal(before[n], after[n])]
    assert not changed_base, f"frozen base weights moved after a step: {changed_base[:3]}"
    moved = [n for n in before if "lora_B" in n and not torch.equal(before[n], after[n])]
    assert moved, "the lora_B factors should move after one optimizer step (are they trainable?)"


@pytest.mark.exercise("5.6", points=1)
@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_default_targets_per_family(impl, family):
    lora = impl("lora")
    model = tiny_bert() if family == "bert" else tiny_gpt2()
    lora.apply(model, lora.LoRAConfig(r=2, alpha=4))
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, lora.LoRALinear)}
    want = {"query", "value"} if family == "bert" else {"c_attn"}
    assert names == want, f"default targets for {family} should be {sorted(want)}, got {sorted(names)}"


@pytest.mark.exercise("5.6", points=1)
def test_apply_refuses_unknown_targets_and_a_second_adapter(impl):
    lora = impl("lora")
    model = tiny_llama()
    with pytest.raises(ValueError, match="q_proj"):  # the error lists the layers that do exist
        lora.apply(model, lora.LoRAConfig(target_modules=("qkv",)))
    lora.apply(model, lora.LoRAConfig(r=2, alpha=4))
    with pytest.raises(ValueError, match="already"):
        lora.apply(model, lora.LoRAConfig(r=2, alpha=4))


# ---------------------------------------------------------------------------------------------
# Invariants of the shared code (not graded)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad, field", [(dict(r=0), "r=0"), (dict(r=-2), "r=-2"), (dict(alpha=0), "alpha=0"),
                                        (dict(target_modules=()), "target_modules"),
                                        (dict(dropout=1.0), "dropout=1.0"), (dict(bias="all"), "bias='all'")])
def test_config_rejects_bad_values_by_name(impl, bad, field):
    lora = impl("lora")
    with pytest.raises(ValueError, match=field.replace("(", r"\(")):
        lora.LoRAConfig(**bad)


def test_config_reads_comma_separated_targets(impl):
    lora = impl("lora")
    assert lora.LoRAConfig(target_modules="q_proj, v_proj").target_modules == ("q_proj", "v_proj")


def test_wrapping_a_non_linear_layer_is_refused(impl):
    lora = impl("lora")
    with pytest.raises(TypeError, match="Embedding"):
        lora.LoRALinear(nn.Embedding(10, 4), r=2, alpha=4)


def test_merge_and_unload_gives_a_plain_model_with_the_same_outputs(impl):
    lora = impl("lora")
    model = tiny_llama()
    lora.apply(model, lora.LoRAConfig(r=4, alpha=8))
    for _, layer in lora.lora_layers(model):
        randomize_B(layer)
    want = model(ids()).logits
    lora.merge_and_unload(model)
    assert not lora.lora_layers(model) and not hasattr(model, "labs_adapter")
    assert all(type(m) is not lora.LoRALinear for m in model.modules())
    assert torch.allclose(model(ids()).logits, want, atol=1e-5)


def test_prepare_for_finetune_reads_command_line_options(impl):
    lora = impl("lora")
    model = lora.prepare_for_finetune(tiny_llama(), task=None, options={"r": "2", "target_modules": "q_proj"})
    assert model.labs_adapter.config.r == 2
    assert {n.rsplit(".", 1)[-1] for n, _ in lora.lora_layers(model)} == {"q_proj"}
    with pytest.raises(ValueError, match="rank"):
        lora.prepare_for_finetune(tiny_llama(), task=None, options={"rank": 4})


# ---------------------------------------------------------------------------------------------
# Parity with Hugging Face peft (not graded): same files, same numbers
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def peft():
    import peft
    return peft


def trained_labs_lora(lora, model, **config):
    """Our LoRA on `model` after one AdamW step, so that B is no longer zero."""
    from labs.surgery import trainable_parameters
    lora.apply(model, lora.LoRAConfig(**config))
    opt = torch.optim.AdamW(trainable_parameters(model), lr=1e-2)
    labels = torch.tensor([0, 1]) if isinstance(model, BertForSequenceClassification) else ids()
    model(ids(), labels=labels).loss.backward()
    opt.step()
    return model


@pytest.mark.parametrize("family, config", [
    ("llama", dict(target_modules=("q_proj", "k_proj", "v_proj", "o_proj"))),
    ("llama", dict(target_modules=("all-linear",))),
    ("gpt2", dict(target_modules=("c_attn",), use_rslora=True)),
    ("bert", dict(target_modules=("query", "value"), modules_to_save=("classifier",))),
])
def test_our_saved_adapter_loads_in_peft_with_the_same_logits(impl, peft, tmp_path, family, config):
    from labs.peft_format import save_adapter
    make = {"llama": tiny_llama, "gpt2": tiny_gpt2, "bert": tiny_bert}[family]
    ours = trained_labs_lora(impl("lora"), make(), r=4, alpha=8, **config).eval()
    save_adapter(ours, tmp_path)
    theirs = peft.PeftModel.from_pretrained(make(), tmp_path).eval()
    assert torch.allclose(theirs(ids()).logits, ours(ids()).logits, atol=1e-5)


@pytest.mark.parametrize("family, config", [
    ("llama", dict(target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")),
    ("llama", dict(target_modules="all-linear", use_rslora=True, task_type="CAUSAL_LM")),
    ("gpt2", dict(target_modules=["c_attn"], task_type="CAUSAL_LM")),
    ("bert", dict(target_modules=["query", "value"], task_type="SEQ_CLS")),
])
def test_peft_saved_adapter_loads_here_with_the_same_logits(impl, peft, tmp_path, family, config):
    impl("lora")
    from labs.peft_format import load_adapter
    make = {"llama": tiny_llama, "gpt2": tiny_gpt2, "bert": tiny_bert}[family]
    theirs = peft.get_peft_model(make(), peft.LoraConfig(r=4, lora_alpha=8, **config)).eval()
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                p.normal_(generator=torch.Generator().manual_seed(len(name)))
    theirs.save_pretrained(tmp_path)
    ours = load_adapter(make(), tmp_path, method="lora")
    out = (lambda m: m(ids()).logits)
    assert torch.allclose(out(ours), out(theirs), atol=1e-5)


def test_one_training_step_matches_peft(impl, peft):
    lora = impl("lora")
    theirs = peft.get_peft_model(tiny_llama(), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    ours = lora.apply(tiny_llama(), lora.LoRAConfig(r=4, alpha=8, target_modules=("q_proj", "v_proj")))
    with torch.no_grad():  # same starting factors; B non-zero so that A gets a gradient too
        for name, layer in lora.lora_layers(ours):
            peft_layer = theirs.base_model.model.get_submodule(name)
            layer.lora_A.copy_(peft_layer.lora_A["default"].weight)
            peft_layer.lora_B["default"].weight.normal_(generator=torch.Generator().manual_seed(7))
            layer.lora_B.copy_(peft_layer.lora_B["default"].weight)
    losses, grads = [], []
    for model in (ours, theirs):
        model.train()
        loss = model(ids(), labels=ids()).loss
        loss.backward()
        losses.append(loss.detach())
        grads.append([p.grad for n, p in sorted(model.named_parameters()) if p.requires_grad])
    assert torch.allclose(losses[0], losses[1], atol=1e-6)
    assert len(grads[0]) == len(grads[1]) == 4 * L
    for g_ours, g_theirs in zip(grads[0], grads[1]):
        assert torch.allclose(g_ours, g_theirs, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# The real model (slow: loads SmolLM2-135M)
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_lora_on_smollm2_counts_and_starts_as_the_base(impl, peft, tmp_path):
    lora = impl("lora")
    from labs.models import load_model
    from labs.peft_format import save_adapter
    from labs.surgery import count_parameters
    model, tok = load_model("smollm2-135m")
    prompt = tok(['Define the word "lantern".'], return_tensors="pt").input_ids  # (1, T)
    with torch.no_grad():
        base_logits = model(prompt).logits
    want = lora_count(model, ("q_proj", "v_proj"), r=8)  # 30 x 8 x ((576 + 576) + (576 + 192))
    lora.apply(model, lora.LoRAConfig(r=8, alpha=16))
    assert count_parameters(model).trainable == want
    with torch.no_grad():
        assert torch.equal(model(prompt).logits, base_logits)
        for _, layer in lora.lora_layers(model):
            layer.lora_B.normal_(std=0.01, generator=torch.Generator().manual_seed(2))
        ours = model(prompt).logits
    save_adapter(model, tmp_path)
    theirs = peft.PeftModel.from_pretrained(load_model("smollm2-135m")[0], tmp_path).eval()
    with torch.no_grad():
        assert torch.allclose(theirs(prompt).logits, ours, atol=1e-4)
