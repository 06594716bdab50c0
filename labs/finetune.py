"""One fine-tune, end to end: load, measure, prepare a method, train, measure again, save.

    metrics = run_finetune("lora", "smollm2-135m", task="define", preset="quick")

This is what `labs finetune` runs. It writes into `out/`:
    metrics.json        the run's numbers, written atomically: trainable/total parameters,
                        eval_before/eval_after ({"loss", "accuracy" | "perplexity"}),
                        probe_before/probe_after (decoders), peak_memory_bytes, step and wall
                        times, saved_bytes, generations, versions, the loss history
    adapter/            PEFT methods: adapter_config.json + adapter_model.safetensors
    model.safetensors   full fine-tuning: the whole state dict (tied weights stored once)
    loss.png            training loss per step
    before_after.png    held-out metric (and probe) before vs after
`run_compare` runs several methods, each in a fresh process so that peak memory is its own.
"""
from __future__ import annotations

import csv
import io
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

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


def write_json(path: Path, data: dict) -> None:
    """Write JSON atomically: a temporary file in the same folder, then one rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=_jsonable))
    os.replace(tmp, path)


def _jsonable(value):
    if isinstance(value, (torch.dtype, torch.device, Path)):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _proc_status_bytes(field: str) -> int | None:
    """A memory line of /proc/self/status (Linux) in bytes, or None elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def current_rss_bytes() -> int:
    """Resident memory of this process now (Linux), else its peak so far."""
    rss = _proc_status_bytes("VmRSS")
    return rss if rss is not None else peak_rss_bytes()


def peak_rss_bytes() -> int:
    """Peak resident memory of this process (since start, or since reset_peak where Linux allows)."""
    hwm = _proc_status_bytes("VmHWM")
    if hwm is not None:
        return hwm
    try:
        import resource  # POSIX only
    except ImportError:  # Windows: no peak reading without extra packages
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS reports bytes, Linux KiB


def reset_peak(device: torch.device) -> bool:
    """Start a new peak-memory window; False where only the whole process's peak can be read.

    CUDA resets the allocator's counter. On Linux, writing 5 to /proc/self/clear_refs resets the
    process's peak resident memory, so several runs in one notebook each get their own peak.
    """
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_memory_bytes(device: torch.device) -> int:
    """CUDA: the allocator's peak since reset_peak. CPU/MPS: the process's peak resident memory.

    The resident figure includes the runtime's baseline (interpreter, torch, the model, data),
    so compare it with rss_before_train_bytes to see what training itself added.
    """
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return peak_rss_bytes()


def dir_bytes(path: Path) -> int:
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def save_full_model(model, path: Path) -> int:
    """The whole state dict as safetensors; a tensor shared by several names (tied embeddings)
    is stored once, under its first name. Returns the bytes written."""
    from safetensors.torch import save_file
    tensors, seen = {}, set()
    for name, tensor in model.state_dict().items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key in seen:
            continue
        seen.add(key)
        tensors[name] = tensor.detach().to("cpu").contiguous()
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, path)
    return path.stat().st_size


def save_trained(method: str, model, out: Path) -> tuple[int, list[str]]:
    """Save what was trained; returns (bytes written, files relative to out)."""
    if method == "full":
        size = save_full_model(model, out / "model.safetensors")
        return size, ["model.safetensors"]
    from labs.peft_format import save_adapter
    save_adapter(model, out / "adapter")
    files = sorted(str(f.relative_to(out)) for f in (out / "adapter").rglob("*") if f.is_file())
    return dir_bytes(out / "adapter"), files


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


def fit(setup: Setup, method: str, preset, seed: int, progress: bool) -> Fit:
    """Train the prepared model with the preset; measure the peak memory of training."""
    from labs.data import batches
    from labs.train import TrainConfig, train
    cfg = TrainConfig(lr=preset.lr_full if method == "full" else preset.lr_peft, max_steps=preset.max_steps,
                      grad_accum=preset.grad_accum, seed=seed, bf16=preset.bf16, eval_every=preset.eval_every)
    eval_fn = _held_out_loss(setup, preset) if preset.eval_every else None
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


