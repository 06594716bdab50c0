"""QLoRA (solutions/qlora.py): a frozen NF4 base two ways (our NF4Linear, bitsandbytes' Linear4bit)
with the course's LoRA on top. Not graded: the exercises are notebook 08's NF4 (tests/test_ex_quantization.py)
and notebook 05's LoRA; these tests check what is built from them, on tiny models.

Tolerance of "same loss both ways": the two bases hold the same NF4 bytes; their double-quantized
absmax codes may differ by one 8-bit level on a few per cent of the blocks (bitsandbytes' CPU search,
see test_ex_quantization.py), which moves those blocks' weights by about 0.5 % of their size. The losses
agree to 1e-3 relative; without double quantization, exactly.
"""
from __future__ import annotations

import copy
import sys

import pytest
import torch
from torch import nn

from conftest import tiny_gpt2, tiny_llama

pytest.importorskip("bitsandbytes")
V = 100


def ids(batch: int = 2, tokens: int = 16) -> torch.Tensor:
    return torch.randint(0, V, (batch, tokens), generator=torch.Generator().manual_seed(1))  # (B, T)


@pytest.fixture
def qlora(impl):
    return impl("qlora")


def trained(qlora, model, steps: int = 1, **config):
    """QLoRA on `model`, then `steps` AdamW steps (B leaves zero, so the LoRA path counts)."""
    config.setdefault("target_modules", "all-linear")
    model = qlora.apply(model, qlora.QLoRAConfig(r=4, alpha=8, **config))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        model(ids(), labels=ids()).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model


def copy_lora_factors(source: nn.Module, target: nn.Module) -> None:
    with torch.no_grad():
        for (name, p), (other, q) in zip(source.named_parameters(), target.named_parameters()):
            if p.requires_grad:
                assert name == other
                q.copy_(p)


@pytest.mark.parametrize("double_quant, rtol", [(True, 1e-3), (False, 1e-6)])
def test_scratch_and_bitsandbytes_give_the_same_loss(qlora, double_quant, rtol):
    ours = trained(qlora, tiny_llama(), double_quant=double_quant)
    theirs = qlora.apply(tiny_llama(), qlora.QLoRAConfig(r=4, alpha=8, target_modules="all-linear",
                                                          backend="bitsandbytes", double_quant=double_quant))
    copy_lora_factors(ours, theirs)   # the same trained LoRA factors on both bases
    with torch.no_grad():
        a, b = ours(ids(), labels=ids()).loss, theirs(ids(), labels=ids()).loss
    assert a.item() == pytest.approx(b.item(), rel=rtol)


@pytest.mark.parametrize("backend", ["scratch", "bitsandbytes"])
def test_codes_stay_frozen_and_only_lora_trains(qlora, backend):
    """Also: the gradient reaches the LoRA factors through the 4-bit layers (their custom backward)."""
    model = qlora.apply(tiny_llama(), qlora.QLoRAConfig(r=4, alpha=8, target_modules="all-linear", backend=backend))
    frozen = {n: t.clone() for n, t in model.state_dict().items() if "lora_" not in n}
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert lora_before and all("lora_" in n for n in lora_before), "only LoRA factors may train"
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        model(ids(), labels=ids()).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = model.state_dict()
    assert all(torch.equal(after[n], t) for n, t in frozen.items()), "a frozen code or constant changed"
    assert any(not torch.equal(p.detach(), lora_before[n]) for n, p in model.named_parameters() if p.requires_grad)


@pytest.mark.parametrize("backend", ["scratch", "bitsandbytes"])
def test_counting_counts_packed_weights_in_full(qlora, backend):
    from labs.surgery import count_parameters
    base = tiny_llama()
    full = count_parameters(base).total
    model = qlora.apply(copy.deepcopy(base), qlora.QLoRAConfig(r=4, alpha=8, backend=backend))
    counts = count_parameters(model)
    assert counts.total == full + counts.trainable, "the base keeps its parameter count when stored in 4 bits"
    naive = sum(p.numel() for p in model.parameters())
    quantized = sum(m.in_features * m.out_features for m in model.modules()
                    if isinstance(m, nn.Linear) and m.weight.dtype == torch.uint8)
    assert naive == counts.total - quantized // 2, "counting uint8 elements sees half of each packed weight"


