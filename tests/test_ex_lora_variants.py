"""Graded tests for notebook 15 (LoRA, deeper): exercises 15.1-15.6 on tiny random models, then
invariants and parity with Hugging Face peft (not graded: they check the reference against peft).

Parity tolerance: 1e-5 on logits of order 1. Both sides compute in float32 the same products, but
peft forms B @ A as B(A(I)) and may sum in another order; the measured difference is 0.0 here.
"""
from __future__ import annotations

import copy
import math
from functools import partial

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

import conftest
from conftest import tiny_llama

V, L = 100, 2                      # tiny_llama's vocabulary and layers
PARITY_ATOL = 1e-5                 # see the module docstring
tiny_gpt2 = partial(conftest.tiny_gpt2, V, 32, L, 4, bos_token_id=0, eos_token_id=0)


def ids(batch: int = 2, tokens: int = 7) -> torch.Tensor:
    return torch.randint(0, V, (batch, tokens), generator=torch.Generator().manual_seed(1))  # (B, T)


def linear(in_features: int = 16, out_features: int = 24, bias: bool = True) -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(in_features, out_features, bias=bias)


def x_in(in_features: int = 16) -> torch.Tensor:
    return torch.randn(2, 5, in_features, generator=torch.Generator().manual_seed(3))  # (B, T, in)


def randomize(layer, magnitude: bool = True) -> None:
    """Non-zero B (and a moved magnitude), as training would leave them."""
    with torch.no_grad():
        layer.lora_B.normal_(generator=torch.Generator().manual_seed(2))
        if magnitude and hasattr(layer, "lora_magnitude_vector"):
            layer.lora_magnitude_vector.mul_(1 + 0.3 * torch.rand(layer.lora_magnitude_vector.shape,
                                                                  generator=torch.Generator().manual_seed(4)))


def spectrum_matrix(out_features: int = 24, in_features: int = 16, seed: int = 5) -> torch.Tensor:
    """A (out, in) matrix with fast-decaying singular values, like a pretrained weight's."""
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(out_features, out_features, generator=g))
    Vm, _ = torch.linalg.qr(torch.randn(in_features, in_features, generator=g))
    k = min(out_features, in_features)
    S = 2.0 ** -torch.arange(k, dtype=torch.float32)                     # 1, 1/2, 1/4, ...
    return U[:, :k] @ torch.diag(S) @ Vm[:, :k].T


def row_norms(weight: torch.Tensor) -> torch.Tensor:
    return weight.pow(2).sum(dim=1).sqrt()                               # (out,)


# ---------------------------------------------------------------------------------------------
# 15.1 rsLoRA's scale
# ---------------------------------------------------------------------------------------------
@pytest.mark.exercise("15.1", points=1)
@pytest.mark.parametrize("alpha, r", [(16, 4), (8, 64), (1, 1), (32, 256)])
def test_rslora_scaling_is_alpha_over_sqrt_r(impl, alpha, r):
    variants = impl("lora_variants")
    got = variants.rslora_scaling(alpha, r)
    assert got == pytest.approx(alpha / r ** 0.5), f"rslora_scaling({alpha}, {r}) should be alpha / sqrt(r), got {got}"


@pytest.mark.exercise("15.1", points=1)
def test_rslora_keeps_the_update_size_across_ranks(impl):
    variants = impl("lora_variants")
    x = torch.randn(64, 256, generator=torch.Generator().manual_seed(0))            # (tokens, in)
    sizes = {}
    for r in (4, 16, 64, 256):
        g = torch.Generator().manual_seed(r)
        A, B = torch.randn(r, 256, generator=g) / 16, torch.randn(256, r, generator=g) / 16  # trained-like factors
        sizes[r] = (variants.rslora_scaling(16, r) * (x @ A.T @ B.T)).norm().item()
    ratio = sizes[256] / sizes[4]
    assert 0.5 < ratio < 2, f"with alpha / sqrt(r) the update's size should not depend on r; r=256 / r=4 = {ratio:.2f}"


