"""Build notebooks/08_qlora.ipynb (committed without outputs).

    python tools/notebooks/nb08_qlora.py
"""
from __future__ import annotations

from nbtools import ROOT, main

OUT = ROOT / "notebooks" / "08_qlora.ipynb"

CELLS = [
    ("md", r"""
# 08 · Quantization and QLoRA: a frozen base in 4 bits

LoRA (notebook 05) trains a few million numbers, but the frozen base still sits in memory at full
precision: 4 bytes per weight in fp32, 2 in bf16. For a 65B model that is 130 GB in bf16 before a
single gradient exists. Since the base never changes, does it need 16 or 32 bits at all?

QLoRA (Dettmers et al. 2023) stores the frozen base in **4 bits** and trains LoRA on top of it. The
paper fine-tuned a 65B model on one 48 GB GPU and matched 16-bit fine-tuning on its benchmarks.
Three ideas make 4 bits work:

1. **NF4, NormalFloat-4**: 16 levels placed at quantiles of the normal distribution, because
   pretrained weights are roughly normal: the levels sit densest where most weights are.
2. **Blockwise absmax**: each block of 64 weights is divided by its own largest magnitude, so one
   outlier spoils only its block.
3. **Double quantization**: the per-block scales are themselves stored in 8 bits.

In this notebook you build NF4 in `labs/quantization.py` (eight short exercises), check every byte
against bitsandbytes, the library QLoRA ships in, measure the error on SmolLM2's real weights, then
fine-tune SmolLM2-135M with QLoRA two ways: on your own 4-bit layer and on bitsandbytes'."""),
    ("code", r"""
import copy

import torch
from torch import nn

from labs import viz
from labs.check import check
from labs.data import batches, get_task, load_examples
from labs.impl import technique
from labs.memory import estimate_memory, measure_components, weight_bytes
from labs.methods import learning_rate
from labs.models import load_model
from labs.prerequisites import prerequisites
from labs.presets import get_preset
from labs.surgery import count_parameters
from labs.train import TrainConfig, train

prerequisites({"sections 1-7, NF4 from scratch (each cell waits only for the exercises it uses)": ["quantization"],
               "sections 8-9, QLoRA training and its memory": ["qlora"],
               "sections 10-12, quantizing while loading, the whole recipe, an NF4 adapter on fp32": ["qlora"]})
q = technique("quantization")   # your labs/quantization.py (or the reference, with LABS_IMPL=solutions)
qlora = technique("qlora")      # QLoRA, built on it and on your labs/lora.py
lora = technique("lora")        # your LoRA from notebook 05
preset = get_preset()
model, tok = load_model("smollm2-135m")
print(f"preset {preset.name}; SmolLM2-135M: {count_parameters(model)}")"""),
    ("md", r"""
## 1. The 16 levels

If weights follow $N(0, \sigma)$, a 4-bit code spends its levels best where the weights are: put the
16 levels at quantiles of the normal distribution. Were every weight divided by the same $\sigma$, each
level would then stand for about the same share of the weights. QLoRA divides each block by its
largest magnitude instead (section 2), which puts one weight of every block at $\pm 1$ and squeezes the
others inward: the outer levels are used less often than the inner ones (section 7 counts every code).
Two details: zero must be a level exactly (padding and zero weights must stay zero), and with 16
levels one side gets one more than the other. bitsandbytes takes 8 positive quantiles at
probabilities `linspace(offset, 0.5, 9)[:-1]` and 7 negative ones at `linspace(offset, 0.5, 8)[:-1]`,
mirrored, plus 0, then divides by the largest so the levels run from -1 to 1. The offset,
0.9677, keeps the outermost quantile finite (at probability 1 it would be infinite) and puts the
largest level at about 1.85 standard deviations, as the cell below computes.

**Exercise 8.1.** Write `nf4_code_book(offset)`: the probabilities with `torch.linspace(...)` in its
default **float32** (as bitsandbytes builds its table), the quantiles of those with
`torch.special.ndtri` (the inverse normal CDF) in **float64**, then the levels converted to float32,
sorted, divided by the max. The order matters: a float64 `linspace` moves a few levels by one float32
step (1.2e-7), past the check's 1e-7 tolerance. (An offset outside (0.5, 1) is refused by the given
code: the message must contain 'offset'.)

bitsandbytes, imported below, may log on some CPUs that it failed to load `gemm_4bit_forward` from
"kernels-community" and that you should `pip install kernels`. That is an optional fused kernel
from the Hugging Face hub; without it bitsandbytes uses the compiled CPU library it ships, the one
measured here. Nothing is missing and nothing needs installing (`labs` drops the notice)."""),
    ("code", r"""check("8.1")"""),
    ("code", r"""
%%needs 8.1
import bitsandbytes.functional as bnb_f

book = q.nf4_code_book()
theirs = bnb_f.quantize_4bit(torch.ones(64), blocksize=64, quant_type="nf4")[1].code
print("NF4 levels:", [round(v, 4) for v in book.tolist()])
print(f"the outermost level in standard deviations: N^-1(0.9677083) = {torch.special.ndtri(torch.tensor(0.9677083, dtype=torch.float64)):.3f}")
print(f"largest difference from bitsandbytes' table: {(book - theirs).abs().max():.1e}")"""),
    ("md", r"""
## 2. Blocks of 64, each with its own scale

A level is a fraction of the scale. With one scale for a whole matrix, a single large weight would
stretch it and crush all the others into the middle levels. QLoRA cuts the flattened weight into
blocks of 64 and divides each block by its own largest magnitude (its *absmax*), so every block
fills $[-1, 1]$. A last block shorter than 64 gets its own absmax too.

**Exercise 8.2.** `blockwise_absmax(x, block_size)` returns the scaled values (flattened, float32)
and one absmax per block. A `block_size` that is not a positive even integer is refused by the
given code: the message must contain the name and value, e.g. 'block_size=63'."""),
    ("code", r"""check("8.2")"""),
    ("code", r"""
%%needs 8.2
w = model.model.layers[0].self_attn.q_proj.weight.detach()   # (576, 576)
scaled, absmax = q.blockwise_absmax(w, 64)
print(f"{w.numel():,} weights -> {absmax.numel():,} blocks; absmax from {absmax.min():.3f} to {absmax.max():.3f}")
print(f"one scale for the whole matrix would be {w.abs().max():.3f}: "
      f"{(absmax < w.abs().max() / 4).float().mean():.0%} of the blocks would use under a quarter of the levels' range")"""),
    ("md", r"""
## 3. Nearest level, two codes per byte

Each scaled value becomes the index (0..15) of its nearest level. The nearest level changes at the
midpoints between neighbouring levels, so `torch.bucketize` against those midpoints finds it; a value
exactly on a midpoint takes the lower index, as bitsandbytes does.

**Exercise 8.3.** `nearest_code(scaled, code_book)` returns uint8 indices."""),
    ("code", r"""check("8.3")"""),
    ("md", r"""
A 4-bit code fills half a byte: two codes share one uint8. The order matters for compatibility:
bitsandbytes puts the **first** code in the **high** four bits (`first << 4 | second`). An odd
count is padded with one code.

**Exercise 8.4.** `pack_nibbles(codes, pad)`; a code above 15 raises ValueError and the message must
contain that code (e.g. 16).

**Exercise 8.5.** `unpack_nibbles(packed, n)`, its inverse; an `n` the bytes cannot hold raises
ValueError and the message must contain 'n=' and the value, e.g. 'n=5'."""),
    ("code", r"""check("8.4")"""),
    ("code", r"""check("8.5")"""),
    ("code", r"""
%%needs 8.1-8.5
zero = int(q.nearest_code(torch.zeros(1), book))          # NF4's exact 0, the pad bitsandbytes uses
ours = q.pack_nibbles(q.nearest_code(scaled, book), pad=zero)
theirs, state = bnb_f.quantize_4bit(w, blocksize=64, quant_type="nf4")
print(f"our bytes: {ours.numel():,}, bitsandbytes': {theirs.numel():,}, identical: {torch.equal(ours, theirs.reshape(-1))}")
print("first bytes:", [hex(b) for b in ours[:4].tolist()], "= codes", q.unpack_nibbles(ours[:4], 8).tolist())"""),
    ("md", r"""
## 4. Reading the weights back

Dequantization is a table lookup and a multiplication: level `code_book[code]` times the absmax of
the code's block.

**Exercise 8.6.** `dequantize_blocks(codes, absmax, code_book, block_size)`. With the wrong number of
absmax values, raise ValueError: the message must contain 'absmax has <count> values', e.g. 'absmax has 3 values'."""),
    ("code", r"""check("8.6")"""),
    ("code", r"""
%%needs 8.1-8.6
back = q.dequantize_blocks(q.nearest_code(scaled, book), absmax, book, 64).view_as(w)
bnb_back = bnb_f.dequantize_4bit(theirs, state)
print(f"identical to bitsandbytes' dequantize_4bit: {torch.equal(back, bnb_back)}")
print(f"mean |error| {(back - w).abs().mean():.2e} for weights of mean |w| {w.abs().mean():.2e} "
      f"({(back - w).abs().mean() / w.abs().mean():.1%})")"""),
    ("md", r"""
## 5. Double quantization and the bits per weight

The absmax values are not free: one fp32 number per 64 weights is $32/64 = 0.5$ extra bit per weight,
12.5 % on top of the 4. QLoRA quantizes them again, in 8 bits, in blocks of 256: subtract their mean
(they are all positive, so centring them uses both halves of a signed code), scale each block of 256
by its absmax, and take the nearest level of bitsandbytes' 8-bit "dynamic" code book (given:
`q.dynamic_code_book()`). Per weight this costs $8/64 + 32/(64 \cdot 256)$ bit.

**Exercise 8.7.** `double_quantize(absmax, block_size=256)` returns (codes, absmax2, offset). Reuse
8.2 and 8.3.

**Exercise 8.8.** `bits_per_parameter(block_size, double_quant, dq_block_size)`. A bad block size is
refused by the given code: the message must contain the name and value, e.g. 'dq_block_size=0'."""),
    ("code", r"""check("8.7")"""),
    ("code", r"""check("8.8")"""),
    ("code", r"""
%%needs quantization
for dq in (False, True):
    t = q.quantize_nf4(w, 64, double_quant=dq)   # given: your 8.2, 8.3, 8.4 and 8.7 in a row
    print(f"double quantization {dq!s:5}: formula {q.bits_per_parameter(64, dq):.3f} bits per weight, "
          f"held {t.storage_bytes() * 8 / w.numel():.3f}")
rel = (q.block_constants(t) - absmax).abs() / absmax
print(f"the absmax values read back from 8 bits: relative error mean {rel.mean():.2%}, largest {rel.max():.2%} "
      f"(on the smallest absmax values: the 8-bit steps are a share of each 256-block's largest)")"""),
    ("md", r"""
## 6. How large is the error? FP4, NF4 and int8 on SmolLM2's weights

The same blockwise absmax (blocks of 64) with three code books: FP4 (bitsandbytes' 4-bit float: 1
sign, 2 exponent, 1 mantissa bit), NF4, and int8 (255 evenly spaced levels). The weights: every
linear layer of the first three transformer blocks."""),
    ("code", r"""
%%needs quantization
layers = [m.weight.detach() for blk in model.model.layers[:3] for m in blk.modules() if isinstance(m, nn.Linear)]
errors = {}
for name, levels in q.code_books().items():
    sq = ab = ref = n = 0.0
    for x in layers:
        e = q.round_trip(x, levels, 64) - x
        sq, ab, ref, n = sq + e.pow(2).sum().item(), ab + e.abs().sum().item(), ref + x.pow(2).sum().item(), n + x.numel()
    errors[name] = {"levels": levels.numel(), "mean |error|": ab / n, "relative RMS error": (sq / ref) ** 0.5}
print(f"{sum(x.numel() for x in layers):,} weights in {len(layers)} layers, blocks of 64")
print(f"{'':6}{'levels':>7}{'mean |error|':>14}{'relative RMS error':>20}")
for name, e in errors.items():
    print(f"{name:6}{e['levels']:>7}{e['mean |error|']:>14.2e}{e['relative RMS error']:>20.2%}")
print(f"NF4's error / FP4's: {errors['nf4']['mean |error|'] / errors['fp4']['mean |error|']:.2f}")
print("FP4 levels:", q.code_books()["fp4"].tolist())"""),
    ("code", r"""
%%needs quantization
fig, (left, right) = viz.new_figure(11, 3.8, ncols=2)
all_scaled = torch.cat([q.blockwise_absmax(x, 64)[0] for x in layers])
left.hist(all_scaled.numpy(), bins=200, density=True, color="0.7", label="weights / block absmax")
for v in book.tolist():
    left.axvline(v, color="tab:red", lw=0.8)
left.plot([], [], color="tab:red", label="the 16 NF4 levels")
left.set(xlabel="scaled weight", ylabel="density", title="SmolLM2 weights (3 blocks) and the NF4 levels")
left.legend(fontsize=8)
bars = right.bar(list(errors), [e["relative RMS error"] * 100 for e in errors.values()], color=["tab:orange", "tab:blue", "tab:green"])
right.bar_label(bars, fmt="%.2f%%")
right.set(ylabel="relative RMS error (%)", title="Round-trip error, blocks of 64")
fig"""),
    ("md", r"""
Most scaled weights sit near zero, where the NF4 levels are densest; FP4 spends levels on tiny
magnitudes (±0.0052) and leaves gaps in between. int8 has 16 times as many levels and an error to
match (the table above): 4 bits are a real loss of precision, which is why QLoRA stores only the
frozen base in 4 bits and trains the LoRA factors at higher precision: BF16 (16 bits) in the paper,
fp32 in this course, as every run here on a CPU.

The histogram is a comb, not a smooth bell, and that is a fact about this copy of SmolLM2, not about
NF4: the course's model was shipped as a GGUF file whose linear layers are stored in Q4_1, 4 bits
with a scale and a minimum per block of 32 weights, so each block of 32 holds at most 16 distinct
values (the cell below counts them). Divided by a block absmax, those few values pile up on teeth.
A bf16 checkpoint would draw a smooth curve; the errors measured above are those of re-quantizing
already 4-bit weights, which is what a learner loading this file will meet."""),
    ("code", r"""
%%needs quantization
per_block = torch.tensor([len(torch.unique(row)) for row in w.reshape(-1, 32)])   # w: layer 0's q_proj, blocks of 32
print(f"layer 0 q_proj: distinct values per block of 32 weights: at most {per_block.max()}, mean {per_block.float().mean():.1f}")"""),
    ("md", r"""
## 7. The whole model in 4 bits

`qlora.quantize_model` replaces every linear layer but the output head by an `NF4Linear`: it holds
the packed codes (made by your exercises) and reads the weight back, in the compute dtype, inside
each forward. The embeddings are not quantized. In the QLoRA reference code `embed_tokens` and
`lm_head` stay in BF16 (16 bits); here, on a CPU, the tied embedding (SmolLM2's input and output
layer at once) stays in fp32."""),
    ("code", r"""
%%needs quantization
fp32_bytes = sum(m.weight.numel() * 4 for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "lm_head")
nf4_base = copy.deepcopy(model)
names = qlora.quantize_model(nf4_base)
held = sum(sum(t.numel() * t.element_size() for t in [m.weight, *m.buffers()])
           for n, m in nf4_base.named_modules() if n in names)
print(f"{len(names)} linear layers: {fp32_bytes / 2**20:.1f} MiB in fp32 -> {held / 2**20:.1f} MiB in NF4 + double quantization")
print(f"ratio {held / fp32_bytes:.3f} (target <= 0.16; the paper's 4.127 / 32 = {4.127 / 32:.3f})")
print(f"whole model as held: {weight_bytes(model) / 2**20:.0f} MiB -> {weight_bytes(nf4_base) / 2**20:.0f} MiB "
      f"(the tied embedding, {model.model.embed_tokens.weight.numel() / 1e6:.1f} M weights, stays fp32)")
print(f"parameters counted: {count_parameters(nf4_base).total:,} (counting uint8 elements would give "
      f"{sum(p.numel() for p in nf4_base.parameters()):,}: two weights per byte)")"""),
    ("md", r"""
How often is each of the 16 codes used? Count them in every quantized layer of the model. With
weights divided by a fixed $\sigma$ the quantile levels would be used about equally, 1/16 = 6.25 % each;
divided by each block's absmax, the outer levels catch only the few weights near the block's largest."""),
    ("code", r"""
%%needs quantization
used = sum(torch.bincount(q.unpack_nibbles(m.weight.data, m.in_features * m.out_features).long(), minlength=16)
           for n, m in nf4_base.named_modules() if n in names)                  # (16,) counts of each code
share = used / used.sum()
print(f"{len(names)} layers, {int(used.sum()):,} codes: each level takes from {share.min():.1%} "
      f"(code {int(share.argmin())}) to {share.max():.1%} (code {int(share.argmax())}); equal use would be {1 / 16:.2%}")
fig, (ax,) = viz.new_figure(7, 3)
ax.bar(range(16), share.numpy() * 100, color="tab:blue")
ax.axhline(100 / 16, color="0.4", ls="--", lw=1, label="equal use (6.25 %)")
ax.set(xlabel="NF4 code (0 = level -1, 7 = level 0, 15 = level +1)", ylabel="share of all weights (%)",
       title="How often each NF4 code is used, SmolLM2-135M, blocks of 64")
ax.legend(fontsize=8)
fig"""),
    ("md", r"""
## 8. QLoRA, two ways, on the same batches

Now LoRA (yours, from notebook 05) on top: on the scratch base above (`lora.apply` on `nf4_base`:
what `qlora.apply` does after `quantize_model`), and on bitsandbytes' `Linear4bit` (NF4, double
quantization) holding the same weights (`qlora.apply` with `backend="bitsandbytes"`). Two short
steps each, at batch 4. The same seed gives the same LoRA factors;
the two bases hold the same bytes, except double-quantized absmax codes that bitsandbytes' CPU
search rounds one level differently for a few blocks (see `tests/test_ex_quantization.py`)."""),
    ("code", r"""
%%needs qlora
task = get_task("define")
train_ex = load_examples("define", "train", n=preset.n_train)
steps, runs, models = 2, {}, {}
for backend in ("scratch", "bitsandbytes"):
    torch.manual_seed(0)
    m = (lora.apply(copy.deepcopy(nf4_base), lora.LoRAConfig()) if backend == "scratch" else
         qlora.apply(copy.deepcopy(model), qlora.QLoRAConfig(backend="bitsandbytes")))
    codes = {n: t.clone() for n, t in m.state_dict().items() if "lora_" not in n}
    cfg = TrainConfig(lr=learning_rate("qlora", preset), max_steps=steps)
    runs[backend] = train(m, batches(train_ex, tok, task, preset.seq_len, 4, epochs=None), cfg, progress=False)
    frozen = all(torch.equal(t, m.state_dict()[n]) for n, t in codes.items())
    models[backend] = m
    print(f"{backend:13} losses {[round(x, 3) for x in runs[backend].losses]}, "
          f"median step {runs[backend].step_time_median:.2f} s, frozen codes unchanged: {frozen}")
print(count_parameters(models["scratch"]))"""),
    ("md", r"""
Compare the two loss columns step by step. The step times compare two whole training steps
(forward, loss, backward, AdamW on the same LoRA factors) that differ only in how the 4-bit base is
read back. On a CPU, bitsandbytes 0.50 does it with a compiled kernel of its own C++ library
(`cdequantize_blockwise_cpu_nf4_fp32`, in the forward and again in the backward; only its
`quantize_4bit` is written in PyTorch), while our `NF4Linear` does the table lookup and the
multiplication with PyTorch operations. Two steps are a rough reading
(`python benchmarks/qlora.py` times the two in turns, on a GPU too). Merging
after QLoRA: the LoRA update $\frac{\alpha}{r}BA$ is not on the NF4 grid, so it cannot go into the
codes. `qlora.merge_and_unload` dequantizes the base to fp32 and merges there; storing a merged
weight in NF4 again rounds it anew (shown on one layer)."""),
    ("code", r"""
%%needs qlora
batch = next(batches(train_ex, tok, task, preset.seq_len, 4, epochs=None))
m = models["scratch"].eval()
with torch.no_grad():
    before = m(**batch).logits
    merged = qlora.merge_and_unload(m)
    after = merged(**batch).logits
print(f"merged fp32 model vs QLoRA model: largest logit difference {(after - before).abs().max():.1e}")
w_merged = merged.model.layers[0].self_attn.q_proj.weight.detach()       # (576, 576), base + B A merged
w_again = q.dequantize_nf4(q.quantize_nf4(w_merged))
print(f"layer 0 q_proj merged, stored in NF4 again: mean |rounding| {(w_again - w_merged).abs().mean():.2e} "
      f"(mean |w| {w_merged.abs().mean():.2e}); the merged update itself: "
      f"mean {(w_merged - qlora.dequantized(nf4_base.model.layers[0].self_attn.q_proj)).abs().mean():.2e}")"""),
    ("md", r"""
## 9. Where the memory goes

One training step each (the preset's batch and length, AdamW) for full fine-tuning, LoRA on the fp32
base, and QLoRA, measured in this process: the weights as held (`labs.memory.weight_bytes`), the
gradients and optimizer state counted on real tensors (`labs.memory.measure_components`), and the
rest of what the step added to the process's peak resident memory (activations and temporaries:
peak during the step minus memory before it, minus gradients and optimizer state). Beside each, the
analytic model `labs.memory.estimate_memory` for the same run (fp32 activations, as on this CPU)."""),
    ("code", r"""
%%needs qlora
from labs.memory import current_rss_bytes, peak_memory_bytes, reset_peak

del models, merged
one = next(batches(train_ex, tok, task, preset.seq_len, preset.batch_size, epochs=None))
cpu, shape = torch.device("cpu"), model.config

def one_step(make, method, base_bytes):
    m = make()
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-5)
    before, windowed = current_rss_bytes(), reset_peak(cpu)
    m(**one).loss.backward()
    opt.step()
    added = peak_memory_bytes(cpu) - before if windowed else None
    got, counts = measure_components(m, opt), count_parameters(m)
    measured = {"weights": weight_bytes(m), "gradients": got.gradients, "optimizer": got.optimizer,
                "activations": max(0, added - got.gradients - got.optimizer) if added is not None else 0}
    est = estimate_memory(counts.total - (0 if method == "full" else counts.trainable), method,
                          trainable_params=None if method == "full" else counts.trainable, weight_bytes=base_bytes,
                          grad_bytes=4.0, batch_size=preset.batch_size, seq_len=preset.seq_len,
                          hidden=shape.hidden_size, layers=shape.num_hidden_layers, vocab=shape.vocab_size,
                          activation_bytes_per_value=4.0)
    return measured, est

rows = {}
for label, make, method, wb in [
        ("full", lambda: copy.deepcopy(model).train(), "full", "fp32"),
        ("LoRA", lambda: lora.apply(copy.deepcopy(model), lora.LoRAConfig()).train(), "lora", "fp32"),
        ("QLoRA", lambda: lora.apply(copy.deepcopy(nf4_base), lora.LoRAConfig()).train(), "lora", "nf4-dq")]:
    rows[label], rows[label + " (model)"] = one_step(make, method, wb)
    print(f"{label:6} measured {sum(rows[label].values()) / 2**20:6.0f} MiB   "
          f"estimate {rows[label + ' (model)'].total / 2**20:6.0f} MiB")
viz.memory_breakdown(rows, title="One AdamW step, SmolLM2-135M, CPU: measured and (model)")"""),
    ("md", r"""
The estimate counts every base weight at 4.127 bits for QLoRA; the measured QLoRA weights are larger
because the tied embedding stays in fp32 here (section 7 printed both sizes). Peak memory of whole runs,
in child processes (process peak resident memory on a CPU, `torch.cuda.max_memory_allocated` on a
GPU), for four variants including LoRA on a bf16 base:

    python benchmarks/qlora.py --preset quick     # CPU
    python benchmarks/qlora.py --preset gpu       # on a CUDA machine

Recorded with the first command on a shared 2-core CPU (2026-11-28, MiB; weights, gradients and
optimizer state counted on the tensors, the estimate from `labs.memory`, the peak from the child
process minus that of a child that only loads the model):

| variant | weights | gradients | optimizer | estimate | peak minus load |
|---|---|---|---|---|---|
| full fine-tuning (fp32, AdamW) | 513 | 513 | 1026 | 2722 | 2745 |
| LoRA, fp32 base | 515 | 1.8 | 3.5 | 1190 | 1488 |
| LoRA, bf16 base | 258 | 1.8 | 3.5 | 646 | 968 |
| QLoRA (NF4 + double quantization) | 162 | 1.8 | 3.5 | 743 | 1669 |

The held weights fall as the notebook predicts, but QLoRA's whole-run peak is the odd one out: that
child loads the fp32 checkpoint and quantizes it in the same process, and the NF4 layers rebuild
each weight in the forward and again in the backward; which of the two sets its peak has not been
isolated yet. The one-step measurement above, which starts after loading, is the fairer comparison
of training itself. No GPU figures are recorded yet: the second command makes them.

**What to remember.** NF4 stores a frozen weight in 4.127 bits, 13 % of fp32, at a lower round-trip
error than FP4's (section 6 measured the ratio). QLoRA's base is read back layer by layer inside the forward, so only one layer's
weight is ever in full precision, and LoRA on top trains exactly as before. The saved adapter is an
ordinary LoRA adapter: it loads onto the full-precision base (in peft too)."""),
]

