"""QLoRA on SmolLM2-135M: training memory four ways, and the step time of our NF4 linear against
bitsandbytes' Linear4bit under the same LoRA.

    python benchmarks/qlora.py                 # the preset's batch (quick: 8 x 64), 5 timed repeats
    python benchmarks/qlora.py --preset laptop --repeats 9

How it is measured, so the figures can be judged:
- Memory, per variant (full fine-tuning; LoRA on an fp32 base; LoRA on a bf16 base; QLoRA, NF4 with
  double quantization): a fresh child process (labs.memory.measure_peak) loads the model, prepares
  it and runs two AdamW steps; its peak resident memory (VmHWM) is read. A child that only loads
  the model is the baseline. Beside it, the parts counted on real tensors in this process after one
  step: weights as held (labs.memory.weight_bytes), gradients, optimizer state; and the analytic
  estimate (labs.memory.estimate_memory) of the same run.
- Step time: the two QLoRA bases (scratch NF4Linear, bitsandbytes Linear4bit) carry the same LoRA
  factors (B non-zero, as after training) and run the same step (forward, loss, backward, AdamW),
  timed in turns by labs.timing.interleaved_medians (order reversed every other repeat, medians).
It runs the LoRA and NF4 modules that LABS_IMPL selects: your own (exercises 5.1-5.6 and 8.1-8.8 done).
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from labs.impl import technique  # noqa: E402  your labs/ modules, or the reference with LABS_IMPL=solutions

VARIANTS = ("full", "LoRA fp32 base", "LoRA bf16 base", "QLoRA nf4+dq")
MiB = 2 ** 20


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default=os.environ.get("LABS_PRESET", "quick"), help="batch and length from this preset")
    p.add_argument("--repeats", type=int, default=5, help="timed steps per QLoRA base")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", os.cpu_count())))
    p.add_argument("--no-memory", action="store_true", help="skip the child-process memory runs")
    p.add_argument("--no-timing", action="store_true", help="skip the step-time comparison")
    return p.parse_args(argv)


def batch(preset) -> dict:
    ids = torch.randint(0, 49152, (preset.batch_size, preset.seq_len), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "labels": ids}  # (B, T)


def prepared(variant: str, backend: str = "scratch"):
    """SmolLM2-135M prepared as `variant` (LoRA: r=8, alpha=16 on q_proj, v_proj, the registry's default)."""
    from labs.models import load_model
    lora, qlora = technique("lora"), technique("qlora")
    model, _ = load_model("smollm2-135m")
    if variant == "full":
        return model.train()
    if variant == "LoRA bf16 base":
        model = model.to(torch.bfloat16)
    if variant.startswith("QLoRA"):
        return qlora.apply(model, qlora.QLoRAConfig(backend=backend)).train()
    return lora.apply(model, lora.LoRAConfig()).train()


def make_step(model):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)

    def step(b):
        model(**b).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step, opt


def child_load_only(preset_name: str):
    technique("qlora")  # every child imports the same modules
    from labs.models import load_model
    load_model("smollm2-135m")


def child_train(variant: str, preset_name: str, steps: int = 2):
    technique("qlora")
    from labs.presets import get_preset
    step, _ = make_step(prepared(variant))
    b = batch(get_preset(preset_name))
    for _ in range(steps):
        step(b)


