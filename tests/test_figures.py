"""Every figure the course draws, saved and looked at programmatically: every title and label fits
inside the figure, step axes have whole-number ticks, and labelled lines come with a legend."""
from __future__ import annotations

import pytest

from labs import viz
from labs.memory import MemoryEstimate
from labs.train import History


def history(n: int, start: float = 4.0) -> History:
    losses = [start - 0.1 * i + (0.2 if i % 2 else 0.0) for i in range(n)]
    return History(steps=list(range(1, n + 1)), losses=losses, step_times=[1.0] * n, lr=[1e-3] * n)


def rendered(fig, tmp_path):
    """Save the figure as a PNG (as the course does) and return the renderer that drew it."""
    path = tmp_path / "figure.png"
    viz.save(fig, path)
    assert path.read_bytes().startswith(b"\x89PNG")
    fig.canvas.draw()
    return fig.canvas.get_renderer()


def assert_text_fits(fig, renderer):
    """Everything each axes draws (title, labels, drawn tick labels, bar labels, legend) and the
    figure's title lie inside the saved image."""
    box = fig.bbox
    parts = [(ax.get_title() or "axes", ax.get_tightbbox(renderer)) for ax in fig.axes]
    if fig._suptitle is not None:
        parts.append((fig._suptitle.get_text(), fig._suptitle.get_window_extent(renderer)))
    for name, ext in parts:
        assert (ext.x0 >= box.x0 - 1 and ext.x1 <= box.x1 + 1 and ext.y0 >= box.y0 - 1 and ext.y1 <= box.y1 + 1), \
            f"{name!r} is cut off: drawn over {ext.bounds}, the figure is {box.bounds}"


def assert_legend_where_labelled(fig):
    for ax in fig.axes:
        labelled = [a for a in ax.get_lines() + ax.containers if not str(a.get_label()).startswith("_")]
        if labelled:
            assert ax.get_legend() is not None, f"axes {ax.get_title()!r} has labelled data but no legend"


FIGURES = {
    "loss, one run": lambda: viz.loss_curves(history(7)),
    "loss, smoothed": lambda: viz.loss_curves({"LoRA r=8, q and v": history(20)}, smooth=3),
    "loss, several runs": lambda: viz.loss_curves({"full": history(5), "lora": history(5, 3.0)}),
    "before/after with probe": lambda: viz.before_after(
        {"loss": 4.926, "perplexity": 137.8, "probe": 0.65}, {"loss": 2.98, "perplexity": 19.7, "probe": 0.667},
        title="lora on define (smollm2-135m)"),
    "memory breakdown": lambda: viz.memory_breakdown({"full": MemoryEstimate(4e8, 4e8, 8e8, 1e8),
                                                      "lora": MemoryEstimate(4e8, 1e6, 2e6, 9e7)}),
    "pareto": lambda: viz.pareto({"full": (100.0, 0.80), "lora": (0.5, 0.78), "bitfit": (0.1, 0.70)}),
    "ratio bars": lambda: viz.ratio_bars({"forward, 1 x 64 tokens": {"base": 0.3, "LoRA unmerged": 0.31,
                                                                       "LoRA merged": 0.29},
                                          "generate 16 tokens, batch 1": {"base": 0.7, "LoRA unmerged": 0.8,
                                                                          "LoRA merged": 0.7}}),
    "sweep": lambda: viz.sweep({"q,v": ([1, 2, 4, 8], [0.7, 0.72, 0.75, 0.75])}, x_label="rank r",
                               y_label="accuracy", logx=True),
    "learning vs forgetting": lambda: viz.learning_vs_forgetting(RECORDED_LIKE),
    "forgetting curves": lambda: viz.forgetting_curves(CURVES, matched=0.3, points={"NF4 base": (-0.05, 0.1)}),
}

# The shape of the recorded quick comparison: seven methods, three of them at the same point.
RECORDED_LIKE = {"full": (2.52, 0.17, -0.067, 0.047), "bitfit": (2.29, 0.17, -0.017, 0.061),
                 "adapter": (2.54, 0.18, 0.0, 0.063), "lora": (2.38, 0.16, -0.017, 0.05),
                 "prefix": (2.27, 0.15, -0.017, 0.05), "prompt": (2.18, 0.15, -0.033, 0.04),
                 "qlora": (2.27, 0.17, 0.0, 0.05)}


@pytest.mark.parametrize("name", FIGURES)
def test_every_text_fits_and_labelled_data_has_a_legend(name, tmp_path):
    fig = FIGURES[name]()
    renderer = rendered(fig, tmp_path)
    assert_text_fits(fig, renderer)
    assert_legend_where_labelled(fig)


