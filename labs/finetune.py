"""One fine-tune, end to end: load, measure, prepare a method, train, measure again, save.

    metrics = run_finetune("lora", "smollm2-135m", task="define", preset="quick")

This is what `labs finetune` runs. It writes into `out/`:
    run_record.json     what the failure clinic reads (labs/run_record.py): gradient norms per group at
                        the first steps, what the optimizer holds, the labels' share, EOS and pad ids...;
                        `labs doctor` diagnoses the run from it, and the live checks print warnings
    metrics.json        the run's numbers, written atomically: trainable/total parameters,
                        eval_before/eval_after ({"loss", "accuracy" | "perplexity"}),
                        learning (the paired gain on held-out examples and its standard error),
                        forgetting (decoders: the probe's accuracy drop and the loss rise on
                        public-domain English, paired, with standard errors), each example's score,
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

import hashlib
import json
import math
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from labs import distributed, user_data
from labs.files import dir_bytes, write_json
from labs.memory import current_rss_bytes, peak_memory_bytes, reset_peak

DEFAULT_TASKS = {"smollm2-135m": "define", "minilm-l6": "sentiment"}
N_GENERATIONS = 3
ENGLISH = ("austen", "moby")  # public-domain English for forgetting: the first that is not the task


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
    task = Path(str(task)).stem     # a data file of your own, or a Hub dataset "owner/name": its last part
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
    english_corpus: str | None    # public-domain English scored for forgetting (decoders only)
    english_windows: torch.Tensor | None  # (n_english, english_tokens) token windows of it
    gen_examples: list[dict]      # prompts for greedy generations (generate tasks only)


def load_setup(model: str, task_name: str, preset, seed: int, device: str | None) -> Setup:
    from labs.data import get_task, load_corpus, load_examples, load_probe
    from labs.forgetting import english_windows
    from labs.models import load_model, pick_device
    task, device = get_task(task_name), pick_device(device)
    num_labels = len(task.labels) if task.kind == "classify" else None
    torch.manual_seed(seed)  # a new classification head is initialised while loading
    net, tokenizer = load_model(model, task_kind=task.kind, num_labels=num_labels, device=device)
    if user_data.is_user_task(task):    # sizes and truncation, before anything trains or is written
        print(user_data.report(task, tokenizer, preset))
    eval_examples = load_examples(task.name, "validation", n=preset.n_eval, seed=0)
    decoder = _decoder(net)
    english = next(c for c in ENGLISH if c != task.name) if decoder and preset.n_english else None
    return Setup(net, tokenizer, task, device,
                 train_examples=load_examples(task.name, "train", n=preset.n_train, seed=seed),
                 eval_examples=eval_examples,
                 probe_items=load_probe(n=preset.n_probe) if decoder and preset.n_probe else [],
                 english_corpus=english,
                 english_windows=english_windows(tokenizer, load_corpus(english), preset.n_english,
                                                 preset.english_tokens) if english else None,
                 gen_examples=eval_examples[:N_GENERATIONS] if decoder and task.kind == "generate" else [])


def measure(setup: Setup, preset) -> dict:
    """Held-out metrics with each example's own score (paired tests); for decoders the probe and the
    loss on public-domain English (forgetting); greedy generations (generate tasks)."""
    from labs.evaluate import evaluate_task, generate, probe_correct, score_examples
    from labs.forgetting import window_losses
    model, tokenizer = setup.model, setup.tokenizer
    scores = score_examples(model, tokenizer, setup.task, setup.eval_examples, preset.seq_len, preset.batch_size)
    result = {"eval": evaluate_task(model, tokenizer, setup.task, setup.eval_examples, preset, scores),
              "scores": [float(hit) for hit in scores.correct] if scores.correct is not None else scores.losses}
    if setup.probe_items:
        result["probe_correct"] = probe_correct(model, tokenizer, setup.probe_items)
        result["probe"] = sum(result["probe_correct"]) / len(result["probe_correct"])
    if setup.english_windows is not None:
        result["english_losses"] = window_losses(model, setup.english_windows, preset.batch_size)
    if setup.gen_examples:
        result["generations"] = generate(model, tokenizer, [ex["prompt"] for ex in setup.gen_examples])
    return result


def measure_base(setup: Setup, preset, model: str, seed: int) -> tuple[dict, bool]:
    """measure() of the base model, before any method touches it; and whether it came from the cache.

    Every method of a comparison (and every run of a sweep) starts from the same base, scored on the
    same examples: the numbers are the same each time, so they are measured once per base, data,
    settings and version of the code, and kept in $LABS_CACHE/measured/.
    """
    path = _base_measure_path(setup, preset, model, seed)
    if path.is_file():
        try:
            return json.loads(path.read_text()), True
        except ValueError:
            pass    # a damaged entry is measured again and replaced
    result = measure(setup, preset)
    write_json(path, result)
    return result, False


def _base_measure_path(setup: Setup, preset, model: str, seed: int) -> Path:
    import transformers
    from labs.check import code_fingerprint
    from labs.data import DATA_DIR
    from labs.models import cache_root
    local = Path(model)
    files = sorted(local.rglob("*") if local.is_dir() else [local] if local.exists() else [])
    files += sorted(DATA_DIR.glob("*"))     # the examples, the probe and the English chunks
    if user_data.is_user_task(setup.task):
        files += user_data.source_files(setup.task.source)
    key = {"model": str(model), "files": [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file()],
           "transformers": transformers.__version__,
           "task": setup.task.name, "seed": seed, "device": str(setup.device), "seq_len": preset.seq_len,
           "batch_size": preset.batch_size, "n_eval": preset.n_eval, "n_probe": preset.n_probe,
           "n_english": preset.n_english, "english_tokens": preset.english_tokens, "torch": torch.__version__,
           "code": code_fingerprint()}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    return cache_root() / "measured" / f"{digest}.json"


@dataclass
class Fit:
    history: object               # labs.train.History
    config: object                # the labs.train.TrainConfig used
    peak_memory_bytes: int
    rss_before_train_bytes: int
    peak_memory_kind: str
    recorder: object = None       # the labs.run_record.Recorder that watched the first steps


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


def fit(setup: Setup, method: str, preset, seed: int, progress: bool, forward_context=None,
        options: dict | None = None, live=None) -> Fit:
    """Train the prepared model with the preset; measure the peak memory of training; record what
    the failure clinic reads (labs/run_record.py).

    forward_context  a factory of the context held evaluation forwards run in (store_frozen_base)
    live             called with the record after the first steps (labs.doctor.LiveDoctor)
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
    recorder = _recorder(setup, method, preset, cfg, options, live)
    rss_before = current_rss_bytes()
    windowed = reset_peak(setup.device)
    history = train(setup.model, stream, cfg, eval_fn=eval_fn, progress=progress, observe=recorder)
    return Fit(history, cfg, peak_memory_bytes(setup.device), rss_before, _peak_kind(setup.device, windowed),
               recorder)