def test_nf4_linear_reads_back_in_the_compute_dtype(qlora):
    torch.manual_seed(0)
    linear = nn.Linear(64, 32)
    layer = qlora.NF4Linear(copy.deepcopy(linear), compute_dtype=torch.bfloat16)
    x = torch.randn(2, 5, 64)                              # (B, T, in)
    out = layer(x)
    assert out.dtype == torch.float32 and out.shape == (2, 5, 32), "output in the input's dtype"
    w = layer.dequantized_weight()
    assert w.dtype == torch.bfloat16 and w.shape == (32, 64)
    want = nn.functional.linear(x.bfloat16(), w, linear.bias.bfloat16()).float()
    torch.testing.assert_close(out, want, atol=2e-2, rtol=2e-2)  # bf16: about 3 significant digits
    assert (w.float() - linear.weight).abs().max() < 0.2 * linear.weight.abs().max(), "NF4 error bound"
    assert layer.weight.dtype == torch.uint8 and layer.weight.numel() == 32 * 64 // 2


def test_nf4_linear_takes_gpt2_conv1d(qlora):
    model = tiny_gpt2(V, 32, 2, 2)
    want = model(ids()).logits
    qlora.quantize_model(model)
    got = model(ids()).logits
    assert (got - want).abs().max() < 0.5 and not torch.equal(got, want), "Conv1D's (in, out) weight must be transposed"


def test_weight_bytes_of_quantized_layers(qlora):
    torch.manual_seed(0)
    layer = qlora.NF4Linear(nn.Linear(576, 576, bias=False))
    held = sum(t.numel() * t.element_size() for t in [layer.weight, *layer.buffers()])
    assert held / (576 * 576 * 4) <= 0.16, "NF4 + double quantization keeps under 16 % of the fp32 bytes"
    assert held * 8 / (576 * 576) == pytest.approx(4.127, abs=0.01)


@pytest.mark.parametrize("backend", ["scratch", "bitsandbytes"])
def test_merge_after_qlora_matches_and_requantizing_rounds(qlora, backend):
    model = trained(qlora, tiny_llama(), backend=backend)
    with torch.no_grad():
        before = model(ids()).logits          # training mode (no dropout): every backend's fp32 path
        merged = qlora.merge_and_unload(model).eval()
        after = merged(ids()).logits
    kinds = {type(m).__name__ for m in merged.modules()}
    assert not kinds & {"LoRALinear", "NF4Linear", "Linear4bit"}, f"a plain model after merging, got {kinds}"
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        again = copy.deepcopy(merged)
        qlora.quantize_model(again)
        rounding = (again(ids()).logits - after).abs().max()
    assert rounding > 1e-4, "storing the merged weights in NF4 again rounds them anew"


def test_merge_after_bitsandbytes_repacked_its_codes_for_the_cpu(qlora):
    """On a CPU with AVX512-BF16, Linear4bit's first eval forward repacks its codes in place for a
    bf16 kernel (scales in bf16); reading the packed bytes as the original layout gave logits 0.58
    off. Merged now within bf16's rounding of the repacked model's own output."""
    pytest.importorskip("bitsandbytes")
    model = trained(qlora, tiny_llama(), backend="bitsandbytes").eval()
    with torch.no_grad():
        before = model(ids()).logits
        layer = model.model.layers[0].self_attn.q_proj.base_layer
        repacked = getattr(layer.weight.quant_state, "packing_format_for_cpu", False)
        after = qlora.merge_and_unload(model)(ids()).logits
    # bf16 kernel and bf16 scales: about 3 significant digits of logits of size ~0.6
    torch.testing.assert_close(after, before, atol=5e-3, rtol=0)
    if not repacked:
        pytest.skip("this CPU has no AVX512-BF16: bitsandbytes did not repack, the first test covers it")


def test_lora_merge_into_packed_codes_is_refused(qlora, impl):
    model = trained(qlora, tiny_llama())
    with pytest.raises(TypeError, match="dequantize"):
        impl("lora").merge(model)