# ---------------------------------------------------------------------------------------------
# 15.2 LoRA+'s two parameter groups
# ---------------------------------------------------------------------------------------------
def lora_model(impl, **config):
    lora = impl("lora")
    return lora.apply(tiny_llama(), lora.LoRAConfig(r=4, alpha=8, target_modules=("q_proj", "v_proj"), **config))


@pytest.mark.exercise("15.2", points=1)
def test_loraplus_groups_put_B_in_the_fast_group(impl):
    variants = impl("lora_variants")
    model = lora_model(impl)
    groups = variants.loraplus_param_groups(model, lr=1e-3, ratio=16)
    assert isinstance(groups, list) and len(groups) == 2, "return a list of two parameter groups"
    names = {id(p): n for n, p in model.named_parameters()}
    slow = sorted(names[id(p)].rsplit(".", 1)[-1] for p in groups[0]["params"])
    fast = sorted(names[id(p)].rsplit(".", 1)[-1] for p in groups[1]["params"])
    assert set(slow) == {"lora_A"} and len(slow) == 2 * L, f"the first group holds the lora_A factors, got {slow}"
    assert set(fast) == {"lora_B"} and len(fast) == 2 * L, f"the second group holds the lora_B factors, got {fast}"
    assert groups[0]["lr"] == pytest.approx(1e-3) and groups[1]["lr"] == pytest.approx(16e-3), \
        f"learning rates should be lr and lr * ratio, got {groups[0]['lr']} and {groups[1]['lr']}"


