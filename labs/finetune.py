"""One fine-tune, end to end: load, measure, prepare a method, train, measure again, save.

    metrics = run_finetune("lora", "smollm2-135m", task="define", preset="quick")

This is what `labs finetune` runs. It writes into `out/`:
    metrics.json        the run's numbers, written atomically: trainable/total parameters,
                        eval_before/eval_after ({"loss", "accuracy" | "perplexity"}),
                        probe_before/probe_after (decoders), base_weight_bytes and base_bits_per_param
                        (the base as loaded: 4-bit for qlora), peak_memory_bytes, step and wall
                        times, saved_bytes, generations, versions, the loss history
    adapter/            PEFT methods: adapter_config.json + adapter_model.safetensors
    model.safetensors   full fine-tuning: the whole state dict (tied weights stored once)
    loss.png            training loss per step
    before_after.png    held-out metric (and probe) before vs after
Several methods side by side: labs/compare.py.
"""
from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from labs import distributed
from labs.files import dir_bytes, write_json
from labs.memory import current_rss_bytes, peak_memory_bytes, reset_peak

DEFAULT_TASKS = {"smollm2-135m": "define", "minilm-l6": "sentiment"}
N_GENERATIONS = 3


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------
def default_task(model: str) -> str:
    """The task a model is shown off on: sentiment for the encoder, "define X" for decoders."""
    if model in DEFAULT_TASKS:
        return DEFAULT_TASKS[model]
    return "sentiment" if any(k in str(model).lower() for k in ("bert", "minilm")) else "define"