def _recorder(setup: Setup, method: str, preset, cfg, options: dict | None, live):
    from labs.methods import get_method
    from labs.run_record import Recorder, inference_prompt_end
    options = options or {}
    return Recorder(setup.model, method=method, task_kind=setup.task.kind, lr=cfg.lr,
                    usual_lr=get_method(method).lr.get(preset.name), tokenizer=setup.tokenizer,
                    targets=options.get("target_modules"), inference_end=inference_prompt_end(setup.tokenizer, setup.task),
                    gradient_checkpointing=cfg.gradient_checkpointing, live=live)


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
    from labs.doctor import LiveDoctor
    from labs.impl import current_impl
    from labs.methods import check_options, get_method, prepare, require_finished
    from labs.run_record import FILENAME as RECORD_FILE
    from labs.surgery import count_parameters
    clock = PhaseClock()
    impl = impl or current_impl()
    distributed.refuse_fsdp("labs finetune")
    check_options(method, options, impl)  # fail on a typo, or an unfinished exercise, before loading anything
    require_finished(method, impl, options)   # the options' own modules too (LoRA's variants), values checked
    preset, task = _resolve_preset(preset), task or default_task(model)
    # Under a launcher (accelerate launch, torchrun) every process trains; only the main one writes.
    main = distributed.is_main_process()
    setup = load_setup(model, task, preset, seed, device or distributed.local_device())
    out = Path(out) if out is not None else default_out(method, model, setup.task.name)
    if main:
        out.mkdir(parents=True, exist_ok=True)
    clock.lap("load")
    before, before_cached = measure_base(setup, preset, model, seed)
    clock.lap("measure_before")
    if get_method(method).loads_quantized:
        from labs.nf4_loading import reload_quantized
        setup.model = reload_quantized(setup, model, options, impl)
    setup.model = prepare(method, setup.model, setup.task, options or {}, impl)
    forward_context, cast_saved = store_frozen_base(setup, preset)
    start = measure_start(setup, preset, method, before, forward_context)
    counts = count_parameters(setup.model)
    base = {**_base_weights(method, setup.model, counts),  # as stored for training
            "frozen_base_bf16": cast_saved > 0, "frozen_cast_saved_bytes": cast_saved}
    doctor = LiveDoctor(impl) if main else None
    trained = fit(setup, method, preset, seed, progress, forward_context, options, doctor)
    clock.lap("train")
    with forward_context():
        after = measure(setup, preset)
    clock.lap("measure_after")
    record = trained.recorder.finish(before["eval"].get("loss"), after["eval"].get("loss"))
    if doctor is not None:
        doctor.after_run(record)
    saved_bytes, saved_files = save_trained(method, setup.model, out) if main else (0, [])
    clock.lap("save")
    metrics = {**_describe(method, model, setup, preset, options, seed, impl), **_costs(counts, trained), **base,
               **_quality(setup, before, after, start), "saved_bytes": saved_bytes, "saved_files": saved_files,
               "measure_before_cached": before_cached, "wall_time_s": clock.total(), "phase_times_s": clock.laps}
    if main:
        write_json(out / "metrics.json", metrics)
        write_json(out / RECORD_FILE, record)
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