def _held_out_loss(setup: Setup, preset):
    """Held-out loss during training (the cheap part of evaluate_task)."""
    from labs.evaluate import eval_loss
    return lambda model: {"loss": eval_loss(model, setup.tokenizer, setup.task, setup.eval_examples,
                                            preset.seq_len, preset.batch_size)}


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------
def run_finetune(method: str = "full", model: str = "smollm2-135m", task: str | None = None,
                 preset="quick", out: str | Path | None = None, options: dict | None = None,
                 progress: bool = True, seed: int = 0, device: str | None = None) -> dict:
    """Fine-tune `model` on `task` with `method`; measure before and after; save; return metrics.

    preset   a preset name ("quick", "laptop", "gpu") or a labs.presets.Preset (e.g. with overrides)
    options  method options, e.g. {"r": 8} for LoRA (the technique's prepare_for_finetune reads them)
    out      output folder (default runs/<method>-<model>-<task>-<time>)
    device   "cpu", "cuda", "mps" (default: the best available)
    """
    from labs.methods import check_options, prepare
    from labs.surgery import count_parameters
    clock = PhaseClock()
    check_options(method, options)  # fail on a typo before loading anything
    preset, task = _resolve_preset(preset), task or default_task(model)
    setup = load_setup(model, task, preset, seed, device)
    out = Path(out) if out is not None else default_out(method, model, setup.task.name)
    out.mkdir(parents=True, exist_ok=True)
    clock.lap("load")
    before = measure(setup, preset)
    clock.lap("measure_before")
    setup.model = prepare(method, setup.model, setup.task, options or {})
    counts = count_parameters(setup.model)
    trained = fit(setup, method, preset, seed, progress)
    clock.lap("train")
    after = measure(setup, preset)
    clock.lap("measure_after")
    saved_bytes, saved_files = save_trained(method, setup.model, out)
    clock.lap("save")
    metrics = {**_describe(method, model, setup, preset, options, seed), **_costs(counts, trained),
               **_quality(setup, before, after), "saved_bytes": saved_bytes, "saved_files": saved_files,
               "wall_time_s": clock.total(), "phase_times_s": clock.laps}
    write_json(out / "metrics.json", metrics)
    _plots(metrics, trained.history, out)
    print(summary(metrics, out))
    return metrics


def _describe(method, model, setup: Setup, preset, options, seed) -> dict:
    """What was run, where, with which versions."""
    import transformers
    from labs.impl import current_impl
    return {"method": method, "model": str(model), "task": setup.task.name, "task_kind": setup.task.kind,
            "preset": preset.name, "options": dict(options or {}), "seed": seed,
            "impl": current_impl() if method != "full" else None,
            "batch_size": preset.batch_size, "grad_accum": preset.grad_accum, "seq_len": preset.seq_len,
            "device": str(setup.device), "dtype": str(next(setup.model.parameters()).dtype).replace("torch.", ""),
            "torch_version": torch.__version__, "transformers_version": transformers.__version__,
            "python_version": platform.python_version()}


def _costs(counts, trained: Fit) -> dict:
    """What training cost: parameters, memory, time."""
    h = trained.history
    return {"trainable_params": counts.trainable, "total_params": counts.total,
            "trainable_percent": counts.percent, "peak_memory_bytes": trained.peak_memory_bytes,
            "peak_memory_kind": trained.peak_memory_kind,
            "rss_before_train_bytes": trained.rss_before_train_bytes,
            "step_time_median_s": h.step_time_median, "steps": len(h.steps), "lr": trained.config.lr,
            "bf16_autocast": h.bf16,
            "history": {"steps": h.steps, "losses": h.losses, "step_times": h.step_times, "lr": h.lr,
                        "evals": h.evals}}


def _quality(setup: Setup, before: dict, after: dict) -> dict:
    """What training changed: held-out metrics, the probe, generations."""
    quality = {"eval_before": before["eval"], "eval_after": after["eval"]}
    if "probe" in before:
        quality["probe_before"], quality["probe_after"] = before["probe"], after["probe"]
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


def summary(metrics: dict, out: Path | None = None) -> str:
    """A few lines for people: what trained, what changed, what it cost."""
    from labs.surgery import ParamCount
    b, a = metrics["eval_before"], metrics["eval_after"]
    changes = [f"{k} {b[k]:.4g} -> {a[k]:.4g}" for k in b if k in a]
    if "probe_before" in metrics:
        changes.append(f"probe {metrics['probe_before']:.3f} -> {metrics['probe_after']:.3f}")
    lines = [f"{metrics['method']} fine-tune of {metrics['model']} on {metrics['task']} "
             f"({metrics['preset']} preset, {metrics['device']})",
             "  " + str(ParamCount(metrics["trainable_params"], metrics["total_params"])),
             "  " + "   ".join(changes),
             f"  step {metrics['step_time_median_s']:.2f} s (median of {metrics['steps']}), "
             f"peak memory {_fmt_bytes(metrics['peak_memory_bytes'])}, {metrics['wall_time_s']:.0f} s in all, "
             f"saved {_fmt_bytes(metrics['saved_bytes'])}" + (f" to {out}" if out else "")]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Several methods side by side