@pytest.mark.exercise("15.2", points=1)
def test_loraplus_groups_train_what_trains_and_nothing_frozen(impl):
    variants = impl("lora_variants")
    model = lora_model(impl, use_dora=True)
    groups = variants.loraplus_param_groups(model, lr=2e-4, ratio=4)
    grouped = [id(p) for g in groups for p in g["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(grouped) == sorted(trainable), "every trainable parameter belongs to exactly one group, frozen ones to none"
    fast = {id(p) for p in groups[1]["params"]}
    magnitudes = [p for n, p in model.named_parameters() if n.endswith("lora_magnitude_vector")]
    assert magnitudes and all(id(p) in fast for p in magnitudes), \
        "1-D trainable tensors (DoRA's magnitudes) go to the fast group, as in peft"
    opt = torch.optim.AdamW(groups)  # usable as is
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([2e-4, 8e-4])


# ---------------------------------------------------------------------------------------------
# 15.3 PiSSA's principal factors
# ---------------------------------------------------------------------------------------------
@pytest.mark.exercise("15.3", points=1)
def test_principal_factors_are_the_best_rank_r_approximation(impl):
    variants = impl("lora_variants")
    W = spectrum_matrix()
    A, B = variants.principal_factors(W, r=4, scaling=0.5)
    assert tuple(A.shape) == (4, 16) and tuple(B.shape) == (24, 4), \
        f"A should be (r, in) = (4, 16) and B (out, r) = (24, 4), got {tuple(A.shape)}, {tuple(B.shape)}"
    S = torch.linalg.svdvals(W)
    error = (W - 0.5 * B @ A).norm()
    assert error == pytest.approx(S[4:].norm().item(), rel=1e-4), \
        "scaling * B @ A should be W's best rank-r approximation: the error is the norm of the dropped singular values"


@pytest.mark.exercise("15.3", points=1)
def test_principal_factors_split_the_singular_values_evenly(impl):
    variants = impl("lora_variants")
    W = spectrum_matrix()
    A, B = variants.principal_factors(W, r=3, scaling=2.0)
    S = torch.linalg.svdvals(W)[:3]
    gram_A, gram_B = A @ A.T, B.T @ B                                   # (r, r) each
    assert torch.allclose(gram_A, torch.diag(S / 2.0), atol=1e-5), "A's rows: orthogonal, squared norms S / scaling"
    assert torch.allclose(gram_B, torch.diag(S / 2.0), atol=1e-5), "B's columns: orthogonal, squared norms S / scaling"


@pytest.mark.exercise("15.3", points=1)
def test_principal_factors_with_subspace_iterations_and_bf16(impl):
    variants = impl("lora_variants")
    W = spectrum_matrix().to(torch.bfloat16)
    A, B = variants.principal_factors(W, r=4, scaling=1.0, niter=4)
    assert A.dtype == torch.float32 and B.dtype == torch.float32, "the SVD and the factors are float32"
    best = torch.linalg.svdvals(W.float())[4:].norm()
    assert (W.float() - B @ A).norm() <= best * 1.05 + 1e-4, "niter=k: torch.svd_lowrank, close to the exact SVD"


# ---------------------------------------------------------------------------------------------
# 15.4 PiSSA's start and residual
# ---------------------------------------------------------------------------------------------
@pytest.mark.exercise("15.4", points=2)
@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_pissa_init_keeps_the_output_and_freezes_the_residual(impl, kind):
    lora, variants = impl("lora"), impl("lora_variants")
    torch.manual_seed(0)
    base = linear(16, 24) if kind == "linear" else Conv1D(24, 16)
    from labs.surgery import linear_weight
    with torch.no_grad():
        linear_weight(base).copy_(spectrum_matrix())
    layer = lora.LoRALinear(copy.deepcopy(base), r=4, alpha=8)
    x = x_in()
    variants.pissa_init(layer)
    W, W_res = linear_weight(base).detach(), linear_weight(layer.base_layer).detach()
    assert torch.count_nonzero(layer.lora_B) > 0, "PiSSA starts B (and A) from W's singular vectors, not zero"
    assert torch.allclose(W_res + layer.scaling * layer.lora_B @ layer.lora_A, W, atol=1e-6), \
        "the base weight must become the residual W - scaling * B @ A"
    assert W_res.norm() == pytest.approx(torch.linalg.svdvals(W)[4:].norm().item(), rel=1e-4), \
        "the residual holds only the singular values after the top r"
    assert torch.allclose(layer(x), base(x), atol=1e-5), "at the start the layer computes what the base did"


@pytest.mark.exercise("15.4", points=1)
def test_pissa_init_uses_the_principal_factors(impl):
    lora, variants = impl("lora"), impl("lora_variants")
    base = linear(16, 24)
    layer = lora.LoRALinear(copy.deepcopy(base), r=4, alpha=8, use_rslora=True)
    variants.pissa_init(layer, niter=None)
    A, B = variants.principal_factors(base.weight, 4, layer.scaling)
    assert torch.allclose(layer.lora_A, A, atol=1e-6) and torch.allclose(layer.lora_B, B, atol=1e-6), \
        "copy principal_factors(W, r, scaling) into lora_A and lora_B"
    assert layer.base_layer.weight.dtype == base.weight.dtype


# ---------------------------------------------------------------------------------------------
# 15.5 DoRA's weight norm and magnitude initialisation
# ---------------------------------------------------------------------------------------------
@pytest.mark.exercise("15.5", points=1)
@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_magnitude_starts_as_the_row_norms_of_W(impl, kind):
    variants = impl("lora_variants")
    torch.manual_seed(0)
    base = linear(16, 24) if kind == "linear" else Conv1D(24, 16)
    layer = variants.DoRALinear(copy.deepcopy(base), r=4, alpha=8)
    from labs.surgery import linear_weight
    m = layer.lora_magnitude_vector
    assert isinstance(m, nn.Parameter) and tuple(m.shape) == (24,), "one magnitude per output row, shape (out,)"
    assert torch.allclose(m, row_norms(linear_weight(base)), atol=1e-6), "m starts at ||W|| per output row"


@pytest.mark.exercise("15.5", points=1)
def test_weight_norm_follows_the_lora_update(impl):
    variants = impl("lora_variants")
    base = linear(16, 24)
    layer = variants.DoRALinear(copy.deepcopy(base), r=4, alpha=12)
    randomize(layer)
    adapted = base.weight + 3.0 * layer.lora_B @ layer.lora_A           # W + (alpha / r) B A
    norm = layer.weight_norm()
    assert tuple(norm.shape) == (24,), f"weight_norm is one number per output row, got {tuple(norm.shape)}"
    assert torch.allclose(norm, row_norms(adapted), atol=1e-5), "weight_norm is ||W + scaling * B @ A|| per output row"


# ---------------------------------------------------------------------------------------------
# 15.6 DoRA's forward
# ---------------------------------------------------------------------------------------------
def dora_weight(layer, detach: bool = False) -> torch.Tensor:
    """m * (W + s B A) / ||W + s B A||, written out: what the forward must compute without building it."""
    adapted = layer.base_layer.weight + layer.scaling * layer.lora_B @ layer.lora_A
    norm = row_norms(adapted)
    return (layer.lora_magnitude_vector / (norm.detach() if detach else norm)).unsqueeze(1) * adapted


@pytest.mark.exercise("15.6", points=1)
def test_dora_layer_equals_base_layer_at_init(impl):
    variants = impl("lora_variants")
    base = linear()
    layer = variants.DoRALinear(copy.deepcopy(base), r=4, alpha=8)
    x = x_in()
    out = layer(x)
    assert out is not None and torch.allclose(out, base(x), atol=1e-6), "with B = 0 and m = ||W||, DoRA returns base(x)"


@pytest.mark.exercise("15.6", points=2)
@pytest.mark.parametrize("bias", [True, False])
def test_dora_forward_uses_magnitude_times_direction(impl, bias):
    variants = impl("lora_variants")
    base = linear(bias=bias)
    layer = variants.DoRALinear(copy.deepcopy(base), r=4, alpha=8)
    randomize(layer)
    x = x_in()
    want = nn.functional.linear(x, dora_weight(layer), base.bias)       # (B, T, out)
    assert torch.allclose(layer(x), want, atol=1e-5), \
        "forward should compute x @ W'^T + bias with W' = m * (W + s B A) / ||W + s B A|| (the bias is not rescaled)"


@pytest.mark.exercise("15.6", points=1)
def test_dora_norm_is_a_constant_in_the_backward(impl):
    variants = impl("lora_variants")
    layer = variants.DoRALinear(linear(), r=4, alpha=8)
    randomize(layer)
    x = x_in()
    layer(x).pow(2).sum().backward()
    got = layer.lora_A.grad.clone(), layer.lora_magnitude_vector.grad.clone()
    layer.zero_grad()
    nn.functional.linear(x, dora_weight(layer, detach=True), layer.base_layer.bias).pow(2).sum().backward()
    assert torch.allclose(got[1], layer.lora_magnitude_vector.grad, atol=1e-4), "the magnitude m must get its gradient"
    assert torch.allclose(got[0], layer.lora_A.grad, atol=1e-4), \
        "detach the weight norm (weight_norm().detach()): gradients do not flow through it"


@pytest.mark.exercise("15.6", points=1)
def test_dora_forward_when_merged_and_on_bf16(impl):
    variants = impl("lora_variants")
    base = linear()
    layer = variants.DoRALinear(copy.deepcopy(base), r=4, alpha=8)
    randomize(layer)
    layer.merged = True
    assert torch.equal(layer(x_in()), base(x_in())), "while merged, forward returns base_layer(x) only"
    half = variants.DoRALinear(copy.deepcopy(base).to(torch.bfloat16), r=4, alpha=8)
    randomize(half)
    out = half(x_in().to(torch.bfloat16))
    assert out.dtype == torch.bfloat16, f"the output has the base layer's dtype, got {out.dtype}"


# ---------------------------------------------------------------------------------------------
# Invariants (not graded)
# ---------------------------------------------------------------------------------------------
TARGETS = ("q_proj", "v_proj", "o_proj", "gate_proj")


def trained(model, steps: int = 1):
    """`model` after AdamW steps on its trainable parameters, so that every factor has moved."""
    from labs.surgery import trainable_parameters
    opt = torch.optim.AdamW(trainable_parameters(model), lr=1e-2)
    for _ in range(steps):
        model(ids(), labels=ids()).loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


@pytest.mark.parametrize("variant", [dict(use_dora=True), dict(init="pissa"), dict(init="pissa", use_rslora=True)])
def test_variant_model_equals_the_base_at_init_and_merges_exactly(impl, variant):
    lora = impl("lora")
    want = tiny_llama()(ids()).logits
    model = lora.apply(tiny_llama(), lora.LoRAConfig(r=4, alpha=8, target_modules=TARGETS, **variant))
    assert torch.allclose(model(ids()).logits, want, atol=1e-5)
    trained(model)
    unmerged = model(ids()).logits
    assert not torch.allclose(unmerged, want, atol=1e-3), "training moved nothing"
    lora.merge(model)
    assert torch.allclose(model(ids()).logits, unmerged, atol=1e-5), "merged must equal unmerged"
    lora.unmerge(model)
    assert torch.allclose(model(ids()).logits, unmerged, atol=1e-5), "unmerge must restore the unmerged model"


def test_pissa_residual_plus_update_is_the_original_weight(impl):
    lora = impl("lora")
    from labs.surgery import linear_weight
    original = dict(tiny_llama().named_modules())
    model = lora.apply(tiny_llama(), lora.LoRAConfig(r=4, alpha=8, target_modules=TARGETS, init="pissa"))
    for name, layer in lora.lora_layers(model):
        W = linear_weight(original[name]).detach()
        assert torch.allclose(linear_weight(layer.base_layer) + layer.delta_weight(), W, atol=1e-6), name


def test_dora_trains_a_magnitude_per_output_row(impl):
    lora = impl("lora")
    from labs.surgery import count_parameters, linear_dims
    plain = count_parameters(lora_model(impl)).trainable
    dora = lora_model(impl, use_dora=True)
    outs = sum(linear_dims(m.base_layer)[1] for _, m in lora.lora_layers(dora))
    assert count_parameters(dora).trainable == plain + outs


def test_loraplus_ratio_reaches_the_training_loop(impl):
    from labs.train import TrainConfig, lr_at, make_optimizer
    model = lora_model(impl, loraplus_ratio=8.0)
    opt = make_optimizer(model, TrainConfig(lr=1e-3))
    scales = sorted(g["lr_scale"] for g in opt.param_groups)
    assert scales == [1.0, 8.0]
    fast = next(g for g in opt.param_groups if g["lr_scale"] == 8.0)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all("lora_B" in names[id(p)] for p in fast["params"])
    assert lr_at(5, TrainConfig(lr=1e-3)) > 0


@pytest.mark.parametrize("options, message", [
    ({"init": "olora"}, "init='olora'"), ({"loraplus_ratio": "0"}, "loraplus_ratio=0"),
    ({"use_dora": "maybe"}, "use_dora='maybe'"), ({"use_dora": "true", "init": "pissa"}, "DoRA or PiSSA"),
    ({"init": "pissa_niter_0"}, "pissa_niter_0")])
def test_bad_variant_options_are_refused_by_name(impl, options, message):
    lora = impl("lora")
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        lora.prepare_for_finetune(tiny_llama(), task=None, options=options)


def test_qlora_refuses_dora_and_pissa(impl):
    qlora = impl("qlora")
    with pytest.raises(ValueError, match="not supported with qlora"):
        qlora.QLoRAConfig(use_dora=True)


def test_to_rank_2r_refuses_a_plain_lora_adapter(impl):
    variants = impl("lora_variants")
    with pytest.raises(ValueError, match="PiSSA"):
        variants.to_rank_2r(lora_model(impl))


# ---------------------------------------------------------------------------------------------
# Parity with Hugging Face peft (not graded)
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def peft():
    import peft
    return peft


VARIANTS = {"dora": (dict(use_dora=True), dict(use_dora=True)),
            "pissa": (dict(init="pissa"), dict(init_lora_weights="pissa")),
            "pissa_rslora": (dict(init="pissa", use_rslora=True), dict(init_lora_weights="pissa", use_rslora=True))}


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("variant", VARIANTS)
def test_our_variant_adapter_loads_in_peft_with_the_same_logits(impl, peft, tmp_path, variant):
    lora = impl("lora")
    from labs.peft_format import load_adapter, save_adapter
    ours = trained(lora.apply(tiny_llama(), lora.LoRAConfig(r=4, alpha=8, target_modules=TARGETS,
                                                              **VARIANTS[variant][0])))
    save_adapter(ours, tmp_path)
    theirs = peft.PeftModel.from_pretrained(tiny_llama(), tmp_path).eval()
    with torch.no_grad():
        want = ours(ids()).logits
        assert max_diff(theirs(ids()).logits, want) <= PARITY_ATOL
        assert max_diff(load_adapter(tiny_llama(), tmp_path)(ids()).logits, want) <= PARITY_ATOL


@pytest.mark.parametrize("variant", VARIANTS)
def test_peft_variant_adapter_loads_here_with_the_same_logits(impl, peft, tmp_path, variant):
    impl("lora")
    from labs.peft_format import load_adapter
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=list(TARGETS), task_type="CAUSAL_LM",
                             **VARIANTS[variant][1])
    theirs = trained(peft.get_peft_model(tiny_llama(), config))
    theirs.save_pretrained(tmp_path)
    ours = load_adapter(tiny_llama(), tmp_path, method="lora")
    assert ours.labs_adapter.config.use_dora == ("dora" in variant)
    with torch.no_grad():
        assert max_diff(ours(ids()).logits, theirs(ids()).logits) <= PARITY_ATOL


def test_dora_on_gpt2_conv1d_matches_peft(impl, peft, tmp_path):
    lora = impl("lora")
    from labs.peft_format import save_adapter
    ours = trained(lora.apply(tiny_gpt2(), lora.LoRAConfig(r=4, alpha=8, target_modules=("c_attn",), use_dora=True)))
    save_adapter(ours, tmp_path)
    theirs = peft.PeftModel.from_pretrained(tiny_gpt2(), tmp_path).eval()
    with torch.no_grad():
        assert max_diff(theirs(ids()).logits, ours(ids()).logits) <= PARITY_ATOL


@pytest.mark.parametrize("rslora", [False, True])
def test_pissa_shared_as_rank_2r_lora_reproduces_the_fine_tuned_model(impl, peft, tmp_path, rslora):
    lora, variants = impl("lora"), impl("lora_variants")
    from labs.peft_format import load_adapter, read_adapter
    ours = trained(lora.apply(tiny_llama(), lora.LoRAConfig(r=4, alpha=8, target_modules=TARGETS, init="pissa",
                                                              use_rslora=rslora)), steps=3)
    variants.save_as_lora(ours, tmp_path)
    config, tensors = read_adapter(tmp_path)
    assert config["r"] == 8 and config["init_lora_weights"] is True
    assert all(t.shape[0] == 8 for k, t in tensors.items() if k.endswith("lora_A.weight"))
    with torch.no_grad():
        want = ours(ids()).logits
        on_original = load_adapter(tiny_llama(), tmp_path)(ids()).logits            # plain LoRA, original W
        in_peft = peft.PeftModel.from_pretrained(tiny_llama(), tmp_path).eval()(ids()).logits
    # the converted adapter computes W + s (B A - B0 A0) instead of (W - s B0 A0) + s B A: same
    # numbers summed in another order, so float32 rounding (about 1e-7 here), not an exact 0
    assert max_diff(on_original, want) <= PARITY_ATOL
    assert max_diff(in_peft, want) <= PARITY_ATOL


def test_peft_converted_pissa_adapter_loads_here(impl, peft, tmp_path):
    impl("lora")
    from labs.peft_format import load_adapter
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=list(TARGETS), init_lora_weights="pissa",
                             task_type="CAUSAL_LM")
    theirs = peft.get_peft_model(tiny_llama(), config)
    theirs.save_pretrained(tmp_path / "start")                     # the start, before training
    trained(theirs, steps=3)
    theirs.save_pretrained(tmp_path / "lora", path_initial_model_for_weight_conversion=str(tmp_path / "start"))
    ours = load_adapter(tiny_llama(), tmp_path / "lora")
    assert ours.labs_adapter.config.r == 8 and ours.labs_adapter.config.init == "default"
    with torch.no_grad():
        assert max_diff(ours(ids()).logits, theirs(ids()).logits) <= PARITY_ATOL