def measure_start(setup: Setup, preset, method: str, before: dict, forward_context) -> dict | None:
    """measure() of the prepared model before its first step, where that is not the base: QLoRA's
    quantized base, the untrained prefix or prompt (labs.forgetting.IDENTITY_AT_START lists the rest).
    None where forgetting is not measured or the method starts as the base."""
    from labs.forgetting import IDENTITY_AT_START
    if method in IDENTITY_AT_START or not ("probe" in before or "english_losses" in before):
        return None
    with forward_context():
        return measure(setup, preset)


def _quality(setup: Setup, before: dict, after: dict, start: dict | None = None) -> dict:
    """What training changed: held-out metrics, what was forgotten, generations. Where the method
    did not start as the base (`start`), forgetting is also given from that start, and the start's own."""
    quality = {"eval_before": before["eval"], "eval_after": after["eval"],
               "learning": learning(setup.task.kind, before["scores"], after["scores"]),
               "forgetting": forgetting(setup, before, after),
               "scores_before": before["scores"], "scores_after": after["scores"]}
    if start is not None:
        quality["forgetting_at_start"] = forgetting(setup, before, start)       # before any training
        quality["forgetting_from_start"] = forgetting(setup, start, after)     # what training itself did
    if "probe" in before:
        quality["probe_before"], quality["probe_after"] = before["probe"], after["probe"]
        quality["probe_items"] = len(setup.probe_items)
        quality["probe_correct_before"], quality["probe_correct_after"] = before["probe_correct"], after["probe_correct"]
    if "english_losses" in before:
        quality["english_losses_before"], quality["english_losses_after"] = before["english_losses"], after["english_losses"]
    if setup.gen_examples:
        quality["generations"] = [{"prompt": ex["prompt"], "reference": ex["response"], "before": b, "after": a}
                                  for ex, b, a in zip(setup.gen_examples, before["generations"], after["generations"])]
    return quality


def learning(task_kind: str, before: list[float], after: list[float]) -> dict:
    """How much the task improved, paired over the same held-out examples, with its standard error.

    gain > 0 is better: accuracy up (classify) or loss per example down (generate, lm).
    """
    from labs.evaluate import paired_difference
    classify = task_kind == "classify"
    gain, se = paired_difference(after, before) if classify else paired_difference(before, after)
    return {"score": "accuracy" if classify else "loss", "gain": gain, "se": se, "learned": gain > se}