CELLS += [
    ("md", r"""
## 10. What set QLoRA's peak, and quantizing while loading

Section 9's table left a question open: at 135M, QLoRA's whole run peaked *above* LoRA's. Three
things set that peak, and two of them are fixable:

1. **Loading.** `load_model` builds the whole fp32 model, and `quantize_model` replaces its layers
   afterwards: for a while the full-precision base exists whole, so loading peaks at the fp32 size
   the method is meant to avoid.
2. **The embedding.** SmolLM2's tied embedding (also its output layer) is 21 % of its weights and is
   not an `nn.Linear`, so it stayed fp32: the base averaged about 10 bits per weight, not 4.127.
3. **What training adds.** Activations, the loss's temporaries over a 49,152-word vocabulary, and each
   NF4 layer's weight rebuilt in the forward and again in the backward: the same at any base precision,
   and large beside a base of 135M weights. This one stays; it shrinks relative to the base as the model grows.

`labs.nf4_loading.load_quantized` fixes the first two. It builds the model's skeleton with no weights
(accelerate's `init_empty_weights`: parameters on PyTorch's `meta` device), reads the checkpoint one
tensor at a time, and turns each linear layer's weight into an `NF4Linear` at once (your exercises
again), so only one layer is ever in fp32. The embedding and the output head are held in bf16, as the
QLoRA reference code holds them (its norms stay fp32), and compute in fp32. `labs finetune --method qlora`
now trains on this base."""),
    ("code", r"""
%%needs qlora
from labs.nf4_loading import load_quantized

streamed, _ = load_quantized("smollm2-135m")        # skeleton, then tensor by tensor into NF4; embedding in bf16
n_weights = count_parameters(streamed).total
for name, m in [("loaded in fp32, then quantized (section 7)", nf4_base), ("quantized while loading", streamed)]:
    print(f"{name:43} base held {weight_bytes(m) / 2**20:6.1f} MiB = {8 * weight_bytes(m) / n_weights:5.2f} bits per weight")
print(f"embedding: {streamed.model.embed_tokens.weight.dtype}, shared with the output head: "
      f"{streamed.lm_head.weight is streamed.model.embed_tokens.weight}")
probe_ids = tok(["Define the word: harbour", "The capital of France is"], return_tensors="pt", padding=True)
with torch.no_grad():
    a, b = nf4_base(**probe_ids).logits, streamed(**probe_ids).logits
print(f"logits against section 7's NF4 model: {((b - a).norm() / a.norm()):.2%} of their norm apart "
      "(the bf16 embedding; with the embedding in fp32 the two are identical, tests/test_nf4_loading.py)")"""),
    ("md", r"""
### Memory against model size, recorded

Does the saving show where it should, on models whose weights dominate? `benchmarks/memory_vs_size.py`
trains two AdamW steps of each variant in its own process, on SmolLM2-135M and on SmolLM2-360M's
and SmolLM2-1.7B's shapes with random weights (memory does not depend on the values; nothing to
download), and records every figure **above the process's own baseline** (Python, torch and the
libraries, read in the same process just before loading). QLoRA is measured twice: quantized while
loading, and the old way. Full fine-tuning of 1.7B needs about 27 GB, more than this 24 GiB machine
has: it is only on the analytic line. The dashed lines are `labs.memory`'s analytic model of the
same batch, extended to Llama-2-7B's and 70B's shapes; the black line is a 24 GB consumer GPU."""),
    ("code", r"""
from labs.memory_scaling import LABELS, SHAPES, largest_trainable, load_recording

rec = load_recording()
GiB = 2 ** 30
print(f"recorded {rec['date']} with\n  {rec['command']}\n{rec['machine']}; batch {rec['batch_size']} x {rec['seq_len']}, "
      f"{rec['steps']} AdamW steps; GiB above the process baseline")
got = {(r["size"], r["variant"]): r for r in rec["runs"] if "peak_above_baseline" in r}
print(f"{'size':>5} {'variant':<38}{'loading':>9}{'training':>10}{'whole run':>11}{'base held':>11}")
for r in rec["runs"]:
    if "peak_above_baseline" in r:
        print(f"{r['size']:>5} {LABELS[r['variant']]:<38}{r['load_peak_above_baseline'] / GiB:>9.2f}"
              f"{r['train_peak_above_baseline'] / GiB:>10.2f}{r['peak_above_baseline'] / GiB:>11.2f}{r['base_weight_bytes'] / GiB:>11.2f}")
    else:
        print(f"{r['size']:>5} {LABELS[r['variant']]:<38}  not run: {r.get('skipped') or r.get('error')}")
viz.memory_vs_size(rec)"""),
    ("code", r"""
def whole(size, variant):
    return got[(size, variant)]["peak_above_baseline"]

for size in ("135M", "360M", "1.7B"):
    if (size, "qlora") in got and (size, "lora-fp32") in got:
        ratio = whole(size, "qlora") / whole(size, "lora-fp32")
        before = whole(size, "qlora-old") / whole(size, "lora-fp32") if (size, "qlora-old") in got else float("nan")
        print(f"{size:>5}: QLoRA's whole-run peak is {ratio:.2f} x LoRA-on-fp32's (loaded then quantized: {before:.2f} x)"
              f"{'  <- QLoRA below' if ratio < 1 else ''}")
if ("1.7B", "qlora") in got:
    share = got[("1.7B", "qlora")]["base_weight_bytes"] / (4 * SHAPES["1.7B"].n_params())
    print(f"1.7B base held at {share:.3f} of its fp32 bytes (target <= 0.16; NF4 alone would be {4.127 / 32:.3f}, "
          "the bf16 embedding adds the rest)")
print(f"\nthe largest model each variant trains in {rec['gpu_line_gb']:.0f} GB, at this batch:")
for variant in ("full", "lora-fp32", "lora-bf16", "qlora"):
    best = largest_trainable(variant, rec["gpu_line_gb"], rec)
    print(f"  {LABELS[variant]:<26} " + (f"{best['size']:>5} ({best['gb']:.1f} GB, {best['source']})" if best else "none of these sizes"))"""),
    ("code", r"""
# Between the recorded sizes: each analytic line's bytes per weight at 70B, where the weights dominate.
for variant in ("full", "lora-fp32", "lora-bf16", "qlora"):
    per_weight = rec["analytic"][variant]["70B"] / rec["n_params"]["70B"]
    print(f"{LABELS[variant]:<26} {per_weight:5.2f} bytes per weight -> about "
          f"{rec['gpu_line_gb'] * 1e9 / per_weight / 1e9:5.1f} B weights in {rec['gpu_line_gb']:.0f} GB")"""),
    ("md", r"""
Read the table by its columns. *loading* is where the old QLoRA lost: loading the fp32 model whole
before quantizing it costs as much as loading it for LoRA, and that sets the whole run's peak (the
crosses on the plot sit on LoRA-fp32's points). Quantized while loading, loading stays near the
size of the NF4 base (the *loading* and *base held* columns). *training* adds what point 3 names, of
the same order for every LoRA variant at a size (QLoRA's a little more: it rebuilds each layer's
weight twice per step), so the base's bytes decide which variant is smallest. The weights-per-GB lines
say the same at scale: QLoRA fits a base several times larger than LoRA on a bf16 base does, in the
same card. The paper's headline, a 65B model fine-tuned on one 48 GB GPU, is this line. The batch
here is small (the recording's): activations grow with B x T, weights and optimizer state do not.

## 11. The whole QLoRA recipe

The paper's recipe has four parts. NF4 and double quantization you built (sections 1-5). The other two:

- **Paged optimizers.** On NVIDIA GPUs, bitsandbytes can allocate the optimizer state in *unified
  memory*: pages the driver moves to CPU RAM when the GPU runs out and back when the optimizer step
  touches them. Training does not fail on a memory spike (a long batch under gradient checkpointing);
  it slows down for that step instead. It matters only near the GPU's limit; on a CPU there is nothing
  to page to, and bitsandbytes falls back to the ordinary optimizer (the cell below shows it).
  Its 8-bit AdamW stores the two moments in 8 bits, blockwise with the dynamic code book of section 5:
  2 bytes per trainable weight instead of 8.
- **LoRA on every linear layer.** The paper found that adapting only q and v did not match 16-bit
  fine-tuning; adapting all linear layers did, and the rank mattered little. At a fixed budget of
  trainable weights, all-linear means a lower rank per layer."""),
    ("code", r"""
%%needs qlora
import warnings

import bitsandbytes as bnb

probe = nn.Parameter(torch.zeros(64, 64))
probe.grad = torch.ones_like(probe)
for name in ("AdamW8bit", "PagedAdamW8bit"):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt = getattr(bnb.optim, name)([probe], lr=1e-3)
        opt.step()
    state = sum(t.numel() * t.element_size() for t in opt.state[probe].values() if torch.is_tensor(t))
    print(f"bitsandbytes {name:15} state {state / probe.numel():.2f} bytes per weight (torch AdamW: 8)"
          + (f"; {caught[0].message}" if caught else ""))

qv = lora.LoRAConfig(r=16, alpha=32)                                     # q_proj, v_proj: the default targets
every = lora.LoRAConfig(r=3, alpha=6, target_modules=("all-linear",))    # the same alpha / r
budget = {name: count_parameters(lora.apply(copy.deepcopy(streamed), cfg)).trainable
          for name, cfg in (("q, v at r=16", qv), ("all linear at r=3", every))}
for name, n in budget.items():
    print(f"{name:18} {n:>9,} trainable weights")
print(f"all-linear / q,v: {budget['all linear at r=3'] / budget['q, v at r=16']:.3f}")"""),
    ("md", r"""
Now the recipe, run: both adapters on the base quantized while loading, 8-bit AdamW, the same
batches, the preset's side-run budget, QLoRA's learning rate; held-out loss on the task before and
after. (A short run: it shows the recipe working, not the paper's quality claim.)"""),
    ("code", r"""
%%needs qlora
from labs.evaluate import eval_loss

held_out = load_examples("define", "validation", n=16, seed=0)
def held_out_loss(m):
    return eval_loss(m, tok, task, held_out, preset.seq_len, 8)

base_loss = held_out_loss(streamed)
recipe = {}
for name, cfg in (("q, v at r=16", qv), ("all linear at r=3", every)):
    torch.manual_seed(0)
    m = lora.apply(copy.deepcopy(streamed), cfg)
    run = train(m, batches(train_ex, tok, task, preset.seq_len, preset.side_run_batch, epochs=None),
                TrainConfig(lr=learning_rate("qlora", preset), max_steps=preset.side_run_steps, optimizer="adamw8bit"),
                progress=False)
    recipe[name] = m.eval()
    print(f"{name:18} held-out loss {base_loss:.3f} -> {held_out_loss(m):.3f} after {preset.side_run_steps} steps, "
          f"median step {run.step_time_median:.2f} s")"""),
    ("md", r"""
## 12. An adapter trained on NF4 is not an adapter for the fp32 base

The saved adapter is an ordinary LoRA adapter, and peft will load it onto the full-precision base.
But it was trained to correct *the NF4 base*: on the fp32 base it is a different model. By how much?
The all-linear adapter above, its factors copied onto the same LoRA on the fp32 base:"""),
    ("code", r"""
%%needs qlora
trained = recipe["all linear at r=3"]
on_fp32 = lora.apply(copy.deepcopy(model), every).eval()
with torch.no_grad():
    for (_, src), (_, dst) in zip(lora.lora_layers(trained), lora.lora_layers(on_fp32)):
        dst.lora_A.copy_(src.lora_A)
        dst.lora_B.copy_(src.lora_B)
losses = {"fp32 base": held_out_loss(model), "NF4 base": base_loss,
          "NF4 base + adapter (as trained)": held_out_loss(trained), "fp32 base + the same adapter": held_out_loss(on_fp32)}
for name, value in losses.items():
    print(f"{name:32} held-out loss {value:.4f}")
one = next(batches(held_out, tok, task, preset.seq_len, 8, epochs=None))

def next_token(m):                                    # (B, T, V) log-probabilities
    with torch.no_grad():
        return m(**one).logits.log_softmax(-1)

def kl_and_agreement(p, r):
    return (p.exp() * (p - r)).sum(-1).mean().item(), (p.argmax(-1) == r.argmax(-1)).float().mean().item()

adapted = kl_and_agreement(next_token(trained), next_token(on_fp32))
bases = kl_and_agreement(next_token(streamed), next_token(model))
print(f"next-token KL, adapter as trained || adapter on fp32: {adapted[0]:.4f} nats per token, top-1 tokens agree on {adapted[1]:.1%}")
print(f"next-token KL, NF4 base || fp32 base (no adapter):    {bases[0]:.4f} nats per token, top-1 tokens agree on {bases[1]:.1%}")
moved = losses["fp32 base + the same adapter"] - losses["NF4 base + adapter (as trained)"]
print(f"moving the adapter to the fp32 base changes its held-out loss by {moved:+.4f} "
      f"({'lower' if moved < 0 else 'higher'}); the adapter's gain is "
      f"{losses['NF4 base'] - losses['NF4 base + adapter (as trained)']:+.4f} on NF4 and "
      f"{losses['fp32 base'] - losses['fp32 base + the same adapter']:+.4f} on fp32")"""),
    ("md", r"""
Quantization moved every weight a little (section 6), and the adapter learned its correction on top
of those moved weights. On the fp32 base the same correction meets weights it never saw: the printed
KL and top-1 agreement measure how far apart the two models are, beside how far apart the two bases
are without any adapter. The held-out loss can come out lower or higher on the other base (the
sign is printed, not promised); either way what was evaluated during training is the NF4 model, and
the fp32 one is a different, unevaluated model. Serve an adapter on the base it was trained on, or
merge it into the dequantized base (section 8) and serve that.

**What to remember (sections 10-12).** QLoRA's saving is the base's weights: it shows once they
dominate, from a few hundred million weights up, and only if the base is never whole in fp32 (quantize
while loading). The full recipe adds paged 8-bit optimizers (a GPU's safety net) and LoRA on every
linear layer; and an adapter belongs to the quantized base it was trained on."""),
]

if __name__ == "__main__":
    main(CELLS, "nb08", OUT)
