"""Interactive widgets for the notebooks: the training-memory calculator of notebook 00.

    from labs.widgets import memory_calculator
    memory_calculator()          # pick a model size, precision, method, batch and sequence length

The numbers come from labs.memory.estimate_memory (the analytic model notebook 09 checks against
measurements); this module only chooses model shapes, builds the controls and shows the result.
`estimate(...)` is the same computation without any widget, for tests and scripts.
"""
from __future__ import annotations

from dataclasses import dataclass

from labs.memory import GB, STRATEGIES, MemoryEstimate, estimate_memory, per_gpu
from labs.methods import get_method
from labs.viz import COLORS, COMPONENTS, new_figure

# What the calculator compares: a registry method (labs/methods.py) and the precision of the frozen
# base. QLoRA is not another method here but LoRA on a base stored in 4-bit NF4.
SCENARIOS = {"full": ("full", None), "lora": ("lora", None), "qlora": ("lora", "nf4-dq")}
METHODS = tuple(SCENARIOS)  # the calculator's choices, in the order the chart shows them
PRECISIONS = ("fp32", "bf16", "fp16")
GPU_SIZES_GB = (8, 12, 16, 24, 48, 80)  # common cards: laptop, consumer (3060 .. 4090), workstation, A100/H100
CUSTOM = "custom"


@dataclass(frozen=True)
class ModelShape:
    n_params: int   # parameters of the base model
    hidden: int     # D, the residual width
    layers: int     # L, transformer blocks
    vocab: int      # V, the logits the loss keeps are B x T x V


# Published shapes: SmolLM2 (the course's models) and Llama 2 (the classic 7B / 13B / 70B).
MODEL_SIZES = {
    "135M (SmolLM2-135M)": ModelShape(134_515_008, 576, 30, 49_152),
    "360M (SmolLM2-360M)": ModelShape(361_821_120, 960, 32, 49_152),
    "1.7B (SmolLM2-1.7B)": ModelShape(1_711_376_384, 2048, 24, 49_152),
    "7B (Llama-2-7B)": ModelShape(6_738_415_616, 4096, 32, 32_000),
    "13B (Llama-2-13B)": ModelShape(13_015_864_320, 5120, 40, 32_000),
    "70B (Llama-2-70B)": ModelShape(68_976_648_192, 8192, 80, 32_000),
}


def shape_for_params(n_params: float, vocab: int = 32_000) -> ModelShape:
    """A plausible shape for a custom size: n ~ 12 L D^2 with D = 128 L, as in Llama-like models."""
    if n_params <= 0:
        raise ValueError(f"n_params must be positive, got {n_params}")
    layers = max(1, round((n_params / (12 * 128 ** 2)) ** (1 / 3)))
    hidden = max(64, 64 * round((n_params / (12 * layers)) ** 0.5 / 64))  # widths come in multiples of 64
    return ModelShape(int(n_params), hidden, layers, vocab)


