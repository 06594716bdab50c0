"""End to end: a fine-tune writes complete metrics, its files, and plots; methods prepare models."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from conftest import save_tiny_llama_folder
from labs.presets import get_preset

REQUIRED_KEYS = {
    "method", "model", "task", "preset", "trainable_params", "total_params", "trainable_percent",
    "peak_memory_bytes", "rss_before_train_bytes", "step_time_median_s", "wall_time_s", "eval_before",
    "eval_after", "saved_bytes", "device", "dtype", "torch_version", "transformers_version", "seed",
}
@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random Llama and a word-level tokenizer saved as a local model folder."""
    return save_tiny_llama_folder(tmp_path_factory.mktemp("tiny-llama"), tie_word_embeddings=True)


def tiny_preset(**overrides):
    fields = dict(max_steps=3, batch_size=4, n_train=16, n_eval=8, n_probe=4, seq_len=32)
    return get_preset("quick", **{**fields, **overrides})


def check_run(metrics: dict, out: Path, method: str) -> None:
    missing = REQUIRED_KEYS - set(metrics)
    assert not missing, f"metrics.json lacks {sorted(missing)}"
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    for name in ("loss.png", "before_after.png"):
        assert (out / name).read_bytes().startswith(b"\x89PNG"), name
    saved = [out / f for f in metrics["saved_files"]]
    assert saved and all(f.is_file() for f in saved)
    assert metrics["saved_bytes"] == sum(f.stat().st_size for f in saved)
    assert metrics["method"] == method and 0 < metrics["trainable_params"] <= metrics["total_params"]
    assert metrics["trainable_percent"] == pytest.approx(100 * metrics["trainable_params"] / metrics["total_params"])
    assert metrics["peak_memory_bytes"] > 0 and metrics["step_time_median_s"] > 0
    assert set(metrics["eval_before"]) == set(metrics["eval_after"]) and "loss" in metrics["eval_after"]
    assert not list(out.glob(".*.tmp")), "a temporary file was left behind"


def test_full_finetune_of_a_local_tiny_model(tiny_model_dir, tmp_path):
    from labs.finetune import run_finetune
    from safetensors.torch import load_file
    out = tmp_path / "run"
    metrics = run_finetune("full", str(tiny_model_dir), task="define", preset=tiny_preset(), out=out, progress=False)
    check_run(metrics, out, "full")
    assert metrics["steps"] == 3 and metrics["trainable_percent"] == 100.0
    assert list(metrics["phase_times_s"]) == ["load", "measure_before", "train", "measure_after", "save"]
    assert "perplexity" in metrics["eval_after"] and "probe_after" in metrics
    generations = metrics["generations"]
    assert len(generations) == 3 and all(set(g) >= {"prompt", "reference", "before", "after"} for g in generations)
    tensors = load_file(out / "model.safetensors")
    assert sum(t.numel() for t in tensors.values()) == metrics["total_params"], "tied weights must be stored once"


def test_the_base_is_measured_once_per_base_data_and_settings(tiny_model_dir, tmp_path, monkeypatch):
    from labs import finetune
    monkeypatch.setenv("LABS_CACHE", str(tmp_path / "cache"))
    first = finetune.run_finetune("lora", str(tiny_model_dir), task="define", preset=tiny_preset(max_steps=1),
                                  out=tmp_path / "a", progress=False, impl="solutions")
    second = finetune.run_finetune("full", str(tiny_model_dir), task="define", preset=tiny_preset(max_steps=1),
                                   out=tmp_path / "b", progress=False)
    assert not first["measure_before_cached"] and second["measure_before_cached"]
    for key in ("eval_before", "scores_before", "probe_correct_before", "english_losses_before"):
        assert second[key] == first[key], key
    other = finetune.run_finetune("full", str(tiny_model_dir), task="define", preset=tiny_preset(max_steps=1, n_eval=6),
                                  out=tmp_path / "c", progress=False)
    assert not other["measure_before_cached"] and len(other["scores_before"]) == 6
    for entry in (tmp_path / "cache" / "measured").iterdir():
        entry.write_text("{damaged")
    again = finetune.run_finetune("full", str(tiny_model_dir), task="define", preset=tiny_preset(max_steps=1),
                                  out=tmp_path / "d", progress=False)
    assert not again["measure_before_cached"] and again["eval_before"] == first["eval_before"]


