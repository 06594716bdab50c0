"""The memory calculator of notebook 00: its arithmetic, and its controls (no browser here;
tests/test_browser.py drives it in JupyterLab)."""
import pytest

from labs import widgets
from labs.widgets import MODEL_SIZES, ModelShape, estimate, lora_params, memory_calculator, shape_for_params

SEVEN_B = MODEL_SIZES["7B (Llama-2-7B)"]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_full_finetune_costs_16_bytes_per_parameter_before_activations(precision):
    result = estimate(SEVEN_B, "full", precision)
    per_param = (result.weights + result.gradients + result.optimizer) / SEVEN_B.n_params
    assert per_param == pytest.approx(16), f"{precision}: {per_param} bytes per parameter"


def test_peft_methods_save_memory_in_the_expected_places():
    full, lora, qlora = (estimate(SEVEN_B, m, "bf16") for m in ("full", "lora", "qlora"))
    assert lora.optimizer < full.optimizer / 100, "LoRA keeps optimizer state only for its small matrices"
    assert lora.weights >= full.weights * 0.99, "LoRA keeps the frozen base at full size"
    assert qlora.weights < lora.weights / 3, "QLoRA stores the base in about 4 bits"
    assert full.activations == lora.activations == qlora.activations, "activations do not depend on the method"
    assert estimate(SEVEN_B, "full", batch_size=16).activations > full.activations


def test_lora_params_match_peft_on_every_linear_layer():
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    D, L, r = 48, 2, 4
    config = LlamaConfig(hidden_size=D, intermediate_size=8 * D // 3, num_hidden_layers=L, num_attention_heads=4,
                         num_key_value_heads=4, vocab_size=64)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=r, target_modules=targets))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert lora_params(ModelShape(0, D, L, 64), r) == trainable


def test_custom_shapes_are_plausible():
    shape = shape_for_params(SEVEN_B.n_params)
    assert 12 * shape.layers * shape.hidden ** 2 == pytest.approx(SEVEN_B.n_params, rel=0.2)
    assert shape.hidden % 64 == 0
    with pytest.raises(ValueError, match="n_params"):
        shape_for_params(0)


@pytest.mark.parametrize("kwargs, bad", [({"method": "adam"}, "adam"), ({"precision": "fp8"}, "fp8")])
def test_bad_choices_are_named(kwargs, bad):
    with pytest.raises(ValueError, match=bad):
        estimate(SEVEN_B, **kwargs)


def test_calculator_updates_its_total_when_the_model_changes():
    box = memory_calculator()
    model = next(c for c in box.children if "labs-memory-model" in c._dom_classes)
    total = next(c for c in box.children if "labs-memory-total" in c._dom_classes)
    before = total.value
    model.value = next(name for name in MODEL_SIZES if name.startswith("70B"))
    assert total.value != before and "GB" in total.value
    model.value = widgets.CUSTOM
    custom = next(c for c in box.children if "labs-memory-custom" in c._dom_classes)
    assert not custom.disabled, "the custom slider is enabled when 'custom' is chosen"


def test_more_gpus_shrink_each_gpus_share_under_fsdp_only():
    one = estimate(SEVEN_B, "full", "bf16")
    ddp = estimate(SEVEN_B, "full", "bf16", gpus=8, strategy="ddp")
    fsdp = estimate(SEVEN_B, "full", "bf16", gpus=8, strategy="fsdp")
    assert ddp.total == one.total, "DDP keeps a full replica on every GPU"
    assert fsdp.optimizer == pytest.approx(one.optimizer / 8) and fsdp.activations == one.activations
    assert fsdp.weights == pytest.approx(one.weights / 8 + one.weights / SEVEN_B.layers)  # + one gathered layer
    with pytest.raises(ValueError, match="gpus"):
        estimate(SEVEN_B, "full", gpus=0)


def test_calculator_shows_the_per_gpu_total_when_gpus_change():
    box = memory_calculator()
    control = {cls.removeprefix("labs-memory-"): c for c in box.children for cls in c._dom_classes
               if cls.startswith("labs-memory-")}
    single = control["total"].value
    control["gpus"].value = 8                       # the strategy starts on FSDP: the share shrinks
    assert "per GPU, 8 GPUs under FSDP" in control["total"].value and control["total"].value != single
    control["strategy"].value = "ddp"
    assert "8 GPUs under DDP" in control["total"].value
