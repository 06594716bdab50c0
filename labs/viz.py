"""Plots. Every function takes data and returns a matplotlib Figure; nothing here computes or shows.

Figures are built with the object API (no pyplot state), so they work headless (Agg), never
appear twice in a notebook, and can be saved with `fig.savefig(path)`. In Jupyter, the returned
figure displays itself as a PNG.
"""
from __future__ import annotations

import io
from dataclasses import asdict, is_dataclass
from typing import Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

COMPONENTS = ("weights", "gradients", "optimizer", "activations")
COLORS = {"weights": "#4c72b0", "gradients": "#dd8452", "optimizer": "#c44e52", "activations": "#55a868"}
MiB = 2 ** 20
PALETTE = ("#999999", "#dd8452", "#4c72b0", "#c44e52", "#55a868", "#8172b3", "#937860")  # grey first: the baseline


class LabFigure(Figure):
    """A Figure that shows itself in Jupyter without pyplot (so it is never shown twice)."""

    def _repr_png_(self) -> bytes:
        buf = io.BytesIO()
        self.savefig(buf, format="png")
        return buf.getvalue()


def new_figure(width: float = 6.4, height: float = 4.0, ncols: int = 1):
    """A Figure on an Agg canvas with `ncols` axes side by side; returns (fig, axes list)."""
    fig = LabFigure(figsize=(width, height), layout="constrained", dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _as_dict(obj) -> dict:
    if is_dataclass(obj):
        return asdict(obj)
    return dict(obj)


def _smooth(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving average: training loss is noisy at batch size 8."""
    if window <= 1:
        return list(values)
    out = []
    for i in range(len(values)):
        part = values[max(0, i + 1 - window):i + 1]
        out.append(sum(part) / len(part))
    return out


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------
def loss_curves(histories, *, smooth: int = 1, title: str = "Training loss", logy: bool = False) -> Figure:
    """Training loss per optimizer step; a dict {label: History} puts several runs on one axes.

    smooth > 1 draws each run's raw losses faintly and their trailing mean over `smooth` steps
    on top, both in the legend, so the smoothing is visible and named.
    """
    if not isinstance(histories, Mapping):
        histories = {"run": histories}
    if not histories:
        raise ValueError("no histories to plot")
    if isinstance(smooth, bool) or not isinstance(smooth, int) or smooth < 1:
        raise ValueError(f"smooth={smooth!r} is not valid; use a whole number of steps >= 1 (1 = no smoothing)")
    fig, (ax,) = new_figure()
    for label, history in histories.items():
        marker = "." if len(history.steps) < 40 else None  # few steps: show each one
        if smooth > 1:
            raw, = ax.plot(history.steps, history.losses, alpha=0.3, label=f"{label} (each step)")
            ax.plot(history.steps, _smooth(history.losses, smooth), color=raw.get_color(), marker=marker,
                    label=f"{label} (mean of {smooth} steps)")
        else:
            ax.plot(history.steps, history.losses, label=label, marker=marker)
    ax.set(xlabel="optimizer step", ylabel="training loss (nats / target)", title=title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    if logy:
        ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    return fig


def before_after(before: Mapping[str, float], after: Mapping[str, float], *,
                 title: str = "Held-out evaluation") -> Figure:
    """One small bar chart per metric (they have different scales): before vs after training."""
    metrics = [k for k in before if k in after]
    if not metrics:
        raise ValueError(f"before and after share no metric: {sorted(before)} vs {sorted(after)}")
    fig, axes = new_figure(2.8 * len(metrics) + 0.6, 3.6, ncols=len(metrics))
    for ax, name in zip(axes, metrics):
        values = [before[name], after[name]]
        bars = ax.bar(["before", "after"], values, color=["#999999", "#4c72b0"])
        ax.bar_label(bars, fmt="%.3g")
        ax.set(title=_metric_label(name), ylim=(0, max(values) * 1.2 or 1))
    fig.suptitle(title)
    return fig


def _metric_label(name: str) -> str:
    hints = {"loss": "held-out loss\n(lower is better)", "perplexity": "held-out perplexity\n(lower is better)",
             "accuracy": "held-out accuracy\n(higher is better)",
             "probe": "general-knowledge probe\n(higher is better)"}
    return hints.get(name, name)


# ---------------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------------
def memory_breakdown(rows: Mapping[str, object], *, title: str = "Training memory by component",
                     unit: str = "MiB") -> Figure:
    """Stacked bars per method: weights, gradients, optimizer state, activations (bytes in, MiB/GiB out).

    `rows` maps a method name to a dict or dataclass with (some of) those fields in bytes.
    """
    scale = {"MiB": MiB, "GiB": 2 ** 30}.get(unit)
    if scale is None:
        raise ValueError(f"unit must be 'MiB' or 'GiB', got {unit!r}")
    if not rows:
        raise ValueError("no rows to plot")
    fig, (ax,) = new_figure(max(4.0, 1.3 * len(rows) + 2), 4.2)
    names = list(rows)
    data = {n: _as_dict(rows[n]) for n in names}
    bottom = [0.0] * len(names)
    for comp in COMPONENTS:
        heights = [float(data[n].get(comp, 0) or 0) / scale for n in names]
        ax.bar(names, heights, bottom=bottom, label=comp, color=COLORS[comp])
        bottom = [b + h for b, h in zip(bottom, heights)]
    for i, total in enumerate(bottom):
        ax.annotate(f"{total:,.0f}", (i, total), ha="center", va="bottom", fontsize=8)
    # Headroom above the tallest bar: the legend's four rows sit there, not over a bar's total.
    ax.set(ylabel=f"memory ({unit})", title=title, ylim=(0, 1.45 * max(max(bottom), 1e-9)))
    ax.legend(loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    return fig


# ---------------------------------------------------------------------------------------------
# Comparing methods
# ---------------------------------------------------------------------------------------------
def pareto(points: Mapping[str, tuple[float, float]], *, x_label: str = "trainable parameters (%)",
           y_label: str = "accuracy", higher_is_better: bool = True, logx: bool = True,
           title: str = "Cost vs quality") -> Figure:
    """Labelled scatter of {method: (cost, quality)}, with the Pareto front (best quality per cost) drawn."""
    if not points:
        raise ValueError("no points to plot")
    fig, (ax,) = new_figure()
    for name, (x, y) in points.items():
        ax.scatter([x], [y], s=40, zorder=3)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=9)
    front = pareto_front(points, higher_is_better)
    ax.plot([points[n][0] for n in front], [points[n][1] for n in front], "--", color="grey",
            alpha=0.6, label="Pareto front", zorder=2)
    if logx and all(x > 0 for x, _ in points.values()):
        ax.set_xscale("log")
    better = "higher" if higher_is_better else "lower"
    ax.set(xlabel=x_label, ylabel=f"{y_label} ({better} is better)", title=title)
    ax.legend(loc="best")
    ax.grid(alpha=0.3)
    return fig


def pareto_front(points: Mapping[str, tuple[float, float]], higher_is_better: bool = True) -> list[str]:
    """Names of the points no other point beats on both cost (lower) and quality; by cost."""
    sign = 1 if higher_is_better else -1
    front, best = [], float("-inf")
    for name, (x, y) in sorted(points.items(), key=lambda kv: (kv[1][0], -sign * kv[1][1])):
        if sign * y > best:
            front.append(name)
            best = sign * y
    return front


def learning_vs_forgetting(points: Mapping[str, tuple[float, float, float, float]], *,
                           x_label: str = "learning (gain on the task)",
                           y_label: str = "forgetting (loss elsewhere)",
                           title: str = "Learning vs forgetting") -> Figure:
    """{method: (gain, gain_se, forgotten, forgotten_se)} as points with one-standard-error bars.

    Right is more learned, up is more forgotten: the best methods sit low and to the right. The
    dotted line at zero forgetting shows which changes their error bars cannot tell from none; the
    one at zero learning is drawn only when a bar reaches it (else it would squeeze every point
    into a corner). Methods are named in a legend, each with its own colour and marker, since
    methods that learned alike sit on top of each other.
    """
    if not points:
        raise ValueError("no points to plot")
    fig, (ax,) = new_figure()
    markers = "osD^vP*Xh<>"
    for i, (name, (x, x_se, y, y_se)) in enumerate(points.items()):
        ax.errorbar([x], [y], xerr=[x_se], yerr=[y_se], fmt=markers[i % len(markers)],
                    color=PALETTE[i % len(PALETTE)], capsize=3, zorder=3, label=name, alpha=0.85)
    ax.axhline(0, color="grey", ls=":", lw=1)
    if min(x - x_se for x, x_se, _, _ in points.values()) <= 0:
        ax.axvline(0, color="grey", ls=":", lw=1)
    ax.set(xlabel=x_label + " (right is better)", ylabel=y_label + " (lower is better)", title=title)
    ax.legend(fontsize=8, loc="best", ncols=2 if len(points) > 4 else 1)
    ax.grid(alpha=0.3)
    return fig


def forgetting_curves(curves: Mapping[str, Sequence[tuple[float, float]]], *,
                      x_label: str = "learning: the task's held-out loss gain",
                      y_label: str = "forgetting", title: str = "Learning vs forgetting along training",
                      matched: float | None = None, points: Mapping[str, tuple[float, float]] | None = None) -> Figure:
    """{label: [(gain, forgetting) at each checkpoint, from step 0]} as lines, a marker per checkpoint.

    Runs of one method (the label's first word) share a colour; its variants (another rank, learning
    rate, seed, reference) get their own line style. `matched`: a dotted vertical line where the runs
    are compared. `points`: single points (a quantized base with no adapter), as stars.
    """
    if not curves:
        raise ValueError("no curves to plot")
    fig, (ax,) = new_figure(7.2, 4.6)
    groups: dict[str, int] = {}
    styles = ("-", "--", ":", "-.")
    seen_in_group: dict[str, int] = {}
    for label, xy in curves.items():
        group = label.split()[0]
        colour = PALETTE[groups.setdefault(group, len(groups)) % len(PALETTE)]
        style = styles[seen_in_group.get(group, 0) % len(styles)]
        seen_in_group[group] = seen_in_group.get(group, 0) + 1
        xs, ys = zip(*xy)
        ax.plot(xs, ys, ls=style, marker="o", ms=4, color=colour, label=label)
    for label, (x, y) in (points or {}).items():
        ax.plot([x], [y], marker="*", ms=14, ls="none", color="black", label=label, zorder=4)
    ax.axhline(0, color="grey", ls=":", lw=1)
    if matched is not None:
        ax.axvline(matched, color="black", ls=":", lw=1)
    ax.set(xlabel=x_label + " (right: learned more)", ylabel=y_label + " (up: forgot more)", title=title)
    ax.legend(fontsize=7, loc="upper left", ncols=2)
    ax.grid(alpha=0.3)
    return fig


def ratio_bars(panels: Mapping[str, Mapping[str, float]], *, baseline: str = "base",
               y_label: str = "time / base model") -> Figure:
    """One panel per measurement: each variant's value divided by the baseline's, as labelled bars
    around a line at 1.0 (e.g. latency of adapted models against the base model)."""
    if not panels:
        raise ValueError("no panels to plot")
    fig, axes = new_figure(5 * len(panels), 3.6, ncols=len(panels))
    for ax, (title, values) in zip(axes, panels.items()):
        if baseline not in values:
            raise ValueError(f"panel {title!r} has no {baseline!r} value to divide by; it has {', '.join(values)}")
        ratios = [v / values[baseline] for v in values.values()]
        bars = ax.bar(list(values), ratios, color=PALETTE[:len(values)])
        ax.bar_label(bars, fmt="%.2fx", padding=3)
        ax.axhline(1, color="black", lw=1)
        ax.set(title=title, ylabel=y_label, ylim=(0, max(ratios) * 1.25))
    return fig


def sweep(series, *, x_label: str = "rank r", y_label: str = "metric", title: str = "Sweep",
          logx: bool = False) -> Figure:
    """Metric against one setting (rank, prompt length, ...).

    `series` is {label: (xs, ys)} for several lines, or a single (xs, ys) pair.
    """
    if not isinstance(series, Mapping):
        series = {"": series}
    fig, (ax,) = new_figure()
    for label, (xs, ys) in series.items():
        if len(xs) != len(ys):
            raise ValueError(f"series {label!r}: {len(xs)} x values but {len(ys)} y values")
        ax.plot(xs, ys, marker="o", label=label or None)
    if logx:
        ax.set_xscale("log", base=2)
    ax.set(xlabel=x_label, ylabel=y_label, title=title)
    if any(series):
        ax.legend()
    ax.grid(alpha=0.3)
    return fig


def memory_vs_size(recording: Mapping, *, title: str = "Training memory against model size") -> Figure:
    """Memory (GB, log) against parameters (log) per variant: measured peaks above the process baseline
    as markers, the analytic lines dashed, and the consumer card's line (labs.memory_scaling's recording)."""
    from labs.memory_scaling import LABELS, VARIANTS
    fig, (ax,) = new_figure(7.5, 4.6)
    n = recording["n_params"]
    for i, variant in enumerate(VARIANTS):
        colour = PALETTE[i + 1]
        xs = [n[s] for s in recording["sizes"]]
        ax.plot(xs, [recording["analytic"][variant][s] / 1e9 for s in recording["sizes"]], ls="--", lw=1,
                color=colour)
        runs = [r for r in recording["runs"] if r["variant"] == variant and "peak_above_baseline" in r]
        ax.plot([n[r["size"]] for r in runs], [r["peak_above_baseline"] / 1e9 for r in runs], "o", color=colour,
                label=LABELS[variant])
    old = [r for r in recording["runs"] if r["variant"] == "qlora-old" and "peak_above_baseline" in r]
    if old:
        ax.plot([n[r["size"]] for r in old], [r["peak_above_baseline"] / 1e9 for r in old], "x", color=PALETTE[4],
                label=LABELS["qlora-old"])
    gpu = recording["gpu_line_gb"]
    ax.axhline(gpu, color="black", lw=1)
    ax.annotate(f"{gpu:.0f} GB consumer GPU", (min(n.values()), gpu), xytext=(0, 3), textcoords="offset points",
                fontsize=8)
    for size, count in n.items():   # each size named at the foot of the plot (x in data, y in axes units)
        ax.annotate(size, (count, 0.01), xycoords=ax.get_xaxis_transform(), ha="center", fontsize=8, color="0.3")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set(xlabel="parameters", ylabel="GB above the process baseline (1e9 B)", title=title)
    ax.plot([], [], "k--", lw=1, label="analytic (labs.memory), same batch")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3, which="both")
    return fig


def save(fig: Figure, path) -> None:
    """Write the figure as PNG, atomically (labs.files.write_atomically)."""
    from labs.files import write_atomically
    write_atomically(path, lambda tmp: fig.savefig(tmp, format="png"))