def test_same_seed_same_numbers(tiny_model_dir, tmp_path):
    from labs.finetune import run_finetune
    runs = [run_finetune("full", str(tiny_model_dir), task="define", preset=tiny_preset(max_steps=2),
                         out=tmp_path / str(i), progress=False, seed=3) for i in range(2)]
    assert runs[0]["history"]["losses"] == runs[1]["history"]["losses"]
    assert runs[0]["eval_after"] == runs[1]["eval_after"]


def test_full_rejects_method_options(tmp_path):
    from labs.finetune import run_finetune
    with pytest.raises(ValueError, match="takes no options"):  # before loading: the model does not exist
        run_finetune("full", str(tmp_path / "no-such-model"), task="define", preset=tiny_preset(), out=tmp_path,
                     options={"r": 8}, progress=False)


def test_unknown_option_is_refused_before_loading_naming_what_is_accepted(tmp_path):
    from labs.finetune import run_finetune
    with pytest.raises(ValueError, match=r"'rank'.*accepts r, alpha"):
        run_finetune("lora", str(tmp_path / "no-such-model"), task="define", preset=tiny_preset(),
                     out=tmp_path, options={"rank": 8}, progress=False, impl="solutions")


def test_unfinished_exercises_stop_the_run_before_loading(tmp_path):
    """The untouched stubs: the run names the learner's own file, the open exercises, and the way out."""
    from labs.finetune import run_finetune
    from labs.methods import open_exercises
    assert open_exercises("lora", "labs") == ["5.1", "5.2", "5.3", "5.4", "5.5", "5.6"]
    assert open_exercises("lora", "solutions") == [] and open_exercises("full", "labs") == []
    with pytest.raises(NotImplementedError) as err:
        run_finetune("lora", str(tmp_path / "no-such-model"), task="define", preset=tiny_preset(),
                     out=tmp_path, progress=False, impl="labs")
    message = str(err.value)
    for part in ("labs/lora.py", "5.1-5.6", "notebooks/05_lora.ipynb", "--impl solutions"):
        assert part in message, f"{part!r} missing from: {message}"
    assert not (tmp_path / "metrics.json").exists()


def test_qlora_with_lora_open_names_the_notebook_of_each_open_exercise(tmp_path):
    """QLoRA runs the LoRA of notebook 05 and the NF4 of notebook 08: each open exercise is named
    beside the notebook that teaches it, not all of them beside the method's own notebook."""
    from labs.finetune import run_finetune
    with pytest.raises(NotImplementedError) as err:
        run_finetune("qlora", str(tmp_path / "no-such-model"), task="define", preset=tiny_preset(),
                     out=tmp_path, progress=False, impl="labs")
    message = str(err.value)
    assert "5.1-5.6 (notebooks/05_lora.ipynb)" in message and "8.1-8.8 (notebooks/08_qlora.ipynb)" in message, message


def test_side_runs_are_shorter_only_where_a_preset_says_so():
    quick, laptop = get_preset("quick"), get_preset("laptop")
    assert (quick.side_run_steps, quick.side_run_batch) == (quick.side_steps, quick.side_batch)
    assert quick.side_run_steps < quick.max_steps and quick.side_run_batch < quick.batch_size
    assert (laptop.side_run_steps, laptop.side_run_batch) == (laptop.max_steps, laptop.batch_size)
    assert get_preset("quick", side_steps=None).side_run_steps == quick.max_steps


def test_each_method_trains_with_its_own_learning_rate_unless_one_is_given(tiny_model_dir, tmp_path):
    from labs.finetune import run_finetune
    from labs.methods import METHODS, learning_rate
    assert learning_rate("prompt", "quick") == METHODS["prompt"].lr["quick"] > learning_rate("lora", "quick")
    assert learning_rate("full", "quick") < learning_rate("lora", "quick") / 10
    assert learning_rate("lora", get_preset("quick", lr=1e-3)) == 1e-3
    runs = {lr: run_finetune("lora", str(tiny_model_dir), task="define", preset=tiny_preset(max_steps=1, lr=lr),
                             out=tmp_path / str(lr), progress=False, impl="solutions") for lr in (None, 7e-4)}
    assert runs[None]["lr"] == METHODS["lora"].lr["quick"] and runs[7e-4]["lr"] == 7e-4