def default_out(method: str, model: str, task: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{method}-{Path(str(model)).name}-{task}-{stamp}"


def save_trained(method: str, model, out: Path) -> tuple[int, list[str]]:
    """Save what was trained: the adapter in the PEFT layout, or the whole model for a method
    without one (full fine-tuning). Returns (bytes written, files relative to out)."""
    from labs.methods import get_method
    if get_method(method).peft_type is None:
        from labs.full import save_full_model
        return save_full_model(model, out / "model.safetensors"), ["model.safetensors"]
    from labs.peft_format import save_adapter
    save_adapter(model, out / "adapter")
    write_adapter_readme(method, model, out / "adapter")
    files = sorted(str(f.relative_to(out)) for f in (out / "adapter").rglob("*") if f.is_file())
    return dir_bytes(out / "adapter"), files


def write_adapter_readme(method: str, model, folder: Path) -> None:
    """README.md beside the adapter: its base model by Hub name, and how it was trained here."""
    from labs.files import write_atomically
    from labs.models import MODELS
    base = getattr(getattr(model, "config", None), "name_or_path", "") or "(unknown)"
    embedded = next((spec for spec in MODELS.values() if spec.hf_id == base), None)
    lines = [f"# A {method} adapter made with PEFT Lab", "",
             f"Base model: `{base}` (as `base_model_name_or_path` in adapter_config.json).", ""]
    if embedded is not None:
        lines += [f"Trained on the course's embedded copy of that model, shipped offline by the PyPI package "
                  f"`{embedded.package}`: {embedded.notes}", ""]
    if method in ("lora", "prefix", "prompt"):
        auto = "AutoModelForCausalLM" if getattr(model, "can_generate", lambda: False)() else \
            "AutoModelForSequenceClassification"
        lines += ["Load it with Hugging Face peft anywhere:", "", "```python", "from peft import PeftModel",
                  f"from transformers import {auto}", f"base = {auto}.from_pretrained({base!r})",
                  "model = PeftModel.from_pretrained(base, 'path/to/this/folder')", "```", ""]
    lines += ["Or with the course: `labs.load_adapter(labs.load_model(...)[0], 'path/to/this/folder')`.", ""]
    write_atomically(folder / "README.md", "\n".join(lines))


class PhaseClock:
    """Seconds spent in each named phase of a run, in order."""

    def __init__(self):
        self.laps: dict[str, float] = {}
        self._start = self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = now - self._last
        self._last = now

    def total(self) -> float:
        return time.perf_counter() - self._start


def _resolve_preset(preset):
    from labs.presets import Preset, get_preset
    return preset if isinstance(preset, Preset) else get_preset(preset)


def _decoder(model) -> bool:
    """Decoders generate text and can be probed; encoders (BERT) cannot."""
    can_generate = getattr(model, "can_generate", None)
    return bool(can_generate and can_generate())


# ---------------------------------------------------------------------------------------------
# Loading and measuring
# ---------------------------------------------------------------------------------------------
@dataclass
class Setup:
    """Everything one run works on, loaded once."""
    model: torch.nn.Module        # replaced by the prepared model after `prepare`
    tokenizer: object
    task: object                  # labs.data.Task
    device: torch.device
    train_examples: list[dict]
    eval_examples: list[dict]     # the same held-out set for every run (seed 0)
    probe_items: list[dict]       # general-knowledge probe (decoders only)
    gen_examples: list[dict]      # prompts for greedy generations (generate tasks only)


def load_setup(model: str, task_name: str, preset, seed: int, device: str | None) -> Setup:
    from labs.data import get_task, load_examples, load_probe
    from labs.models import load_model, pick_device
    task, device = get_task(task_name), pick_device(device)
    num_labels = len(task.labels) if task.kind == "classify" else None
    torch.manual_seed(seed)  # a new classification head is initialised while loading
    net, tokenizer = load_model(model, task_kind=task.kind, num_labels=num_labels, device=device)
    eval_examples = load_examples(task.name, "validation", n=preset.n_eval, seed=0)
    decoder = _decoder(net)
    return Setup(net, tokenizer, task, device,
                 train_examples=load_examples(task.name, "train", n=preset.n_train, seed=seed),
                 eval_examples=eval_examples,
                 probe_items=load_probe(n=preset.n_probe) if decoder and preset.n_probe else [],
                 gen_examples=eval_examples[:N_GENERATIONS] if decoder and task.kind == "generate" else [])


def measure(setup: Setup, preset) -> dict:
    """Held-out metrics, probe accuracy (decoders) and greedy generations (generate tasks)."""
    from labs.evaluate import evaluate_task, generate, probe_accuracy
    model, tokenizer = setup.model, setup.tokenizer
    result = {"eval": evaluate_task(model, tokenizer, setup.task, setup.eval_examples, preset)}
    if setup.probe_items:
        result["probe"] = probe_accuracy(model, tokenizer, setup.probe_items)
    if setup.gen_examples:
        result["generations"] = generate(model, tokenizer, [ex["prompt"] for ex in setup.gen_examples])
    return result


@dataclass
class Fit:
    history: object               # labs.train.History
    config: object                # the labs.train.TrainConfig used
    peak_memory_bytes: int
    rss_before_train_bytes: int
    peak_memory_kind: str


def store_frozen_base(setup: Setup, preset):
    """Where the preset asks for it and bf16 autocast really runs, keep the frozen base in bf16.

    Returns a factory of the context every later forward pass needs (evaluation included): bf16
    autocast where the base was cast, since fp32 trainable weights beside bf16 frozen ones only mix
    inside autocast; a no-op context otherwise. Also returns the bytes the cast saved.
    """
    from contextlib import nullcontext
    from labs.train import bf16_autocast_available, store_frozen_in
    if not (preset.frozen_bf16 and preset.bf16 and bf16_autocast_available(setup.device)):
        return nullcontext, 0
    saved = store_frozen_in(setup.model, torch.bfloat16)
    return (lambda: torch.autocast(setup.device.type, dtype=torch.bfloat16)), saved


def fit(setup: Setup, method: str, preset, seed: int, progress: bool, forward_context=None) -> Fit:
    """Train the prepared model with the preset; measure the peak memory of training.

    forward_context  a factory of the context held evaluation forwards run in (store_frozen_base)
    """
    from labs.data import batches
    from labs.methods import get_method, learning_rate
    from labs.train import TrainConfig, train
    cfg = TrainConfig(lr=learning_rate(method, preset), max_steps=preset.max_steps,
                      grad_accum=preset.grad_accum, seed=seed, bf16=preset.bf16, eval_every=preset.eval_every,
                      gradient_checkpointing=preset.gradient_checkpointing and get_method(method).checkpointing)
    eval_fn = _held_out_loss(setup, preset, forward_context) if preset.eval_every else None
    stream = batches(setup.train_examples, setup.tokenizer, setup.task, preset.seq_len, preset.batch_size,
                     seed=seed, epochs=None)
    rss_before = current_rss_bytes()
    windowed = reset_peak(setup.device)
    history = train(setup.model, stream, cfg, eval_fn=eval_fn, progress=progress)
    return Fit(history, cfg, peak_memory_bytes(setup.device), rss_before, _peak_kind(setup.device, windowed))


def _peak_kind(device: torch.device, windowed: bool) -> str:
    """What peak_memory_bytes measured, in words a reader of metrics.json can judge."""
    if device.type == "cuda":
        return "cuda max_memory_allocated during training"
    if windowed:
        return "process peak resident memory during training (includes Python, torch, the model)"
    return "process peak resident memory since start (includes Python, torch, the model, loading)"


def _held_out_loss(setup: Setup, preset, forward_context=None):
    """Held-out loss during training (the cheap part of evaluate_task)."""
    from contextlib import nullcontext
    from labs.evaluate import eval_loss

    def held_out(model):
        with (forward_context or nullcontext)():
            return {"loss": eval_loss(model, setup.tokenizer, setup.task, setup.eval_examples,
                                      preset.seq_len, preset.batch_size)}
    return held_out


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------
def run_finetune(method: str = "full", model: str = "smollm2-135m", task: str | None = None,
                 preset="quick", out: str | Path | None = None, options: dict | None = None,
                 progress: bool = True, seed: int = 0, device: str | None = None,
                 impl: str | None = None) -> dict:
    """Fine-tune `model` on `task` with `method`; measure before and after; save; return metrics.

    preset   a preset name ("quick", "laptop", "gpu") or a labs.presets.Preset (e.g. with overrides,
             such as get_preset("quick", lr=1e-3) for one learning rate)
    options  method options, e.g. {"r": 8} for LoRA (the technique's prepare_for_finetune reads them)
    out      output folder (default runs/<method>-<model>-<task>-<time>)
    device   "cpu", "cuda", "mps" (default: the best available)
    impl     "labs" (your own modules) or "solutions" (the reference); default $LABS_IMPL
    """
    from labs.impl import current_impl
    from labs.methods import check_options, prepare, require_finished
    from labs.surgery import count_parameters
    clock = PhaseClock()
    impl = impl or current_impl()
    distributed.refuse_fsdp("labs finetune")
    check_options(method, options, impl)  # fail on a typo, or an unfinished exercise, before loading anything
    require_finished(method, impl)
    preset, task = _resolve_preset(preset), task or default_task(model)
    # Under a launcher (accelerate launch, torchrun) every process trains; only the main one writes.
    main = distributed.is_main_process()
    setup = load_setup(model, task, preset, seed, device or distributed.local_device())
    out = Path(out) if out is not None else default_out(method, model, setup.task.name)
    if main:
        out.mkdir(parents=True, exist_ok=True)
    clock.lap("load")
    before = measure(setup, preset)
    clock.lap("measure_before")
    setup.model = prepare(method, setup.model, setup.task, options or {}, impl)
    forward_context, cast_saved = store_frozen_base(setup, preset)
    counts = count_parameters(setup.model)
    base = {**_base_weights(method, setup.model, counts),  # as stored for training
            "frozen_base_bf16": cast_saved > 0, "frozen_cast_saved_bytes": cast_saved}
    trained = fit(setup, method, preset, seed, progress, forward_context)
    clock.lap("train")
    with forward_context():
        after = measure(setup, preset)
    clock.lap("measure_after")
    saved_bytes, saved_files = save_trained(method, setup.model, out) if main else (0, [])
    clock.lap("save")
    metrics = {**_describe(method, model, setup, preset, options, seed, impl), **_costs(counts, trained), **base,
               **_quality(setup, before, after), "saved_bytes": saved_bytes, "saved_files": saved_files,
               "wall_time_s": clock.total(), "phase_times_s": clock.laps}
    if main:
        write_json(out / "metrics.json", metrics)
        _plots(metrics, trained.history, out)
        print(summary(metrics, out))
    return metrics


def _describe(method, model, setup: Setup, preset, options, seed, impl) -> dict:
    """What was run, where, with which versions."""
    import transformers
    from labs.methods import get_method
    return {"method": method, "model": str(model), "task": setup.task.name, "task_kind": setup.task.kind,
            "preset": preset.name, "options": dict(options or {}), "seed": seed,
            "impl": None if get_method(method).infrastructure else impl,
            "batch_size": preset.batch_size, "grad_accum": preset.grad_accum, "seq_len": preset.seq_len,
            "device": str(setup.device), "world_size": distributed.world_size(),  # processes (launcher)
            "dtype": str(next(setup.model.parameters()).dtype).replace("torch.", ""),
            "torch_version": torch.__version__, "transformers_version": transformers.__version__,
            "python_version": platform.python_version()}


def _base_weights(method: str, model, counts) -> dict:
    """Bytes the base model's weights hold as loaded (4-bit for qlora), and bits per base parameter."""
    from labs.memory import weight_bytes
    from labs.methods import get_method
    adds = get_method(method).adds_params   # new trainable weights are not part of the base
    held = weight_bytes(model, exclude_trainable=adds)
    params = counts.total - (counts.trainable if adds else 0)
    return {"base_weight_bytes": held, "base_bits_per_param": 8 * held / params if params else None}


def _costs(counts, trained: Fit) -> dict:
    """What training cost: parameters, memory, time."""
    h = trained.history
    return {"trainable_params": counts.trainable, "total_params": counts.total,
            "trainable_percent": counts.percent, "peak_memory_bytes": trained.peak_memory_bytes,
            "peak_memory_kind": trained.peak_memory_kind,
            "rss_before_train_bytes": trained.rss_before_train_bytes,
            "step_time_median_s": h.step_time_median, "steps": len(h.steps), "lr": trained.config.lr,
            "bf16_autocast": h.bf16, "gradient_checkpointing": trained.config.gradient_checkpointing,
            "history": {"steps": h.steps, "losses": h.losses, "step_times": h.step_times, "lr": h.lr,
                        "evals": h.evals}}


def _quality(setup: Setup, before: dict, after: dict) -> dict:
    """What training changed: held-out metrics, the probe, generations."""
    quality = {"eval_before": before["eval"], "eval_after": after["eval"]}
    if "probe" in before:
        quality["probe_before"], quality["probe_after"] = before["probe"], after["probe"]
        quality["probe_items"] = len(setup.probe_items)
    if setup.gen_examples:
        quality["generations"] = [{"prompt": ex["prompt"], "reference": ex["response"], "before": b, "after": a}
                                  for ex, b, a in zip(setup.gen_examples, before["generations"], after["generations"])]
    return quality


def _plots(metrics: dict, history, out: Path) -> None:
    from labs import viz
    title = f"{metrics['method']} on {metrics['task']} ({metrics['model']})"
    viz.save(viz.loss_curves({metrics["method"]: history}, title=title), out / "loss.png")
    before, after = dict(metrics["eval_before"]), dict(metrics["eval_after"])
    if "probe_before" in metrics:
        before["probe"], after["probe"] = metrics["probe_before"], metrics["probe_after"]
    viz.save(viz.before_after(before, after, title=title), out / "before_after.png")


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


FORMATS = {"loss": ".3f", "perplexity": ".1f", "accuracy": ".3f"}  # one format per metric, before and after


def summary(metrics: dict, out: Path | None = None) -> str:
    """A few lines for people: what trained, what changed on held-out data, what it cost."""
    from labs.surgery import ParamCount
    b, a = metrics["eval_before"], metrics["eval_after"]
    changes = [f"{k} {b[k]:{FORMATS.get(k, '.4g')}} -> {a[k]:{FORMATS.get(k, '.4g')}}" for k in b if k in a]
    lines = [f"{metrics['method']} fine-tune of {metrics['model']} on {metrics['task']} "
             f"({metrics['preset']} preset, {metrics['device']})",
             "  " + str(ParamCount(metrics["trainable_params"], metrics["total_params"])),
             "  held-out: " + ", ".join(changes)]
    if "probe_before" in metrics:
        n, p0, p1 = metrics["probe_items"], metrics["probe_before"], metrics["probe_after"]
        se = (max(p0 * (1 - p0), 1 / n) / n) ** 0.5  # standard error of one accuracy on n questions
        lines.append(f"  general-knowledge probe (forgetting): {p0:.3f} -> {p1:.3f} on {n} questions "
                     f"(standard error {se:.3f}: a change within two of them is noise)")
    lines.append(f"  step {metrics['step_time_median_s']:.2f} s (median of {metrics['steps']}), "
                 f"peak memory {_fmt_bytes(metrics['peak_memory_bytes'])}, {metrics['wall_time_s']:.0f} s in all, "
                 f"saved {_fmt_bytes(metrics['saved_bytes'])}" + (f" to {out}" if out else ""))
    return "\n".join(lines)
