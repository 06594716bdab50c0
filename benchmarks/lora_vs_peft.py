"""Our LoRA against Hugging Face peft's on SmolLM2-135M: training step time, training memory, and
inference latency (base, LoRA unmerged, LoRA merged, bottleneck adapters) at batch 1.

    python benchmarks/lora_vs_peft.py            # full run, all cores
    python benchmarks/lora_vs_peft.py --quick    # a short run (about a minute or two on 2 cores)

How it is measured, so the figures can be judged:
- Both LoRAs get the same rank, alpha, targets, batch and the *same* initial A and B, and run the
  same step (forward, loss, backward, AdamW step). Variants are timed in turns by labs.timing
  (wall clock, order reversed every other repetition, medians), the clock every notebook uses, so
  that a busy machine slows all of them alike.
- Peak memory: each variant trains in a fresh child process (labs.memory.measure_peak reads its
  peak resident memory, VmHWM); a child that only loads the model is the baseline. The ratio is of
  what training adds above that baseline, where the two LoRAs can differ at all.
- Latency: one forward of a 64-token prompt and a greedy generation of 8 tokens, at batch 1.
Ratios below 1.00 mean ours is faster / smaller. "Ours" is the LoRA that LABS_IMPL selects: your own
labs/lora.py (exercises 5.1-5.6 done), or the reference.
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

from labs.timing import interleaved_medians  # noqa: E402

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="few repetitions: a smoke run")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--batch", type=int, default=8, help="training batch size B")
    p.add_argument("--seq", type=int, default=128, help="training tokens per row T")
    p.add_argument("--r", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16)
    p.add_argument("--targets", default=",".join(TARGETS))
    p.add_argument("--reps", type=int, default=None, help="timed repetitions per variant")
    p.add_argument("--no-memory", action="store_true", help="skip the child-process memory runs")
    args = p.parse_args(argv)
    if args.reps is None:
        args.reps = 3 if args.quick else 10
    if args.quick:
        args.batch, args.seq = min(args.batch, 4), min(args.seq, 64)
    return args


def load_base(name: str):
    from labs.models import load_model
    model, _ = load_model(name)
    return model


def make_ours(base, args):
    lora = technique("lora")
    return lora.apply(copy.deepcopy(base), lora.LoRAConfig(r=args.r, alpha=args.alpha, target_modules=args.targets))


def make_peft(base, args, like=None):
    """peft's LoRA; with `like` (our LoRA model) its factors are copied so both start equal."""
    import peft
    config = peft.LoraConfig(r=args.r, lora_alpha=args.alpha, target_modules=args.targets.split(","),
                             lora_dropout=0.0, task_type="CAUSAL_LM")
    model = peft.get_peft_model(copy.deepcopy(base), config)
    if like is not None:
        with torch.no_grad():
            for name, layer in technique("lora").lora_layers(like):
                theirs = model.base_model.model.get_submodule(name)
                theirs.lora_A["default"].weight.copy_(layer.lora_A)
                theirs.lora_B["default"].weight.copy_(layer.lora_B)
    return model


def batch(args) -> dict:
    ids = torch.randint(0, 49152, (args.batch, args.seq), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "labels": ids}  # (B, T)