def parts(variant: str, preset) -> dict:
    """Bytes counted on real tensors after one step, and the analytic estimate of the same run."""
    from labs.memory import _unique_bytes, estimate_memory, weight_bytes
    from labs.surgery import count_parameters
    model = prepared(variant)
    step, opt = make_step(model)
    b = batch(preset)
    model(**b).loss.backward()   # gradients exist now; optimizer state after the step
    grads = _unique_bytes(p.grad for p in model.parameters())
    opt.step()
    state = _unique_bytes(t for s in opt.state.values() for t in s.values() if torch.is_tensor(t))
    counts = count_parameters(model)
    cfg = model.config
    method = "full" if variant == "full" else "lora"
    wbytes = {"full": "fp32", "LoRA fp32 base": "fp32", "LoRA bf16 base": "bf16", "QLoRA nf4+dq": "nf4-dq"}[variant]
    estimate = estimate_memory(counts.total - (0 if method == "full" else counts.trainable), method,
                               trainable_params=None if method == "full" else counts.trainable,
                               weight_bytes=wbytes, grad_bytes=4.0, batch_size=preset.batch_size,
                               seq_len=preset.seq_len, hidden=cfg.hidden_size, layers=cfg.num_hidden_layers,
                               vocab=cfg.vocab_size, activation_bytes_per_value=2.0 if wbytes == "bf16" else 4.0)
    return {"weights": weight_bytes(model), "gradients": grads, "optimizer": state, "estimate": estimate.total,
            "estimate_weights": estimate.weights}


def memory_table(preset) -> None:
    from labs.memory import measure_peak
    rows = {}
    for variant in VARIANTS:
        rows[variant] = parts(variant, preset)
        if not ARGS.no_memory:
            rows[variant]["peak"] = measure_peak(child_train, variant, preset.name, baseline=None).peak_bytes
        print(f"  measured {variant}", flush=True)
    base = None if ARGS.no_memory else measure_peak(child_load_only, preset.name, baseline=None).peak_bytes
    print(f"\ntraining memory, SmolLM2-135M, batch {preset.batch_size} x {preset.seq_len}, CPU (MiB)")
    print(f"  {'variant':<16}{'weights':>9}{'grads':>8}{'optim':>8}{'estimate':>10}{'peak RSS':>10}{'- loaded':>10}")
    for variant, r in rows.items():
        peak = f"{r['peak'] / MiB:>10.0f}{(r['peak'] - base) / MiB:>10.0f}" if "peak" in r else ""
        print(f"  {variant:<16}{r['weights'] / MiB:>9.0f}{r['gradients'] / MiB:>8.1f}{r['optimizer'] / MiB:>8.1f}"
              f"{r['estimate'] / MiB:>10.0f}{peak}")
    if base is not None:
        print(f"  (a child that only loads the fp32 model peaks at {base / MiB:.0f} MiB)")


def step_ratio(preset) -> None:
    from labs.timing import interleaved_medians
    lora = technique("lora")
    ours = prepared("QLoRA nf4+dq", "scratch")
    theirs = prepared("QLoRA nf4+dq", "bitsandbytes")
    with torch.no_grad():
        for (name, a), (_, b) in zip(lora.lora_layers(ours), lora.lora_layers(theirs)):
            a.lora_B.normal_(std=1e-3, generator=torch.Generator().manual_seed(len(name)))
            b.lora_A.copy_(a.lora_A)
            b.lora_B.copy_(a.lora_B)
    b = batch(preset)
    steps = {"scratch NF4Linear": make_step(ours)[0], "bitsandbytes Linear4bit": make_step(theirs)[0]}
    s = interleaved_medians({n: (lambda f=f: f(b)) for n, f in steps.items()}, ARGS.repeats)
    print(f"\nQLoRA training step, median of {ARGS.repeats} (interleaved), batch {preset.batch_size} x {preset.seq_len}:")
    for name, t in s.items():
        print(f"  {name:<26}{t:8.3f} s")
    print(f"  ratio scratch / bitsandbytes: {s['scratch NF4Linear'] / s['bitsandbytes Linear4bit']:.2f}")


def main(argv=None) -> None:
    global ARGS
    ARGS = parse_args(argv)
    from labs.methods import require_finished
    from labs.presets import get_preset
    try:
        require_finished("qlora")   # names any open exercise of notebooks 05 and 08 before a model loads
    except NotImplementedError as err:
        sys.exit(f"benchmarks/qlora.py: {err}")
    torch.set_num_threads(ARGS.threads)
    preset = get_preset(ARGS.preset)
    print(f"preset {preset.name}, {ARGS.threads} threads, torch {torch.__version__}")
    if not ARGS.no_timing:
        step_ratio(preset)
    memory_table(preset)


ARGS = parse_args([])
if __name__ == "__main__":
    main()