# ---------------------------------------------------------------------------------------------
# The real model (slow: loads SmolLM2-135M)
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("variant", ["dora", "pissa"])
def test_variant_on_smollm2_loads_in_peft_with_the_same_logits(impl, peft, tmp_path, variant):
    lora = impl("lora")
    from labs.models import load_model
    from labs.peft_format import save_adapter
    model, tok = load_model("smollm2-135m")
    prompt = tok(['Define the word "lantern".'], return_tensors="pt").input_ids  # (1, T)
    with torch.no_grad():
        base_logits = model(prompt).logits
    lora.apply(model, lora.LoRAConfig(r=8, alpha=16, **VARIANTS[variant][0]))
    with torch.no_grad():
        # identity at the start: DoRA exactly (m = ||W||); PiSSA up to the rounding of W_res + s B A
        assert max_diff(model(prompt).logits, base_logits) <= (0.0 if variant == "dora" else 1e-3)
        for _, layer in lora.lora_layers(model):
            layer.lora_B.add_(torch.randn(layer.lora_B.shape, generator=torch.Generator().manual_seed(2)) * 0.01)
        ours = model(prompt).logits
    save_adapter(model, tmp_path)
    theirs = peft.PeftModel.from_pretrained(load_model("smollm2-135m")[0], tmp_path).eval()
    with torch.no_grad():
        assert max_diff(theirs(prompt).logits, ours) <= 1e-4   # 30 layers of float32 on logits of order 10


