"""Forgetting along training (labs.forgetting): the instruments, the curves, the comparison at
matched learning, and a recording end to end on a tiny model."""
from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import save_tiny_llama_folder, tiny_llama
from labs import forgetting as fg


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    return save_tiny_llama_folder(tmp_path_factory.mktemp("tiny-llama"), tie_word_embeddings=True)


class CountingTokenizer:
    """Token i of the text is the integer i: windows can be checked by their values."""

    def __call__(self, text):
        return {"input_ids": list(range(len(text.split())))}


def test_the_modern_english_instrument_is_every_review_sentence():
    text = fg.english_text("reviews")
    assert text.count("\n") + 1 == 12752 and len(text) > 1_400_000


def test_english_windows_are_exactly_as_long_as_asked_and_spread_over_the_whole_text():
    text = " ".join(["w"] * 1000)
    windows = fg.english_windows(CountingTokenizer(), text, n=4, tokens=100)
    assert windows.shape == (4, 100)
    assert windows[:, 0].tolist() == [0, 250, 500, 750]        # evenly spaced over all 1000 tokens
    assert all(row.tolist() == list(range(row[0], row[0] + 100)) for row in windows)
    with pytest.raises(ValueError, match=r"1000 tokens, too few for 11 windows of 100; ask for at most 10"):
        fg.english_windows(CountingTokenizer(), text, n=11, tokens=100)


def test_window_losses_are_each_windows_mean_loss_over_its_predicted_tokens():
    model = tiny_llama()
    windows = torch.randint(0, 100, (5, 12), generator=torch.Generator().manual_seed(0))
    got = fg.window_losses(model, windows, batch_size=2)
    with torch.no_grad():
        logits = model(input_ids=windows).logits                        # (5, 12, V)
    expected = F.cross_entropy(logits[:, :-1].transpose(1, 2), windows[:, 1:], reduction="none").mean(1)
    assert got == pytest.approx(expected.tolist(), abs=1e-5)


def fake_run(gains: list[float], english_rises: list[list[float]], start: dict | None = None) -> dict:
    """A run against BASE whose checkpoints have these task gains and per-window English rises."""
    checkpoints = []
    for i, (gain, rises) in enumerate(zip(gains, english_rises)):
        checkpoints.append({"step": 10 * (i + 1), "task": [t - gain for t in BASE["task"]],
                            "english": [e + r for e, r in zip(BASE["english"], rises)], "probe": BASE["probe"]})
    return {"run": {}, "start": start, "checkpoints": checkpoints}


BASE = {"task": [3.0, 2.0, 4.0], "english": [2.0, 2.5, 3.0, 3.5], "probe": [1, 0, 1, 1]}


def test_a_curve_starts_at_the_base_and_gives_learning_and_forgetting_per_checkpoint():
    run = fake_run([0.2, 0.4], [[0.1, 0.1, 0.1, 0.1], [0.2, 0.3, 0.2, 0.3]])
    points = fg.curve(BASE, run, "english")
    assert [p["step"] for p in points] == [0, 10, 20]
    assert [p["gain"] for p in points] == pytest.approx([0.0, 0.2, 0.4])
    assert [p["forgetting"] for p in points] == pytest.approx([0.0, 0.1, 0.25])
    lost = dict(run, checkpoints=[dict(c, probe=[0, 0, 1, 1]) for c in run["checkpoints"]])
    assert fg.curve(BASE, lost, "probe")[1]["forgetting"] == pytest.approx(0.25)   # one question of 4 lost


def test_forgetting_at_a_gain_between_checkpoints_is_interpolated_per_item():
    points = fg.curve(BASE, fake_run([0.2, 0.4], [[0.1] * 4, [0.3, 0.5, 0.3, 0.5]]), "english")
    assert fg.at_gain(points, 0.3) == pytest.approx([0.2, 0.3, 0.2, 0.3])
    assert fg.at_gain(points, 0.1) == pytest.approx([0.05] * 4)
    assert fg.at_gain(points, 0.5) is None


def test_comparing_at_matched_learning_names_who_forgets_less_or_says_they_cannot_be_told_apart():
    slow = fake_run([0.1, 0.2], [[0.01, 0.02, 0.01, 0.02], [0.02, 0.03, 0.02, 0.03]])
    fast = fake_run([0.4, 0.8], [[0.2, 0.22, 0.21, 0.2], [0.5, 0.5, 0.5, 0.5]])
    result = fg.compare_at(BASE, slow, fast, "english")
    assert result["gain"] == pytest.approx(0.2)            # the most both reach
    assert result["run"] == pytest.approx(0.025)
    assert result["reference"] == pytest.approx((0.1 + 0.11 + 0.105 + 0.1) / 4)
    assert result["difference"] < 0 and result["z"] < -2
    line = fg.verdict_line("slow", "fast", result, "english")
    assert "slow forgets less, by" in line and "English loss rise" in line
    same = fg.compare_at(BASE, slow, slow, "english")
    assert same["difference"] == 0.0 and "cannot be told apart" in fg.verdict_line("a", "b", same, "english")
    with pytest.raises(ValueError, match="must reach a gain of 0.500"):
        fg.compare_at(BASE, slow, fast, "english", gain=0.5)


