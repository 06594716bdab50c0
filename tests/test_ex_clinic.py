"""Graded tests for notebook 14 (when fine-tuning goes wrong), exercises 14.1-14.9: each detector
finds its failure in a recorded broken run and stays silent on healthy ones.

The runs are tiny Llama fine-tunes recorded as `labs finetune` records them (tests/clinic_runs.py):
each broken run makes one classic mistake (labs/failures.py). The loss detectors are also run over
the recorded comparison's healthy SmolLM2-135M runs of every method.
"""
from __future__ import annotations

import math

import pytest

import clinic_runs
from clinic_runs import broken, healthy, recorded_loss_records

HEALTHY = ("full", "lora", "adapter")   # tiny runs every detector must leave alone


@pytest.fixture
def which(request):
    return request.config.getoption("--impl")


def found(clinic, name: str, record: dict):
    """The detector's diagnosis of `record`, checked to be a complete Diagnosis."""
    diagnosis = getattr(clinic, name)(record)
    assert diagnosis is not None, f"{name} found nothing in a run that has exactly that failure"
    assert isinstance(diagnosis, clinic.Diagnosis), f"{name} should return a Diagnosis, got {type(diagnosis).__name__}"
    for field in ("name", "evidence", "fix"):
        text = getattr(diagnosis, field)
        assert isinstance(text, str) and text.strip(), f"the diagnosis' {field} should be a sentence, got {text!r}"
    return diagnosis


def silent_on_healthy(clinic, name: str, which: str, methods=HEALTHY) -> None:
    for method in methods:
        diagnosis = getattr(clinic, name)(healthy(method, which))
        assert diagnosis is None, f"{name} raised an alarm on a healthy {method} run: {diagnosis}"


# ---------------------------------------------------------------------------------------------
# 14.1 optimizer_misses_trainable
# ---------------------------------------------------------------------------------------------
@pytest.mark.exercise("14.1", points=2)
def test_optimizer_built_before_wrapping_is_found(impl, which):
    clinic = impl("clinic")
    record = broken("optimizer_misses_trainable", which)
    diagnosis = found(clinic, "optimizer_misses_trainable", record)
    assert f"{record['trainable_params']:,}" in diagnosis.evidence, \
        f"the evidence should give the model's trainable count ({record['trainable_params']:,}): {diagnosis.evidence}"
    silent_on_healthy(clinic, "optimizer_misses_trainable", which)


@pytest.mark.exercise("14.1", points=1)
def test_optimizer_missing_a_part_is_found(impl, which):
    clinic = impl("clinic")
    record = dict(healthy("lora", which))
    record["optimizer_trainable_params"] = record["trainable_params"] // 2   # only half of the tensors handed over
    found(clinic, "optimizer_misses_trainable", record)
    assert clinic.optimizer_misses_trainable(healthy("lora", which)) is None


# ---------------------------------------------------------------------------------------------
# 14.2 no_gradient
# ---------------------------------------------------------------------------------------------
@pytest.mark.exercise("14.2", points=2)
def test_no_gradient_under_reentrant_checkpointing_is_found(impl, which):
    clinic = impl("clinic")
    record = broken("no_gradient", which)
    diagnosis = found(clinic, "no_gradient", record)
    assert "lora_A" in diagnosis.evidence and "lora_B" in diagnosis.evidence, \
        f"the evidence should name the groups that got no gradient (lora_A, lora_B): {diagnosis.evidence}"
    # LoRA's A gets a gradient of zeros at step 1 (B is still zero): zero is not missing
    assert healthy("lora", which)["grad_norms"][0]["lora_A"] == 0.0
    silent_on_healthy(clinic, "no_gradient", which)


# ---------------------------------------------------------------------------------------------
# 14.3 adapter_unchanged
# ---------------------------------------------------------------------------------------------
@pytest.mark.exercise("14.3", points=2)
def test_lora_b_still_zero_is_found(impl, which):
    clinic = impl("clinic")
    found(clinic, "adapter_unchanged", broken("adapter_unchanged", which))
    found(clinic, "adapter_unchanged", broken("optimizer_misses_trainable", which))   # B never moves there either
    silent_on_healthy(clinic, "adapter_unchanged", which)


@pytest.mark.exercise("14.3", points=1)
def test_one_step_is_not_enough_to_tell(impl, which):
    clinic = impl("clinic")
    record = dict(broken("adapter_unchanged", which))
    found(clinic, "adapter_unchanged", record)
    record["lora_b_norms"] = record["lora_b_norms"][:2]     # before step 1 and after it: B may move later
    assert clinic.adapter_unchanged(record) is None, "after one step B may still be zero in a healthy run"
    record["lora_b_norms"] = []                             # no LoRA at all
    assert clinic.adapter_unchanged(record) is None