def test_saved_adapter_loads_in_peft_on_the_dequantized_base(qlora, tmp_path):
    peft = pytest.importorskip("peft")
    from labs.peft_format import save_adapter
    ours = trained(qlora, tiny_llama(), target_modules=("q_proj", "v_proj", "down_proj")).eval()
    save_adapter(ours, tmp_path)
    base = tiny_llama()
    qlora.quantize_model(base)
    qlora.dequantize_model(base)                 # the full-precision base the 4-bit one stands for
    theirs = peft.PeftModel.from_pretrained(base, tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids()).logits, ours(ids()).logits, atol=1e-4, rtol=1e-4)
        on_original = peft.PeftModel.from_pretrained(tiny_llama(), tmp_path).eval()(ids()).logits
    assert (on_original - ours(ids()).logits).abs().max() < 0.5, "on the original base only NF4's error remains"


def test_bad_input_is_named(qlora, monkeypatch):
    with pytest.raises(ValueError, match="no linear layer to quantize"):
        qlora.apply(nn.Sequential(nn.Embedding(10, 4)), qlora.QLoRAConfig())
    with pytest.raises(ValueError, match="backend='gguf'"):
        qlora.QLoRAConfig(backend="gguf")
    with pytest.raises(ValueError, match="block_size=48"):
        qlora.QLoRAConfig(block_size=48)
    model = qlora.apply(tiny_llama(), qlora.QLoRAConfig())
    with pytest.raises(ValueError, match="already"):
        qlora.apply(model, qlora.QLoRAConfig())
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)   # as if it were not installed
    with pytest.raises(ImportError, match="needs the bitsandbytes package"):
        qlora.apply(tiny_llama(), qlora.QLoRAConfig(backend="bitsandbytes"))


def test_registry_runs_qlora_and_names_open_exercises(qlora):
    from labs.methods import open_exercises, prepare
    model = prepare("qlora", tiny_llama(), None, {"backend": "bitsandbytes", "r": "4"}, impl="solutions")
    assert type(model.model.layers[0].self_attn.q_proj.base_layer).__name__ == "Linear4bit"
    todo = open_exercises("qlora", "labs")
    assert "8.1" in todo and "5.1" in todo, "an unfinished quantization or LoRA exercise must stop a qlora run"
    assert open_exercises("qlora", "solutions") == []


@pytest.mark.slow
def test_real_model_base_bytes_ratio(qlora):
    from labs.models import load_model
    model, _ = load_model("smollm2-135m")
    fp32 = {n: m.weight.numel() * 4 for n, m in model.named_modules() if isinstance(m, nn.Linear) and "lm_head" not in n}
    names = qlora.quantize_model(model)
    assert sorted(names) == sorted(fp32)
    held = sum(sum(t.numel() * t.element_size() for t in [m.weight, *m.buffers()])
               for n, m in model.named_modules() if n in fp32)
    assert held / sum(fp32.values()) <= 0.16


def test_nf4_backward_gives_the_input_gradient_of_the_dequantized_weight(qlora):
    torch.manual_seed(0)
    layer = qlora.NF4Linear(nn.Linear(64, 32))
    x = torch.randn(2, 5, 64, requires_grad=True)          # (B, T, in)
    layer(x).pow(2).sum().backward()
    x2 = x.detach().clone().requires_grad_()
    nn.functional.linear(x2, layer.dequantized_weight(), layer.bias).pow(2).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)


def test_finetune_metrics_report_base_bytes_and_bits(qlora):
    from labs.finetune import _base_weights
    from labs.methods import prepare
    from labs.surgery import count_parameters
    got = {}
    for method, options in [("lora", {}), ("qlora", {}), ("qlora", {"backend": "bitsandbytes"})]:
        model = prepare(method, tiny_llama(), None, options, impl="solutions")
        got[method + str(options)] = _base_weights(method, model, count_parameters(model))
    assert got["lora{}"]["base_bits_per_param"] == pytest.approx(32, abs=0.1)   # fp32 (+ the rotary buffer)
    for key in ("qlora{}", "qlora{'backend': 'bitsandbytes'}"):
        # the tiny model's embedding and head (12,800 of 86,848 weights) stay fp32; its linears take 4.127 bits
        assert 4.1 < got[key]["base_bits_per_param"] < 10, key
        assert got[key]["base_weight_bytes"] < got["lora{}"]["base_weight_bytes"] / 3
