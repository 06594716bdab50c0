"""Build notebooks/09_memory.ipynb (committed without outputs).

    python tools/notebooks/nb09_memory.py
"""
from __future__ import annotations

from nbtools import ROOT, main

OUT = ROOT / "notebooks" / "09_memory.ipynb"

CELLS = [
    ("md", r"""
# 09 · Memory deep dive: where the bytes of a training step go

Notebook 00 drew the memory of training as four bars: **weights**, **gradients**, **optimizer state**
and **activations**, from an analytic model (`labs.memory.estimate_memory`). This notebook measures
them. Full fine-tuning and every method of the course train the same real model (SmolLM2-135M) on
the same batch, one step each, and for each we count the four parts on real tensors and read the
step's **peak** memory, then hold both against the model:

1. every method side by side, measured vs analytic, with what the model misses;
2. why LoRA saves less memory than its trainable-parameter count suggests;
3. the switches: gradient checkpointing, 8-bit AdamW, bf16;
4. peak memory against batch size and sequence length;
5. when prompt tuning costs more memory than LoRA.

**How a step is measured** (`labs.memory.measure_step`), so you can judge the numbers:
- weights, gradients and optimizer state: bytes of the real tensors after the step;
- activations: every tensor the forward saves for the backward, counted by autograd's
  saved-tensor hooks (`labs.memory.measure_activations` does the same for a forward alone);
- peak: on this CPU, the process's peak resident memory during the step minus its resident memory
  just before (Linux lets a process reset its peak counter, `labs.memory.reset_peak`; freed pages
  are handed back first, `release_freed_memory`). On a GPU, `torch.cuda.max_memory_allocated`.
- where a process cannot reset its peak (macOS, Windows), the four parts are still counted
  exactly but the peaks are not measured: the notebook says so once, prints *n/a* in the peak
  columns, skips the checks that need a peak, and compares the counted parts instead;
- each optimizer's state is created before the measured step (`init_optimizer_state`: one step on
  zero gradients at learning rate 0, which changes no weight), so what is measured is a
  steady-state step, as every step after the first.

Everything is float32 here, as the course trains on a CPU: 4 bytes per number. No exercise: the
code is `labs.memory` and the techniques you wrote in notebooks 03-08."""),
    ("code", r"""
import copy

import torch

from labs import viz
from labs.data import load_examples
from labs.memory import (StepMemory, estimate_memory, format_measured, init_optimizer_state, measure_activations,
                         measure_step, weight_bytes)
from labs.methods import METHODS, get_method, prepare
from labs.memory_scaling import SHAPES as SIZES, analytic as analytic_at_size
from labs.models import load_model
from labs.nf4_loading import load_quantized
from labs.prerequisites import prerequisites, ready
from labs.surgery import count_parameters
from labs.train import TrainConfig, enable_gradient_checkpointing, make_optimizer, store_frozen_in

prerequisites({"section 1's table (full fine-tuning, and each method once its exercises are done)": ["full"],
               "section 1's comparison of every method with the model": ["bitfit", "lora", "prefix", "prompt", "qlora"],
               "sections 2-3, LoRA and the switches": ["lora", "prefix"],
               "sections 4-5, batch, length and prompt tuning vs LoRA": ["lora", "prompt"]})
torch.manual_seed(0)
base, tok = load_model("smollm2-135m")
cfg = base.config
D, L, V = cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size
N_BASE = count_parameters(base).total
MiB = 2 ** 20

# Real rows: Jane Austen's text as one token stream, cut into rows of exactly T tokens, so every
# batch has the shape asked for (memory depends on the shape, not on the words).
stream = tok("\n".join(ex["text"] for ex in load_examples("austen", "train", n=60)), return_tensors="pt").input_ids[0]

def rows(B: int, T: int) -> dict:
    ids = stream[: B * T].view(B, T)                                        # (B, T)
    return {"input_ids": ids, "labels": ids}

B, T = 2, 64
print(f"SmolLM2-135M: {N_BASE:,} parameters, D={D}, L={L}, V={V}; {len(stream):,} tokens of Austen; batch B={B} x T={T}")"""),
    ("md", r"""
## 1. Every method, measured and modelled

Each method is applied with the registry's default options to a fresh copy of the base (notebook 10
did the same for the files on disk), then trains one step. Beside the measurement, the analytic model
of the same run: fp32 weights and gradients, AdamW's two fp32 moments, activations after
Korthikanti et al. at 4 bytes per value (as measured here, in fp32), and the fp32 logits. SmolLM2 has
no bias terms, so BitFit trains the norm gains instead (notebook 03: the registry's BitFit falls back
to the norm-only analog on a bias-free model); QLoRA is LoRA on the NF4 base of notebook 08, quantized
while loading with the embedding in bf16, as `labs finetune` loads it (notebook 08, section 10)."""),
    ("code", r"""
def train_one_step(method: str, batch: dict, *, checkpointing: bool = False, optimizer: str = "adamw",
                   options: dict | None = None, steady: bool = True):
    # A fresh copy prepared by the registry, its optimizer's state created (steady), one step measured.
    fresh = load_quantized("smollm2-135m")[0] if get_method(method).loads_quantized else copy.deepcopy(base)
    model = prepare(method, fresh, "define", options).train()
    if checkpointing:
        enable_gradient_checkpointing(model)   # ValueError for a method that cannot recompute
    opt = make_optimizer(model, TrainConfig(lr=1e-4, optimizer=optimizer))
    if steady:
        init_optimizer_state(opt)
    return measure_step(model, batch, opt), count_parameters(model)

def analytic(method: str, trainable: int, B: int, T: int, **kwargs):
    return estimate_memory(N_BASE, method, trainable_params=None if method == "full" else trainable,
                           weight_bytes="nf4-dq" if method == "qlora" else "fp32", grad_bytes=4.0,
                           batch_size=B, seq_len=T, hidden=D, layers=L, vocab=V,
                           activation_bytes_per_value=4.0, **kwargs)

PARTS = ("weights", "gradients", "optimizer", "activations")
measured, model_of, counts = {}, {}, {}
for name in METHODS:
    if not ready(name):     # your module still has open exercises: this method waits (the line says which)
        continue
    measured[name], counts[name] = train_one_step(name, rows(B, T))
    model_of[name] = analytic(name, counts[name].trainable, B, T)

PEAKS = all(step.why_no_peak is None for step in measured.values())   # False on macOS and Windows
if not PEAKS:
    print(f"Note: {measured['full'].why_no_peak}.\nThe peak columns read n/a; the comparisons below use the "
          "counted parts, and the checks that need a peak are skipped.\n")

def held(step: StepMemory) -> int:   # what the comparisons use: the step's peak, or its counted parts without one
    return step.peak if PEAKS else step.parts_total
HELD = "peak" if PEAKS else "counted parts"

def mib(x): return format_measured(x, "8.1f", MiB)   # "     n/a" for a peak not measured here
print(f"MiB, B={B} x T={T}      {'measured parts':^36}  {'peak':>8} {'other':>8} | {'analytic parts':^36} {'total':>8} | vs model  peak set in")
print(f"{'method':<8}{'trainable %':>12} " + "".join(f"{p[:8]:>9}" for p in PARTS) + f"{'':>18} |" + "".join(f"{p[:8]:>9}" for p in PARTS))
rel = {}
for name, got in measured.items():
    est = model_of[name]
    rel[name] = None if got.peak is None else (got.peak - est.total) / est.total
    print(f"{name:<8}{counts[name].percent:>11.3f}% " + "".join(mib(getattr(got, p)) + " " for p in PARTS)
          + mib(got.peak) + " " + mib(got.other) + " |" + "".join(mib(getattr(est, p)) + " " for p in PARTS)
          + mib(est.total) + f" | {format_measured(rel[name], '+7.1%')}   {got.peak_phase or 'n/a'}")
viz.memory_breakdown(measured, title=f"One training step, SmolLM2-135M, B={B} x T={T}, fp32, CPU: measured parts")"""),
    ("md", r"""
Read the columns from left to right. The measured **weights** are the model as held (QLoRA's are
smaller: 4-bit blocks); **gradients** and **optimizer** state exist only for what trains, so every PEFT
method all but erases them; the **activations** are what the forward kept for the backward. **peak**
is what the step really reached, and **other** is the peak minus the four parts: memory that none of
the four names. Then the peak against the analytic total, and the phase that set the peak: the forward
+ backward (activations, gradients arriving) or the optimizer step (gradients, state and the
optimizer's own temporaries at once, the activations already freed).

### What the model misses, measured

The difference between the measured peak and the model splits exactly into the parts: weights and
activations (gradients and optimizer state match to the byte), plus *other*. Each has a cause we can
measure:"""),
    ("code", r"""
%%needs bitfit lora prefix prompt qlora
from labs.impl import technique

LOGITS = B * T * V * 4                                     # one fp32 copy of the logits (B, T, V), bytes
P = technique("prompt_tuning").PromptTuningConfig().num_virtual_tokens   # the registry's soft-prompt length
emb = base.get_input_embeddings().weight                   # (V, D), tied to the output layer
print(f"{'method':<8}{'peak - model':>13} ={'weights':>9} +{'activations':>12} +{'other':>8}   "
      f"{'other / logits':>14}   activations vs full's")
for name, got in measured.items():
    est = model_of[name]
    parts = {p: getattr(got, p) - getattr(est, p) for p in PARTS}
    miss = None if got.peak is None else got.peak - est.total
    if PEAKS:
        assert abs(miss - sum(parts.values()) - got.other) < 1                        # the split is exact
    assert parts["gradients"] == 0 or abs(parts["gradients"]) < 1e-3 * got.gradients  # counted exactly
    print(f"{name:<8}{format_measured(miss, '13.1f', MiB)} ={parts['weights'] / MiB:>9.1f} +"
          f"{parts['activations'] / MiB:>12.1f} +{format_measured(got.other, '8.1f', MiB)}   "
          f"{format_measured(got.other, '14.1f', LOGITS)}{'x' if PEAKS else ' '}   "
          f"{got.activations / measured['full'].activations:>6.0%}")

# The two structural misses, put back into the model: prompt rows are T + P long, and QLoRA keeps the
# tied embedding (also the output layer) in bf16, not NF4, since it is not an nn.Linear.
fixed = {"prompt": analytic("prompt", counts["prompt"].trainable, B, T + P).total,
         "qlora": model_of["qlora"].total + emb.numel() * (2 - 0.5 - 1 / 64 - 4 / (64 * 256))}
print(f"\none fp32 copy of the logits: {LOGITS / MiB:.1f} MiB; the tied embedding: {emb.numel() * 2 / MiB:.1f} MiB in bf16 (QLoRA), "
      f"{emb.numel() / N_BASE:.0%} of the base's weights")
for name, total in fixed.items():
    line = f"{name:<7} model {model_of[name].total / MiB:6.1f} MiB -> with what it misses {total / MiB:6.1f} MiB"
    if PEAKS:
        line += f"; peak vs model {100 * rel[name]:+.1f}% -> {100 * (measured[name].peak - total) / total:+.1f}%"
    print(line)
assert all(measured[n].activations < measured["full"].activations for n in ("bitfit", "lora", "prefix", "qlora"))
assert measured["prompt"].activations > measured["lora"].activations
if PEAKS:
    assert all(measured[n].other > 0 for n in measured)   # temporaries beyond the four parts, every time
    assert all(abs(rel[n]) < 0.25 for n in measured if n not in fixed)
    print(f"peak within 15% of the model: {', '.join(n for n in rel if abs(rel[n]) <= 0.15)}; "
          f"beyond: {', '.join(n for n in rel if abs(rel[n]) > 0.15) or 'none'}")"""),
    ("md", r"""
Three things, each measured above:

- **other, the temporaries.** The loss turns the logits (B, T, V) into fp32 log-probabilities and
  their gradient, and the backward holds a few more (B, T, V) and (V, D) buffers for a moment (the
  tied embedding gets one gradient from the output layer and one from the input lookup, summed). The
  model counts the logits once; the step holds several copies at its peak (the *other / logits*
  column). With a 49,152-word vocabulary and D = 576, that is large for a small model and
  negligible for a 7B one.
- **activations depend on what trains.** Korthikanti's count assumes every weight trains. With the
  base frozen, a frozen linear layer keeps nothing of its own (notebook 00): LoRA, prefix tuning
  and BitFit keep less than full fine-tuning. Prompt tuning keeps *more* than the model says: each
  row is T + P tokens long, and the model was told T.
- **QLoRA's weights.** The model puts every base weight in NF4; our QLoRA quantizes the linear layers
  of the blocks, and holds the tied embedding (also the output layer) in bf16, as the paper's code
  does: on SmolLM2, with its large vocabulary, that is the share of the weights printed above. Put back, the two structural misses close most of the gap for prompt tuning;
  for QLoRA what stays is *other*, larger than LoRA's at the same shape (the *other / logits*
  column): the NF4 layers rebuild each weight in fp32 in the forward and again in the backward, and
  the bf16 output head reads its whole V x D table back in fp32 (twice the bf16 size printed above)
  in each direction too. Which of those temporaries sets the peak is not isolated here.

So the analytic model is a fair guide to the order of magnitude and to what each switch does, and
within 15% for most methods here; the bytes it leaves out are named and measured above, and they
shrink relative to the total as the model grows.

## 2. Why LoRA saves less memory than its parameter count suggests

LoRA trains about a third of a percent of the weights. If memory followed the trainable count, it
would need a third of a percent of full fine-tuning's memory. It does not:"""),
    ("code", r"""
%%needs lora
full, lo = measured["full"], measured["lora"]
share = counts["lora"].trainable / counts["full"].trainable
print(f"LoRA trains {share:.3%} of the weights full fine-tuning trains; its {HELD}: {held(lo) / held(full):.0%} of full's "
      f"({held(lo) / MiB:.0f} vs {held(full) / MiB:.0f} MiB), not {share:.3%} ({share * held(full) / MiB:.1f} MiB)")
print(f"what LoRA removed: gradients + optimizer state, {(full.gradients + full.optimizer - lo.gradients - lo.optimizer) / MiB:.0f} MiB")
print(f"what is left of LoRA's {HELD}:")
left = {"frozen weights (still held)": lo.weights, "activations": lo.activations, "other (temporaries)": lo.other,
        "gradients + optimizer state": lo.gradients + lo.optimizer}
for what, b in left.items():
    if b is not None:                                     # other is None where the peak is not measured
        print(f"  {what:<29}{b / MiB:8.1f} MiB  {b / held(lo):6.1%}")
print(f"LoRA's activations are {lo.activations / full.activations:.0%} of full fine-tuning's: the batch still flows "
      "through every frozen layer, and the backward still passes through all of them")
assert lo.gradients + lo.optimizer < 0.02 * held(lo)
assert not PEAKS or 0.02 * lo.peak < lo.activations + lo.other
viz.memory_breakdown({"full": full, "LoRA": lo}, title=f"Full fine-tuning vs LoRA, one step, B={B} x T={T}")"""),
    ("md", r"""
LoRA removes what grows with the *trainable* count (gradients and AdamW's moments: three fp32 numbers
per weight: the MiB printed above). What grows with the *model* (the frozen weights) and with the *input*
(activations and the loss's temporaries) stays. Its activations fall only a little: the gradient has
to travel back through every layer to reach the LoRA factors in layer 0, so every norm, SiLU and
attention on the way keeps its input. Section 4 shows the input-sized part taking over as the batch grows.

## 3. The switches

**Gradient checkpointing** keeps only each block's input and recomputes the block during the
backward. The registry says which methods can (`Method.checkpointing`): prefix tuning cannot, since
its prefix rides in the key/value cache, which recomputation would drop. We try four of them."""),
    ("code", r"""
%%needs lora prefix
checkpointed = {}
for name in ("full", "lora", "qlora", "prefix"):
    try:
        checkpointed[name], _ = train_one_step(name, rows(B, T), checkpointing=True)
    except ValueError as err:
        print(f"{name}: registry checkpointing={get_method(name).checkpointing}; it refuses: {err}\n")
print(f"{'MiB':<8}{'peak':>8}{'peak ckpt':>11}{'saved':>8}{'activations':>13}{'act. ckpt':>11}{'model act.':>12}{'model ckpt':>12}  peak set in (ckpt)")
for name, ck in checkpointed.items():
    got = measured[name]
    m0, m1 = model_of[name], analytic(name, counts[name].trainable, B, T, checkpointing=True)
    saved = None if ck.peak is None else got.peak - ck.peak
    print(f"{name:<8}{mib(got.peak)}{format_measured(ck.peak, '11.1f', MiB)}{format_measured(saved, '8.1f', MiB)}"
          f"{got.activations / MiB:13.1f}{ck.activations / MiB:11.1f}{m0.activations / MiB:12.1f}{m1.activations / MiB:12.1f}"
          f"  {got.peak_phase or 'n/a'} ({ck.peak_phase or 'n/a'})")
    assert ck.activations < got.activations / 2
for name, ck in checkpointed.items():
    got = measured[name]
    peak = "" if ck.peak is None else f", the peak {held(ck) / MiB:.0f} MiB instead of {held(got) / MiB:.0f} ({ck.peak / got.peak - 1:+.1%})"
    print(f"{name}: checkpointing keeps {got.activations / ck.activations:.1f}x fewer activation bytes{peak}")
assert not PEAKS or (checkpointed["lora"].peak < measured["lora"].peak
                     - 0.25 * (measured["lora"].activations - checkpointed["lora"].activations))
assert "prefix" not in checkpointed and not get_method("prefix").checkpointing"""),
    ("md", r"""
The activations kept through the step fall several-fold for both; the peak falls far less (the
percentages printed above): LoRA's by a part, since activations are only one of the things alive at
its peak, and full fine-tuning's hardly at all. Full fine-tuning's peak comes late in the backward, when nearly all of its gradients exist (as many
bytes as the weights) and the activations are already freed: cutting them moved its peak by only the
few MiB printed above, so at this batch size recomputation buys full fine-tuning almost nothing. Checkpointing pays
where activations set the peak: PEFT, and large batches or long rows for everyone. The price is time:
every step runs the forward of each block twice. (Non-reentrant checkpointing
keeps each block's input outside the saved-tensor hooks; the peak includes it.)

**8-bit AdamW** (bitsandbytes' `AdamW8bit`, which runs on a CPU too) stores the two moments in 8 bits
with a scale per block: 2 bytes per trainable weight instead of 8. It matters where the optimizer
state is large: full fine-tuning. For LoRA the state was a few MiB to begin with. Its CPU step is
slow, so this comparison is each optimizer's *first* step (the state is created inside the measured
window) on a small batch, B = 1 x T = 32: the optimizer's bytes do not depend on the batch."""),
    ("code", r"""
%%needs lora
n = counts["full"].trainable
first = {o: train_one_step("full", rows(1, 32), optimizer=o, steady=False)[0] for o in ("adamw", "adamw8bit")}
print(f"{'full, B=1 x T=32':<18}{'optimizer MiB':>14}{'bytes/weight':>14}{'peak MiB':>10}{'model total':>13}")
for o, got in first.items():
    est = analytic("full", n, 1, 32, optimizer=o)
    print(f"{o:<18}{got.optimizer / MiB:14.1f}{got.optimizer / n:14.2f}{format_measured(got.peak, '10.1f', MiB)}"
          f"{est.total / MiB:13.1f}")
a, e = first["adamw"], first["adamw8bit"]
of_peak = f" and {(a.peak - e.peak) / MiB:.0f} MiB of peak" if PEAKS else ""
print(f"8-bit states save {(a.optimizer - e.optimizer) / MiB:.0f} MiB of state{of_peak}; "
      f"LoRA's whole AdamW state is {lo.optimizer / MiB:.1f} MiB")
if PEAKS:
    print(f"peak set in: AdamW {a.peak_phase}, AdamW8bit {e.peak_phase}; the 8-bit step's own working memory "
          f"(its peak minus the parts): {e.other / MiB:.0f} MiB, AdamW's {a.other / MiB:.0f} MiB")
assert e.optimizer < a.optimizer / 3 and (not PEAKS or e.peak < a.peak)"""),
    ("md", r"""
**bf16.** Mixed precision keeps weights, gradients and activations in 16 bits, and an fp32 master
copy of what trains (with AdamW, ZeRO's 2 + 2 + 12 bytes per trained weight). For PEFT the course's
gpu preset does something simpler (`frozen_bf16`): the *frozen* base is stored in bf16 and read under
bf16 autocast, while the few trainable weights and their optimizer state stay fp32. Storing the base
in bf16 is measured below; a bf16 *training step* is not measured here: the CPU presets train in
fp32, and its numbers come from the model. Whether bf16 is fast on a CPU depends on the CPU: those
with bf16 units (AVX512-BF16 or AMX: Intel Xeon from Cooper Lake and Sapphire Rapids on, AMD Zen 4
and later) multiply bf16 matrices natively, often faster than fp32; older ones convert to fp32 and run
slower than fp32. The next cell times one matrix product of a LoRA-sized step both ways on this
machine. On a GPU, `measure_step(model, batch, optimizer, context=lambda: torch.autocast("cuda", dtype=torch.bfloat16))`
measures them with the allocator's peak."""),
    ("code", r"""
from labs.timing import interleaved_medians

a, b = torch.randn(512, 576), torch.randn(576, 1536)          # (B*T, D) @ (D, 4D-ish): an MLP product
a16, b16 = a.bfloat16(), b.bfloat16()
t = interleaved_medians({"fp32": lambda: a @ b, "bf16": lambda: a16 @ b16}, repeats=15)
units = torch.ops.mkldnn._is_mkldnn_bf16_supported()      # oneDNN's answer: this CPU has bf16 instructions
print(f"512x576 @ 576x1536 on this CPU ({torch.get_num_threads()} thread): fp32 {t['fp32'] * 1e3:.2f} ms, "
      f"bf16 {t['bf16'] * 1e3:.2f} ms ({t['fp32'] / t['bf16']:.2f}x); bf16 instructions: {'yes' if units else 'no'}")"""),
    ("code", r"""
%%needs lora
lora16 = prepare("lora", copy.deepcopy(base), "define")
saved = store_frozen_in(lora16, torch.bfloat16)           # what the gpu preset's frozen_bf16 does
print(f"LoRA weights as held: fp32 base {lo.weights / MiB:.1f} MiB -> bf16 base {weight_bytes(lora16) / MiB:.1f} MiB "
      f"(measured; {saved / MiB:.1f} MiB saved, the LoRA factors stay fp32)")
assert abs(weight_bytes(lora16) - (lo.weights - saved)) < 1 and saved > 0.45 * lo.weights
del lora16

bf16 = {"full fp32": model_of["full"],
        "full bf16 mixed": estimate_memory(
            N_BASE, "full", weight_bytes="bf16", grad_bytes=2, master_weights=True, batch_size=B, seq_len=T,
            hidden=D, layers=L, vocab=V, activation_bytes_per_value=2.0),
        "LoRA fp32": model_of["lora"],
        "LoRA bf16 base": estimate_memory(N_BASE, "lora", trainable_params=counts["lora"].trainable, weight_bytes="bf16",
                                          grad_bytes=4, batch_size=B, seq_len=T, hidden=D, layers=L, vocab=V,
                                          activation_bytes_per_value=2.0),
        "QLoRA, NF4 base": analytic_at_size(SIZES["135M"], "qlora", B, T)}   # bf16 embedding, fp32 activations
print(f"\nanalytic, MiB      " + "".join(f"{p[:9]:>10}" for p in PARTS) + f"{'total':>9}")
for label, est in bf16.items():
    print(f"{label:<19}" + "".join(f"{getattr(est, p) / MiB:10.1f}" for p in PARTS) + f"{est.total / MiB:9.1f}")"""),
    ("md", r"""
Mixed precision for full fine-tuning saves little of the *state*: 16 bytes per weight either way
(fp32 with AdamW: 4 + 4 + 8; mixed: 2 + 2 + 12). It halves the activations, and it makes the step
fast on a GPU. For PEFT, a bf16 base halves the largest part left (section 2: the frozen weights).

## 4. Peak memory against batch size and sequence length

Everything that grows with the input grows with the number of tokens in the batch, B x T: the
activations and the loss's temporaries. One model per method, its optimizer state created once,
then one measured step per shape (a steady state at every point). The prompt-tuning runs are for
section 5."""),
    ("code", r"""
%%needs lora prompt
SHAPES_B = [(1, 32), (2, 32), (4, 32)]     # B varies, T = 32
SHAPES_T = [(2, 16), (2, 32), (2, 64)]     # T varies, B = 2

def sweep_steps(method: str, shapes) -> dict:
    model = prepare(method, copy.deepcopy(base), "define").train()
    opt = make_optimizer(model, TrainConfig(lr=1e-4))
    init_optimizer_state(opt)
    return {shape: measured[method] if shape == (B, T) else measure_step(model, rows(*shape), opt)
            for shape in dict.fromkeys(shapes)}

sweeps = {"full": sweep_steps("full", SHAPES_B + SHAPES_T), "lora": sweep_steps("lora", SHAPES_B + SHAPES_T),
          "prompt": sweep_steps("prompt", SHAPES_T)}

def model_total(method, shape):
    return analytic(method, counts[method].trainable, *shape).total / MiB

def series(shapes, axis):
    x = [shape[axis] for shape in shapes]
    return {**{f"{m}: {HELD} (measured)": (x, [held(sweeps[m][s]) / MiB for s in shapes]) for m in ("full", "lora")},
            **{f"{m}: model": (x, [model_total(m, s) for s in shapes]) for m in ("full", "lora")}}

fig = viz.sweep(series(SHAPES_B, 0), x_label="batch size B (T = 32)", y_label="training memory (MiB)",
                title=f"SmolLM2-135M, one fp32 step on a CPU: {HELD} vs batch size")
fig"""),
    ("code", r"""
%%needs lora prompt
fig = viz.sweep(series(SHAPES_T, 1), x_label="sequence length T (B = 2)", y_label="training memory (MiB)",
                title=f"SmolLM2-135M, one fp32 step on a CPU: {HELD} vs sequence length")
tokens = (SHAPES_B[-1][0] - SHAPES_B[0][0]) * 32
per_token = {}
for m in ("full", "lora"):
    small, big = sweeps[m][SHAPES_B[0]], sweeps[m][SHAPES_B[-1]]
    per_token[m] = (held(big) - held(small)) / tokens
    print(f"{m:<5} each extra token in the batch: {HELD} +{per_token[m] / MiB:.2f} MiB (activations counted: "
          f"+{(big.activations - small.activations) / tokens / MiB:.2f} MiB; model: "
          f"+{(model_total(m, (2, 32)) - model_total(m, (1, 32))) / 32:.2f} MiB)")
print(f"one fp32 row of logits per token: {V * 4 / MiB:.2f} MiB")
if PEAKS:   # the input-sized part includes the loss's temporaries, which only the peak sees
    print(f"LoRA: the input-sized part outgrows the frozen weights from about {lo.weights / per_token['lora']:.0f} tokens per batch")
assert all(held(sweeps["lora"][s]) < held(sweeps["lora"][t]) for s, t in zip(SHAPES_B, SHAPES_B[1:]))
assert not PEAKS or per_token["full"] < per_token["lora"]
fig"""),
    ("md", r"""
LoRA's peak climbs with every token in the batch, faster than its counted activations: the loss's
temporaries grow with the tokens too (several fp32 rows of 49,152 logits per token, section 1), and
the model counts them once. Full fine-tuning's peak climbs more slowly at these small batches: it comes
late in the backward (section 3), when most activations are already freed, so only part of the
input-sized memory is still alive at its peak. Its floor is far higher (gradients and optimizer
state). From a few hundred tokens per batch, LoRA's memory is mostly activations and temporaries,
and that is where gradient checkpointing (section 3) and smaller micro-batches with gradient
accumulation earn their keep.

## 5. When prompt tuning costs more than LoRA

Prompt tuning trains almost nothing (P x D numbers), so it should be the cheapest method to train.
But its P virtual tokens are real positions in every row: every layer keeps activations for T + P
tokens. LoRA keeps activations for T tokens, slightly more per token (each adapted layer's LoRA path
keeps its input), plus a few MiB of factors, gradients and AdamW moments. Which is larger depends on
P and T. We count the training memory both hold (weights + gradients + optimizer + activations, all
on real tensors, the deterministic part of the peak) first against P at T = 64, then against T at
the registry's P."""),
    ("code", r"""
%%needs lora prompt
def counted(step: StepMemory) -> float:
    return step.parts_total / MiB

by_p = {P: measured["prompt"]}
for p in (5, 10):
    by_p[p], _ = train_one_step("prompt", rows(B, T), options={"num_virtual_tokens": p})
by_p = dict(sorted(by_p.items()))
lora_line = counted(lo)
print(f"B={B}, T={T}: LoRA holds {lora_line:.1f} MiB counted (peak {format_measured(lo.peak, '.1f', MiB)})")
for p, got in by_p.items():
    print(f"  prompt P={p:>2}: {counted(got):7.1f} MiB counted (peak {format_measured(got.peak, '6.1f', MiB)}), "
          f"{'more' if counted(got) > lora_line else 'less'} than LoRA")
ps, ys = list(by_p), [counted(g) for g in by_p.values()]
above = [i for i in range(1, len(ps)) if (ys[i - 1] - lora_line) * (ys[i] - lora_line) <= 0]
assert above, "no crossover between the measured P values"
i = above[0]
p_star = ps[i - 1] + (lora_line - ys[i - 1]) * (ps[i] - ps[i - 1]) / (ys[i] - ys[i - 1])
print(f"crossover: prompt tuning holds more than LoRA from P = {p_star:.1f} virtual tokens at T = {T} "
      f"({p_star / T:.0%} of the row)")
pr = measured["prompt"]
if PEAKS:
    print(f"temporaries (other): LoRA {lo.other / MiB:.1f} MiB, prompt P={P} {pr.other / MiB:.1f} MiB, ratio {pr.other / lo.other:.2f}; "
          f"its logits cover T + P positions: (T + P) / T = {(T + P) / T:.2f}")"""),
    ("code", r"""
%%needs lora prompt
import numpy as np

Ts = [t for _, t in SHAPES_T]
fit = {m: np.polyfit(Ts, [counted(sweeps[m][s]) for s in SHAPES_T], 1) for m in ("lora", "prompt")}  # MiB = a*T + b
for m, (a, b) in fit.items():
    worst = max(abs(np.polyval(fit[m], t) - counted(sweeps[m][s])) for t, s in zip(Ts, SHAPES_T))
    print(f"{m:<6} counted memory = {a:.3f} MiB x T + {b:.1f} MiB  (B = 2; largest misfit {worst:.2f} MiB: a straight line)")
t_star = (fit["prompt"][1] - fit["lora"][1]) / (fit["lora"][0] - fit["prompt"][0])
print(f"P = {P}, B = 2: prompt tuning holds more than LoRA for rows shorter than T* = {t_star:.0f} tokens, less beyond")

# Check beyond the measured range, at B = 1 (half the tokens), forward only: the weights, gradients
# and optimizer state do not depend on the batch, and the activations are exactly proportional to B.
fixed_parts = {m: sweeps[m][SHAPES_T[0]].weights + sweeps[m][SHAPES_T[0]].gradients + sweeps[m][SHAPES_T[0]].optimizer
               for m in ("lora", "prompt")}
def at_b1(m, t):                                                # the fitted line, for one row
    return fixed_parts[m] / MiB + (np.polyval(fit[m], t) - fixed_parts[m] / MiB) / 2
t_star1 = (at_b1("prompt", 0) - at_b1("lora", 0)) / ((at_b1("lora", 1) - at_b1("lora", 0)) - (at_b1("prompt", 1) - at_b1("prompt", 0)))
t_check = int(1.25 * t_star1)
check = {}
for m in ("lora", "prompt"):
    model = prepare(m, copy.deepcopy(base), "define").train()
    check[m] = (fixed_parts[m] + measure_activations(model, rows(1, t_check))) / MiB
    del model
print(f"B = 1: crossover T* = {t_star1:.0f} tokens; measured at T = {t_check}: LoRA {check['lora']:.1f} MiB, "
      f"prompt {check['prompt']:.1f} MiB (lines: {at_b1('lora', t_check):.1f} and {at_b1('prompt', t_check):.1f})")
assert check["lora"] > check["prompt"] and counted(sweeps["prompt"][SHAPES_T[0]]) > counted(sweeps["lora"][SHAPES_T[0]])
grid = [16, 64, 128, 256, 384, 512]
viz.sweep({"LoRA (r=8, q and v)": (grid, [np.polyval(fit["lora"], t) for t in grid]),
           f"prompt tuning (P={P})": (grid, [np.polyval(fit["prompt"], t) for t in grid])},
          x_label="sequence length T (B = 2)", y_label="counted training memory (MiB)",
          title="Prompt tuning vs LoRA: lines fitted to the measured points")"""),
    ("md", r"""
Prompt tuning holds more than LoRA on **short rows**, where its P extra positions are a large part of
each row, and less on long ones, where LoRA's slightly larger per-token cost adds up. The gap is small
at the registry's P = 20 (a few percent of the total: the frozen weights dominate both); it grows
with P (the paper's best results used P = 100) and with the batch, since the P positions are paid on
every row.

One more cost sits outside the four parts: the loss's temporaries (*other*). Prompt tuning computes
its logits for all T + P positions (the virtual ones are dropped only afterwards), so it pays those
temporaries on its virtual tokens too: the ratio printed under the P table. The peaks therefore put
prompt tuning above LoRA even at the smallest P measured here, and move the crossover length further
out than the counted one. The peaks wander by several MiB from run to run (memory the allocator
returns late), which is why the crossovers above are computed on the counted parts, which are exact:
read them as the lower bound of where prompt tuning becomes the cheaper of the two.

## Summary

| question | measured above |
|---|---|
| where does a full fine-tuning step's memory go? | optimizer state (twice the weights), gradients, weights, then activations and the loss's temporaries |
| how close is the analytic model? | within 15% for most methods; it misses the loss's temporaries (several copies of the logits), the activations frozen layers do not keep, prompt tuning's longer rows, QLoRA's bf16 embedding |
| why does LoRA save less than its 0.3%? | the frozen weights stay, and the input-sized part (activations, temporaries) barely shrinks |
| gradient checkpointing | activations fall several-fold; the peak far less (LoRA's by a part, full fine-tuning's hardly at this batch: section 3's percentages); prefix tuning cannot use it |
| 8-bit AdamW | optimizer state to about 2 bytes per weight: large for full fine-tuning, nothing for LoRA |
| bf16 | a bf16 frozen base halves PEFT's largest part (measured); the bf16 step itself is only modelled here, and its speed on a CPU depends on bf16 units (timed in section 3) |
| QLoRA | its base is smallest, but at 135M what training adds outweighs the base; where it wins, against model size: notebook 08, section 10 |
| prompt vs LoRA | prompt tuning costs more on rows shorter than a crossover length that grows with P |

Next, notebook 10: what the methods leave on disk, and serving many adapters from one base."""),
]


if __name__ == "__main__":
    main(CELLS, "nb09", OUT)
