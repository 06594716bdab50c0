"""`labs doctor`, the live checks of `labs finetune`, and the run record they read.

Every broken run of tests/clinic_runs.py is diagnosed with its own failure (and the doctor names
the detector's exercise); every healthy run of every method is left alone; a detector whose
exercise is open is skipped and said to be.
"""
from __future__ import annotations

import json

import pytest

from clinic_runs import RECORDED_RUNS, broken, healthy, recorded_run_records
from labs import cli
from labs.doctor import DETECTORS, LiveDoctor, diagnose, report

METHODS = ("full", "bitfit", "adapter", "lora", "prefix", "prompt", "qlora")
# A tiny random model stops learning its one batch early (its floor is near the start): whether the
# held-out loss is flat is judged on the recorded SmolLM2 runs instead (tests/test_ex_clinic.py).
TINY_FLAT_EXEMPT = ("loss_flat",)


@pytest.mark.parametrize("detector", DETECTORS, ids=lambda d: d.function)
def test_doctor_finds_each_broken_run(detector):
    findings = diagnose(broken(detector.function), "solutions")
    assert detector.function in [d.function for d, _ in findings.diagnoses], report(findings, "solutions")
    assert f"[{detector.exercise}]" in report(findings, "solutions")


@pytest.mark.parametrize("method", METHODS)
def test_doctor_is_silent_on_a_healthy_run_of_every_method(method):
    record = healthy(method)
    findings = diagnose(record, "solutions")
    alarms = [(d.function, str(diagnosis)) for d, diagnosis in findings.diagnoses if d.function not in TINY_FLAT_EXEMPT]
    assert not alarms, f"false alarm on a healthy {method} run: {alarms}"
    assert len(findings.ran) == len(DETECTORS) and not findings.open


def test_doctor_and_the_live_check_are_silent_on_real_runs_of_every_method():
    """No false alarm where it matters: `labs finetune --preset quick` of SmolLM2-135M, every method,
    every detector (the loss detectors included), recorded with the command in their README."""
    records = recorded_run_records()
    assert sorted(records) == sorted(METHODS), f"{RECORDED_RUNS}: {sorted(records)}"
    for method, (record, metrics) in records.items():
        assert record["method"] == metrics["method"] == method and metrics["model"] == "smollm2-135m", metrics["model"]
        assert metrics["preset"] == "quick" and record["eval_loss_after"] < record["eval_loss_before"]
        findings = diagnose(record, "solutions")
        assert len(findings.ran) == len(DETECTORS) and not findings.open
        assert not findings.diagnoses, f"false alarm on the recorded {method} run: {report(findings, 'solutions')}"
        lines = []
        LiveDoctor("solutions", write=lines.append)(at_the_live_check(record))
        assert lines == [], f"live false alarm on the recorded {method} run: {lines}"


def test_the_record_holds_what_the_detectors_read():
    lora, stale = healthy("lora"), broken("optimizer_misses_trainable")
    assert lora["optimizer_params"] == lora["optimizer_trainable_params"] == lora["trainable_params"] > 0
    assert stale["optimizer_trainable_params"] == 0 and stale["optimizer_params"] > stale["trainable_params"]
    assert set(lora["grad_norms"][0]) == {"lora_A", "lora_B"} and lora["grads_missing"] == [0] * 4
    assert lora["lora_b_norms"][0] == 0.0 and lora["lora_b_norms"][-1] > 0 and len(lora["lora_b_norms"]) == 5
    assert 0 < lora["label_share"] < 0.95 and lora["rows_with_eos_label"] == 1.0
    assert "q_proj" in lora["linear_names"] and "base_layer" not in lora["linear_names"]
    assert lora["eval_loss_after"] < lora["eval_loss_before"]
    assert json.loads(json.dumps(lora)) == lora, "the record is plain JSON"


def test_doctor_on_a_run_folder(tmp_path, capsys):
    sick, well = tmp_path / "sick", tmp_path / "well"
    for folder, record in ((sick, broken("never_stops")), (well, healthy("full"))):
        folder.mkdir()
        (folder / "run_record.json").write_text(json.dumps(record))
    assert cli.main(["doctor", str(sick), "--impl", "solutions"]) == 1
    out = capsys.readouterr().out
    assert "never taught to stop" in out and "fix:" in out and "[14.5]" in out
    assert cli.main(["doctor", str(well), "--impl", "solutions"]) == 0
    assert "0 problem(s) found" in capsys.readouterr().out
    assert cli.main(["doctor", str(tmp_path / "nothing-here"), "--impl", "solutions"]) == 2
    assert "run_record.json" in capsys.readouterr().err


