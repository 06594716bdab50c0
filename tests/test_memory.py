"""The memory model's arithmetic, and the measurements it is held against."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import tiny_llama
from labs import memory
from labs.memory import MemoryEstimate, estimate_memory, measure_activations, measure_components, measure_peak

MB = 2 ** 20


# ---------------------------------------------------------------------------------------------
# Analytic model
# ---------------------------------------------------------------------------------------------
def test_full_fine_tune_pays_gradients_and_adam_states_for_every_weight():
    est = estimate_memory(7e9, "full", weight_bytes="bf16")
    assert est.weights == 14e9 and est.gradients == 14e9
    assert est.optimizer == 7e9 * 2 * 4                     # two fp32 moments per parameter
    assert est.activations == 0                             # no D and L given
    assert est.total == est.weights + est.gradients + est.optimizer
    assert est.gb("total") == pytest.approx(est.total / 1e9)


def test_master_weights_give_zero_paper_16_bytes_per_parameter():
    est = estimate_memory(1e9, "full", weight_bytes=2, master_weights=True)
    assert (est.weights + est.gradients + est.optimizer) / 1e9 == pytest.approx(2 + 2 + 12)


def test_lora_optimizer_and_gradients_scale_with_trainable_params_only():
    a = estimate_memory(7e9, "lora", trainable_params=4_000_000)
    b = estimate_memory(7e9, "lora", trainable_params=8_000_000)
    c = estimate_memory(70e9, "lora", trainable_params=4_000_000)
    assert b.optimizer == 2 * a.optimizer and b.gradients == 2 * a.gradients
    assert c.optimizer == a.optimizer and c.gradients == a.gradients
    assert c.weights > a.weights
    assert a.optimizer < estimate_memory(7e9, "full").optimizer / 1000


def test_lora_adds_its_weights_bitfit_trains_a_subset():
    lora = estimate_memory(1e9, "lora", trainable_params=1e6, weight_bytes=2)
    bitfit = estimate_memory(1e9, "bitfit", trainable_params=1e6, weight_bytes=2)
    assert lora.weights == 1e9 * 2 + 1e6 * 2
    assert bitfit.weights == 1e9 * 2


def test_qlora_stores_the_base_in_about_half_a_byte_per_weight():
    qlora = estimate_memory(7e9, "lora", trainable_params=4e6, weight_bytes="nf4-dq")  # QLoRA: LoRA on NF4
    lora = estimate_memory(7e9, "lora", trainable_params=4e6)
    assert 0.5 < (qlora.weights - 4e6 * 2) / 7e9 < 0.53     # 4 bits + double-quantised constants
    assert qlora.weights < lora.weights / 3
    assert memory.BYTES_PER_PARAM["nf4"] > memory.BYTES_PER_PARAM["nf4-dq"] > 0.5


def test_optimizer_choice_changes_only_optimizer_bytes():
    adam = estimate_memory(1e9, "full", optimizer="adamw")
    adam8 = estimate_memory(1e9, "full", optimizer="adamw8bit")
    sgd = estimate_memory(1e9, "full", optimizer="sgd")
    assert adam.optimizer == 4 * adam8.optimizer and sgd.optimizer == 0
    assert adam.weights == sgd.weights and adam.gradients == sgd.gradients


def test_activations_grow_with_batch_and_checkpointing_lowers_them():
    shape = dict(hidden=576, layers=30, seq_len=128)
    one = estimate_memory(135e6, "full", batch_size=1, **shape)
    eight = estimate_memory(135e6, "full", batch_size=8, **shape)
    ckpt = estimate_memory(135e6, "full", batch_size=8, checkpointing=True, **shape)
    assert eight.activations == pytest.approx(8 * one.activations)
    assert one.activations == 34 * 1 * 128 * 576 * 30       # Korthikanti et al., 16-bit, no scores
    assert ckpt.activations < eight.activations / 5
    assert ckpt.weights == eight.weights and ckpt.optimizer == eight.optimizer


@pytest.mark.parametrize("kwargs, word", [
    (dict(method="sparse"), "method"),
    (dict(method="lora"), "trainable_params"),
    (dict(optimizer="adam9"), "optimizer"),
    (dict(weight_bytes="int3"), "weight_bytes"),
    (dict(method="bitfit", trainable_params=2e9), "trainable_params"),
])
def test_bad_input_names_the_bad_value(kwargs, word):
    with pytest.raises(ValueError, match=word):
        estimate_memory(1e9, **kwargs)


def test_gb_rejects_unknown_part():
    with pytest.raises(ValueError, match="weights, gradients"):
        MemoryEstimate(1, 2, 3, 4).gb("params")


# ---------------------------------------------------------------------------------------------
# Measured tensors
# ---------------------------------------------------------------------------------------------
def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))


def _step(model, optimizer):
    model(torch.randn(3, 8)).sum().backward()
    optimizer.step()


def test_measure_components_counts_real_fp32_bytes():
    model = _mlp()
    n_params = 8 * 4 + 4 + 4 * 2 + 2
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    before = measure_components(model, optimizer)
    assert before.weights == n_params * 4 and before.gradients == 0 and before.optimizer == 0
    _step(model, optimizer)
    after = measure_components(model, optimizer)
    assert after.gradients == n_params * 4
    assert after.optimizer == n_params * 4                  # one momentum buffer per weight


def test_frozen_layers_have_no_gradients_and_no_adam_states():
    model = _mlp()
    model[0].requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=0.1)
    _step(model, optimizer)
    got = measure_components(model, optimizer)
    n_trainable = 4 * 2 + 2
    assert got.gradients == n_trainable * 4
    # exp_avg and exp_avg_sq in fp32 per weight, plus one fp32 step counter per tensor
    assert got.optimizer == n_trainable * 2 * 4 + len(trainable) * 4


def test_tied_weights_are_counted_once():
    emb = nn.Embedding(10, 4)
    head = nn.Linear(4, 10, bias=False)
    head.weight = emb.weight
    assert measure_components(nn.ModuleList([emb, head])).weights == 10 * 4 * 4


def _tiny_llama():
    return tiny_llama(64, 32, 64, eval_mode=False)  # the shared tiny Llama (tests/conftest.py), training mode


def _batch(b, t=16):
    ids = torch.randint(0, 64, (b, t))
    return {"input_ids": ids, "labels": ids}


def test_activations_scale_with_batch_and_vanish_when_frozen():
    model = _tiny_llama()
    two, four = measure_activations(model, _batch(2)), measure_activations(model, _batch(4))
    assert two > 0 and four == pytest.approx(2 * two, rel=0.1)
    model.requires_grad_(False)
    assert measure_activations(model, _batch(2)) == 0        # nothing to differentiate: nothing kept


def test_gradient_checkpointing_lowers_measured_activations():
    model = _tiny_llama()
    plain = measure_activations(model, _batch(4))
    model.activation_checkpointing_enable()
    assert measure_activations(model, _batch(4)) < plain / 2


def test_measure_components_with_a_batch_fills_activations():
    model = _tiny_llama()
    got = measure_components(model, batch=_batch(2))
    assert got.activations == measure_activations(model, _batch(2))


# ---------------------------------------------------------------------------------------------
# Peak memory of a run (child processes: module-level functions only)
# ---------------------------------------------------------------------------------------------
def hold_megabytes(n: int) -> None:
    block = torch.ones(n * MB // 4)     # fp32: written, so the pages are really resident
    assert block.sum() > 0


def fail_on_purpose() -> None:
    raise ValueError("broken run")


def test_measure_peak_on_cpu_sees_a_bigger_allocation():
    small = measure_peak(hold_megabytes, 8, baseline=None)
    big = measure_peak(hold_megabytes, 256)
    assert small.peak_bytes > 0 and small.baseline_bytes is None and small.device == "cpu"
    assert big.peak_bytes - small.peak_bytes > 200 * MB
    assert big.above_baseline > 200 * MB                     # baseline: Python + torch, no tensors


def test_measure_peak_reports_the_failure_of_the_run():
    with pytest.raises(RuntimeError, match="broken run"):
        measure_peak(fail_on_purpose, baseline=None)


def test_measure_peak_rejects_unsupported_device():
    with pytest.raises(ValueError, match="mps"):
        measure_peak(hold_megabytes, 1, device="mps")


# ---------------------------------------------------------------------------------------------
# One training step measured part by part (notebook 09)
# ---------------------------------------------------------------------------------------------
def test_init_optimizer_state_creates_adam_moments_without_moving_a_weight():
    model = _tiny_llama()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.1)  # decay would move weights at lr > 0
    memory.init_optimizer_state(optimizer)
    n_params = sum(p.numel() for p in model.parameters())
    assert measure_components(model, optimizer).optimizer >= 2 * 4 * n_params   # two fp32 moments per weight
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert all(p.grad is None for p in model.parameters())                     # freed again
    assert optimizer.param_groups[0]["lr"] == 0.1                              # restored


def test_measure_step_counts_each_part_on_real_tensors():
    model = _tiny_llama()
    for name, p in model.named_parameters():
        p.requires_grad_("q_proj" in name)                                      # a PEFT-like run
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    memory.init_optimizer_state(optimizer)
    state = measure_components(model, optimizer).optimizer
    torch.manual_seed(0)
    batch = _batch(2)
    got = memory.measure_step(model, batch, optimizer)
    assert got.weights == memory.weight_bytes(model)
    assert got.gradients == sum(p.numel() * 4 for p in trainable)
    assert got.optimizer == state and got.held_before == state                  # steady state: nothing new
    assert got.activations == measure_activations(model, batch) > 0
    assert all(p.grad is None for p in model.parameters())                      # gradients freed after the step
    if got.added is not None:
        assert got.peak == got.weights + got.held_before + got.added
        assert got.other == got.peak - got.parts_total


class _BigTemporary(nn.Module):
    """A loss whose forward holds a large temporary while the backward has not started."""

    def __init__(self, megabytes: int):
        super().__init__()
        self.w = nn.Parameter(torch.ones(4))
        self.n = megabytes * MB // 4

    def forward(self, x):
        big = torch.ones(self.n) * 2        # written: resident
        return type("Out", (), {"loss": (self.w * x).sum() + big[0] * 0})()


@pytest.mark.skipif(not memory.reset_peak(torch.device("cpu")), reason="no windowed peak on this system")
def test_measure_step_sees_a_temporary_that_no_part_names():
    model = _BigTemporary(128)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    # Linux batches resident-memory counters per CPU, so on a busy machine a window can open on a
    # stale high-water mark: of three steps, the optimizer's own window must read low at least once.
    steps = [memory.measure_step(model, {"x": torch.ones(4)}, optimizer) for _ in range(3)]
    for got in steps:
        assert got.activations < MB and got.gradients == 16
        assert got.added_backward > 100 * MB and got.other > 100 * MB          # peak minus the four parts
    best = min(steps, key=lambda s: s.added_optimizer)
    assert best.added_optimizer < best.added_backward / 2 and best.peak_phase == "backward"  # SGD adds ~nothing


def test_step_memory_peak_is_the_larger_phase_or_none():
    step = memory.StepMemory(weights=10, gradients=2, optimizer=4, activations=3, held_before=4,
                             added_backward=5, added_optimizer=7)
    assert step.added == 7 and step.peak_phase == "optimizer step" and step.peak == 21
    assert step.parts_total == 19 and step.other == 2
    blind = memory.StepMemory(10, 2, 4, 3, 4, None, None)
    assert blind.added is None and blind.peak is None and blind.other is None and blind.peak_phase is None


def _without_proc(monkeypatch):
    """This process as macOS or Windows see it: no /proc (so no resettable peak, no VmHWM), no malloc_trim."""
    def open_without_proc(file, *args, **kwargs):
        if str(file).startswith("/proc/"):
            raise FileNotFoundError(2, "No such file or directory", str(file))
        return open(file, *args, **kwargs)
    monkeypatch.setattr(memory, "open", open_without_proc, raising=False)   # shadows the builtin in labs.memory
    monkeypatch.setattr(memory, "release_freed_memory", lambda: False)


def test_measure_step_without_a_peak_window_counts_the_parts_and_says_why(monkeypatch):
    _without_proc(monkeypatch)
    assert memory.reset_peak(torch.device("cpu")) is False
    model = _tiny_llama()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    memory.init_optimizer_state(optimizer)
    state = measure_components(model, optimizer).optimizer
    batch = _batch(2)
    got = memory.measure_step(model, batch, optimizer)
    n_params = sum(p.numel() for p in model.parameters())
    assert got.weights == memory.weight_bytes(model) and got.gradients == 4 * n_params
    assert got.optimizer == state == got.held_before and got.activations == measure_activations(model, batch) > 0
    assert got.parts_total == got.weights + got.gradients + got.optimizer + got.activations
    assert got.added is got.peak is got.other is got.peak_phase is None
    assert got.why_no_peak == memory.NO_PEAK_WINDOW and "Linux" in got.why_no_peak


def test_a_measured_step_has_no_reason_for_a_missing_peak():
    step = memory.StepMemory(10, 2, 4, 3, 4, added_backward=5, added_optimizer=7)
    assert step.why_no_peak is None


def test_format_measured_prints_n_a_for_a_figure_not_measured():
    blind = memory.StepMemory(10 * MB, 2 * MB, 4 * MB, 3 * MB, 4 * MB, None, None)
    assert memory.format_measured(blind.weights, "8.1f", MB) == "    10.0"
    assert memory.format_measured(blind.peak, "8.1f", MB) == "     n/a"          # same width as a number
    assert memory.format_measured(-0.125, "+7.1%") == " -12.5%"
    assert memory.format_measured(None, "+7.1%") == "    n/a"
    assert memory.format_measured(None, ".1f") == "n/a"
    row = " ".join(memory.format_measured(getattr(blind, f), "8.1f", MB)
                   for f in ("weights", "activations", "peak", "other"))
    assert row == "    10.0      3.0      n/a      n/a"


def test_release_freed_memory_works_on_glibc():
    import platform
    ok = memory.release_freed_memory()
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert ok