# ---------------------------------------------------------------------------------------------
COMPARE_COLUMNS = ("method", "trainable_params", "trainable_percent", "metric", "before", "after",
                   "probe_before", "probe_after", "peak_memory_mib", "step_time_median_s", "saved_mib", "status")


def run_compare(methods, model: str = "smollm2-135m", task: str | None = None, preset="quick",
                out: str | Path | None = None, seed: int = 0, progress: bool = True,
                max_steps: int | None = None) -> list[dict]:
    """Fine-tune each method on the same task, each in a fresh process (so each peak memory is its
    own); write compare.md, compare.csv and pareto.png into `out`. Returns one row per method."""
    from labs.methods import get_method
    for m in methods:
        get_method(m)
    if len(set(methods)) < len(methods):
        raise ValueError(f"a method is listed twice in {list(methods)}; each gets its own folder")
    task = task or default_task(model)
    preset_name = preset if isinstance(preset, str) else preset.name
    out = Path(out) if out is not None else default_out("compare", model, task)
    out.mkdir(parents=True, exist_ok=True)
    extra = ["--max-steps", str(max_steps)] if max_steps else []
    rows = [_compare_one(m, model, task, preset_name, out / m, seed, progress, extra) for m in methods]
    write_table(rows, out)
    done = [r for r in rows if r["status"] == "ok"]
    if done:
        _pareto_plot(done, out)
    return rows


def _compare_one(method, model, task, preset, out: Path, seed, progress, extra=()) -> dict:
    cmd = [sys.executable, "-m", "labs", "finetune", "--method", method, "--model", model, "--task", task,
           "--preset", preset, "--out", str(out), "--seed", str(seed), *extra]
    cmd += [] if progress else ["--no-progress"]
    proc = subprocess.run(cmd, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"]
        if progress:
            print(f"{method}: {lines[-1]}", file=sys.stderr)
        return {"method": method, "status": lines[-1][:200]}
    return compare_row(json.loads((out / "metrics.json").read_text()))


def compare_row(metrics: dict) -> dict:
    """One table row from a run's metrics.json."""
    name = next(k for k in metrics["eval_after"] if k != "loss")
    return {"method": metrics["method"], "trainable_params": metrics["trainable_params"],
            "trainable_percent": metrics["trainable_percent"], "metric": name,
            "before": metrics["eval_before"][name], "after": metrics["eval_after"][name],
            "probe_before": metrics.get("probe_before"), "probe_after": metrics.get("probe_after"),
            "peak_memory_mib": metrics["peak_memory_bytes"] / 2 ** 20,
            "step_time_median_s": metrics["step_time_median_s"],
            "saved_mib": metrics["saved_bytes"] / 2 ** 20, "status": "ok"}


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def write_table(rows: list[dict], out: Path) -> None:
    """compare.csv (raw numbers) and compare.md (rounded, for reading), both written atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COMPARE_COLUMNS, restval="")
    writer.writeheader()
    writer.writerows(rows)
    md = ["| " + " | ".join(COMPARE_COLUMNS) + " |", "|" + "---|" * len(COMPARE_COLUMNS)]
    md += ["| " + " | ".join(_cell(r.get(c)) for c in COMPARE_COLUMNS) + " |" for r in rows]
    for name, text in (("compare.csv", buf.getvalue()), ("compare.md", "\n".join(md) + "\n")):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out / name)


def _pareto_plot(rows: list[dict], out: Path) -> None:
    from labs import viz
    metric = rows[0]["metric"]
    points = {r["method"]: (max(r["trainable_percent"], 1e-6), r["after"]) for r in rows}
    fig = viz.pareto(points, y_label=f"held-out {metric} after", higher_is_better=metric == "accuracy",
                     title=f"Trainable share vs {metric}")
    viz.save(fig, out / "pareto.png")