def test_registry_is_complete_and_consistent():
    """Every method's module has the entry point and the config it names; peft types map both ways."""
    from labs.impl import technique
    from labs.methods import METHODS, method_for_module, method_for_peft_type
    from labs.presets import PRESETS
    for name, spec in METHODS.items():
        module = spec.technique("solutions") if not spec.infrastructure else spec.technique()
        assert callable(module.prepare_for_finetune), name
        assert set(spec.lr) == set(PRESETS), f"{name} lacks a learning rate for some preset"
        assert method_for_module(spec.module) is spec
        if spec.peft_type:
            assert method_for_peft_type(spec.peft_type) is spec
            assert spec.option_names("solutions") and spec.option_names("labs") == spec.option_names("solutions")
            assert callable(technique(spec.module, "labs").prepare_for_finetune)
    with pytest.raises(ValueError, match="LORA"):
        method_for_peft_type("IA3")


PEAK_WINDOW_SCRIPT = """
import sys, torch
from labs.memory import peak_memory_bytes, reset_peak
cpu = torch.device("cpu")
if not reset_peak(cpu):   # a window of its own first: the high below is this script's
    sys.exit(3)
big = torch.ones(64 * 2 ** 20 // 4)  # 64 MiB, touched
big.add_(1)
high = peak_memory_bytes(cpu)
del big
reset_peak(cpu)
print(high, peak_memory_bytes(cpu))
"""


def test_cpu_peak_memory_window_forgets_earlier_peaks():
    """In a fresh interpreter: a long-lived test worker's heap may hand the 64 MiB back from memory
    it already holds (no new high) and keep it after `del` (no drop), which says nothing of the window."""
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-c", PEAK_WINDOW_SCRIPT], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode == 3:
        pytest.skip("this system cannot reset a process's peak memory (Linux only)")
    assert done.returncode == 0, done.stderr
    high, after_reset = map(int, done.stdout.split())
    assert after_reset < high - 32 * 2 ** 20, (high, after_reset)


def test_unknown_method_names_the_choices():
    from labs.methods import prepare
    with pytest.raises(ValueError, match="lora"):
        prepare("lorra", torch.nn.Linear(2, 2), None)


def test_classification_head_always_trains():
    from transformers import BertConfig, BertForSequenceClassification
    from labs.methods import train_task_head
    from labs.surgery import freeze
    model = freeze(BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1,
                                                            num_attention_heads=2, intermediate_size=64)))
    names = train_task_head(model)
    assert names == ["classifier.weight", "classifier.bias"]
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(names)


def test_an_untouched_stub_message_reaches_the_caller():
    from labs import methods
    with pytest.raises(NotImplementedError, match=r"^Exercise 5\.\d: "):
        methods.prepare("lora", torch.nn.ModuleDict({"q_proj": torch.nn.Linear(2, 2)}), None, impl="labs")


def check_compare(rows: list[dict], out: Path, methods: list[str]) -> None:
    import csv
    from labs.compare import compare_row
    assert [r["method"] for r in rows] == methods
    assert [r["method"] for r in csv.DictReader((out / "compare.csv").open())] == methods
    assert json.loads((out / "compare.json").read_text())["rows"] == json.loads(json.dumps(rows))
    assert "| method |" in (out / "compare.md").read_text()
    for plot in ("pareto.png", "pareto_memory.png", "learning_forgetting.png"):
        assert (out / plot).read_bytes().startswith(b"\x89PNG"), plot
    for row in rows:
        assert row["status"] == "ok", f"{row['method']} failed: {row['status']}"
        assert row == compare_row(json.loads((out / row["method"] / "metrics.json").read_text()))
        assert row["gain_se"] > 0 and row["probe_drop_se"] is not None and row["english_ppl_after"] > 1


def in_process(model_dir, fail: str | None = None, calls: list | None = None, tables: list | None = None):
    """A stand-in for compare's child process: runs the fine-tune here (or fails for method `fail`).

    calls   gets each method run; tables gets the table as it stood when each run started.
    """
    from labs import finetune

    def launch(command, log):
        method, out = command[command.index("--method") + 1], command[command.index("--out") + 1]
        if calls is not None:
            calls.append(method)
        if tables is not None:
            table = Path(out).parent / "compare.json"
            tables.append(json.loads(table.read_text())["rows"] if table.exists() else None)
        if method == fail:
            log.write_text("Traceback (most recent call last):\nRuntimeError: out of memory\n")
            return 1
        finetune.run_finetune(method, str(model_dir), task="define", preset=tiny_preset(), out=out,
                              progress=False, impl="solutions")
        return 0
    return launch