NOT_PROBED = "not measured: an encoder classifier neither answers the probe's questions nor predicts text"
SWITCHED_OFF = "not measured: this run's preset sets n_probe=0 and n_english=0"


def forgetting(setup: Setup, before: dict, after: dict) -> dict:
    """What the model lost outside the task: probe accuracy and loss on English, paired, with standard errors.

    Positive numbers mean forgotten: the probe's accuracy went down, the loss on English went up.
    """
    from labs.evaluate import paired_change, paired_difference
    if "probe" not in before and "english_losses" not in before:
        return {"note": NOT_PROBED if setup.task.kind == "classify" else SWITCHED_OFF}
    result = {}
    if "probe" in before:
        drop, se = paired_difference([float(v) for v in before["probe_correct"]],
                                     [float(v) for v in after["probe_correct"]])
        result.update(probe_drop=drop, probe_drop_se=se,
                      probe_p_value=paired_change(before["probe_correct"], after["probe_correct"]).p_value)
    if "english_losses" in before:
        b, a = before["english_losses"], after["english_losses"]
        rise, se = paired_difference(a, b)
        result.update(english_corpus=setup.english_corpus, english_chunks=len(b),
                      english_window_tokens=int(setup.english_windows.shape[1]),
                      english_ppl_before=math.exp(sum(b) / len(b)), english_ppl_after=math.exp(sum(a) / len(a)),
                      english_loss_rise=rise, english_loss_rise_se=se)
    return result


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


def _english_items(forgot: dict) -> str:
    """'32 windows of 128 tokens' (runs that record the window length), else '32 chunks'."""
    n, tokens = forgot["english_chunks"], forgot.get("english_window_tokens")
    return f"{n} windows of {tokens} tokens" if tokens else f"{n} chunks"


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
    learned = metrics.get("learning")       # absent from runs written before it was measured
    if learned:
        lines.append(f"  learning: {learned['score']} {'up' if learned['score'] == 'accuracy' else 'down'} by "
                     f"{learned['gain']:.3f} +- {learned['se']:.3f} (paired, {len(metrics['scores_after'])} examples)")
    forgot = metrics.get("forgetting", {})
    if "probe_before" in metrics:
        n, p0, p1 = metrics["probe_items"], metrics["probe_before"], metrics["probe_after"]
        paired = f" (change {p1 - p0:+.3f} +- {forgot['probe_drop_se']:.3f}, paired)" if "probe_drop_se" in forgot else ""
        lines.append(f"  general-knowledge probe (forgetting): {p0:.3f} -> {p1:.3f} on {n} questions{paired}")
    if "english_loss_rise" in forgot:
        lines.append(f"  {forgot['english_corpus']} perplexity (forgetting): {forgot['english_ppl_before']:.1f} -> "
                     f"{forgot['english_ppl_after']:.1f} (loss {forgot['english_loss_rise']:+.3f} "
                     f"+- {forgot['english_loss_rise_se']:.3f} on {_english_items(forgot)})")
    if "note" in forgot:
        lines.append(f"  forgetting: {forgot['note']}")
    at_start, from_start = metrics.get("forgetting_at_start"), metrics.get("forgetting_from_start")
    if at_start and "english_loss_rise" in at_start:
        lines.append(f"  of that, before any training (the prepared model is not the base): loss "
                     f"{at_start['english_loss_rise']:+.3f} +- {at_start['english_loss_rise_se']:.3f}; from that start: "
                     f"{from_start['english_loss_rise']:+.3f} +- {from_start['english_loss_rise_se']:.3f}")
    lines.append(f"  step {metrics['step_time_median_s']:.2f} s (median of {metrics['steps']}), "
                 f"peak memory {_fmt_bytes(metrics['peak_memory_bytes'])}, {metrics['wall_time_s']:.0f} s in all, "
                 f"saved {_fmt_bytes(metrics['saved_bytes'])}" + (f" to {out}" if out else ""))
    return "\n".join(lines)