def test_open_detectors_are_skipped_and_named():
    findings = diagnose(broken("never_stops"), "labs")   # the untouched stubs: every detector open
    assert not findings.ran and not findings.diagnoses
    assert findings.open == [d.exercise for d in DETECTORS]
    assert "skipped, still open: exercises 14.1-14.9 (notebooks/14_when_finetuning_goes_wrong.ipynb)" in report(findings, "labs")


def test_live_checks_warn_without_stopping_and_once():
    lines = []
    doctor = LiveDoctor("solutions", write=lines.append)
    record = broken("targets_not_found")
    doctor(record)
    assert len(lines) == 1 and lines[0].startswith("warning (step") and "c_attn" in lines[0] and "fix:" in lines[0]
    doctor.after_run(record)
    assert sum("target modules not found" in line for line in lines) == 1, "each failure is warned about once"
    quiet = []
    LiveDoctor("labs", write=quiet.append)(record)     # a learner before notebook 14: all open, nothing said
    assert quiet == []


def test_live_check_runs_during_training():
    """The Recorder calls `live` once, after its first steps, with what they recorded."""
    from labs.run_record import RECORDED_STEPS
    seen = []
    from clinic_runs import batch, tokenizer, tiny_folder
    from transformers import AutoModelForCausalLM

    from labs.data import get_task
    from labs.methods import prepare
    from labs.run_record import Recorder
    from labs.train import TrainConfig, train
    model = prepare("lora", AutoModelForCausalLM.from_pretrained(tiny_folder()), get_task("define"), {}, "solutions")
    recorder = Recorder(model, method="lora", task_kind="generate", lr=3e-2, live=lambda r: seen.append(len(r["losses"])))
    train(model, [batch(tokenizer())], TrainConfig(lr=3e-2, max_steps=RECORDED_STEPS + 3), progress=False, observe=recorder)
    recorder.finish()
    assert seen == [RECORDED_STEPS + 1]


def test_finetune_writes_the_record_and_warns_live(tmp_path, capsys):
    from conftest import save_tiny_llama_folder
    from labs.finetune import run_finetune
    from labs.presets import get_preset
    folder = save_tiny_llama_folder(tmp_path / "tiny", tie_word_embeddings=True)
    preset = get_preset("quick", max_steps=6, batch_size=4, n_train=16, n_eval=8, n_probe=0, n_english=0, seq_len=32)
    run_finetune("lora", str(folder), task="define", preset=preset, out=tmp_path / "run", progress=False,
                 options={"target_modules": ["q_proj", "c_attn"]}, impl="solutions")
    err = capsys.readouterr().err
    assert "warning (step" in err and "target modules not found" in err and "c_attn" in err
    record = json.loads((tmp_path / "run" / "run_record.json").read_text())
    assert record["targets"] == ["q_proj", "c_attn"] and len(record["losses"]) == 6
    assert cli.main(["doctor", str(tmp_path / "run"), "--impl", "solutions"]) == 1


def at_the_live_check(record: dict) -> dict:
    """The record as the live check sees it: the first steps' losses, no held-out loss yet."""
    from labs.run_record import RECORDED_STEPS
    return {**record, "losses": record["losses"][:RECORDED_STEPS + 1], "eval_loss_before": None, "eval_loss_after": None}


@pytest.mark.parametrize("detector", [d for d in DETECTORS if d.live], ids=lambda d: d.function)
def test_live_check_warns_on_each_broken_run(detector):
    lines = []
    LiveDoctor("solutions", write=lines.append)(at_the_live_check(broken(detector.function)))
    assert any(f"detector {detector.exercise})" in line for line in lines), lines


@pytest.mark.parametrize("method", METHODS)
def test_live_check_is_silent_on_a_healthy_run_of_every_method(method):
    lines = []
    LiveDoctor("solutions", write=lines.append)(at_the_live_check(healthy(method)))
    assert lines == []