# ---------------------------------------------------------------------------------------------
# The command line: labs finetune --option ..., labs compare --methods lora:...
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    return conftest.save_tiny_llama_folder(tmp_path_factory.mktemp("tiny-llama"))


def tiny_preset(**overrides):
    from labs.presets import get_preset
    return get_preset("quick", **{**dict(max_steps=2, batch_size=4, n_train=16, n_eval=8, n_probe=4, seq_len=32),
                                  **overrides})


@pytest.mark.parametrize("option, config_key, value", [("use_dora", "use_dora", True),
                                                       ("init", "init_lora_weights", "pissa")])
def test_finetune_saves_a_variant_adapter_that_peft_loads(impl, peft, tiny_model_dir, tmp_path, option, config_key, value):
    impl("lora")
    from labs.cli import parse_options
    from labs.finetune import run_finetune
    from labs.models import load_model
    from labs.peft_format import load_adapter, read_adapter
    options = parse_options([f"{option}={str(value).lower()}", "target_modules=q_proj,v_proj"])
    run_finetune("lora", str(tiny_model_dir), task="define", preset=tiny_preset(), out=tmp_path,
                 options=options, progress=False, impl="solutions")
    config, _ = read_adapter(tmp_path / "adapter")
    assert config[config_key] == value
    prompt = ids(1, 6) % 20                                             # the tiny vocabulary has 27 words
    ours = load_adapter(load_model(str(tiny_model_dir))[0].eval(), tmp_path / "adapter")
    theirs = peft.PeftModel.from_pretrained(load_model(str(tiny_model_dir))[0].eval(), tmp_path / "adapter").eval()
    with torch.no_grad():
        assert max_diff(ours(prompt).logits, theirs(prompt).logits) <= PARITY_ATOL