@pytest.mark.parametrize("n", [3, 7, 20])
def test_step_axes_have_whole_number_ticks(n, tmp_path):
    fig = viz.loss_curves(history(n))
    rendered(fig, tmp_path)
    ax = fig.axes[0]
    low, high = ax.get_xlim()
    shown = [t for t in ax.get_xticks() if low <= t <= high]
    assert shown and all(float(t).is_integer() for t in shown), f"fractional step ticks: {shown}"


def test_smoothing_is_visible_and_named():
    fig = viz.loss_curves({"lora": history(12)}, smooth=4)
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert labels == ["lora (each step)", "lora (mean of 4 steps)"]
    raw, smooth = (line.get_ydata() for line in fig.axes[0].get_lines())
    assert list(raw) != list(smooth), "the smoothed line differs from the raw losses"
    with pytest.raises(ValueError, match="smooth=0"):
        viz.loss_curves(history(3), smooth=0)


def test_run_summary_names_held_out_numbers_consistently():
    from labs.finetune import summary
    metrics = {"method": "lora", "model": "smollm2-135m", "task": "define", "preset": "quick", "device": "cpu",
               "trainable_params": 460_800, "total_params": 134_975_808,
               "eval_before": {"loss": 4.926, "perplexity": 137.84}, "eval_after": {"loss": 3.71, "perplexity": 40.9},
               "probe_before": 0.65, "probe_after": 0.6667, "probe_items": 60, "step_time_median_s": 2.4,
               "steps": 20, "peak_memory_bytes": 3 * 2 ** 30, "wall_time_s": 95.0, "saved_bytes": 1_850_000}
    older = summary(metrics)     # a run written before learning and forgetting were measured
    assert "held-out: loss 4.926 -> 3.710, perplexity 137.8 -> 40.9" in older
    assert "0.650 -> 0.667 on 60 questions" in older and "learning" not in older
    metrics.update(learning={"score": "loss", "gain": 1.216, "se": 0.151}, scores_after=[0.0] * 64,
                   forgetting={"probe_drop": -0.0167, "probe_drop_se": 0.0504, "english_corpus": "austen",
                               "english_chunks": 32, "english_ppl_before": 74.21, "english_ppl_after": 69.64,
                               "english_loss_rise": -0.0636, "english_loss_rise_se": 0.0086})
    text = summary(metrics)
    assert "learning: loss down by 1.216 +- 0.151 (paired, 64 examples)" in text
    assert "0.650 -> 0.667 on 60 questions (change +0.017 +- 0.050, paired)" in text
    assert "austen perplexity (forgetting): 74.2 -> 69.6 (loss -0.064 +- 0.009 on 32 chunks)" in text


def test_learning_vs_forgetting_tells_methods_apart_and_leaves_out_zero_learning_when_no_bar_reaches_it(tmp_path):
    fig = viz.learning_vs_forgetting(RECORDED_LIKE)
    rendered(fig, tmp_path)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == list(RECORDED_LIKE)
    styles = {(c.lines[0].get_color(), c.lines[0].get_marker()) for c in ax.containers}
    assert len(styles) == len(RECORDED_LIKE), f"two methods share a colour and marker: {styles}"
    colours = [c.lines[0].get_color() for c in ax.containers]
    assert len(set(colours)) == len(RECORDED_LIKE), f"two methods share a colour (grey is the baseline's): {colours}"
    assert ax.get_xlim()[0] > 1.0, f"x axis starts at {ax.get_xlim()[0]}: the points are squeezed to the right"
    near_zero = viz.learning_vs_forgetting({"a": (0.05, 0.1, 0.0, 0.01), "b": (0.5, 0.1, 0.1, 0.01)})
    assert near_zero.axes[0].get_xlim()[0] <= 0 <= near_zero.axes[0].get_xlim()[1]


CURVES = {"full 5e-5": [(0, 0), (0.2, 0.05), (0.4, 0.12)], "full 5e-5 seed 1": [(0, 0), (0.21, 0.06), (0.41, 0.11)],
          "lora r=8": [(0, 0), (0.1, 0.01), (0.3, 0.04)], "qlora r=8": [(-0.05, 0.1), (0.2, 0.13)]}


def test_forgetting_curves_share_a_colour_per_method_and_a_style_per_variant():
    fig = viz.forgetting_curves(CURVES, matched=0.3, points={"NF4 base": (-0.05, 0.1)})
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}
    assert list(lines) == [*CURVES, "NF4 base"]
    assert lines["full 5e-5"].get_color() == lines["full 5e-5 seed 1"].get_color() != lines["lora r=8"].get_color()
    assert lines["full 5e-5"].get_linestyle() != lines["full 5e-5 seed 1"].get_linestyle()
    assert list(lines["lora r=8"].get_xdata()) == [0, 0.1, 0.3]
    with pytest.raises(ValueError, match="no curves"):
        viz.forgetting_curves({})