# ---------------------------------------------------------------------------------------------
# 14.4 targets_not_found
# ---------------------------------------------------------------------------------------------
@pytest.mark.exercise("14.4", points=2)
def test_gpt2_target_on_a_llama_is_found(impl, which):
    clinic = impl("clinic")
    record = broken("targets_not_found", which)
    diagnosis = found(clinic, "targets_not_found", record)
    assert "c_attn" in diagnosis.evidence and "q_proj" in diagnosis.evidence and "down_proj" in diagnosis.evidence, \
        f"the evidence should name the missing target and the layers there are: {diagnosis.evidence}"
    silent_on_healthy(clinic, "targets_not_found", which)
    for targets in (["q_proj", "v_proj"], ["self_attn.q_proj"], ["all-linear"], None):
        assert clinic.targets_not_found({**record, "targets": targets}) is None, f"targets {targets} all exist"


# ---------------------------------------------------------------------------------------------
# 14.5 never_stops
# ---------------------------------------------------------------------------------------------
@pytest.mark.exercise("14.5", points=2)
def test_eos_masked_with_the_padding_is_found(impl, which):
    clinic = impl("clinic")
    record = broken("never_stops", which)
    assert record["pad_token_id"] == record["eos_token_id"]
    diagnosis = found(clinic, "never_stops", record)
    assert str(record["eos_token_id"]) in diagnosis.evidence, f"the evidence should give the EOS id: {diagnosis.evidence}"
    silent_on_healthy(clinic, "never_stops", which)
    assert clinic.never_stops({**record, "task_kind": "classify", "rows_with_eos_label": None}) is None


# ---------------------------------------------------------------------------------------------
# 14.6 loss_on_prompt
# ---------------------------------------------------------------------------------------------
@pytest.mark.exercise("14.6", points=2)
def test_labels_on_the_prompt_are_found(impl, which):
    clinic = impl("clinic")
    record = broken("loss_on_prompt", which)
    found(clinic, "loss_on_prompt", record)
    assert clinic.loss_on_prompt({**record, "task_kind": "lm"}) is None, "language modelling labels every token"
    silent_on_healthy(clinic, "loss_on_prompt", which)


# ---------------------------------------------------------------------------------------------
# 14.7 template_mismatch
# ---------------------------------------------------------------------------------------------
@pytest.mark.exercise("14.7", points=2)
def test_plain_training_format_with_chat_inference_is_found(impl, which):
    clinic = impl("clinic")
    record = broken("template_mismatch", which)
    diagnosis = found(clinic, "template_mismatch", record)
    assert "Answer" in diagnosis.evidence, f"the evidence should quote both prompt ends: {diagnosis.evidence}"
    silent_on_healthy(clinic, "template_mismatch", which)
    assert clinic.template_mismatch(healthy("lora", which, chat=True)) is None, \
        "a run trained and answered with the same chat template is healthy"


# ---------------------------------------------------------------------------------------------
# 14.8 loss_flat
# ---------------------------------------------------------------------------------------------
@pytest.mark.exercise("14.8", points=2)
def test_flat_loss_is_found(impl, which):
    clinic = impl("clinic")
    record = broken("loss_flat", which)
    diagnosis = found(clinic, "loss_flat", record)
    assert f"{record['lr']:g}" in diagnosis.evidence, f"the evidence should give the learning rate: {diagnosis.evidence}"
    silent_on_healthy(clinic, "loss_flat", which)
    for name, real in recorded_loss_records().items():
        assert clinic.loss_flat(real) is None, f"loss_flat raised an alarm on the recorded healthy run {name}"


@pytest.mark.exercise("14.8", points=1)
def test_a_rising_loss_is_not_flat(impl, which):
    clinic = impl("clinic")
    found(clinic, "loss_flat", broken("loss_flat", which))
    assert clinic.loss_flat(broken("loss_rising", which)) is None, "a loss that rises is loss_rising's to report"
    assert clinic.loss_flat({**broken("loss_flat", which), "eval_loss_after": None}) is None, "no held-out loss: no verdict"


# ---------------------------------------------------------------------------------------------
# 14.9 loss_rising
# ---------------------------------------------------------------------------------------------
@pytest.mark.exercise("14.9", points=2)
def test_exploding_loss_is_found(impl, which):
    clinic = impl("clinic")
    found(clinic, "loss_rising", broken("loss_rising", which))
    silent_on_healthy(clinic, "loss_rising", which)
    for name, real in recorded_loss_records().items():
        assert clinic.loss_rising(real) is None, f"loss_rising raised an alarm on the recorded healthy run {name}"


@pytest.mark.exercise("14.9", points=1)
def test_rising_loss_seen_live_and_nan(impl, which):
    clinic = impl("clinic")
    record = broken("loss_rising", which)
    live = {**record, "losses": record["losses"][:5], "eval_loss_before": None, "eval_loss_after": None}
    found(clinic, "loss_rising", live)   # the first five steps already tell, without a held-out loss
    found(clinic, "loss_rising", {**live, "losses": [3.0, 2.9, math.nan]})
    assert clinic.loss_rising({**live, "losses": healthy("full", which)["losses"][:5]}) is None
    assert clinic_runs.STEPS >= 5