def test_a_run_that_does_not_start_as_the_base_starts_its_curve_where_it_starts():
    start = {"task": [t + 0.1 for t in BASE["task"]], "english": [e + 0.2 for e in BASE["english"]], "probe": BASE["probe"]}
    run = fake_run([0.3], [[0.25] * 4], start=start)
    against_base = fg.curve(BASE, run, "english")
    assert against_base[0]["gain"] == pytest.approx(-0.1) and against_base[0]["forgetting"] == pytest.approx(0.2)
    own = fg.curve(BASE, run, "english", start_as_base=start)
    assert own[0]["gain"] == 0.0 and own[0]["forgetting"] == 0.0
    assert own[1]["gain"] == pytest.approx(0.4) and own[1]["forgetting"] == pytest.approx(0.05)


@pytest.mark.parametrize("method", [m for m in fg.IDENTITY_AT_START if m != "full"])
def test_methods_said_to_start_as_the_base_compute_exactly_the_base(method):
    from labs.data import get_task
    from labs.methods import prepare
    base = tiny_llama(vocab=120, hidden=64)
    ids = torch.randint(0, 120, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = base(input_ids=ids).logits
        prepared = prepare(method, tiny_llama(vocab=120, hidden=64), get_task("kjv"), {}, "solutions").eval()
        assert torch.equal(prepared(input_ids=ids).logits, expected), method


def tiny_plan(model_dir: Path) -> fg.Plan:
    return fg.Plan("tiny", runs=(fg.Run("full", "full", 1e-3), fg.Run("prompt", "prompt", 1e-2)), steps=2,
                   checkpoint_every=1, batch_size=2, seq_len=32, n_task_eval=4, english_windows=3, window_tokens=16,
                   n_probe=4, model=str(model_dir))


def test_a_recording_scores_every_checkpoint_resumes_and_reads_back(tiny_model_dir, tmp_path, monkeypatch):
    plan = tiny_plan(tiny_model_dir)
    out = fg.record(plan, tmp_path / "rec", impl="solutions", say=lambda *a: None)
    base, runs = fg.load_runs(out)
    assert list(runs) == ["full", "prompt"]
    assert len(base["task"]) == 4 and len(base["english"]) == 3 and len(base["probe"]) == 4
    for run in runs.values():
        assert [c["step"] for c in run["checkpoints"]] == [1, 2]
        assert all(len(c["english"]) == 3 and len(c["probe"]) == 4 for c in run["checkpoints"])
    assert runs["full"]["start"] is None                   # full fine-tuning starts as the base
    assert runs["prompt"]["start"]["english"] != base["english"], "an untrained prompt already changes the model"
    assert not list((tmp_path / "rec").rglob("*.tmp"))

    def must_not_run(*args, **kwargs):
        raise AssertionError("a recorded run was trained again")
    monkeypatch.setattr(fg, "run_one", must_not_run)
    said = []
    fg.record(plan, out, impl="solutions", say=said.append)
    assert sum("recorded already" in line for line in said) == 2
    changed = replace(plan, runs=(fg.Run("full", "full", 2e-3),))
    with pytest.raises(AssertionError, match="trained again"):
        fg.record(changed, out, impl="solutions", say=said.append)   # another learning rate: a new run
    with pytest.raises(AssertionError, match="trained again"):
        fg.record(replace(plan, steps=3), out, impl="solutions", say=said.append)   # other settings: a new run
    only_second = []
    fg.record(plan, out, impl="solutions", say=only_second.append, share=(1, 2))
    assert len(only_second) == 1 and "prompt" in only_second[0]


def test_qlora_runs_start_from_the_base_quantized_while_loading_as_finetune_trains_it(tiny_model_dir):
    from labs.models import load_model
    plan = tiny_plan(tiny_model_dir)
    base, _ = load_model(str(tiny_model_dir))
    quantized = fg._starting_model(plan, fg.Run("qlora", "qlora", 1e-3), base, "solutions")
    assert quantized.get_input_embeddings().weight.dtype == torch.bfloat16   # not an fp32 copy quantized after
    assert not any(p.dtype == torch.float32 and p.dim() == 2 for n, p in quantized.named_parameters()
                   if "proj" in n), "its linear layers are stored in 4-bit"
    copied = fg._starting_model(plan, fg.Run("full", "full", 1e-3), base, "solutions")
    assert copied is not base and torch.equal(copied.get_input_embeddings().weight, base.get_input_embeddings().weight)


def test_a_finetune_that_does_not_start_as_the_base_reports_forgetting_from_both(tiny_model_dir, tmp_path):
    from labs.compare import compare_row
    from labs.finetune import run_finetune
    from labs.presets import get_preset
    preset = get_preset("quick", max_steps=2, batch_size=4, n_train=8, n_eval=4, n_probe=4, seq_len=32,
                        n_english=4, english_tokens=16)
    metrics = run_finetune("prompt", str(tiny_model_dir), task="define", preset=preset, out=tmp_path / "run",
                           progress=False, impl="solutions")
    total, at_start, since = (metrics[k]["english_loss_rise"] for k in
                              ("forgetting", "forgetting_at_start", "forgetting_from_start"))
    assert at_start != 0.0
    assert total == pytest.approx(at_start + since, abs=1e-9)   # paired means add up over the same windows
    assert metrics["forgetting"]["english_window_tokens"] == 16 and metrics["forgetting"]["english_chunks"] == 4
    row = compare_row(json.loads((tmp_path / "run" / "metrics.json").read_text()))
    assert row["english_loss_rise_at_start"] == pytest.approx(at_start)
    assert math.isfinite(row["english_loss_rise_from_start_se"])
