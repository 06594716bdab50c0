"""Hidden graded tests for notebook 00 (the scaling arithmetic): the same exercises as the public
tests, checked on other inputs, so that an answer fitted to the public tests does not pass."""
from __future__ import annotations

import pytest

SIZES = (1, 135_000_000, 7_000_000_000)


@pytest.mark.exercise("0.1", points=1)
@pytest.mark.parametrize("n_params", SIZES)
def test_bytes_per_weight_halve_down_the_formats(impl, n_params):
    scaling = impl("scaling")
    fp32 = scaling.bytes_of_weights(n_params, "fp32")
    assert fp32 == 4 * n_params, f"fp32 should take 4 bytes a weight: {n_params} weights -> {fp32}"
    for dtype, share in (("bf16", 2), ("fp16", 2), ("int8", 4), ("nf4", 8)):
        got = scaling.bytes_of_weights(n_params, dtype)
        assert got == fp32 / share, f"{dtype} should take 1/{share} of fp32's bytes, got {got} for {n_params}"


@pytest.mark.exercise("0.2", points=1)
@pytest.mark.parametrize("precision", ("fp32", "mixed"))
def test_adamw_moments_stay_fp32_in_every_precision(impl, precision):
    scaling = impl("scaling")
    n = 1_000_003
    cost = scaling.full_finetune_bytes(n, precision)
    assert cost.optimizer == 8 * n, f"AdamW keeps m and v in fp32 (8 bytes a parameter) with {precision}"
    assert cost.total == cost.weights + cost.gradients + cost.optimizer


@pytest.mark.exercise("0.3", points=1)
def test_lora_count_is_symmetric_in_the_layer_sides(impl):
    scaling = impl("scaling")
    one = scaling.lora_trainable_params(d_in=576, d_out=192, r=4, n_layers=30, n_targets=2)
    other = scaling.lora_trainable_params(d_in=192, d_out=576, r=4, n_layers=30, n_targets=2)
    assert one == other == 30 * 2 * 4 * (576 + 192), "A (r, in) and B (out, r): r * (in + out) per layer"
    assert scaling.lora_trainable_params(576, 576, 8, 0, 4) == 0, "no layers, nothing to train"


@pytest.mark.exercise("0.4", points=1)
def test_one_task_with_an_adapter_costs_more_than_one_copy(impl):
    scaling = impl("scaling")
    storage = scaling.storage_for_tasks(1, base_bytes=1000.0, adapter_bytes=10.0)
    assert storage.full_copies == 1000.0 and storage.base_plus_adapters == 1010.0, \
        "one task: one full copy against the base plus one adapter"
    assert storage.saving_percent < 0, "with a single task PEFT storage saves nothing: the saving is negative"