def test_compare_writes_a_table_and_its_plots(tiny_model_dir, tmp_path, monkeypatch, capsys):
    from labs import compare
    tables = []
    monkeypatch.setattr(compare, "_launch", in_process(tiny_model_dir, tables=tables))
    rows = compare.run_compare(["full", "lora"], str(tiny_model_dir), task="define", out=tmp_path,
                               impl="solutions")
    check_compare(rows, tmp_path, ["full", "lora"])
    assert rows[0]["lr"] < rows[1]["lr"], "each method trains with its own learning rate"
    assert tables[0] is None and [r["status"] for r in tables[1]] == ["ok", compare.NOT_RUN], \
        "the table is rewritten, whole, after each method"
    printed = capsys.readouterr().out
    assert "[1/2] full: fine-tuning" in printed and "[2/2] lora: fine-tuning (about" in printed
    assert "2 of 2 methods finished" in printed
    with pytest.raises(ValueError, match="twice"):
        compare.run_compare(["full", "full"], str(tiny_model_dir), out=tmp_path)


def test_an_interrupted_compare_resumes_without_redoing_finished_methods(tiny_model_dir, tmp_path, monkeypatch):
    from labs import compare
    calls = []
    monkeypatch.setattr(compare, "_launch", in_process(tiny_model_dir, calls=calls))
    first = compare.run_compare(["full", "lora"], str(tiny_model_dir), task="define", out=tmp_path,
                                progress=False, impl="solutions")
    (tmp_path / "lora" / compare.RUN_RECORD).unlink()   # as if lora had been interrupted
    calls.clear()
    again = compare.run_compare(["full", "lora"], str(tiny_model_dir), task="define", out=tmp_path,
                                progress=False, impl="solutions")
    assert calls == ["lora"] and again[0] == first[0]
    calls.clear()
    compare.run_compare(["full", "lora"], str(tiny_model_dir), task="define", out=tmp_path,
                        progress=False, impl="solutions", max_steps=2)
    assert calls == ["full", "lora"], "other settings are another comparison: nothing is reused"
    calls.clear()
    monkeypatch.setattr(compare, "_code_version", lambda: "edited")
    compare.run_compare(["full"], str(tiny_model_dir), task="define", out=tmp_path, progress=False,
                        impl="solutions", max_steps=2)
    assert calls == ["full"], "a run made by other code is not reused"


def test_compare_fails_naming_every_method_that_failed(tiny_model_dir, tmp_path, monkeypatch):
    from labs import compare
    monkeypatch.setattr(compare, "_launch", in_process(tiny_model_dir, fail="lora"))
    with pytest.raises(compare.CompareFailed, match="lora: failed: RuntimeError: out of memory") as err:
        compare.run_compare(["full", "lora"], str(tiny_model_dir), task="define", out=tmp_path,
                            progress=False, impl="solutions")
    assert [r["status"][:35] for r in err.value.rows] == ["ok", "failed: RuntimeError: out of memory"]
    assert "run.log" in err.value.rows[1]["status"], "the reason names the log to read"
    assert "failed: RuntimeError" in (tmp_path / "compare.md").read_text(), "the table is written all the same"
    assert not (tmp_path / "lora" / compare.RUN_RECORD).exists(), "a failed run is never reused"


def test_compare_refuses_unfinished_exercises_before_any_run(tmp_path):
    from labs.compare import run_compare
    with pytest.raises(NotImplementedError, match="labs/prompt_tuning.py"):
        run_compare(["full", "prompt"], str(tmp_path / "no-such-model"), task="define", out=tmp_path, impl="labs")
    assert not (tmp_path / "full").exists()


@pytest.mark.slow
def test_compare_runs_each_method_in_its_own_process(tiny_model_dir, tmp_path, monkeypatch):
    from labs.compare import run_compare
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parent.parent))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the child processes share the cores with other tests
    impl = "solutions" if Path("solutions").is_dir() else "labs"
    rows = run_compare(["full", "lora"], str(tiny_model_dir), task="define", preset="quick",
                       out=tmp_path, progress=False, max_steps=3, impl=impl)
    check_compare(rows, tmp_path, ["full", "lora"])
    metrics = json.loads((tmp_path / "lora" / "metrics.json").read_text())
    assert metrics["impl"] == impl and metrics["lr"] == rows[1]["lr"]
    assert "summary" not in metrics and "learning:" in (tmp_path / "lora" / "run.log").read_text()
    written = (tmp_path / "lora" / "metrics.json").stat().st_mtime_ns
    assert run_compare(["full", "lora"], str(tiny_model_dir), task="define", preset="quick", out=tmp_path,
                       progress=False, max_steps=3, impl=impl) == rows
    assert (tmp_path / "lora" / "metrics.json").stat().st_mtime_ns == written, "a finished run is reused"