def test_finetune_refuses_a_bad_variant_value_by_name(impl, tiny_model_dir, tmp_path):
    impl("lora")
    from labs.finetune import run_finetune
    with pytest.raises(ValueError, match=r"init='olora' is not valid; use 'default', 'pissa'"):
        run_finetune("lora", str(tiny_model_dir), task="define", preset=tiny_preset(), out=tmp_path,
                     options={"init": "olora"}, progress=False, impl="solutions")


def test_compare_takes_lora_variants_as_entries(impl, tiny_model_dir, tmp_path, monkeypatch):
    impl("lora")
    from labs import compare
    from labs.finetune import run_finetune
    from labs.peft_format import read_adapter
    commands = []

    def launch(command, log):  # compare's child process, run here
        commands.append(command)
        options = dict(command[i + 1].split("=", 1) for i, arg in enumerate(command) if arg == "--option")
        run_finetune(command[command.index("--method") + 1], str(tiny_model_dir), task="define",
                     preset=tiny_preset(), out=command[command.index("--out") + 1], options=options,
                     progress=False, impl="solutions")
        return 0

    monkeypatch.setattr(compare, "_launch", launch)
    entries = ["lora", "lora:use_dora=true", "lora:loraplus_ratio=16:r=4"]
    rows = compare.run_compare(entries, str(tiny_model_dir), task="define", out=tmp_path, progress=False,
                               impl="solutions")
    assert [r["method"] for r in rows] == entries and all(r["status"] == "ok" for r in rows)
    assert read_adapter(tmp_path / "lora+use_dora=true" / "adapter")[0]["use_dora"] is True
    assert commands[2][-4:] == ["--option", "loraplus_ratio=16", "--option", "r=4"]
    assert compare.read_comparison(tmp_path)[2].keys() == set(entries)
    with pytest.raises(ValueError, match="not KEY=VALUE"):
        compare.run_compare(["lora:use_dora"], str(tiny_model_dir), out=tmp_path)
    with pytest.raises(ValueError, match="has no option 'dora'"):
        compare.run_compare(["lora:dora=true"], str(tiny_model_dir), out=tmp_path)


def test_variant_options_name_their_open_exercises_before_loading(tmp_path):
    from labs.finetune import run_finetune
    from labs.methods import open_exercises
    assert open_exercises("lora", "labs", {"use_dora": "true"})[-6:] == [f"15.{k}" for k in range(1, 7)]
    assert open_exercises("lora", "solutions", {"init": "pissa"}) == []
    assert not [ex for ex in open_exercises("lora", "labs", {"r": "4"}) if ex.startswith("15.")]
    with pytest.raises(NotImplementedError, match=r"labs/lora\.py, labs/lora_variants\.py"):
        run_finetune("lora", str(tmp_path / "no-such-model"), task="define", preset=tiny_preset(), out=tmp_path,
                     options={"use_dora": "true"}, progress=False, impl="labs")
    with pytest.raises(ValueError, match="loraplus_ratio=-1"):   # a bad value, before loading
        run_finetune("lora", str(tmp_path / "no-such-model"), task="define", preset=tiny_preset(), out=tmp_path,
                     options={"loraplus_ratio": "-1"}, progress=False, impl="solutions")
