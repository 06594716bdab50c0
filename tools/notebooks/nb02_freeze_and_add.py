"""Build notebooks/02_freeze_and_add.ipynb (committed without outputs).

    python tools/notebooks/nb02_freeze_and_add.py
"""
from __future__ import annotations

from nbtools import ROOT, main

OUT = ROOT / "notebooks" / "02_freeze_and_add.ipynb"

CELLS = [
    ("md", r"""
# 02 · Freeze and add

Notebook 01 moved every one of SmolLM2's 134.5 million weights, and paid for it: a gradient and two
AdamW moments for each of them. Every technique in the rest of the course does something else, in
three steps:

1. **freeze** the pretrained model, so its weights get no gradients;
2. **add** (or unfreeze) a few parameters, which do train;
3. give the **optimizer** only those.

This notebook builds the steps by hand, in `labs/freezing.py`, and then measures what they save.
From notebook 03 on the course uses the ready-made versions in `labs/surgery.py` (`freeze`,
`count_parameters`, `trainable_parameters`): the same ideas, used by every technique."""),
    ("code", r"""
import gc

import torch
from torch import nn

from labs import viz
from labs.check import check
from labs.impl import technique
from labs.models import load_model
from labs.presets import get_preset
from labs.surgery import ParamCount, trainable_parameters

freezing = technique("freezing")  # your labs/freezing.py (or the reference, with LABS_IMPL=solutions)
preset = get_preset()
print(f"preset {preset.name}: batch {preset.batch_size} x {preset.seq_len} tokens, {preset.max_steps} steps")"""),
    ("md", r"""
## 1. `requires_grad`: which tensors get a gradient

Autograd records the operations on tensors that *require gradients*. A parameter with
`requires_grad=False` is a constant to it: `backward()` computes no `.grad` for it, and if nothing
below a layer needs a gradient, autograd does not even keep that layer's inputs for the backward pass.

A linear layer $y = Wx + b$ with the matrix $W$ frozen and the bias $b$ trainable:"""),
    ("code", r"""
torch.manual_seed(0)
layer = nn.Linear(4, 3)
layer.weight.requires_grad_(False)   # freeze W, keep b trainable
x = torch.randn(2, 4)                # (B, D_in)
layer(x).sum().backward()
print("W.grad:", layer.weight.grad)
print("b.grad:", layer.bias.grad)"""),
    ("md", r"""
**Exercise 2.1.** In `labs/freezing.py`, write `freeze_all(model)`: set `requires_grad=False` on every
parameter of `model` and return the model. (`model.parameters()` walks every parameter of every
submodule.)"""),
    ("code", r"""check("2.1")"""),
    ("md", r"""
A frozen model still runs forward, exactly as before, but records nothing for a backward pass.
Here with all-MiniLM-L6-v2 (a 22.7 M parameter BERT encoder), loaded with a new two-way
classification head for the Rotten Tomatoes sentiment task:"""),
    ("code", r"""
bert, bert_tok = load_model("minilm-l6", task_kind="classify", num_labels=2)
freezing.freeze_all(bert)
out = bert(**bert_tok(["a frozen model still runs forward"], return_tensors="pt"))
print("logits:", out.logits)
print("every parameter frozen:", not any(p.requires_grad for p in bert.parameters()))
print("output requires grad:  ", out.logits.requires_grad)"""),
    ("md", r"""
## 2. Counting: trainable / total / %

Every notebook reports the same three numbers, in one format:
`trainable 1,234 / total 134,515,008 (0.0009%)`.

One trap first. SmolLM2 **ties** its input embedding to its output head: the matrix that turns a token
id into a vector ($V \times D = 49{,}152 \times 576 = 28{,}311{,}552$ numbers) is the same tensor that
turns the last hidden state back into token scores. It exists once in memory, trains once, and must
be counted once. `model.state_dict()` lists it under both names; `model.parameters()` yields each
parameter object once.

**Exercise 2.2.** Write `count_trainable(model) -> (trainable, total)`: numbers of parameter elements
(`p.numel()`), the trainable ones being those with `requires_grad=True`; a shared tensor counts once,
buffers (such as rotary-position tables) do not count."""),
    ("code", r"""check("2.2")"""),
    ("code", r"""
smol, smol_tok = load_model("smollm2-135m")
print("tied:", smol.lm_head.weight is smol.model.embed_tokens.weight)
print(f"summing state_dict():   {sum(t.numel() for t in smol.state_dict().values()):,}  (the tied matrix twice)")
print("count_trainable, full: ", ParamCount(*freezing.count_trainable(smol)))
freezing.freeze_all(smol)
smol.model.layers[-1].requires_grad_(True)   # train only the last of the 30 decoder blocks
print("count_trainable, 1/30: ", ParamCount(*freezing.count_trainable(smol)))"""),
    ("md", r"""
## 3. An optimizer over the trainable parameters only

Why not simply hand AdamW `model.parameters()` and let the frozen ones sit there? AdamW skips a
parameter whose `.grad` is `None`, so usually nothing visible happens. But a parameter frozen *after*
it received a gradient still holds that gradient, and the optimizer applies it (plus weight decay,
plus momentum in later steps). The "frozen" weight moves:"""),
    ("code", r"""
torch.manual_seed(0)
layer = nn.Linear(4, 3)
layer(torch.randn(2, 4)).sum().backward()   # a first phase trained everything: W holds a gradient
layer.weight.requires_grad_(False)          # now freeze W ... but its old .grad is still there
before = layer.weight.detach().clone()
naive = torch.optim.AdamW(layer.parameters(), lr=0.1)  # handed every parameter
naive.step()
print(f"the frozen W moved by up to {(layer.weight - before).abs().max().item():.3f}")"""),
    ("md", r"""
A zero gradient does not help: `optimizer.zero_grad(set_to_none=False)` leaves zeros, and AdamW still
applies weight decay to every parameter whose `.grad` is a tensor. Only `.grad = None` makes AdamW
skip a parameter.

**Exercise 2.3.** In `labs/freezing.py`, write `drop_stale_gradients(model)`: set `.grad = None` on every
*frozen* parameter that still holds a gradient, leave the trainable ones alone, and return the names of
the parameters you cleared, in the order of `model.named_parameters()` (which names a tied tensor once)."""),
    ("code", r"""check("2.3")"""),
    ("code", r"""
torch.manual_seed(0)
layer = nn.Linear(4, 3)
layer(torch.randn(2, 4)).sum().backward()
layer.weight.requires_grad_(False)
before = layer.weight.detach().clone()
print("dropped:", freezing.drop_stale_gradients(layer))
torch.optim.AdamW(layer.parameters(), lr=0.1).step()   # still handed every parameter
print(f"the frozen W moved by {(layer.weight - before).abs().max().item():.3f}")"""),
    ("md", r"""
Dropping stale gradients repairs a model you are about to hand to an optimizer you did not build. When
you build it yourself, give it only the trainable parameters, `labs.surgery.trainable_parameters(model)`:
an optimizer that never sees a frozen tensor cannot move it, whatever its `.grad` holds, and allocates no
state for it. AdamW keeps two moment tensors (8 bytes in fp32) *per parameter it holds*. This is
nanoGPT's `configure_optimizers` habit, and the course's training loop (`labs/train.py`) does the same."""),
    ("code", r"""
opt = torch.optim.AdamW(trainable_parameters(smol), lr=1e-4)
n_opt = sum(p.numel() for group in opt.param_groups for p in group["params"])
print(f"the optimizer holds {n_opt:,} numbers: the last block only")
del smol, opt
gc.collect();"""),
    ("md", r"""
## 4. Freeze and add

The simplest "add": keep the whole pretrained body frozen and train a new small module on top of it.
For classification the model's forward already ends in a head (`classifier` in BERT, `score` in
Llama); replace it by a fresh `nn.Linear` and train only that. This is a *linear probe*: it asks how
much of the task the frozen features already contain.

**Exercise 2.4.** Write `add_trainable_head(model, name, head)`: freeze `model` (your `freeze_all`),
put `head` at the dotted submodule path `name` (replacing what was there), make the head's parameters
trainable, and return them as a list. Mind the order: freezing *after* attaching would freeze the
head too. (`labs.surgery.get_submodule_parent(model, name)` gives the parent module and the attribute
name; the argument checks are already written.)"""),
    ("code", r"""check("2.4")"""),
    ("code", r"""
D = bert.config.hidden_size
head_params = freezing.add_trainable_head(bert, "classifier", nn.Linear(D, 2))
print(f"{len(head_params)} new trainable tensors:", [n for n, p in bert.named_parameters() if p.requires_grad])
print(ParamCount(*freezing.count_trainable(bert)))"""),
    ("md", r"""
Of MiniLM's 22.7 million numbers, only the head's 770 ($384 \times 2$ weights and 2 biases) would now
train. A head alone can only reweigh features the frozen body already computes; whether that is enough
is the question the next notebooks take up. BitFit (03), adapters (04) and LoRA (05) put their few
trainable parameters *inside* the body instead, where they can change the features themselves."""),
    ("md", r"""
## 5. What freezing saves, measured

Training memory has four parts: the **weights**, one **gradient** per trainable parameter, the
**optimizer** state (AdamW: two fp32 moments per trainable parameter), and the **activations** the
forward pass keeps for the backward pass. In fp32, with $N$ parameters of which $n$ train:

$$\text{bytes} \approx \underbrace{4N}_{\text{weights}} + \underbrace{4n}_{\text{gradients}} + \underbrace{8n}_{\text{AdamW}} + \text{activations}.$$

Full fine-tuning has $n = N$: four times the weights' bytes before a single activation. Rather than
trust the formula, take one real AdamW step on SmolLM2-135M (with a sentiment head, `score`) and
count the bytes of the tensors that exist afterwards with `labs.memory.measure_components`: once with
every weight trainable, once with the body frozen and a new head added."""),
    ("code", r"""
from labs.data import collate, get_task, load_examples
from labs.memory import measure_components

task = get_task("sentiment")
reviews = load_examples("sentiment", "train", n=preset.batch_size)


def one_step(model, batch):
    # One AdamW step over the trainable parameters; then the real bytes of every part.
    model.train()
    opt = torch.optim.AdamW(trainable_parameters(model), lr=1e-5)
    model(**batch).loss.backward()
    opt.step()
    return measure_components(model, opt, batch=batch)  # activations: what one forward keeps for backward


sentiment_batch = None
rows = {}
for setting in ("full fine-tune", "frozen body + head"):
    model, tok = load_model("smollm2-135m", task_kind="classify", num_labels=2)
    if sentiment_batch is None:
        sentiment_batch = collate(reviews, tok, task, preset.seq_len)  # (B, T) token ids + labels
    if setting == "frozen body + head":
        freezing.add_trainable_head(model, "score", nn.Linear(model.config.hidden_size, 2, bias=False))
    print(f"{setting:>20}: {ParamCount(*freezing.count_trainable(model))}")
    rows[setting] = one_step(model, sentiment_batch)
    del model
    gc.collect()"""),
    ("code", r"""
MiB = 2 ** 20
full, frozen = rows["full fine-tune"], rows["frozen body + head"]
print(f"{'':>12} {'full':>10} {'frozen+head':>12} {'saved':>10}   (MiB, batch {preset.batch_size} x {preset.seq_len})")
for part in ("weights", "gradients", "optimizer", "activations", "total"):
    a, b = getattr(full, part) / MiB, getattr(frozen, part) / MiB
    print(f"{part:>12} {a:>10,.1f} {b:>12,.1f} {a - b:>10,.1f}")
print(f"frozen body + head, in bytes: gradients {frozen.gradients:,.0f}, AdamW state {frozen.optimizer:,.0f}")
print(f"freezing saves {(full.total - frozen.total) / MiB:,.0f} MiB: "
      f"{full.total / frozen.total:.1f}x less memory for the same model")"""),
    ("code", r"""viz.memory_breakdown(rows, title="SmolLM2-135M, one AdamW step")"""),
    ("md", r"""
What the measurement says:

- The **weights** do not shrink: the frozen model is still all there, and it must be, to run forward.
  (QLoRA, notebook 08, attacks this part by storing the frozen weights in 4 bits.)
- **Gradients** and **optimizer** states follow the trainable count: 12 bytes for each trainable
  parameter, so they all but vanish when only a head trains.
- **Activations** vanished too, but only because the trainable part sits at the very *top*: nothing
  below it needs a gradient, so autograd keeps nothing there. A technique whose trainable parameters
  sit *inside* the body (LoRA in every layer) needs the backward pass to travel through all the frozen
  layers, and keeps their activations. Notebook 09 measures that, and how to trade it for compute.

## Summary

| step | your exercise | used from notebook 03 on |
|---|---|---|
| freeze everything | `freeze_all` (2.1) | `labs.surgery.freeze` |
| count, shared tensors once | `count_trainable` (2.2) | `labs.surgery.count_parameters` |
| no frozen tensor reaches an optimizer step | `drop_stale_gradients` (2.3) | `labs.surgery.trainable_parameters`, `labs.train` |
| freeze and add | `add_trainable_head` (2.4) | each technique's `apply(model, config)` |

The ready-made versions agree with yours:"""),
    ("code", r"""
from labs.surgery import count_parameters

print("yours:        ", ParamCount(*freezing.count_trainable(bert)))
print("labs.surgery: ", count_parameters(bert))"""),
]


if __name__ == "__main__":
    main(CELLS, "freeze-add", OUT)
