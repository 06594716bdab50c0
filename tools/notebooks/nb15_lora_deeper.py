"""Build notebooks/15_lora_deeper.ipynb (committed without outputs).

    python tools/notebooks/nb15_lora_deeper.py
"""
from __future__ import annotations

from nbtools import ROOT, main

OUT = ROOT / "notebooks" / "15_lora_deeper.ipynb"

CELLS = [
    ("md", r"""
# 15 · LoRA, deeper: rsLoRA, LoRA+, PiSSA and DoRA

Notebook 05 built LoRA: $h = Wx + s\,BAx$ with $s = \alpha/r$, $B = 0$ at the start and one learning
rate. What you meet next, in peft's options and in the notebooks of Unsloth or LLaMA-Factory, is a
family of changes to it. Each of the four that appear most changes exactly **one** of those choices:

| variant | paper | what it changes | peft option |
|---|---|---|---|
| rsLoRA | Kalajdzievski 2023 | the scale: $s = \alpha/\sqrt r$ | `use_rslora=True` |
| LoRA+ | Hayou et al. 2024 | the learning rates: $B$ learns $\lambda$ times faster than $A$ | `create_loraplus_optimizer` |
| PiSSA | Meng et al. 2024 | the start: $A, B$ from the top-$r$ singular vectors of $W$ | `init_lora_weights="pissa"` |
| DoRA | Liu et al. 2024 | the update: a trained length per row times a direction | `use_dora=True` |

You write each one in `labs/lora_variants.py` (six short exercises, on top of your `labs/lora.py`),
check that the adapters you save load in Hugging Face peft (and theirs here) with the same logits,
then **measure** each claim on SmolLM2-135M and the `define` task. Every comparison trains fresh
copies of the same base on the same batches and scores them on the same held-out definitions, so the
difference of two runs gets a paired standard error (notebook 05, section 6): where the gap is within
two standard errors the verdict says so. peft's own benchmark found rsLoRA the best LoRA setting and
DoRA no better at more memory and time; here you see what this budget can tell."""),
    ("code", r"""
import ast
import copy
import inspect
import textwrap

import torch

from labs import viz
from labs.check import check
from labs.data import batches
from labs.impl import technique
from labs.lora_experiments import ALL_LINEAR, QV, equal_budget_rank, make_setup, run_variant, verdict
from labs.prerequisites import prerequisites
from labs.presets import get_preset
from labs.timing import interleaved_medians

prerequisites({"every experiment (your LoRA from notebook 05)": ["lora"],
               "section 1, rsLoRA's scale": ["15.1"], "section 2, LoRA+": ["15.2"],
               "section 3, PiSSA": ["15.3-15.4"], "section 4, DoRA": ["15.5-15.6"]})
lora, variants = technique("lora"), technique("lora_variants")   # your modules (or the reference)
preset = get_preset()
quick = preset.name == "quick"
# quick: 8 steps of 4 rows per run and 32 held-out definitions, so that the ten runs fit a live session
setup = make_setup("smollm2-135m", "define", preset, n_eval=32 if quick else None, steps=8 if quick else None)
R, ALPHA = 16, 16     # the reference run: LoRA r=16 on q, v with alpha 16 (s = 1)
print(f"preset {preset.name}: each run {setup.steps} steps of {setup.batch_size} rows x {preset.seq_len} tokens, "
      f"scored on {len(setup.eval_examples)} held-out definitions")"""),
    ("md", r"""
Every run below is `run_variant(setup, name, **LoRAConfig fields)` from `labs.lora_experiments`: a
fresh copy of the base, your `lora.apply`, the course's training loop, then each held-out example's
loss. The **gain** is the mean held-out loss of the base minus the run's (positive: it learned), with
its paired SE. First the reference run every variant is held against."""),
    ("code", r"""
%%needs lora
runs = {}
runs["LoRA"] = run_variant(setup, "LoRA", r=R, alpha=ALPHA, target_modules=QV, measure_memory=True)
ref = runs["LoRA"]
print(f"LoRA r={R} on q, v: {ref.trainable:,} trainable, gain {ref.gain:+.3f} ± {ref.gain_se:.3f}, "
      f"{ref.step_time:.2f} s per step")"""),
    ("md", r"""
## 1. rsLoRA: the scale at large rank

LoRA multiplies its update by $s = \alpha/r$ so that a learning rate tuned at one rank works at
another. The argument assumed the update $BA$ grows like $r$. It does not: after training, $BA$ is
like a sum of $r$ rank-one terms pointing in different directions, whose size grows like $\sqrt r$.
Divided by $r$, the update *shrinks* like $1/\sqrt r$: at $r = 256$ it is 16 times smaller than at
$r = 1$ for the same $\alpha$, and large ranks learn slowly ("stall"). Kalajdzievski (2023) proves
that $s = \alpha/\sqrt r$ is the scale that keeps both the update and its gradients stable as $r$
grows, so a larger rank can actually use its extra capacity.

**Exercise 15.1.** Write `rslora_scaling(alpha, r)`. (Your `LoRALinear` already has the flag,
exercise 5.1; this function is the rule on its own, and the test checks the claim above.)"""),
    ("code", r"""check("15.1")"""),
    ("code", r"""
%%needs 15.1
ranks = [1, 4, 16, 64, 256]
fig = viz.sweep({"alpha / r": (ranks, [ALPHA / r for r in ranks]),
                 "alpha / sqrt(r) (rsLoRA)": (ranks, [variants.rslora_scaling(ALPHA, r) for r in ranks])},
                x_label="rank r", y_label="scale s", title=f"The scale at alpha = {ALPHA}", logx=True)
fig.axes[0].set_yscale("log")
fig"""),
    ("md", r"""
The experiment: at fixed $\alpha = 16$, LoRA at ranks 4, 16 and 64 against rsLoRA at rank 64 (the
recording, `benchmarks/lora_variants.py`, runs ranks 4 to 256 for both). Beside the gain we print the
size of what training added to the weights, $\sqrt{\sum_\ell \|\Delta W_\ell\|_F^2}$."""),
    ("code", r"""
%%needs lora
for r in (4, 64):
    runs[f"LoRA r={r}"] = run_variant(setup, f"LoRA r={r}", r=r, alpha=ALPHA, target_modules=QV)
runs["rsLoRA r=64"] = run_variant(setup, "rsLoRA r=64", r=64, alpha=ALPHA, target_modules=QV, use_rslora=True)
by_rank = {4: runs["LoRA r=4"], 16: ref, 64: runs["LoRA r=64"]}
for r, run in by_rank.items():
    print(f"LoRA   r={r:<3} s={ALPHA / r:<5g} gain {run.gain:+.3f} ± {run.gain_se:.3f}   update norm {run.update_norm:.3f}")
rs = runs["rsLoRA r=64"]
print(f"rsLoRA r=64  s={ALPHA / 8:<5g} gain {rs.gain:+.3f} ± {rs.gain_se:.3f}   update norm {rs.update_norm:.3f}")
_, _, said = verdict(rs, runs["LoRA r=64"])
print("at r = 64, rsLoRA against LoRA:", said)
_, _, said = verdict(runs["LoRA r=64"], runs["LoRA r=4"])
print("LoRA, r = 64 against r = 4:", said)"""),
    ("code", r"""
%%needs lora
fig, (gain_ax, norm_ax) = viz.new_figure(10, 3.6, ncols=2)
rs_r = list(by_rank)
gain_ax.errorbar(rs_r, [by_rank[r].gain for r in rs_r], yerr=[2 * by_rank[r].gain_se for r in rs_r],
                 marker="o", capsize=3, label="LoRA (alpha / r)")
gain_ax.errorbar([64], [rs.gain], yerr=[2 * rs.gain_se], marker="s", capsize=3, label="rsLoRA (alpha / sqrt r)")
norm_ax.plot(rs_r, [by_rank[r].update_norm for r in rs_r], marker="o", label="LoRA (alpha / r)")
norm_ax.plot([64], [rs.update_norm], marker="s", label="rsLoRA")
for ax, label in ((gain_ax, "held-out gain (± 2 SE)"), (norm_ax, "size of the update")):
    ax.set(xscale="log", xlabel="rank r", ylabel=label)
    ax.legend()
fig"""),
    ("md", r"""
Read the right panel first: with $\alpha/r$ the update that the same number of steps produces gets
smaller as the rank grows, the stall rsLoRA's paper describes; rsLoRA at r = 64 adds a much larger one.
The left panel says what that did to the held-out loss at this budget: compare the printed verdicts.
A short run at a tuned learning rate is forgiving (AdamW's steps have a fixed size whatever the scale
of the gradient, so a small $s$ is partly undone by the optimiser); the longer recording is the check."""),
    ("md", r"""
## 2. LoRA+: two learning rates

$B$ starts at zero and $A$ at random. The gradient of $B$ is (error) $\times\, Ax$, of $A$ it is
$B^\top \times$ (error): in a wide layer they have very different natural sizes, and Hayou et al.
(2024) show that one learning rate for both is inefficient; $B$ should learn $\lambda$ times faster
($\lambda = 16$ in most of their runs). Nothing else changes: the model, the file, the cost.

**Exercise 15.2.** Write `loraplus_param_groups(model, lr, ratio)`: two optimizer parameter groups,
the `lora_B` factors (and, as in peft, any trainable 1-D tensor) at `lr * ratio`, the other trainable
parameters at `lr`. `labs finetune --method lora --option loraplus_ratio=16` uses it through
`mark_loraplus`, which tags each parameter with its group's multiplier for the training loop."""),
    ("code", r"""check("15.2")"""),
    ("code", r"""
%%needs lora 15.2
for ratio in (4, 16):
    runs[f"LoRA+ λ={ratio}"] = run_variant(setup, f"LoRA+ λ={ratio}", r=R, alpha=ALPHA, target_modules=QV,
                                           loraplus_ratio=float(ratio))
print(f"λ=1  (LoRA) gain {ref.gain:+.3f} ± {ref.gain_se:.3f}")
for ratio in (4, 16):
    run = runs[f"LoRA+ λ={ratio}"]
    _, _, said = verdict(run, ref)
    print(f"λ={ratio:<3} gain {run.gain:+.3f} ± {run.gain_se:.3f}   against LoRA: {said}")"""),
    ("md", r"""
## 3. PiSSA: start from what matters in $W$

LoRA starts with $BA = 0$: the first steps are spent finding directions worth moving. PiSSA (Meng et
al. 2024) starts $A$ and $B$ from the **principal** part of $W$ itself. With the singular value
decomposition $W = U S V^\top$ and its top $r$ triples,

$$A = \sqrt{S_r / s}\; V_r^\top, \qquad B = U_r \sqrt{S_r / s}, \qquad W_{\text{res}} = W - s\,BA,$$

the frozen weight becomes the residual $W_{\text{res}}$ (the small singular values) and the model
still computes $W_{\text{res}} + s\,BA = W$ at the start. Training now moves the directions in which
$W$ is largest. The paper's claim: faster convergence and a better result than LoRA at the same rank.

**Exercise 15.3.** Write `principal_factors(weight, r, scaling, niter)`: the SVD in float32
(`torch.linalg.svd`, or `torch.svd_lowrank` with `niter` subspace iterations), the top $r$, and the
split of $S_r/s$ above.

**Exercise 15.4.** Write `pissa_init(layer, niter)`: copy the factors into the layer and write the
residual into the base weight, in place, in its own dtype."""),
    ("code", r"""check("15.3")"""),
    ("code", r"""check("15.4")"""),
    ("code", r"""
%%needs lora 15.3-15.4
runs["PiSSA"] = run_variant(setup, "PiSSA", r=R, alpha=ALPHA, target_modules=QV, init="pissa", keep_model=True)
pissa = runs["PiSSA"]
_, _, said = verdict(pissa, ref)
print(f"PiSSA gain {pissa.gain:+.3f} ± {pissa.gain_se:.3f} (LoRA {ref.gain:+.3f}): {said}")
first = min(6, setup.steps)
print(f"training loss, first {first} steps:\n  LoRA  " + " ".join(f"{x:.2f}" for x in ref.losses[:first])
      + "\n  PiSSA " + " ".join(f"{x:.2f}" for x in pissa.losses[:first]))
fig, (ax,) = viz.new_figure(7, 3.6)
for run in (ref, pissa):
    ax.plot(range(1, len(run.losses) + 1), run.losses, marker=".", label=run.name)
ax.set(xlabel="optimizer step", ylabel="training loss (same batches)", title="The first steps")
ax.legend()
fig"""),
    ("md", r"""
Both runs see the same batches in the same order, so step by step their training losses are paired
too; the held-out verdict above is the one to trust.

### Sharing a PiSSA adapter: rank $2r$

A PiSSA adapter only works on $W_{\text{res}}$, and nobody else has $W_{\text{res}}$: they have $W$.
After training the model computes $W_{\text{res}} + s\,BA$, so relative to $W$ the change is

$$W_{\text{res}} + s\,BA - W = s\,BA - s\,B_0A_0 = s\,[\,B \mid -B_0\,]\begin{bmatrix}A\\ A_0\end{bmatrix},$$

a product of an (out, 2r) and a (2r, in) matrix: a **plain LoRA adapter of rank $2r$** on the original
$W$. No rank-$r$ adapter can equal it in general ($BA$ and $B_0A_0$ span different subspaces); the
scale stays $s$, so $\alpha$ doubles. `lora_variants.save_as_lora` writes it; peft does the same with
`save_pretrained(..., path_initial_model_for_weight_conversion=...)`. Checked on the run above: the
converted adapter on the untouched base reproduces the fine-tuned model."""),
    ("code", r"""
%%needs lora 15.3-15.4
from labs.files import scratch_folder
from labs.peft_format import load_adapter, read_adapter

folder = scratch_folder("nb15-")
variants.save_as_lora(pissa.model, folder / "pissa-as-lora")
config, tensors = read_adapter(folder / "pissa-as-lora")
shared = load_adapter(copy.deepcopy(setup.base), folder / "pissa-as-lora")   # the ORIGINAL base weights
prompt = setup.tokenizer('Define the word "lantern".', return_tensors="pt").input_ids   # (1, T)
with torch.no_grad():
    diff = (shared(prompt).logits - pissa.model(prompt).logits).abs().max().item()
print(f"saved as LoRA of rank {config['r']} (trained at r={R}), alpha {config['lora_alpha']}; "
      f"on the original base, max |logit difference| = {diff:.1e} (float32 rounding)")
del shared"""),
    ("md", r"""
## 4. DoRA: length and direction

Every row $w$ of a weight matrix is a length $\|w\|$ times a direction $w/\|w\|$. Liu et al. (2024)
found that full fine-tuning often changes the two in opposite ways, which LoRA cannot do, and
proposed learning them separately: a trained magnitude $m$ (one number per output row) and LoRA on
the direction,

$$W' = m \odot \frac{W + s\,BA}{\|W + s\,BA\|_{\text{row}}}, \qquad m_0 = \|W\|_{\text{row}} \;\Rightarrow\; W'_0 = W.$$

The norm is treated as a constant in the backward (detached), as the paper suggests, which saves
memory. The forward never builds $W'$: with $\text{scale} = m / \|W + s\,BA\|$ and $y = Wx$,
$W'x = \text{scale}\cdot y + \text{scale}\cdot s\,BAx$, so the layer adds $(\text{scale} - 1)\,y +
\text{scale}\cdot s\,BAx$ to the base output. But it does compute the norm, which needs $W + s\,BA$
(out × in) for every adapted layer on every step: that is DoRA's cost.

**Exercise 15.5.** Write `DoRALinear.weight_norm()`: $\|W + s\,BA\|$ per output row. The
constructor sets $m$ from it.

**Exercise 15.6.** Write `DoRALinear.forward(x)` as above."""),
    ("code", r"""check("15.5")"""),
    ("code", r"""check("15.6")"""),
    ("code", r"""
%%needs lora 15.5-15.6
runs["DoRA"] = run_variant(setup, "DoRA", r=R, alpha=ALPHA, target_modules=QV, use_dora=True, measure_memory=True)
dora = runs["DoRA"]
_, _, said = verdict(dora, ref)
print(f"DoRA gain {dora.gain:+.3f} ± {dora.gain_se:.3f} (LoRA {ref.gain:+.3f}): {said}")
print(f"trainable: LoRA {ref.trainable:,}, DoRA {dora.trainable:,} (+ one magnitude per output row)")
if ref.peak_bytes and dora.peak_bytes:
    print(f"peak memory of a training step: LoRA {ref.peak_bytes / 2**20:.0f} MiB, DoRA {dora.peak_bytes / 2**20:.0f} MiB "
          f"({dora.peak_bytes / ref.peak_bytes:.2f}x)")

# Step time, the two models taking turns call by call (labs.timing), on one batch.
models = {name: lora.apply(copy.deepcopy(setup.base), lora.LoRAConfig(r=R, alpha=ALPHA, target_modules=QV, use_dora=d))
          for name, d in (("LoRA", False), ("DoRA", True))}
batch = next(batches(setup.train_examples, setup.tokenizer, setup.task, preset.seq_len, setup.batch_size))

def step(m):
    m(**batch).loss.backward()
    m.zero_grad(set_to_none=True)

step_times = interleaved_medians({name: (lambda m=m: step(m)) for name, m in models.items()}, repeats=3 if quick else 7)
print("forward + backward: " + ", ".join(f"{n} {1e3 * t:.0f} ms" for n, t in step_times.items())
      + f" -> DoRA {step_times['DoRA'] / step_times['LoRA']:.2f}x LoRA")
del models"""),
    ("md", r"""
## 5. Which layers: all linear layers against q, v at the same budget

Notebook 05 adapted q and v, as the LoRA paper did; the QLoRA paper found that adapting every linear
layer of the block was needed to match full fine-tuning. Compared at the same rank that is unfair
(all-linear trains several times more numbers), so here the all-linear run gets the rank at which it
trains about as many numbers as the reference on q, v."""),
    ("code", r"""
%%needs lora
r_all = equal_budget_rank(setup.base, ALL_LINEAR, QV, R)
runs["all-linear"] = run_variant(setup, "all-linear", r=r_all, alpha=ALPHA * r_all / R, target_modules=ALL_LINEAR)
every = runs["all-linear"]
_, _, said = verdict(every, ref)
print(f"q, v at r={R}: {ref.trainable:,} trainable, gain {ref.gain:+.3f} ± {ref.gain_se:.3f}")
print(f"all linear at r={r_all} (same s = {ALPHA / R:g}): {every.trainable:,} trainable, gain {every.gain:+.3f} ± {every.gain_se:.3f}")
print("all-linear against q, v:", said)"""),
    ("md", r"""
## 6. What each variant changed, cost and gained here

The table closes the notebook: the lines of your own implementation (`labs/lora_variants.py`, code
lines of the functions the variant adds), the cost measured here against the reference LoRA run and
the gain against it (mean held-out loss, paired over the same examples, ± SE; positive: better than
LoRA), beside what the variant's paper reports. One seed, a short run on a CPU: a verdict of "cannot
be told apart" means this budget cannot tell, not that the variant does nothing; and a gap that is
many standard errors wide can still be small (the SE of a paired difference shrinks when two runs
move together), so read its size as well as its sign."""),
    ("code", r"""
%%needs lora 15.1-15.6
def code_lines(*functions):
    # lines of code of these functions, as Python reads them: no docstring, no comments, no blank lines
    count = 0
    for fn in functions:
        node = ast.parse(textwrap.dedent(inspect.getsource(fn))).body[0]
        if ast.get_docstring(node):
            node.body = node.body[1:]
        count += len(ast.unparse(node).splitlines())
    return count

CLAIMS = {"rsLoRA r=64": "larger ranks learn better once the scale is alpha / sqrt(r)",
          "LoRA+ λ=16": "up to 2x faster fine-tuning and 1-2% better, at no cost",
          "PiSSA": "faster convergence and better results than LoRA at the same rank",
          "DoRA": "better than LoRA at the same rank (e.g. +3.7 on commonsense reasoning, LLaMA-7B)",
          "all-linear": "adapting every linear layer is needed to match full fine-tuning (QLoRA paper)"}
LINES = {"rsLoRA r=64": code_lines(variants.rslora_scaling),
         "LoRA+ λ=16": code_lines(variants.loraplus_param_groups, variants.mark_loraplus),
         "PiSSA": code_lines(variants.principal_factors, variants.pissa_init),
         "DoRA": code_lines(variants.DoRALinear.__init__, variants.DoRALinear.weight_norm, variants.DoRALinear.forward),
         "all-linear": 0}
cost = {"DoRA": f"step {step_times['DoRA'] / step_times['LoRA']:.2f}x"
                + (f", peak {dora.peak_bytes / ref.peak_bytes:.2f}x" if ref.peak_bytes and dora.peak_bytes else ""),
        "all-linear": f"{every.trainable / ref.trainable:.2f}x the trained numbers"}
print(f"{'variant':<13}{'lines':>6}  {'cost here':<26}{'gain vs LoRA here':<42}paper claims")
for name, claim in CLAIMS.items():
    diff, se, said = verdict(runs[name], ref if name != "rsLoRA r=64" else runs["LoRA r=64"])
    against = "" if name != "rsLoRA r=64" else " (vs LoRA r=64)"
    told = "n.s." if abs(diff) <= 2 * se else ("better" if diff < 0 else "worse")
    print(f"{name:<13}{LINES[name]:>6}  {cost.get(name, 'none'):<26}{f'{-diff:+.3f} ± {se:.3f} {told}{against}':<42}{claim}")"""),
    ("md", r"""
**Reading the table.** "n.s." is the honest answer wherever the paired gap is within two standard
errors: at this budget the variant and LoRA cannot be told apart. The costs are real whatever the
budget: DoRA recomputes a norm of an out × in matrix per adapted layer per step, which shows in the
step time and the peak memory; LoRA+, rsLoRA and PiSSA cost nothing at training time (PiSSA one SVD
per layer at the start, and a rank-$2r$ file to share it). The recording below ran the same
comparisons longer (ranks 4 to 256, 12 steps per run, 64 held-out definitions, one thread):
`python benchmarks/lora_variants.py --preset quick --ranks 4,16,64,256 --out notebooks/recorded/lora-variants-quick`;
`--preset laptop` runs them longer still.
"""),
    ("code", r"""
from pathlib import Path

recorded = Path("recorded/lora-variants-quick/lora_variants.md")
print(recorded.read_text() if recorded.is_file() else f"{recorded} is not recorded yet (see the command above)")"""),
    ("md", r"""
Everything here is also on the command line: `labs finetune --method lora --option use_dora=true`,
`--option init=pissa`, `--option use_rslora=true`, `--option loraplus_ratio=16`; the adapters load in
peft as they are (a PiSSA adapter with `init_lora_weights="pissa"`, or converted with `save_as_lora`)."""),
]

if __name__ == "__main__":
    main(CELLS, "nb15", OUT)