def lora_params(shape: ModelShape, r: int) -> int:
    """LoRA on every linear layer of a Llama block: four D x D attention projections and three
    MLP matrices of D x 8D/3, each gaining r * (d_in + d_out) weights (GQA ignored)."""
    if r < 1:
        raise ValueError(f"LoRA rank r must be >= 1, got {r}")
    D = shape.hidden
    per_layer = r * (4 * (D + D) + 3 * (D + 8 * D // 3))
    return shape.layers * per_layer


def estimate(shape: ModelShape, method: str = "full", precision: str = "bf16", *,
             batch_size: int = 8, seq_len: int = 512, r: int = 16, gpus: int = 1,
             strategy: str = "ddp") -> MemoryEstimate:
    """Training memory on each GPU for one configuration (what the calculator shows): `batch_size`
    rows per GPU, spread over `gpus` GPUs by `strategy` (ddp replicates, fsdp shards; see per_gpu)."""
    one_gpu = _one_gpu(shape, method, precision, batch_size=batch_size, seq_len=seq_len, r=r)
    return per_gpu(one_gpu, gpus, strategy, layers=shape.layers)


def _one_gpu(shape: ModelShape, method: str, precision: str, *, batch_size: int, seq_len: int,
             r: int) -> MemoryEstimate:
    if method not in SCENARIOS:
        raise ValueError(f"method {method!r} is not valid; use one of {', '.join(SCENARIOS)}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not valid; use one of {', '.join(PRECISIONS)}")
    common = dict(batch_size=batch_size, seq_len=seq_len, hidden=shape.hidden, layers=shape.layers,
                  vocab=shape.vocab, activation_bytes_per_value=4.0 if precision == "fp32" else 2.0)
    name, base_bytes = SCENARIOS[method]
    if get_method(name).trains_all:  # 16-bit training keeps an fp32 master copy of every weight
        return estimate_memory(shape.n_params, name, weight_bytes=precision,
                               master_weights=precision != "fp32", **common)
    return estimate_memory(shape.n_params, name, trainable_params=lora_params(shape, r),
                           weight_bytes=base_bytes or precision,
                           grad_bytes=4.0 if precision == "fp32" else 2.0, **common)


def smallest_gpu(total_bytes: float) -> str:
    """Which common GPU size holds `total_bytes`, in words."""
    for size in GPU_SIZES_GB:
        if total_bytes <= size * GB:
            return f"fits on a {size} GB GPU"
    return f"needs {total_bytes / (80 * GB):.1f} x 80 GB GPUs' worth of memory"


def breakdown_html(result: MemoryEstimate) -> str:
    rows = "".join(f"<tr><td>{part}</td><td style='text-align:right'>{result.gb(part):,.2f}</td></tr>"
                   for part in COMPONENTS)
    return ("<table><tr><th>component</th><th>GB</th></tr>" + rows +
            f"<tr><td><b>total</b></td><td style='text-align:right'><b>{result.gb():,.2f}</b></td></tr></table>")


def total_html(result: MemoryEstimate, method: str, gpus: int = 1, strategy: str = "ddp") -> str:
    where = "" if gpus == 1 else f" per GPU, {gpus} GPUs under {strategy.upper()}"
    return f"<b>Total for {method}{where}: {result.gb():,.2f} GB</b> &mdash; {smallest_gpu(result.total)}"


def methods_figure(shape: ModelShape, precision: str, **settings):
    """Stacked bars, one per method, at the same settings: where each method's memory goes."""
    fig, (ax,) = new_figure(6.0, 3.6)
    results = {m: estimate(shape, m, precision, **settings) for m in METHODS}
    bottom = [0.0] * len(METHODS)
    for part in COMPONENTS:
        heights = [getattr(results[m], part) / GB for m in METHODS]
        ax.bar(METHODS, heights, bottom=bottom, label=part, color=COLORS[part])
        bottom = [b + h for b, h in zip(bottom, heights)]
    for i, total in enumerate(bottom):
        ax.annotate(f"{total:,.1f}", (i, total), ha="center", va="bottom", fontsize=8)
    gpus, strategy = settings.get("gpus", 1), settings.get("strategy", "ddp")
    spread = "" if gpus == 1 else f", per GPU of {gpus} ({strategy.upper()})"
    ax.set(ylabel="memory (GB)", title=f"Training memory, {shape.n_params / 1e9:.2f}B parameters, {precision}{spread}")
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return fig


def _controls(w) -> dict:
    """The calculator's inputs, by name; each carries a CSS class so a browser test can find it."""
    style = {"description_width": "130px"}
    controls = {
        "model": w.Dropdown(options=[*MODEL_SIZES, CUSTOM], value="7B (Llama-2-7B)",
                            description="model size", style=style),
        "custom": w.FloatLogSlider(value=10.0, base=10, min=-1, max=2.6, step=0.05,  # 0.1B .. 400B
                                   description="custom (billions)", disabled=True, style=style,
                                   readout_format=".2f"),
        "precision": w.Dropdown(options=PRECISIONS, value="bf16", description="precision", style=style),
        "method": w.ToggleButtons(options=METHODS, value="full", description="method", style=style),
        "rank": w.IntSlider(value=16, min=1, max=256, description="LoRA rank r", style=style),
        "batch": w.IntSlider(value=8, min=1, max=64, description="batch size B", style=style),
        "seq": w.IntSlider(value=512, min=64, max=8192, step=64, description="seq length T", style=style),
        "gpus": w.IntSlider(value=1, min=1, max=64, description="GPUs", style=style),
        "strategy": w.ToggleButtons(options=STRATEGIES, value="fsdp", description="spread by", style=style,
                                    tooltips=["DDP: a full replica on every GPU, the data split",
                                              "FSDP: weights, gradients and optimizer state sharded"]),
    }
    for name, control in controls.items():
        control.add_class(f"labs-memory-{name}")
    return controls


def memory_calculator():
    """The calculator: controls on top, the breakdown table, the total, and the method chart."""
    import ipywidgets as w
    from IPython.display import display

    c = _controls(w)
    table, total, plot = w.HTML(), w.HTML(), w.Output()
    table.add_class("labs-memory-table")
    total.add_class("labs-memory-total")

    def update(_=None):
        custom = c["model"].value == CUSTOM
        c["custom"].disabled = not custom
        shape = shape_for_params(c["custom"].value * 1e9) if custom else MODEL_SIZES[c["model"].value]
        settings = dict(batch_size=c["batch"].value, seq_len=c["seq"].value, r=c["rank"].value,
                        gpus=c["gpus"].value, strategy=c["strategy"].value)
        result = estimate(shape, c["method"].value, c["precision"].value, **settings)
        table.value = breakdown_html(result)
        total.value = total_html(result, c["method"].value, c["gpus"].value, c["strategy"].value)
        with plot:
            plot.clear_output(wait=True)
            display(methods_figure(shape, c["precision"].value, **settings))

    for control in c.values():
        control.observe(update, names="value")
    update()
    note = w.HTML("<small>LoRA and QLoRA wrap every linear layer; QLoRA keeps the base in 4-bit NF4. "
                  "Activations assume fused attention; the model is an estimate (see notebook 09).</small>")
    return w.VBox([*c.values(), table, total, plot, note])
