"""Build notebooks/05_lora.ipynb (committed without outputs).

    python tools/notebooks/nb05_lora.py
"""
from __future__ import annotations

from nbtools import ROOT, main

OUT = ROOT / "notebooks" / "05_lora.ipynb"

CELLS = [
    ("md", r"""
# 05 · LoRA: learn a low-rank change

Bottleneck adapters (notebook 04) trained well, but they put new layers *in the path* of every
token: the fine-tuned model is slower than the base, forever. Can we adapt a model and pay
**nothing** at inference time?

Aghajanyan et al. (2020) had shown that fine-tuning still works when confined to a small random
subspace of the weights: pretrained models have a low *intrinsic dimension*. Hu et al. (2021)
hypothesised that the change fine-tuning makes to each weight matrix likewise has a low *intrinsic
rank*: most of it lies in a few directions (their section 4.1). Their section 7 gives the evidence:
on GPT-3, rank 1 on the query and value projections already did about as well as rank 64 (Table 6),
and the updates learned at rank 8 and at rank 64 share their top direction, while the rest of the
rank-64 update looks like noise (section 7.2, Figure 2). So instead of
learning the full change $\Delta W$ (out × in numbers), learn it as a product of two thin matrices:

$$h = W x + \frac{\alpha}{r}\, B A\, x, \qquad A \in \mathbb{R}^{r \times \text{in}},\quad B \in \mathbb{R}^{\text{out} \times r},\quad r \ll \min(\text{in}, \text{out})$$

$W$ stays frozen. Only $A$ and $B$ train: $r(\text{in} + \text{out})$ numbers instead of
$\text{in} \times \text{out}$. For one of SmolLM2's 576 × 576 attention projections at $r = 8$ that is
9,216 instead of 331,776 (2.8 %). And since $\frac{\alpha}{r} B A$ has the shape of $W$, it can be
**added into** $W$ after training: the same model, no extra layer, no extra latency.

What the paper reports. On GPT-3 175B, LoRA trains 10,000 times fewer parameters than full
fine-tuning with Adam and needs 3 times less GPU memory (abstract): 350 GB instead of 1.2 TB while
training, and with $r = 4$ on the query and value projections a checkpoint of 35 MB instead of 350 GB
(section 4.2). Its quality was on par with or better than full fine-tuning on RoBERTa, DeBERTa, GPT-2
and GPT-3 (section 5). The paper adapted attention weights only, mostly $W_q$ and $W_v$. Today's
common practice is to adapt **every linear layer** of the block (q, k, v, o and the MLP's three), since
the QLoRA paper found that LoRA on all of them was needed to match full fine-tuning (Dettmers et al.
2023, section 4); section 6 below compares both.

In this notebook you build LoRA in `labs/lora.py` (six short exercises), fine-tune SmolLM2-135M to
define words, measure the latency of the merged model, and sweep the rank and the adapted layers."""),
    ("code", r"""
import copy

import torch
from torch import nn

from labs import viz
from labs.check import check
from labs.data import batches, get_task, load_examples
from labs.evaluate import eval_loss, generate
from labs.impl import technique
from labs.methods import learning_rate
from labs.models import load_model
from labs.presets import get_preset
from labs.surgery import count_parameters
from labs.timing import count_matrix_products, interleaved_medians
from labs.train import TrainConfig, train

lora = technique("lora")  # your labs/lora.py (or the reference, with LABS_IMPL=solutions)
preset = get_preset()
print(f"preset {preset.name}: batch {preset.batch_size} x {preset.seq_len} tokens, {preset.max_steps} steps")"""),
    ("md", r"""
## 1. The layer: wrap, never subclass

`LoRALinear` *holds* the frozen layer (`self.base_layer`) and adds the two factors beside it. It
works for `nn.Linear` (weight stored out × in) and for GPT-2's `Conv1D` (weight stored in × out):
`labs.surgery.linear_dims(layer)` gives `(in, out)` for both.

Three choices in the constructor, each with a reason:

- **B = 0.** Then $BA = 0$ and the wrapped layer computes exactly what the base did: training starts
  from the pretrained model, not from a perturbed one.
- **A random.** The paper draws $A$ from a Gaussian (section 4.1); peft, and the paper's own code
  (`loralib`), use Kaiming-uniform with `a=sqrt(5)`, the default init of `nn.Linear`, and so do we. If
  $A$ were zero too, both gradients would be zero forever: $\partial L/\partial B$ needs $Ax \neq 0$
  and $\partial L/\partial A$ needs $B \neq 0$. One random, one zero: the first step moves $B$,
  and from then on both learn.
- **scaling = α / r.** The update $BAx$ is a sum of $r$ rank-one terms, so with no scale the same
  learning rate moves the output further as $r$ grows, and every rank would need its own learning
  rate. Dividing by $r$ takes that growth out, so α and the learning rate can stay fixed while you
  sweep $r$: the paper set α once and never tuned it (section 4.1). rsLoRA (Kalajdzievski, 2023)
  proved that for learning to stay stable as $r$ grows, the scale must shrink like $1/\sqrt{r}$, not
  $1/r$: an order of growth for large ranks, not an exact factor. α/r shrinks the update too fast,
  so large ranks learn slowly and their extra capacity is wasted; with α/√r (`use_rslora=True`)
  higher ranks then give better results. The measurement below shows all three.

**Exercise 5.1.** In `LoRALinear.__init__`, set `self.scaling` (α/r, or α/√r with `use_rslora`),
create `self.lora_A` (r, in) with Kaiming-uniform init and `self.lora_B` (out, r) of zeros, both as
`nn.Parameter` with the `factory` dtype and device."""),
    ("code", r"""check("5.1")"""),
    ("md", r"""
**Exercise 5.2.** Write `LoRALinear.forward(x)`: `base_layer(x)` plus the low-rank path
`(dropout(x) @ A^T @ B^T) * scaling`. Multiply `x` by $A^T$ first: $(x A^T) B^T$ costs
$r(\text{in}+\text{out})$ per token, while building $BA$ would cost in × out. Dropout, when set, acts
on the input of the LoRA path only. While `self.merged` is true, return `base_layer(x)` alone (the
update is then inside $W$ already). Mind the dtypes: the factors train in float32 even when the base
layer is bf16 or fp16 (`adapter_dtype`: low-precision factors would lose small updates), so cast the
LoRA path's input to `self.lora_A.dtype` and its result back to the dtype of `base_layer(x)`; a
test runs your forward on a bf16 base layer."""),
    ("code", r"""check("5.2")"""),
    ("md", r"""
The claims of the constructor, checked on a layer of SmolLM2's width: the new layer equals the base
layer exactly, and in the first backward pass only $B$ gets a gradient."""),
    ("code", r"""
torch.manual_seed(0)
layer = lora.LoRALinear(nn.Linear(576, 576), r=8, alpha=16)
x = torch.randn(4, 576)                                   # (B, D)
print("equal to the base layer at init:", torch.equal(layer(x), layer.base_layer(x)))
layer(x).pow(2).mean().backward()
print(f"largest |grad| of A: {layer.lora_A.grad.abs().max():.2e}   (B = 0 blocks it)")
print(f"largest |grad| of B: {layer.lora_B.grad.abs().max():.2e}")"""),
    ("md", r"""
And the scale, measured: one Adam step on a fresh LoRA layer (only $B$ moves in it, since $B = 0$
blocks $A$'s gradient), for several ranks, and how far it moves the layer's output. A flat line
means a learning rate that suits one rank suits them all."""),
    ("code", r"""
def first_step_change(r, alpha, use_rslora=False, lr=1e-3):
    torch.manual_seed(0)
    layer = lora.LoRALinear(nn.Linear(576, 576), r=r, alpha=alpha, use_rslora=use_rslora)
    x, target = torch.randn(64, 576), torch.randn(64, 576)    # (B, D)
    before = layer(x).detach()
    opt = torch.optim.Adam([layer.lora_A, layer.lora_B], lr=lr)
    (layer(x) - target).pow(2).mean().backward()
    opt.step()
    return (layer(x) - before).norm().item() / before.norm().item()

ranks = [1, 2, 4, 8, 16, 32, 64]
fig = viz.sweep({"no scale (scale 1)": (ranks, [first_step_change(r, r) for r in ranks]),
                 "alpha / r (LoRA)": (ranks, [first_step_change(r, 16) for r in ranks]),
                 "alpha / sqrt(r) (rsLoRA)": (ranks, [first_step_change(r, 16, True) for r in ranks])},
                x_label="rank r", y_label="relative change of the output", logx=True,
                title="How far one Adam step moves the layer (alpha = 16)")
fig.axes[0].set_yscale("log")
fig"""),
    ("md", r"""
Read the slopes. Without a scale the step grows with the rank, roughly like √r (the $r$ terms add
up like a random walk); α/r shrinks it at about the same pace, 1/√r; α/√r keeps it level. So α/r
does keep one learning rate in the right range for every rank (nothing blows up as $r$ grows), at the
price that large ranks start slower: that is rsLoRA's point, and `use_rslora=True` is the remedy when
you sweep to large ranks."""),
    ("md", r"""
## 2. The update as a matrix, and merging it away

**Exercise 5.3.** Write `LoRALinear.delta_weight()`: the matrix the adapter adds to the base weight,
`(B @ A) * scaling`, shape (out, in), for either layer type.

**Exercise 5.4.** Write `LoRALinear.merge()`: add `delta_weight()` into the base weight, in place,
and set `self.merged = True`. `labs.surgery.linear_weight(self.base_layer)` is an (out, in) *view* of
the stored weight, so an in-place `+=` on it reaches a `Conv1D`'s transposed storage too. Merging a
merged layer must do nothing (the update must never be added twice).

**Exercise 5.5.** Write `LoRALinear.unmerge()`: the inverse, a no-op on an unmerged layer."""),
    ("code", r"""check("5.3")"""),
    ("code", r"""check("5.4")"""),
    ("code", r"""check("5.5")"""),
    ("code", r"""
with torch.no_grad():
    layer.lora_B.normal_(std=0.02)                    # pretend training moved B
delta = layer.delta_weight()                          # (out, in)
print("delta_weight:", tuple(delta.shape), " rank:", torch.linalg.matrix_rank(delta).item())
unmerged = layer(x)
layer.merge()
print("merged output equals unmerged:", torch.allclose(layer(x), unmerged, atol=1e-5))
layer.unmerge()"""),
    ("md", r"""
## 3. Into a model: `apply`

`apply(model, config)` finds the target layers by name with `labs.surgery.match_names`, swaps
each for a `LoRALinear` around it with `labs.surgery.replace_modules`, leaves only `lora_A` /
`lora_B` trainable (`mark_only_lora_as_trainable`), and records what it did with
`labs.surgery.mark_adapted` (which also refuses a second adapter on the same model). Without
`target_modules`, the config picks the usual targets of the family: `q_proj, v_proj` in Llama-style
models (the paper adapted the query and value projections), `query, value` in BERT, `c_attn` in GPT-2.

**Exercise 5.6.** Write the body of `apply` (after the lines that resolve the default targets). The
tests match two error messages, which these helpers write for you: for a target that matches no layer
the message must contain the names of the layers that do exist, such as `q_proj` (`replace_modules`
lists them); for a second `apply` it must contain 'already' (`refuse_second_adapter`, once
`mark_adapted` has recorded the first)."""),
    ("code", r"""check("5.6")"""),
    ("code", r"""
model, tok = load_model("smollm2-135m")
task = get_task("define")
train_ex = load_examples("define", "train", n=preset.n_train)
eval_ex = load_examples("define", "validation", n=preset.n_eval)
prompt_ids = tok(" ".join(e["response"] for e in eval_ex), return_tensors="pt").input_ids[:, :64]  # (1, T)

base = copy.deepcopy(model)                 # an untouched copy, for comparisons and sweeps
with torch.no_grad():
    base_logits = model(prompt_ids).logits
lora.apply(model, lora.LoRAConfig(r=8, alpha=16))
print(count_parameters(model))
with torch.no_grad():
    print("adapted model equals the base at init:", torch.equal(model(prompt_ids).logits, base_logits))
print(model.model.layers[0].self_attn)"""),
    ("md", r"""
## 4. A real fine-tune: teaching SmolLM2 to define words

The `define` task: `Define the word "X".` → the first WordNet gloss of X. The instruct model can
already talk about words, but not in WordNet's terse style. We measure the held-out loss (per
response token, prompt masked out) and look at a few answers, before and after."""),
    ("code", r"""
def heldout(m):
    return eval_loss(m, tok, task, eval_ex, preset.seq_len, preset.batch_size)

shown = eval_ex[:3]
before = {"loss": heldout(base)}
before_text = generate(base, tok, [e["prompt"] for e in shown], max_new_tokens=24)
cfg = TrainConfig(lr=learning_rate("lora", preset), max_steps=preset.max_steps, grad_accum=preset.grad_accum)
history = train(model, batches(train_ex, tok, task, preset.seq_len, preset.batch_size, epochs=None), cfg)
after = {"loss": heldout(model)}
after_text = generate(model, tok, [e["prompt"] for e in shown], max_new_tokens=24)
print(f"held-out loss {before['loss']:.3f} -> {after['loss']:.3f}; "
      f"{history.step_time_median:.2f} s per step (median)")"""),
    ("code", r"""viz.loss_curves({"LoRA r=8, q and v": history}, smooth=3)"""),
    ("code", r"""
for e, b, a in zip(shown, before_text, after_text):
    print(f"{e['prompt']}\n  WordNet: {e['response']}\n  before:  {b}\n  after:   {a}\n")"""),
    ("md", r"""
## 5. Merge: zero added latency

Unmerged, every adapted layer does two extra small matrix products per token. Merged, the update
lives inside $W$ and the model is the base architecture again: `merge_and_unload` even puts the
plain `nn.Linear` layers back. Where does the unmerged cost show? Not in one big forward pass over a
long prompt, where the large products of the frozen layers dwarf the thin LoRA ones, but in
generation token by token at batch 1, where every step is a chain of small products and each extra
one weighs most. We time both at batch 1, the three models taking turns call by call
(`labs.timing`: median wall time, the clock every notebook of the course uses)."""),
    ("code", r"""
merged = lora.merge_and_unload(copy.deepcopy(model))
with torch.no_grad():
    print("merged logits equal unmerged:", torch.allclose(merged(prompt_ids).logits, model(prompt_ids).logits, atol=1e-4))
print("plain layers again:", type(merged.model.layers[0].self_attn.q_proj).__name__)

variants = {"base": base.eval(), "LoRA unmerged": model.eval(), "LoRA merged": merged.eval()}
short_prompt = prompt_ids[:, :8]                                            # (1, 8)
new_tokens = 8

def generate_greedy(m):  # 8 decoding steps, one token each, batch 1
    m.generate(input_ids=short_prompt, attention_mask=torch.ones_like(short_prompt), do_sample=False,
               max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=tok.pad_token_id or 0)

with torch.inference_mode():
    latency = {
        f"forward, 1 x {prompt_ids.shape[1]} tokens": interleaved_medians(
            {n: (lambda m=m: m(prompt_ids)) for n, m in variants.items()}, repeats=5),
        f"generate {new_tokens} tokens, batch 1": interleaved_medians(
            {n: (lambda m=m: generate_greedy(m)) for n, m in variants.items()}, repeats=4),
    }
for what, seconds in latency.items():
    print(f"{what}: " + "   ".join(f"{n} {1e3 * t:.0f} ms ({t / seconds['base']:.2f}x)" for n, t in seconds.items()))

# The work itself, which no busy machine can blur: matrix products for one new token (batch 1).
with torch.inference_mode():
    products = {n: count_matrix_products(lambda m=m: m(short_prompt[:, :1])) for n, m in variants.items()}
print("matrix products per token: " + "   ".join(f"{n} {k}" for n, k in products.items()))"""),
    ("code", r"""
viz.ratio_bars(latency)"""),
    ("md", r"""
Read the panels with the count of matrix products beside them. Merged, the model does exactly the
base model's products: it *is* the base architecture, and any difference in its bars is the noise
of the machine. Unmerged, every adapted layer adds two thin products per token (60 layers here: q
and v in 30 blocks, so 120 more than the base's count). Each is tiny in arithmetic, but at batch 1
and one token per step a product's fixed cost (a kernel launch on a GPU, a dispatch on a CPU)
weighs as much as its arithmetic: on a quiet machine the benchmark in the instructor's repository
measured 1.13x the base for unmerged LoRA when generating and 0.97x merged (`python
benchmarks/lora_vs_peft.py`), the LoRA paper 20-30% for adapters on a GPU (their Table 1). On a
busy shared CPU, as in CI, a few percent drown in noise, which is why the count is printed too.
Serving one adapter, merge it; serving many adapters from one base (notebook 10), keep them
unmerged and pay that small cost."""),
    ("md", r"""
## 6. How much rank? Which layers?

Does a rank-16 update, 16 times the numbers, learn this task better than rank 1? After a handful
of steps every setting is still on the steep first part of its curve, and "rank barely matters"
looks the same as "too short to tell". So: few settings, runs long enough to learn, and a test that
says whether a difference is real. Each run is a fresh copy of the base trained with the same
learning rate, data and number of steps, scored along the way on the same held-out examples. α
stays 16 throughout: the α/r scale is what lets every rank use the same learning rate. In quick
mode each run takes 12 steps of 4 examples (half the batch of section 4), to fit the quick budget.

Two models scored on the *same* examples can be compared pair by pair: example by example, the
difference of their losses. A hard example is hard for both, so pairing cancels what the examples
share, and the mean difference gets a standard error (SE) of its own: `paired_difference` in
`labs.evaluate`. A gap of more than two SEs would rarely come from the choice of examples alone.
(It says nothing about the other chance in a run, the seed of the initial factors and data order:
the `laptop` preset's longer runs are the check on that.)"""),
    ("code", r"""
from labs.evaluate import example_losses, paired_difference

quick = preset.name == "quick"
sweep_steps = preset.side_run_steps   # a sweep's runs are side runs: 12 steps of 4 rows in the quick preset
sweep_batch = preset.side_run_batch
sweep_eval = eval_ex[:48] if quick else eval_ex

def scored(m):  # each held-out example's own loss, per response token
    return example_losses(m, tok, task, sweep_eval, preset.seq_len, preset.batch_size)

base_losses = scored(base)
base_loss = sum(base_losses) / len(base_losses)

def lora_run(r, targets):
    # A fresh copy of the base with LoRA of rank r on `targets`, trained, scored at 3 checkpoints.
    torch.manual_seed(0)
    m = lora.apply(copy.deepcopy(base), lora.LoRAConfig(r=r, alpha=16, target_modules=targets))
    history = train(m, batches(train_ex, tok, task, preset.seq_len, sweep_batch, epochs=None),
                    TrainConfig(lr=learning_rate("lora", preset), max_steps=sweep_steps, eval_every=sweep_steps // 2),
                    eval_fn=lambda m: {"losses": scored(m)}, progress=False)
    steps = [0] + [step for step, _ in history.evals]
    losses = [base_losses] + [metrics["losses"] for _, metrics in history.evals]
    return {"trainable": count_parameters(m).trainable, "steps": steps,
            "mean": [sum(l) / len(l) for l in losses], "final": losses[-1]}

def show(runs, title):
    for name, run in runs.items():
        print(f"{name:<20} {run['trainable']:>9,} trainable   mean held-out loss "
              + "   ".join(f"{loss:.3f} (step {step})" for step, loss in zip(run["steps"], run["mean"])))
    fig = viz.sweep({f"{name}, {run['trainable']:,} trainable": (run["steps"], run["mean"])
                     for name, run in runs.items()}, x_label="optimizer step", y_label="mean held-out loss", title=title)
    fig.axes[0].set_xticks(next(iter(runs.values()))["steps"])
    return fig

def verdict(a_name, a, b_name, b):
    # Paired over the same held-out examples: negative means run a ended with the lower loss.
    diff, se = paired_difference(a["final"], b["final"])
    told = (f"{a_name if diff < 0 else b_name} ended lower, by {abs(diff) / se:.1f} standard errors"
            if abs(diff) > 2 * se else "cannot be told apart: the gap is within two standard errors")
    print(f"{a_name} minus {b_name}: {diff:+.3f} ± {se:.3f} (paired over {len(a['final'])} examples) -> {told}")

QV = ("q_proj", "v_proj")
by_rank = {"r = 1 on q, v": lora_run(1, QV), "r = 16 on q, v": lora_run(16, QV)}
show(by_rank, f"Rank 1 against rank 16, {len(sweep_eval)} held-out examples")"""),
    ("code", r"""
r1, r16 = by_rank.values()
print(f"both runs learned: mean held-out loss {base_loss:.2f} -> {r1['mean'][-1]:.2f} (r = 1) "
      f"and {r16['mean'][-1]:.2f} (r = 16)")
verdict("r = 1", r1, "r = 16", r16)"""),
    ("md", r"""
Both runs learned (the first line above), so the comparison is not two runs stopped at their start.
Rank 16 has sixteen times the trainable numbers of rank 1; the second line says, computed on this
run, what they bought. A gap within two standard errors, or a small one beside the loss both runs
shed, is what "rank barely matters" looks like: the update this task needs fits in very few
directions, the low-intrinsic-rank observation again, and the reason small ranks such as 8 are the
usual default. (Hu et al., Table 6, saw the same on GPT-3: rank 1 on $W_q$ and $W_v$ came close to
rank 64.)

Which layers, then? In SmolLM2, rank 16 on q and v trains 921,600 numbers, and rank 8 on q, k, v
and o trains exactly as many (k and v are 192 wide, not 576, under grouped-query attention: per layer
16 × (1,152 + 768) = 8 × (1,152 + 768 + 768 + 1,152) = 30,720). The same budget, spent two ways:
**that is the point of this comparison**, so both runs share one plot, and the assert below checks
that the two budgets really are equal. (The `laptop` and `gpu` presets add a third way, rank 3 on
every linear layer, 915,840 numbers; quick mode leaves it out to stay within its time.)"""),
    ("code", r"""
same_budget = {"r = 16 on q, v": r16, "r = 8 on q, k, v, o": lora_run(8, ("q_proj", "k_proj", "v_proj", "o_proj"))}
if not quick:
    same_budget["r = 3 on all linear"] = lora_run(3, ("all-linear",))
assert same_budget["r = 16 on q, v"]["trainable"] == same_budget["r = 8 on q, k, v, o"]["trainable"] == 921_600
verdict("r = 8 on q, k, v, o", same_budget["r = 8 on q, k, v, o"], "r = 16 on q, v", r16)
show(same_budget, "One budget of 921,600 numbers, spent on different layers")"""),
    ("md", r"""
Read the verdict above before the paper. Hu et al. found that, for one budget, adapting more kinds
of layers at a lower rank does at least as well as a higher rank on fewer (section 7.1, Table 5: on
GPT-3, rank 4 on $W_q$ and $W_v$ beat rank 8 on $W_q$ alone, and rank 2 on all four projections did
as well or better), and the QLoRA paper found adapting every linear layer necessary to match full
fine-tuning. If the verdict here is "cannot be told apart", that is an honest result, not a
failure: 12 steps are too few to separate them, and `LABS_PRESET=laptop` (120 steps of full
batches, all held-out examples, and the third layout) is the run to make before concluding. The
lesson either way: the rank is cheap to keep small, and when the budget is fixed, where you spend
it is the question worth measuring.

## 7. Ours against peft, measured here

Hugging Face peft is the production LoRA. Does ours cost more? The same base, rank, α, targets
(q, k, v, o) and the *same* initial factors (B made non-zero, as after training, so the LoRA path
does real work), the same batch, one AdamW step each, timed in turns. First the two must agree:
the same loss on the same batch."""),
    ("code", r"""
import peft

del merged, variants
targets = ("q_proj", "k_proj", "v_proj", "o_proj")
ours = lora.apply(copy.deepcopy(base), lora.LoRAConfig(r=8, alpha=16, target_modules=targets))
theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                                                   target_modules=list(targets), task_type="CAUSAL_LM"))
with torch.no_grad():
    for name, layer in lora.lora_layers(ours):
        layer.lora_B.normal_(std=1e-3, generator=torch.Generator().manual_seed(2))
        twin = theirs.base_model.model.get_submodule(name)
        twin.lora_A["default"].weight.copy_(layer.lora_A)
        twin.lora_B["default"].weight.copy_(layer.lora_B)
batch = next(batches(train_ex, tok, task, preset.seq_len, 4, epochs=None))      # (B=4, T)

def training_step(m):
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
    def step():
        loss = m(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()
    return step

steps = {"ours": training_step(ours.train()), "peft": training_step(theirs.train())}
with torch.no_grad():
    first = {name: m(**batch).loss.item() for name, m in (("ours", ours), ("peft", theirs))}
print(f"loss before any step: ours {first['ours']:.6f}, peft {first['peft']:.6f}")
step_seconds = interleaved_medians(steps, repeats=3)
print(f"training step, batch 4 x {batch['input_ids'].shape[1]}, median of 3: ours {step_seconds['ours']:.2f} s, "
      f"peft {step_seconds['peft']:.2f} s, ours / peft = {step_seconds['ours'] / step_seconds['peft']:.2f}")
print(f"trainable: ours {count_parameters(ours).trainable:,}, "
      f"peft {sum(p.numel() for p in theirs.parameters() if p.requires_grad):,}")
del ours, theirs, steps"""),
    ("md", r"""
Three repetitions on a shared CPU are a small sample: a ratio within about 10% of 1.00 says the
two train at the same speed. The longer benchmark in the instructor's repository
(`python benchmarks/lora_vs_peft.py --threads 1 --reps 6`, batch 8 x 128, also measuring peak
memory) found 0.99 for both step time and training memory on a 2-core CPU. The tests
(`tests/test_ex_lora.py`) check the other half of the comparison: adapters saved here load in peft
with the same logits and back, and one training step gives the same loss and gradients.

## Summary

| idea | where |
|---|---|
| $h = Wx + \frac{\alpha}{r} BAx$, $W$ frozen | `LoRALinear.forward` (5.2) |
| B = 0, A random: starts as the base model, and both factors learn | `LoRALinear.__init__` (5.1) |
| α/r: compare ranks without retuning the learning rate | `scaling` (5.1), the first-step plot |
| merge: $W \leftarrow W + \frac{\alpha}{r} BA$, zero added latency | `delta_weight`, `merge`, `unmerge` (5.3-5.5) |
| inject by name, train only the factors | `apply` (5.6) |
| the PEFT file format, both ways | `lora.to_peft` / `from_peft`, `labs.save_adapter` / `load_adapter` (notebook 10) |

Next, notebook 06 leaves the weights alone and adapts the *activations*: prefix tuning."""),
]


if __name__ == "__main__":
    main(CELLS, "lora", OUT)
