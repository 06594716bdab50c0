"""Graded tests for exercises 0.1-0.4 (notebooks/00_welcome.ipynb): the scaling arithmetic.

Where possible the expected numbers are measured, not restated: byte widths come from torch's
own tensors, AdamW's state from a real optimizer step, LoRA's count from peft.
"""
import pytest
import torch
from torch import nn

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": torch.int8}


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


# ---------------------------------------------------------------------------------------------
# 0.1 bytes_of_weights
# ---------------------------------------------------------------------------------------------
@pytest.mark.exercise("0.1", points=1)
def test_bytes_of_weights_match_torch_storage(impl):
    scaling = impl("scaling")
    n = 1_234_567
    for name, dtype in TORCH_DTYPES.items():
        measured = torch.empty(n, dtype=dtype).element_size() * n
        got = scaling.bytes_of_weights(n, name)
        assert got == measured, f"bytes_of_weights({n}, {name!r}) = {got}; a {name} tensor of {n} weights takes {measured} bytes"
    got = scaling.bytes_of_weights(n, "nf4")
    assert got == n * 4 / 8, f"bytes_of_weights({n}, 'nf4') = {got}; nf4 stores 4 bits per weight (half a byte)"


@pytest.mark.exercise("0.1", points=1)
def test_bytes_of_weights_rejects_unknown_dtype(impl):
    scaling = impl("scaling")
    with pytest.raises(ValueError, match="float64"):
        scaling.bytes_of_weights(10, "float64")


# ---------------------------------------------------------------------------------------------
# 0.2 full_finetune_bytes
# ---------------------------------------------------------------------------------------------
@pytest.mark.exercise("0.2", points=2)
def test_full_finetune_fp32_matches_a_real_adamw_step(impl):
    scaling = impl("scaling")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(48, 32), nn.GELU(), nn.Linear(32, 8))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 48)).pow(2).mean().backward()
    optimizer.step()
    params = list(model.parameters())
    moments = [s[k] for s in optimizer.state.values() for k in ("exp_avg", "exp_avg_sq")]
    n = sum(p.numel() for p in params)

    got = scaling.full_finetune_bytes(n, "fp32")
    assert got.weights == tensor_bytes(params), f"weights: got {got.weights}, the fp32 model holds {tensor_bytes(params)} bytes"
    assert got.gradients == tensor_bytes(p.grad for p in params), "gradients: one fp32 gradient per parameter"
    assert got.optimizer == tensor_bytes(moments), f"optimizer: AdamW holds {tensor_bytes(moments)} bytes of moments (m and v)"


@pytest.mark.exercise("0.2", points=1)
def test_full_finetune_mixed_precision(impl):
    scaling = impl("scaling")
    n = 1000
    fp32, mixed = scaling.full_finetune_bytes(n, "fp32"), scaling.full_finetune_bytes(n, "mixed")
    bf16 = torch.empty(0, dtype=torch.bfloat16).element_size()
    assert mixed.gradients == n * bf16, "mixed precision: gradients are bf16"
    assert mixed.weights == n * (bf16 + 4), "mixed precision: a bf16 working copy plus an fp32 master copy"
    assert mixed.optimizer == fp32.optimizer, "AdamW's moments stay fp32 in both recipes"
    assert mixed.total == fp32.total, "both recipes cost the same bytes per parameter in total"
    with pytest.raises(ValueError, match="fp8"):
        scaling.full_finetune_bytes(n, "fp8")


# ---------------------------------------------------------------------------------------------
# 0.3 lora_trainable_params
# ---------------------------------------------------------------------------------------------
@pytest.mark.exercise("0.3", points=2)
def test_lora_count_matches_peft(impl):
    scaling = impl("scaling")
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    D, L, r = 64, 2, 4  # gate_proj maps D -> intermediate, up_proj likewise: same shape, two targets
    config = LlamaConfig(hidden_size=D, intermediate_size=96, num_hidden_layers=L, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=128)
    model = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=r, target_modules=["gate_proj", "up_proj"]))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    got = scaling.lora_trainable_params(D, 96, r, L, 2)
    assert got == trainable, f"got {got}; peft trains {trainable} parameters for rank {r} on 2 targets x {L} layers"


@pytest.mark.exercise("0.3", points=1)
def test_lora_count_grows_linearly_in_rank_and_rejects_rank_zero(impl):
    scaling = impl("scaling")
    one = scaling.lora_trainable_params(576, 576, 1, 30, 2)
    assert scaling.lora_trainable_params(576, 576, 8, 30, 2) == 8 * one, "the count is linear in r"
    assert one == 30 * 2 * (576 + 576), "rank 1: one row of A (d_in) and one column of B (d_out) per wrapped layer"
    with pytest.raises(ValueError):
        scaling.lora_trainable_params(576, 576, 0, 30, 2)


# ---------------------------------------------------------------------------------------------
# 0.4 storage_for_tasks
# ---------------------------------------------------------------------------------------------
@pytest.mark.exercise("0.4", points=2)
def test_storage_for_ten_tasks_on_a_70b_model(impl):
    scaling = impl("scaling")
    base = 70e9 * 2      # 70B parameters in a 16-bit format
    adapter = 100e6      # a typical LoRA adapter file
    got = scaling.storage_for_tasks(10, base, adapter)
    assert got.full_copies == pytest.approx(10 * base), "ten tasks as full fine-tunes: ten whole copies"
    assert got.base_plus_adapters == pytest.approx(base + 10 * adapter), "one base, shared, plus ten adapters"
    assert got.saving_percent > 80, f"saving {got.saving_percent:.1f}%: one base + ten adapters should save over 80%"


@pytest.mark.exercise("0.4", points=1)
def test_storage_for_one_task_saves_nothing(impl):
    scaling = impl("scaling")
    got = scaling.storage_for_tasks(1, 1000.0, 10.0)
    assert got.saving_percent < 0, "with one task, base + adapter is bigger than one full copy"
    with pytest.raises(ValueError):
        scaling.storage_for_tasks(-1, 1000.0, 10.0)


# ---------------------------------------------------------------------------------------------
# Invariants of the shared helpers (not graded)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad, error", [(-3, ValueError), (2.5, TypeError), ("7", TypeError), (True, TypeError)])
def test_check_count_rejects_bad_counts(impl, bad, error):
    scaling = impl("scaling")
    with pytest.raises(error, match="n_params"):
        scaling.check_count(bad, "n_params")


def test_check_count_accepts_whole_floats(impl):
    assert impl("scaling").check_count(70e9, "n_params") == 70_000_000_000