def make_step(model):
    """One training step closure: forward, loss, backward, AdamW step, zero the gradients."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    model.train()

    def step(b):
        loss = model(**b).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()
    return step


# ---------------------------------------------------------------------------------------------
# Memory: one child process per variant (module-level functions so they can be pickled)
# ---------------------------------------------------------------------------------------------
def _imports():
    import peft  # noqa: F401  both children import both, so imports cost both the same
    technique("lora")


def child_load_only(args):
    _imports()
    load_base(args.model)


def child_train(variant: str, args, steps: int = 2):
    _imports()
    base = load_base(args.model)
    model = make_ours(base, args) if variant == "ours" else make_peft(base, args)
    del base
    step, b = make_step(model), batch(args)
    for _ in range(steps):
        step(b)


def memory(args) -> dict[str, float]:
    from labs.memory import measure_peak
    base = measure_peak(child_load_only, args, baseline=None).peak_bytes
    peaks = {v: measure_peak(child_train, v, args, baseline=None).peak_bytes for v in ("ours", "peft")}
    return {"baseline": base, **peaks}


# ---------------------------------------------------------------------------------------------
# Inference latency at batch 1
# ---------------------------------------------------------------------------------------------
def latency(base, ours, args) -> dict[str, dict[str, float]]:
    lora = technique("lora")
    merged = lora.merge(copy.deepcopy(ours))
    variants = {"base": base, "LoRA unmerged": ours, "LoRA merged": merged,
                "peft LoRA unmerged": make_peft(base, args, like=ours)}
    try:
        adapters = technique("adapters")
        variants["bottleneck adapters"] = adapters.apply(copy.deepcopy(base), adapters.AdapterConfig())
    except (ImportError, NotImplementedError):   # no adapters module, or its exercises are open
        pass
    for m in variants.values():
        m.eval()
    prompt = torch.randint(0, 49152, (1, 64), generator=torch.Generator().manual_seed(1))  # (1, T)

    def forward(m):
        with torch.inference_mode():
            m(input_ids=prompt)

    def generate(m):
        with torch.inference_mode():
            m.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8,
                       min_new_tokens=8, do_sample=False, pad_token_id=0)

    reps = max(3, args.reps)
    return {"forward 1x64": interleaved_medians({n: (lambda m=m: forward(m)) for n, m in variants.items()}, reps),
            "generate 8 tokens": interleaved_medians({n: (lambda m=m: generate(m)) for n, m in variants.items()},
                                                     reps)}



def main(argv=None) -> None:
    args = parse_args(argv)
    from labs.methods import require_finished
    try:
        require_finished("lora")   # names any open exercise of notebook 05 before a model loads
    except NotImplementedError as err:
        sys.exit(f"benchmarks/lora_vs_peft.py: {err}")
    torch.set_num_threads(args.threads)
    print(f"model {args.model}, r={args.r}, alpha={args.alpha:g}, targets {args.targets}, "
          f"batch {args.batch}x{args.seq}, {args.reps} reps, {args.threads} threads")
    base = load_base(args.model)
    ours = make_ours(base, args)
    with torch.no_grad():  # B non-zero, as after training, so the LoRA path does real work
        for _, layer in technique("lora").lora_layers(ours):
            layer.lora_B.normal_(std=1e-3, generator=torch.Generator().manual_seed(2))
    theirs = make_peft(base, args, like=ours)
    b = batch(args)
    steps = {"ours": make_step(ours), "peft": make_step(theirs)}
    step_s = interleaved_medians({n: (lambda s=s: s(b)) for n, s in steps.items()}, args.reps)
    print(f"\ntraining step, median of {args.reps}:   {'ours':>9} {'peft':>9}   ratio ours/peft")
    print(f"  {'wall seconds':<29}{step_s['ours']:>9.3f} {step_s['peft']:>9.3f}   {step_s['ours'] / step_s['peft']:.2f}")
    if not args.no_memory:
        mem = memory(args)
        added = {v: mem[v] - mem["baseline"] for v in ("ours", "peft")}
        print(f"training peak memory:  ours {mem['ours'] / 2**20:.0f} MiB   peft {mem['peft'] / 2**20:.0f} MiB"
              f"   (model loaded: {mem['baseline'] / 2**20:.0f} MiB)")
        print(f"  added by training:   ours {added['ours'] / 2**20:.0f} MiB   peft {added['peft'] / 2**20:.0f} MiB"
              f"   ratio ours/peft {added['ours'] / added['peft']:.2f}   (peak ratio {mem['ours'] / mem['peft']:.2f})")
    ours.eval()
    lat = latency(base, ours, args)
    print("\ninference latency at batch 1, median wall time, ratio to the base model:")
    print(f"  {'variant':<22}" + "".join(f"{k:>24}" for k in lat))
    for name in lat["forward 1x64"]:
        cells = "".join(f"{lat[k][name] * 1e3:>12.1f} ms {lat[k][name] / lat[k]['base']:5.2f}x" for k in lat)
        print(f"  {name:<22}{cells}")


if __name__ == "__main__":
    main()
