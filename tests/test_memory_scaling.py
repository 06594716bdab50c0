"""labs/memory_scaling.py: the shapes count what a real model holds, the analytic lines order the
variants as their bytes per weight say, and largest_trainable reads a recording correctly."""
from __future__ import annotations

import pytest

from conftest import tiny_llama
from labs.memory_scaling import SHAPES, VARIANTS, Shape, analytic, largest_trainable


def test_shape_counts_match_real_models(impl):
    from labs.models import MODELS
    from labs.surgery import count_parameters
    assert SHAPES["135M"].n_params() == MODELS["smollm2-135m"].n_params
    for tied in (True, False):
        model = tiny_llama(tie_word_embeddings=tied)
        shape = Shape("tiny", 64, 128, 2, 4, 2, 100, tied)
        assert shape.n_params() == count_parameters(model).total
        lora = impl("lora")
        adapted = lora.apply(model, lora.LoRAConfig(r=4, alpha=8))   # q_proj, v_proj: the default targets
        assert shape.lora_params(4) == count_parameters(adapted).trainable


def test_analytic_lines_follow_bytes_per_weight():
    for shape in SHAPES.values():
        total = {v: analytic(shape, v, 2, 64) for v in VARIANTS}
        assert total["qlora"].weights < total["lora-bf16"].weights < total["lora-fp32"].weights
        assert total["lora-fp32"].total < total["full"].total
        assert total["full"].weights + total["full"].gradients + total["full"].optimizer == 16 * shape.n_params()
    big = SHAPES["70B"]
    assert analytic(big, "qlora", 2, 64).weights / big.n_params() < 0.6   # bytes per weight: 4.127 bits + bf16 embedding
    with pytest.raises(ValueError, match="variant 'qlora4'"):
        analytic(big, "qlora4", 2, 64)


def recording():
    """A made-up recording: measured peaks at two sizes, analytic ones elsewhere (GB x 1e9)."""
    sizes = ["1B", "10B", "100B"]
    analytic_gb = {"full": [16, 160, 1600], "lora-fp32": [4.5, 45, 450], "lora-bf16": [2.5, 25, 250],
                   "qlora": [0.8, 6, 60]}
    return {"sizes": sizes, "n_params": {"1B": 1e9, "10B": 1e10, "100B": 1e11}, "gpu_line_gb": 24,
            "analytic": {v: dict(zip(sizes, (g * 1e9 for g in gb))) for v, gb in analytic_gb.items()},
            "runs": [{"size": "1B", "variant": "lora-bf16", "peak_above_baseline": 3e9},
                     {"size": "10B", "variant": "lora-bf16", "peak_above_baseline": 23e9},
                     {"size": "10B", "variant": "full", "skipped": "would not fit"}]}


def test_largest_trainable_reads_measured_before_analytic():
    rec = recording()
    got = largest_trainable("lora", 24, rec)     # "lora" is LoRA on a bf16 base
    assert got == {"size": "10B", "n_params": 1e10, "gb": 23.0, "source": "measured"}   # analytic says 25
    assert largest_trainable("qlora", 24, rec)["size"] == "10B"
    assert largest_trainable("qlora", 80, rec)["source"] == "analytic"
    assert largest_trainable("full", 24, rec)["size"] == "1B"
    assert largest_trainable("full", 10, rec) is None
    with pytest.raises(ValueError, match="method 'dora'"):
        largest_trainable("dora", 24, rec)
    with pytest.raises(ValueError, match="gpu_gb"):
        largest_trainable("qlora", -1, rec)


def test_missing_recording_names_the_command(tmp_path):
    from labs.memory_scaling import load_recording
    with pytest.raises(FileNotFoundError, match="benchmarks/memory_vs_size.py"):
        load_recording(tmp_path / "nothing.json")


def test_memory_vs_size_plot_draws_a_recording():
    from labs import viz
    rec = recording()
    rec["runs"].append({"size": "1B", "variant": "qlora-old", "peak_above_baseline": 1.2e9})
    fig = viz.memory_vs_size(rec)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and any(list(line.get_ydata())[:1] == [24] for line in ax.get_lines())
