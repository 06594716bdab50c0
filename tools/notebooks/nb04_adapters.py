"""Build notebooks/04_adapters.ipynb (committed without outputs).

    python tools/notebooks/nb04_adapters.py
"""
from __future__ import annotations

from nbtools import ROOT, main

OUT = ROOT / "notebooks" / "04_adapters.ipynb"

CELLS = [
    ("md", r"""
# 04 · Bottleneck adapters

BitFit (notebook 03) only nudged numbers the model already had. Houlsby et al. (2019), *Parameter-
Efficient Transfer Learning for NLP*, went the other way: leave every pretrained number alone and
**add** small new modules inside each transformer block. Their *adapter* is a two-layer network with
a narrow middle and a skip connection:

$$\text{adapter}(h) = h + W_\text{up}\, f(W_\text{down} h + b_\text{down}) + b_\text{up},
\qquad W_\text{down} \in \mathbb{R}^{m \times D},\; W_\text{up} \in \mathbb{R}^{D \times m},\; m \ll D.$$

It costs $2mD + m + D$ parameters. Houlsby placed two per block, each right after a sublayer's
output projection and before that sublayer's residual add and LayerNorm:

```
          x ──────────────────────────────────────┐
          │                                        │
   [ multi-head attention ] → [ out proj ] → [ ADAPTER ] → (+) → LayerNorm ─┐
                                                                            │
          ┌─────────────────────────────────────────────────────────────────┘
          │──────────────────────────────────────┐
   [ MLP up ] → f → [ MLP down ] → [ ADAPTER ] → (+) → LayerNorm → next block
```

Inside each adapter: `D → m` (adapter_down), non-linearity, `m → D` (adapter_up), plus its own skip.
With GLUE on BERT-large they came within 0.4 points of full fine-tuning (80.0 against 80.4) while
training 3.6% of the parameters per task (their section 3.2, Table 1). Pfeiffer et al. (2021,
*AdapterFusion*) later used one adapter per block, after the MLP only: half the adapters, and a
different spot in the block (section 2 below).

This notebook builds the adapter, inserts it into MiniLM and SmolLM2, fine-tunes both, and measures
the price adapters pay that LoRA does not: inference latency."""),
    ("code", r"""
import copy
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
from labs.surgery import count_parameters
from labs.timing import interleaved_medians

adapters = technique("adapters")  # your labs/adapters.py (or the reference, with LABS_IMPL=solutions)
lora = technique("lora")
preset = get_preset()
runs_dir = Path(tempfile.mkdtemp(prefix="labs-nb04-"))  # each fine-tune saves its adapter and metrics here
print(f"preset {preset.name}: {preset.max_steps} steps of {preset.batch_size} x {preset.seq_len} tokens")"""),
    ("md", r"""
## 1. The adapter, starting as the identity

A new module dropped into a pretrained network must not wreck it on day one: the rest of the network
expects the features it was trained on. Houlsby's answer is a **near-identity initialisation**: make
the adapter's contribution tiny, and the skip connection passes $h$ through almost unchanged. We take
that to its limit, the choice LoRA makes for its $B$: $W_\text{up} = 0,\ b_\text{up} = 0$. Then
$\text{adapter}(h) = h$ *exactly*, and the adapted model computes bit for bit what the base model does.

It still learns. The gradient of $W_\text{up}$ is $\partial L/\partial y \cdot f(W_\text{down} h)^\top$,
which is not zero because $W_\text{down}$ keeps its random initialisation. (Zero both and no
gradient would ever reach either.) After the first step $W_\text{up} \neq 0$ and $W_\text{down}$ starts
to move too.

**Exercise 4.1.** In `labs/adapters.py`, write `BottleneckAdapter.__init__(d_model, bottleneck,
activation)`: `self.adapter_down = nn.Linear(D, m)` (default init), `self.activation =
ACTIVATIONS[activation]()` (any other activation is a `ValueError` whose message must contain the
bad name), `self.adapter_up =
nn.Linear(m, D)` with weight and bias set to zero (`nn.init.zeros_`). Call `super().__init__()` first."""),
    ("code", r"""check("4.1")"""),
    ("md", r"""
**Exercise 4.2.** Write `BottleneckAdapter.forward(h)`: $h + \text{up}(f(\text{down}(h)))$, for `h` of
shape `(B, T, D)`."""),
    ("code", r"""check("4.2")"""),
    ("code", r"""
torch.manual_seed(0)
adapter = adapters.BottleneckAdapter(d_model=384, bottleneck=64)
h = torch.randn(2, 5, 384)                       # (B, T, D)
print("identity at init:", torch.equal(adapter(h), h))
print({n: tuple(p.shape) for n, p in adapter.named_parameters()})
print("parameters:", sum(p.numel() for p in adapter.parameters()), "= 2*64*384 + 64 + 384 =", 2 * 64 * 384 + 64 + 384)"""),
    ("md", r"""
## 2. Putting adapters into a model

We never edit the model's source. As in every technique of this course, a *wrapper* takes the place of
an existing layer and holds it: `AdapterWrapped(base_layer, adapter)` computes
`adapter(base_layer(x))`. Wrapping a block's **output projection** puts the adapter exactly where
Houlsby wants it: after the projection, before the residual add (and, in BERT, before the LayerNorm,
which lives in the same parent module and runs after our wrapper returns).

**Exercise 4.3.** Write `AdapterWrapped.forward(x)`."""),
    ("code", r"""check("4.3")"""),
    ("md", r"""
Which layers are the output projections? Their names differ by family:

| family | after attention | after the MLP |
|---|---|---|
| BERT (MiniLM) | `attention.output.dense` | `layer.N.output.dense` |
| Llama (SmolLM2) | `self_attn.o_proj` | `mlp.down_proj` |
| GPT-2 (`Conv1D`) | `attn.c_proj` | `mlp.c_proj` |

Mind BERT's trap: `attention.output.dense` also *ends with* `output.dense`. The module keeps regular
expressions for both columns in `ATTENTION_OUTPUTS` and `MLP_OUTPUTS`.

**Exercise 4.4.** Write `adapter_targets(model, placement)`: the names of linear layers
(`is_linear`) matching any pattern of `MLP_OUTPUTS` (and of `ATTENTION_OUTPUTS` too, for
`"houlsby"`), by `re.search` on the full module name, in model order. A `ValueError` for an unknown
placement (the message must contain the bad name), and for a model where nothing matches."""),
    ("code", r"""check("4.4")"""),
    ("code", r"""
bert, bert_tok = load_model("minilm-l6", task_kind="classify", num_labels=2)
for placement in ("houlsby", "pfeiffer"):
    names = adapters.adapter_targets(bert, placement)
    print(f"{placement}: {len(names)} adapters, first {names[:2]}")"""),
    ("md", r"""
**What `"pfeiffer"` means here.** This course's `"pfeiffer"` placement takes Pfeiffer's budget, one
adapter per block after the MLP, but puts it where Houlsby puts his: on the MLP's output projection,
*before* the residual add and the LayerNorm. Read it as "Houlsby's MLP adapter alone". Pfeiffer's own
configuration (AdapterHub's `SeqBnConfig`, alias `"pfeiffer"`) sits *after* them in BERT's block:
the adapter reads the normalised sum $\mathrm{LN}(h + x)$ of the MLP output $h$ and the block's
residual stream $x$, its skip connection carries $h$, and the residual add and the *same* LayerNorm
are applied once more afterwards:

$$y = \mathrm{LN}\Big(h + W_\text{up}\, f\big(W_\text{down}\, \mathrm{LN}(h + x)\big) + x\Big)
\qquad\text{against ours:}\qquad y = \mathrm{LN}\Big(h + W_\text{up}\, f(W_\text{down}\, h) + x\Big)$$

(biases left out). Both are the unchanged block while $W_\text{up} = 0$; they differ in what the adapter
sees: the raw MLP output here, the normalised residual stream in Pfeiffer's. The LoRA paper
(section 5.1) groups Pfeiffer's design with Lin et al.'s (2020), "after the MLP module and after a
LayerNorm"."""),
    ("md", r"""
**Exercise 4.5.** Write `inject_adapters(model, config)`: replace every target by
`AdapterWrapped(layer, BottleneckAdapter(D, config.width(D), config.activation))`, where $D$ is the
layer's output width (`linear_dims(layer)[1]`), the adapter created on the layer's device and dtype.
Use `labs.surgery.replace_modules(model, predicate, factory)` and return the names it reports.

`apply` (given) then freezes the base, and unfreezes the `adapter_down` / `adapter_up` parameters and,
as Houlsby does, the layer norms (`train_norms=True`). The first thing to check on a real model: it
still computes exactly what it did."""),
    ("code", r"""check("4.5")"""),
    ("code", r"""
batch = bert_tok(["a gripping, beautifully shot film", "dull and far too long"], return_tensors="pt", padding=True)
with torch.no_grad():
    before = bert(**batch).logits
    adapters.apply(bert, adapters.AdapterConfig(bottleneck=64))
    after = bert(**batch).logits
print("logits unchanged by the adapters:", torch.equal(before, after))
print(bert.bert.encoder.layer[0].output.dense)"""),
    ("md", r"""
## 3. How many parameters?

Per block: one adapter (Pfeiffer) or two (Houlsby), each $2mD + m + D$.

**Exercise 4.6.** Write `adapter_parameter_count(d_model, n_layers, config)`, the number of parameters
the adapters add (the trained norms not included)."""),
    ("code", r"""check("4.6")"""),
    ("code", r"""
config = bert.labs_adapter.config
formula = adapters.adapter_parameter_count(bert.config.hidden_size, bert.config.num_hidden_layers, config)
measured = sum(p.numel() for n, p in bert.named_parameters() if ".adapter." in n)
print(f"formula {formula:,}  measured {measured:,}")
print("trainable with norms (no head yet):", count_parameters(bert))
for m in (8, 64, 256):
    n = adapters.adapter_parameter_count(576, 30, adapters.AdapterConfig(bottleneck=m))
    print(f"SmolLM2, m={m:>3}: {n:>10,} added ({100 * n / 134_515_008:.2f}% of 134.5 M)")
del bert
gc.collect();"""),
    ("md", r"""
## 4. Fine-tuning with adapters

First MiniLM on Rotten Tomatoes sentiment: Houlsby placement, $m = 64$, layer norms and the new
classification head trained too (`labs finetune --method adapter` makes the same choices). The new
weights start from an exact copy of the base model's behaviour, so a learning rate ten times full
fine-tuning's is safe; much larger ones (5e-3 here) collapse this small model onto one class."""),
    ("code", r"""
STEPS = max(preset.max_steps, 60)    # the quick preset's 16 steps leave MiniLM near chance on this task
budget = get_preset(preset.name, max_steps=STEPS, lr=1e-3, n_probe=0, n_english=0,  # Houlsby swept 3e-5, 3e-4, 3e-3 (sec. 3.2)
                    n_eval=max(preset.n_eval, 256))     # 256 reviews: one review is 0.4 points
bert_run = run_finetune("adapter", "minilm-l6", task="sentiment", preset=budget,
                        out=runs_dir / "adapter-minilm", progress=False)"""),
    ("md", r"""
Then SmolLM2 on the "define" task (*Define the word "X".*, answered by its WordNet gloss): a short run
(12 steps of 4 rows in the quick preset, the preset's budget in the others), scored by held-out loss and
perplexity of the definitions."""),
    ("code", r"""
smol_budget = get_preset(preset.name, n_probe=0, n_english=0, max_steps=preset.side_run_steps,
                         batch_size=preset.side_run_batch)
smol_run = run_finetune("adapter", "smollm2-135m", task="define", preset=smol_budget,
                        out=runs_dir / "adapter-smollm2", progress=False)
for g in smol_run["generations"][:2]:
    print(f"{g['prompt']}\n  before: {g['before'][:100]}\n  after:  {g['after'][:100]}\n")"""),
    ("code", r"""
fig, axes = viz.new_figure(9, 3.4, ncols=2)
for ax, run, metric in ((axes[0], bert_run, "accuracy"), (axes[1], smol_run, "perplexity")):
    values = [run["eval_before"][metric], run["eval_after"][metric]]
    bars = ax.bar(["before", "after"], values, color=["#999999", "#4c72b0"])
    ax.bar_label(bars, fmt="%.3g")
    ax.set(title=f"{run['model']} {run['task']}: {metric}", ylim=(0, max(values) * 1.2))
fig"""),
    ("md", r"""
## 5. The price: latency

An adapter sits *in series* with the layer it follows: its two matrix products and its non-linearity
must wait for the layer, and the next layer waits for them. It cannot be folded into the frozen
weights either, because $f$ is non-linear. LoRA's update $BA$ has the shape of $W$, so after training
it is added into $W$ ("merged", notebook 05) and the model is the base architecture again: no extra
work at all.

The LoRA paper measured this on a GPU: at batch size 1, where a forward pass is a long chain of small
kernels, adapters added 20-30% to the latency of GPT-2 medium (Hu et al. 2021, section 3, Table 1:
+20.7% and +30.3% for two adapter designs at 128 tokens). Here we measure it on this machine:
the median of repeated forward passes at batch 1, for the base model, the model with Houlsby adapters,
and the model with a LoRA adapter merged. The three models take turns, pass by pass, so that a
background hiccup hits them all alike."""),
    ("code", r"""
def median_latency_ms(models: dict, input_ids: torch.Tensor, repeats: int = 20, warmup: int = 3) -> dict:
    # Median wall time (ms) of one forward pass per model, the models taking turns (labs.timing).
    with torch.no_grad():
        seconds = interleaved_medians({name: (lambda m=m: m(input_ids=input_ids)) for name, m in models.items()},
                                      repeats, warmup)
    return {name: 1000 * s for name, s in seconds.items()}


base, tok = load_model("smollm2-135m")
with_adapters = adapters.apply(copy.deepcopy(base), adapters.AdapterConfig(bottleneck=64))
merged = lora.apply(copy.deepcopy(base), lora.LoRAConfig(r=8))
merged = lora.merge_and_unload(merged)          # B A added into W: plain base layers again
models = {"base": base, "adapters (Houlsby)": with_adapters, "LoRA merged": merged}
latency = {}
for tokens in (1, 32):                          # one new token (a decoding step) and a short prompt
    input_ids = torch.randint(0, base.config.vocab_size, (1, tokens))   # (B=1, T)
    latency[tokens] = median_latency_ms(models, input_ids, repeats=20 if tokens == 1 else 8)
    ms = latency[tokens]
    print(f"T={tokens:>3}: " + "   ".join(f"{n} {v:.1f} ms ({v / ms['base']:.2f}x)" for n, v in ms.items()))"""),
    ("code", r"""
viz.ratio_bars({f"SmolLM2, batch 1, T={tokens}": ms for tokens, ms in latency.items()}, y_label="forward time / base")"""),
    ("md", r"""
What the measurement says depends on the hardware, and that is the lesson:

- **LoRA merged** costs nothing: it *is* the base architecture with different numbers in $W$. Any
  difference from the base you see is measurement noise (other programs sharing the CPU), and a
  rough gauge of how much of the adapters' figure is noise too.
- **Adapters** add $2 \times 2mD \approx 147{,}000$ multiply-adds per token per block ($m = 64$), against
  about 3.5 million for the block's own projections (query, key, value, output, and the MLP's three):
  about 4% more arithmetic, and about 3% more weight bytes (4.5 million adapter weights against the
  134.5 million the model reads per token, output head included). At batch 1 and one token (T=1)
  every projection is a matrix-vector product: each weight is fetched from memory to be used in a
  single multiply-add, so the time is set by memory bandwidth, not by arithmetic, and the slowdown
  should be near that 3% byte share plus the overhead of 60 extra small modules, which weighs most
  here. With T=32 each fetched weight serves 32 tokens and the arithmetic share counts too. On a GPU
  at batch 1 the arithmetic is nearly free and each extra sequential kernel costs a fixed launch
  time, which is why the LoRA paper saw 20-30%.
- At large batches the extra work hides behind the big matrix products everywhere: adapters hurt
  most exactly where latency matters most, serving one request at a time.

## Summary

| | BitFit (03) | adapters (04) | LoRA (05) |
|---|---|---|---|
| what trains | existing biases | new bottleneck modules | new low-rank factors |
| identity at start | (trivially) | $W_\text{up} = 0$ | $B = 0$ |
| inference cost | none | extra sequential layers | none once merged |

Adapters are modular (one frozen base, a small file per task, swap them at will) and expressive,
but they pay at inference. LoRA keeps the modularity and removes the latency: notebook 05."""),
]


if __name__ == "__main__":
    main(CELLS, "adapters", OUT)