def test_pareto_front_keeps_only_undominated_points():
    from labs.viz import pareto, pareto_front
    points = {"full": (100.0, 0.80), "lora": (0.5, 0.78), "bitfit": (0.1, 0.70), "bad": (5.0, 0.60)}
    assert pareto_front(points) == ["bitfit", "lora", "full"]
    lower_better = {k: (x, -y) for k, (x, y) in points.items()}
    assert pareto_front(lower_better, higher_is_better=False) == ["bitfit", "lora", "full"]
    fig = pareto(points)
    assert {t.get_text() for t in fig.axes[0].texts} == set(points)


def test_memory_and_sweep_plots_take_plain_numbers():
    from labs.memory import MemoryEstimate
    from labs.viz import before_after, memory_breakdown, sweep
    rows = {"full": MemoryEstimate(4e8, 4e8, 8e8, 1e8), "lora": {"weights": 4e8, "gradients": 1e6, "optimizer": 2e6}}
    fig = memory_breakdown(rows)
    assert len(fig.axes[0].patches) == 2 * 4 and "MiB" in fig.axes[0].get_ylabel()
    fig = sweep({"q,v": ([1, 2, 4, 8], [0.7, 0.72, 0.75, 0.75])}, x_label="rank r", y_label="accuracy", logx=True)
    assert fig.axes[0].get_xlabel() == "rank r"
    assert len(before_after({"loss": 2.0, "accuracy": 0.5}, {"loss": 1.0, "accuracy": 0.8}).axes) == 2
    with pytest.raises(ValueError, match="series"):
        sweep(([1, 2], [0.5]))


@pytest.mark.slow
def test_quick_full_finetune_of_smollm2(tmp_path):
    from labs.finetune import run_finetune
    out = tmp_path / "full"
    small = get_preset("quick", max_steps=4, n_eval=16, n_probe=12, n_english=8)
    metrics = run_finetune("full", "smollm2-135m", preset=small, out=out, progress=False)
    check_run(metrics, out, "full")
    assert metrics["task"] == "define" and metrics["trainable_percent"] == 100.0
    assert {"probe_before", "probe_after", "generations"} <= set(metrics)
    assert metrics["eval_after"]["loss"] < metrics["eval_before"]["loss"], "four full steps should lower held-out loss"


def test_adapter_of_an_embedded_model_names_its_hub_base_and_loads_in_peft(tmp_path):
    """The adapter folder records the Hub name (not this machine's cache folder) and says it was
    trained on the embedded copy; peft loads it on a base of that architecture with the same logits."""
    from peft import PeftModel

    from labs.finetune import save_trained
    from labs.impl import technique
    from labs.models import MODELS, load_model
    lora = technique("lora", "solutions")
    model, tok = load_model("smollm2-135m")
    lora.apply(model, lora.LoRAConfig(r=4))
    with torch.no_grad():
        for _, layer in lora.lora_layers(model):
            layer.lora_B.normal_(std=0.02)
    save_trained("lora", model, tmp_path)
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    hub = MODELS["smollm2-135m"].hf_id
    assert config["base_model_name_or_path"] == hub
    readme = (tmp_path / "adapter" / "README.md").read_text()
    assert hub in readme and MODELS["smollm2-135m"].package in readme and "PeftModel.from_pretrained" in readme
    base, _ = load_model("smollm2-135m")
    theirs = PeftModel.from_pretrained(base, tmp_path / "adapter")
    ids = tok("Define the word \"lake\".", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids).logits, model(ids).logits, rtol=1e-4, atol=1e-4)


def test_a_run_without_forgetting_measures_says_why_for_its_kind_of_model():
    from types import SimpleNamespace

    from labs.finetune import forgetting
    encoder, decoder = (SimpleNamespace(task=SimpleNamespace(kind=k)) for k in ("classify", "generate"))
    assert "encoder classifier" in forgetting(encoder, {}, {})["note"]
    note = forgetting(decoder, {}, {})["note"]
    assert "n_probe=0" in note and "encoder" not in note
