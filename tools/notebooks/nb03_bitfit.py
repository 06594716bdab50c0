"""Build notebooks/03_bitfit.ipynb (committed without outputs).

    python tools/notebooks/nb03_bitfit.py
"""
from __future__ import annotations

from nbtools import ROOT, main

OUT = ROOT / "notebooks" / "03_bitfit.ipynb"

CELLS = [
    ("md", r"""
# 03 · BitFit: train only the biases

Notebook 02 froze a whole model and trained a new head on top. The head could only re-weigh features
the frozen body already computed. What is the *smallest* set of parameters inside the body that still
lets a model adapt to a new task?

Ben Zaken, Goldberg and Ravfogel (2021) gave a startling answer: **the bias terms**. Every linear layer
computes

$$y = W x + b, \qquad W \in \mathbb{R}^{D_\text{out} \times D_\text{in}},\; b \in \mathbb{R}^{D_\text{out}}.$$

BitFit freezes every $W$ and trains every $b$. A bias has $D_\text{out}$ numbers where its matrix has
$D_\text{out} D_\text{in}$: on BERT-base that is about 0.09% of the parameters (102,912 of 109.5 M; the
often-quoted 0.08% is BERT-large, the model of the paper's main GLUE comparison), and on the GLUE
benchmark BitFit came close to full fine-tuning. A bias shifts what a layer emits, for every input
alike; stacked through twelve layers of non-linearities, those shifts turn out to steer a lot.

This notebook finds the biases, trains them on real sentiment data beside full fine-tuning and LoRA,
and then meets a model family that has no biases at all."""),
    ("code", r"""
import gc
import tempfile
from pathlib import Path

import torch

from labs import viz
from labs.check import check
from labs.finetune import run_finetune
from labs.impl import technique
from labs.models import load_model
from labs.presets import get_preset
from labs.surgery import ParamCount, count_parameters

bitfit = technique("bitfit")  # your labs/bitfit.py (or the reference, with LABS_IMPL=solutions)
preset = get_preset()
runs_dir = Path(tempfile.mkdtemp(prefix="labs-nb03-"))  # each fine-tune saves its adapter and metrics here
print(f"preset {preset.name}: {preset.max_steps} steps of {preset.batch_size} x {preset.seq_len} tokens")"""),
    ("md", r"""
## 1. Where are the biases?

all-MiniLM-L6-v2 is a 6-layer BERT encoder ($D = 384$, MLP width 1536) loaded with a new two-way
classification head. Each of its blocks has eight bias vectors: the query, key and value projections,
the attention output projection, the MLP's two layers ("intermediate" and "output"), and the *shift*
$\beta$ of its two LayerNorms $\gamma \odot \hat{x} + \beta$ (a bias too, so BitFit trains it; the
gain $\gamma$ is a weight and stays frozen).

The paper also tried a tiny subset: only the **query** bias and the **first MLP layer**'s bias (its
"middle-of-MLP" bias), half of the bias parameters and about 0.04% of the model (section 1), which
recovered most of the gain.

**Exercise 3.1.** In `labs/bitfit.py`, write `bias_parameter_names(model, subset)`: the names (from
`model.named_parameters()`, in order) of the parameters whose own name is `bias` for subset `"all"`,
and of those ending with one of `QUERY_MLP_SUFFIXES` for `"query_mlp"`. Reject any other subset
with a `ValueError`: the message must contain the bad subset name."""),
    ("code", r"""check("3.1")"""),
    ("code", r"""
bert, bert_tok = load_model("minilm-l6", task_kind="classify", num_labels=2)
params = dict(bert.named_parameters())
for subset in ("all", "query_mlp"):
    names = bitfit.bias_parameter_names(bert, subset)
    print(f"{subset:>9}: {len(names):3d} tensors, {sum(params[n].numel() for n in names):,} numbers")
print(*bitfit.bias_parameter_names(bert)[:10], sep="\n")"""),
    ("md", r"""
## 2. Applying BitFit

`apply(model, config)` is the same three steps as in notebook 02: freeze everything, unfreeze the
chosen few, and record what was done. `BitFitConfig` has three fields:

| field | meaning |
|---|---|
| `subset` | `"all"` biases or the paper's `"query_mlp"` subset |
| `norms` | also train the normalisation parameters (the norm-only analog on bias-free models) |
| `norm_fallback` | on a model without biases, train the norms instead of raising |

**Exercise 3.3.** Write `apply`: collect the bias names of `config.subset`; if there are none and
neither `norms` nor `norm_fallback` is set, `raise no_bias_error(model, config.subset)`; add the norm
names when `config.norms` is set or when there are no biases (the fallback), without duplicates.
Some models have no biases (section 5), and the only other per-channel vectors they have are the gains
of their normalisation layers: `norm_parameter_names(model)` (from `labs.surgery`, which adapters use
too) lists every parameter that belongs directly to a `LayerNorm`, `RMSNorm` or `LlamaRMSNorm`. Then
call `mark_adapted(model, config, __name__)` (it refuses a model that already carries an adapter, so
call it *before* changing anything), `freeze(model)`, unfreeze exactly the chosen names, and return
the model. The tests match both refusals' messages: with no biases the message must contain 'bias',
for a second adapter 'already'; `no_bias_error` and `mark_adapted` write such messages."""),
    ("code", r"""check("3.3")"""),
    ("code", r"""
bitfit.apply(bert, bitfit.BitFitConfig(subset="all"))
print(count_parameters(bert))"""),
    ("md", r"""
## 3. Counting honestly: the head

The paper's "under 0.1%" counts the biases only. But a classification model also needs its new head
(`classifier`, $D \times 2 + 2 = 770$ numbers), which was created with random weights and must train
whatever the method: `labs finetune` unfreezes it for every method, and saves it with the adapter.
On a model as small as MiniLM the head is not negligible next to the biases, so we report both.

**Exercise 3.4.** Write `count_without(model, exclude=("classifier",))`: a `ParamCount` of trainable
and total numbers over only the parameters whose names start with none of the prefixes in `exclude`."""),
    ("code", r"""check("3.4")"""),
    ("code", r"""
bert.classifier.requires_grad_(True)   # as labs finetune does for every method
head = sum(p.numel() for p in bert.classifier.parameters())
print(f"with the head ({head} numbers):", count_parameters(bert))
print("biases only, head left out:  ", bitfit.count_without(bert, ("classifier",)))
del bert
gc.collect();"""),
    ("md", r"""
Left without the head, MiniLM's biases are about 0.115% of its parameters: more than BERT-base's
0.094% and BERT-large's 0.081%. The reason is width. A bias adds $D_\text{out}$ numbers to a
$D_\text{out} \times D_\text{in}$ matrix, a share of $1/D_\text{in}$: per block BERT has $11D$ bias
numbers against $12D^2$ weights, about $0.92/D$, which is 0.24% at MiniLM's $D = 384$, 0.12% at
BERT-base's 768 and 0.09% at BERT-large's 1024. The embedding table has no biases and dilutes that
share. It is half of MiniLM (30,522 x 384 of 22.7 M) but a fifth of BERT-base, so it pulls MiniLM's
share *down* more; MiniLM still comes out above because it is narrow. The fraction is a property of
the architecture, not a constant of the method.

## 4. A real fine-tune: BitFit beside full fine-tuning and LoRA

Same model, same task (Rotten Tomatoes snippets, positive or negative), same data, same number of
steps and batch size. Only what trains differs, and the learning rate: full fine-tuning moves 22.7 M
pretrained weights and wants a small one; the PEFT methods move a few thousand new or bias numbers
and take a much larger one. We run BitFit twice, on all biases and on the paper's query + MLP subset.

Each run loads a fresh model, scores the held-out reviews, trains, scores again and saves what it
trained (in a temporary folder, `runs_dir`). This is the longest cell of the notebook."""),
    ("code", r"""
STEPS = max(preset.max_steps, 60)   # the quick preset's 16 steps leave every method near chance here
RUNS = {  # label: (method, options, learning rate)
    "full": ("full", {}, 1e-4),
    "LoRA": ("lora", {}, 5e-3),
    "BitFit all": ("bitfit", {}, 5e-3),
    "BitFit q+MLP": ("bitfit", {"subset": "query_mlp"}, 5e-3),
}
runs = {}
for label, (method, options, lr) in RUNS.items():
    budget = get_preset(preset.name, max_steps=STEPS, lr=lr, n_probe=0, n_english=0,
                        n_eval=max(preset.n_eval, 256))   # 256 reviews: one review is 0.4 points
    runs[label] = run_finetune(method, "minilm-l6", task="sentiment", preset=budget, options=options,
                               out=runs_dir / f"{label.replace(' ', '-').replace('+', '')}", progress=False)"""),
    ("code", r"""
print(f"{'':>12} {'trainable, with head':>24} {'without head':>13} {'accuracy':>16} {'held-out loss':>16} {'saved':>9}")
for label, m in runs.items():
    with_head = ParamCount(m["trainable_params"], m["total_params"])
    without = ParamCount(m["trainable_params"] - head, m["total_params"] - head)
    before, after = m["eval_before"], m["eval_after"]
    print(f"{label:>12} {with_head.trainable:>12,} ({with_head.percent:7.3f}%) {without.percent:12.4f}% "
          f"{before['accuracy']:7.3f} -> {after['accuracy']:.3f} {before['loss']:7.3f} -> {after['loss']:.3f} "
          f"{m['saved_bytes'] / 1024:6,.0f} KiB")"""),
    ("code", r"""
fig, (ax_acc, ax_pct) = viz.new_figure(11, 3.8, ncols=2)
labels, colors = list(runs), ["#999999", "#4c72b0", "#dd8452", "#c44e52"]
bars = ax_acc.bar(labels, [runs[k]["eval_after"]["accuracy"] for k in labels], color=colors)
ax_acc.bar_label(bars, fmt="%.3f", padding=2)
ax_acc.axhline(runs["full"]["eval_before"]["accuracy"], color="black", ls="--", lw=1, label="before training")
ax_acc.set(ylim=(0, 1), ylabel="held-out accuracy", title=f"Rotten Tomatoes, {STEPS} steps each")
ax_acc.legend(loc="lower right")
bars = ax_pct.bar(labels, [runs[k]["trainable_percent"] for k in labels], color=colors)
ax_pct.bar_label(bars, fmt="%.3g%%")
ax_pct.set(yscale="log", ylabel="trainable parameters (%, with head)", title="What trains")
fig"""),
    ("md", r"""
Which biases moved? The BitFit paper asked the same question: after fine-tuning it measured how far each
bias vector had travelled, and found the change concentrated in a few kinds -- the query bias and the
first MLP layer's among them, the observation behind its small subset.

**Exercise 3.2.** Write `bias_change(before, after)`: for every tensor in `after`, the mean absolute
change $\frac{1}{n}\lVert b_\text{after} - b_\text{before} \rVert_1$ from the tensor of the same name in
`before`, as a plain float, in the order of `after`. A name `before` lacks, or a shape that differs, is
a `ValueError`: the message must contain that tensor's name. The mean makes vectors of different lengths comparable (a query bias has $D$
numbers, the first MLP layer's $4D$). Below, `after` is what the "BitFit all" run saved (its adapter
file) and `before` the pretrained model; the bars average each kind of bias over the six layers."""),
    ("code", r"""check("3.2")"""),
    ("code", r"""
import re
from labs.peft_format import KEY_PREFIX, read_adapter

_, saved = read_adapter(runs_dir / "BitFit-all" / "adapter")       # what the run trained and saved
after = {k.removeprefix(KEY_PREFIX): t for k, t in saved.items() if "classifier" not in k}
pretrained, _ = load_model("minilm-l6", task_kind="classify", num_labels=2)
change = bitfit.bias_change(dict(pretrained.named_parameters()), after)
by_kind = {}
for name, value in change.items():   # bert.encoder.layer.3.attention.self.query.bias -> attention.self.query
    by_kind.setdefault(re.sub(r"^bert\.encoder\.layer\.\d+\.", "", name).removesuffix(".bias"), []).append(value)
mean = {kind: sum(values) / len(values) for kind, values in by_kind.items()}
fig, (ax,) = viz.new_figure(9, 3.8)
kinds = sorted(mean, key=mean.get)
ax.barh(kinds, [mean[k] for k in kinds], color="#dd8452")
ax.set(xlabel="mean |change| per number", title=f"How far each kind of bias moved (BitFit all, {STEPS} steps)")
del pretrained
gc.collect()
fig"""),
    ("md", r"""
Read the two panels together. BitFit trains the fewest numbers and writes the smallest adapter
file. The held-out set is small (at 256 reviews, one review is 0.4 points), so differences of a couple of
points are noise; a different seed can reorder close methods. Where the held-out loss fell but the
accuracy did not move, the method learned something, not yet enough to flip decisions: at this budget
the runs are short of their end point.

One result is worth a closer look: the two BitFit runs, side by side, as measured above."""),
    ("code", r"""
for label in ("BitFit all", "BitFit q+MLP"):
    m = runs[label]
    print(f"{label:>12}: {m['trainable_params']:>6,} trainable, accuracy {m['eval_before']['accuracy']:.3f} -> "
          f"{m['eval_after']['accuracy']:.3f}, held-out loss {m['eval_before']['loss']:.3f} -> {m['eval_after']['loss']:.3f}")
gain = {label: runs[label]["eval_after"]["accuracy"] - runs[label]["eval_before"]["accuracy"]
        for label in ("BitFit all", "BitFit q+MLP")}
print("more trainable numbers did worse here" if gain["BitFit all"] < gain["BitFit q+MLP"]
      else "here the larger set did at least as well: at this budget the gap between them is within the noise")"""),
    ("md", r"""
When this notebook ran on the course's 2-core test machine (quick preset, recorded 2026-11 with
`LABS_PRESET=quick LABS_IMPL=solutions jupyter nbconvert --to notebook --execute
notebooks/03_bitfit.ipynb`), all biases stayed at chance (accuracy 0.527 -> 0.527) while the query +
MLP subset learned (0.527 -> 0.680): the cell above shows what your run gives. Why could more
trainable numbers do worse? A bias adds the *same* vector to every input: it can shift a feature, never scale it. MiniLM's classification path ends in the
[CLS] token and a "pooler" layer, $\tanh(W_p h_\text{CLS} + b_p)$, that its sentence-embedding
training never used (that training averaged all tokens instead). Look at what reaches the head:"""),
    ("code", r"""
from labs.data import load_examples

bert, bert_tok = load_model("minilm-l6", task_kind="classify", num_labels=2)
reviews = [ex["text"] for ex in load_examples("sentiment", "validation", n=32)]
with torch.no_grad():
    pooled = bert.bert(**bert_tok(reviews, return_tensors="pt", padding=True, truncation=True)).pooler_output  # (B, D)
print(f"pooler bias all zero: {bool((bert.bert.pooler.dense.bias == 0).all())}")
print(f"pooled features: mean |value| {pooled.abs().mean():.3f}, spread across reviews {pooled.std(0).mean():.3f}")
del bert
gc.collect();"""),
    ("md", r"""
The features the head sees are small and vary little from review to review. "All biases" includes
the shifts of every LayerNorm and of the pooler, which act on that representation directly: a
common shift, learned at a high rate, easily outgrows the small differences between reviews, and the
head is left with nothing to tell them apart. The query and intermediate biases sit *before* a
softmax or a GELU inside a block, where a shift changes which signals pass: an effect that differs
from input to input. Full fine-tuning and LoRA change weight matrices, which can amplify.

With `LABS_PRESET=laptop` everything trains longer and the picture changes. The paper's finding, on
BERT-base and BERT-large with full training runs, is BitFit within a point or two of full fine-tuning
on most GLUE tasks. A method's reputation is measured on particular models: re-measure on yours.

## 5. Llama has no biases

Modern decoder models dropped the bias terms: Llama, Mistral, Qwen's MLPs, and SmolLM2, the course's
default model. The PaLM paper (Chowdhery et al. 2022, section 2) used no biases in any dense layer or
layer norm and gives one reason: it "increased training stability for large models". It claims
nothing about quality either way. For BitFit that is the end of the road:"""),
    ("code", r"""
smol, smol_tok = load_model("smollm2-135m")
print("bias tensors in SmolLM2:", len(bitfit.bias_parameter_names(smol)))
try:
    bitfit.apply(smol, bitfit.BitFitConfig())
except ValueError as err:
    print("ValueError:", err)"""),
    ("md", r"""
The closest analog trains the only per-channel vectors left: the gains $\gamma$ of the RMSNorm layers,
$\text{RMSNorm}(x) = \gamma \odot x / \sqrt{\text{mean}(x^2) + \epsilon}$. A gain rescales each channel
where a bias would shift it. There are two per block plus the final one, 61 vectors of $D = 576$:"""),
    ("code", r"""
bitfit.apply(smol, bitfit.BitFitConfig(norms=True))
print("norm-only:", count_parameters(smol))
del smol
gc.collect();"""),
    ("md", r"""
Does it learn anything? A short run (12 steps of 4 rows in the quick preset) on the "define" task (WordNet:
*Define the word "X".* followed by its gloss), with held-out loss on the definitions before and after.
`labs finetune --method bitfit` does the same on a bias-free model (`norm_fallback` is its default
there)."""),
    ("code", r"""
budget = get_preset(preset.name, n_probe=0, n_english=0,  # BitFit's own learning rate (labs/methods.py)
                    max_steps=preset.side_run_steps, batch_size=preset.side_run_batch)   # a side run
norm_run = run_finetune("bitfit", "smollm2-135m", task="define", preset=budget,
                        options={"norms": True}, out=runs_dir / "norm-only", progress=False)
before, after = norm_run["eval_before"], norm_run["eval_after"]
print(f"held-out loss {before['loss']:.3f} -> {after['loss']:.3f}, perplexity "
      f"{before['perplexity']:.1f} -> {after['perplexity']:.1f} ({norm_run['trainable_percent']:.4f}% trained)")"""),
    ("code", r"""
for g in norm_run["generations"][:2]:
    print(f"{g['prompt']}\n  before: {g['before'][:100]}\n  after:  {g['after'][:100]}\n")
viz.before_after(before, after, title="SmolLM2, norm gains only, define task")"""),
    ("md", r"""
## Summary

- BitFit trains the biases, a few hundredths to a tenth of a percent of a BERT-style model, and it
  is the simplest PEFT method there is: no new modules, nothing to merge, and the adapter is a few
  hundred kilobytes.
- The share depends on the architecture; a classification head has to train too, and should be
  counted.
- Bias-free models (Llama, SmolLM2) leave BitFit nothing to train. Their norm gains are the nearest
  stand-in, with even fewer parameters, and on the "define" task they go a long way: much of what
  that task asks is a *format* (a short gloss instead of a chatty paragraph), and rescaling channels
  can switch a format on. Whether 35,000 gains can also carry new knowledge is another question.

The next notebook adds capacity on purpose: small new modules, adapters, inside every block."""),
]


if __name__ == "__main__":
    main(CELLS, "bitfit", OUT)
